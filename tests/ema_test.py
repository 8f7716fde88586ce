"""With --ema_decay, evaluation and export see the weight average, not the training weights.

One epoch of five steps through main.py's path (in this process,
`tests/in_process.py`) with `--ema_decay` evaluates, exports and checkpoints at its end
(step 5). The test then builds two models from that checkpoint
by its own path, without `trainer/optimization/ema.py`: the training weights (the checkpoint's
`model` entries) and the averages (its `weight_average/averages/<i>` entries, one per
`model.weights[i]`: trainable weights and batch-norm moving statistics alike), and
evaluates both on the validation split itself. The run's logged evaluation must be the
averaged model's, and the export's logits the averaged model's logits; the raw model's
evaluation must be measurably different, so that the comparison can fail.

A fast-moving average (decay 0.5) and batch-norm statistics (momentum 0.5) make the two
sets of weights, and the moving statistics of the two, differ by far more than the
float32 noise between the run's evaluation and the test's.
"""

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

import densenet
from input_pipeline import formats
from in_process import run_main_in_process
from main_runs import checkpoints
from main_runs import events
from main_runs import variable_name
import pipelines
from trainer.engine import step as step_lib

pytestmark = pytest.mark.slow

MODEL, IMAGE_SIZE, NUM_CLASSES, BN_MOMENTUM = 'densenet_bc_10_4', 32, 10, 0.5
STEP = 5  # 1,497 training digits // batch 256: one epoch is 5 steps.
AVERAGE_KEY = 'weight_average/averages/{}/.ATTRIBUTES/VARIABLE_VALUE'


@pytest.fixture(scope='module')
def averaged_run(digits_dir, tmp_path_factory):
    """One epoch with weight averaging; its model_dir, eval row and checkpoint prefix."""
    model_dir = str(tmp_path_factory.mktemp('ema') / 'run')
    result = run_main_in_process(
        [
            f'--model={MODEL}',
            f'--image_size={IMAGE_SIZE}',
            f'--num_classes={NUM_CLASSES}',
            '--bfloat16=false',
            '--batch_size=256',
            '--epochs=1',
            '--steps_per_loop=5',
            '--log_every_steps=5',
            '--checkpoint_every_steps=5',
            '--lr_sched=steps',
            '--initial_lr=0.1',
            '--ema_decay=0.5',
            f'--batch_norm_momentum={BN_MOMENTUM}',
            '--histograms',
            '--seed=5',
            '--shuffle_buffer=256',
            f'--dataset_dir={digits_dir}',
            f'--model_dir={model_dir}',
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(model_dir, 'eval_results.jsonl')) as stream:
        rows = [json.loads(line) for line in stream]
    assert [row['step'] for row in rows] == [STEP], rows
    return {'model_dir': model_dir, 'eval': rows[0], 'prefix': checkpoints(model_dir)[STEP]}


def _model():
    return densenet.create_model(
        MODEL, num_classes=NUM_CLASSES, image_size=IMAGE_SIZE, batch_norm_momentum=BN_MOMENTUM
    )


def _training_model(prefix):
    """The checkpoint's training weights, through the ordinary restore."""
    model = _model()
    tf.train.Checkpoint(model=model).restore(prefix).assert_existing_objects_matched()
    return model


def _averaged_model(prefix):
    """The checkpoint's averages, read by name and assigned weight by weight."""
    model = _model()
    reader = tf.train.load_checkpoint(prefix)
    stored = [name for name in reader.get_variable_to_shape_map() if 'weight_average/' in name]
    # Every weight has its average: kernels, biases, and batch-norm statistics too.
    assert len(stored) == len(model.weights), (len(stored), len(model.weights))
    assert any('moving_variance' in weight.name for weight in model.weights)
    for index, weight in enumerate(model.weights):
        value = reader.get_tensor(AVERAGE_KEY.format(index))
        assert value.shape == tuple(weight.shape), (index, weight.name)
        weight.assign(value)
    return model


@pytest.fixture(scope='module')
def models(averaged_run):
    """The training, averaged and mixed (averaged trainable, training statistics) models."""
    training = _training_model(averaged_run['prefix'])
    averaged = _averaged_model(averaged_run['prefix'])
    mixed = _model()
    for weight, average, train in zip(mixed.weights, averaged.weights, training.weights):
        weight.assign(average if weight.trainable else train)
    return {'training': training, 'averaged': averaged, 'mixed': mixed}


@pytest.fixture(scope='module')
def validation(digits_dir):
    """The whole validation split (300 digits) as one batch, preprocessed for evaluation."""
    found = formats.find_dataset(digits_dir)
    images, labels, weights = next(
        iter(
            pipelines.evaluate(
                list(found.validation_files),
                batch_size=300,
                image_size=IMAGE_SIZE,
                num_classes=NUM_CLASSES,
                num_examples=300,
                label_offset=found.label_offset,
                schema=found.schema,
            )
        )
    )
    assert float(tf.reduce_sum(weights)) == 300  # No padding in the batch.
    # As the eval step feeds the model (and the export's serving_images takes them).
    return step_lib.model_input(images, tf.float32), labels.numpy()


def _evaluate(model, validation):
    """Mean cross-entropy, top-1 and top-5 of `model` on the split, in NumPy float64."""
    images, labels = validation
    logits = model(images, training=False).numpy().astype(np.float64)
    peak = logits.max(axis=1)
    log_sum = np.log(np.exp(logits - peak[:, None]).sum(axis=1)) + peak
    cross_entropy = log_sum - logits[np.arange(len(labels)), labels]
    ranks = np.argsort(-logits, axis=1)
    return {
        'cross_entropy': float(cross_entropy.mean()),
        'top1': float(np.mean(ranks[:, 0] == labels)),
        'top5': float(np.mean((ranks[:, :5] == labels[:, None]).any(axis=1))),
    }


def test_evaluation_is_the_averaged_models(averaged_run, models, validation):
    logged = averaged_run['eval']
    results = {name: _evaluate(model, validation) for name, model in models.items()}
    # The run's evaluation, as eval_results.jsonl and the eval scalars hold it.
    assert logged['num_examples'] == 300
    assert logged['cross_entropy'] == pytest.approx(
        results['averaged']['cross_entropy'], rel=1e-5
    ), results
    assert logged['top1'] == pytest.approx(results['averaged']['top1'], abs=1.5 / 300), results
    assert logged['top5'] == pytest.approx(results['averaged']['top5'], abs=1.5 / 300), results
    scalars = events(averaged_run['model_dir'], 'eval')
    assert 'loss' not in scalars  # Training's loss includes L2: not this figure.
    for tag in ('cross_entropy', 'top1', 'top5'):
        assert float(scalars[tag][STEP]) == pytest.approx(logged[tag], rel=1e-6), tag
    # The comparison can fail: the training weights, and the averaged trainable weights
    # with the training batch-norm statistics, evaluate over 30x the tolerance away
    # (about 3e-3 and 1.5e-3 of the loss).
    for name in ('training', 'mixed'):
        difference = abs(results[name]['cross_entropy'] - logged['cross_entropy'])
        assert difference > 3e-4 * logged['cross_entropy'], (name, results)


def test_export_holds_the_averaged_weights(averaged_run, models, validation):
    images, _ = validation
    loaded = tf.saved_model.load(os.path.join(averaged_run['model_dir'], 'saves', 'epoch_001'))
    logits = loaded.signatures['serving_images'](images=images)['logits'].numpy()
    expected = {name: model(images, training=False).numpy() for name, model in models.items()}
    np.testing.assert_allclose(logits, expected['averaged'], rtol=1e-5, atol=1e-5)
    for name in ('training', 'mixed'):
        assert np.abs(logits - expected[name]).max() > 1e-2, name


def test_train_scalars_and_histograms_see_their_own_weights(averaged_run, models):
    # The train scalars describe training: weight_norm is the training weights'. The
    # histograms, written at the evaluation, show the weights evaluated: the averages.
    def norm(model):
        return math.sqrt(
            sum(
                float(np.sum(np.square(v.numpy().astype(np.float64))))
                for v in model.trainable_variables
            )
        )

    train = events(averaged_run['model_dir'], 'train')
    logged = float(train['weight_norm'][STEP])
    assert logged == pytest.approx(norm(models['training']), rel=1e-6)
    # About 4e-4 apart: the norm of the averages would fail.
    assert logged != pytest.approx(norm(models['averaged']), rel=1e-5)
    training_extremes = 0
    for variable, average in zip(
        models['training'].trainable_variables, models['averaged'].trainable_variables
    ):
        name = variable_name(variable)
        buckets = train[name][STEP]  # [left edge, right edge, count] rows.
        assert buckets[:, 2].sum() == average.shape.num_elements(), name
        low, high = buckets[0, 0], buckets[-1, 1]
        assert low == pytest.approx(float(tf.reduce_min(average)), rel=1e-5, abs=1e-7), name
        assert high == pytest.approx(float(tf.reduce_max(average)), rel=1e-5, abs=1e-7), name
        training_extremes += low == pytest.approx(
            float(tf.reduce_min(variable)), rel=1e-5, abs=1e-7
        )
    # Histograms of the training weights would fail: their minima are elsewhere.
    assert training_extremes < len(models['training'].trainable_variables) // 2

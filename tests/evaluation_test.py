"""The trainer's evaluation against NumPy: each example counted once, padding never.

1,001 examples do not fill the last batch of 64 per replica, so the eval pipeline pads
it with zero images of label 0 and weight 0 (`input_pipeline/dataset.py`). The
evaluator the trainer builds (`trainer/run_data.py`'s `RunData` and
`trainer/evaluation.py`'s `make_evaluator`, which
runs `trainer/engine/step.py`'s `eval_step` through `trainer/engine/loop.py`) must give the top-1,
top-5 and mean cross-entropy of the 1,001 real examples alone, on one device and on
two mirrored replicas. The reference runs the same model on the same decoded images,
unpadded, and scores them in NumPy.
"""

import math

import numpy as np
import pytest
import skimage.data
import tensorflow as tf

from input_pipeline import augment
from input_pipeline import writer
from trainer.devices import distribute
from trainer import evaluation
from trainer import run
from trainer.config import RunConfig
from trainer.run_data import RunData

NUM_EXAMPLES = 1001
PER_REPLICA_BATCH = 64
NUM_CLASSES = 10
IMAGE_SIZE = 8
CROP_FRACTION = 1.0
TRAIN_EXAMPLES = 2 * PER_REPLICA_BATCH  # `RunData` needs a training epoch of one step.


def _config(dataset_dir):
    return RunConfig(
        dataset_dir=dataset_dir,
        model='densenet_bc_10_4',
        num_classes=NUM_CLASSES,
        image_size=IMAGE_SIZE,
        precision='float32',
        batch_size=PER_REPLICA_BATCH,
        eval_crop_fraction=CROP_FRACTION,
    )


def _random_weights(model, rng):
    """Random values for every weight, batch-norm statistics included.

    Fresh batch norm (mean 0, variance 1, scale 1, offset 0) is nearly the identity in
    inference mode; random statistics make the eval step's inference path matter. Drawn
    in NumPy, so both Keras versions evaluate the same model.
    """
    values = []
    for weight in model.weights:
        shape = tuple(weight.shape)
        kind = weight.name.split('/')[-1].split(':')[0]
        if kind == 'kernel':
            value = rng.normal(0.0, math.sqrt(2.0 / np.prod(shape[:-1])), shape)
        elif kind == 'moving_variance':
            value = rng.uniform(0.5, 2.0, shape)
        elif kind == 'gamma':
            value = rng.uniform(0.5, 1.5, shape)
        else:  # moving_mean, beta, bias
            value = rng.normal(0.0, 0.3, shape)
        values.append(value.astype(np.float32))
    return values


def _predict(model, images):
    return model(tf.constant(images), training=False).numpy().astype(np.float64)


@pytest.fixture(scope='module')
def evaluation_data(tmp_path_factory):
    """Writes the records; returns (dataset_dir, weights, reference metrics).

    The model is relabelled so that it predicts class 0 for the zero image that pads
    the last batch: a padding example counted as an example is then a top-1 and a top-5
    hit with a loss of its own, so dropping any of `eval_step`'s weights shows. The
    even-numbered examples are labelled with the model's prediction, the others at
    random, so that top-1 and top-5 are neither 0 nor 1.
    """
    rng = np.random.default_rng(0)
    photo = skimage.data.astronaut()
    encoded = []
    for index in range(NUM_EXAMPLES):
        top, left = divmod(index, 60)
        patch = np.ascontiguousarray(photo[top * 8 : top * 8 + 8, left * 8 : left * 8 + 8])
        encoded.append(tf.io.encode_jpeg(patch).numpy())
    # Decoded as the eval pipeline decodes (its own tests check the decoding).
    decoded = tf.data.Dataset.from_tensor_slices(encoded).map(
        lambda data: augment.normalize(
            augment.decode_and_center_crop(
                data, image_size=IMAGE_SIZE, crop_fraction=CROP_FRACTION, jpeg_only=True
            )
        )
    )
    images = next(iter(decoded.batch(NUM_EXAMPLES))).numpy()

    dataset_dir = str(tmp_path_factory.mktemp('evaluation'))
    model = run.build_model(_config(dataset_dir))
    weights = _random_weights(model, rng)
    model.set_weights(weights)
    padding_class = int(np.argmax(_predict(model, np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)))))
    for value in weights[-2:]:  # The logits layer's kernel and bias.
        value[..., [0, padding_class]] = value[..., [padding_class, 0]]
    model.set_weights(weights)
    assert np.argmax(_predict(model, np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)))) == 0

    logits = _predict(model, images)
    labels = np.where(
        np.arange(NUM_EXAMPLES) % 2 == 0,
        np.argmax(logits, axis=-1),
        rng.integers(0, NUM_CLASSES, NUM_EXAMPLES),
    )
    examples = [
        writer.Example(encoded=data, label=int(label) + 1) for data, label in zip(encoded, labels)
    ]
    writer.write_tfrecords(examples, dataset_dir, 'validation', 3)
    writer.write_tfrecords(examples[:TRAIN_EXAMPLES], dataset_dir, 'train', 1)

    true_logits = logits[np.arange(NUM_EXAMPLES), labels]
    # Hits are compared exactly: no other class may be within float noise of the label's
    # logit, or batching the images differently could move a hit across the top-k line.
    others = np.abs(logits - true_logits[:, None])
    others[np.arange(NUM_EXAMPLES), labels] = np.inf
    assert others.min() > 1e-5, 'near-tied logits: pick another seed'
    rank = np.sum(logits > true_logits[:, None], axis=-1)  # Classes above the label's.
    log_probs = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
    reference = {
        'top1_hits': int(np.sum(rank < 1)),
        'top5_hits': int(np.sum(rank < 5)),
        'cross_entropy': float(-np.mean(log_probs[np.arange(NUM_EXAMPLES), labels])),
    }
    assert 0 < reference['top1_hits'] < reference['top5_hits'] < NUM_EXAMPLES, reference
    return dataset_dir, weights, reference


@pytest.mark.parametrize('replicas', [1, 2])
def test_evaluation_equals_numpy_over_the_unpadded_examples(evaluation_data, replicas, request):
    dataset_dir, weights, reference = evaluation_data
    if replicas == 1:
        strategy = distribute.create_strategy('one_device', device='cpu')
    else:
        strategy = request.getfixturevalue('two_cpus')
    assert strategy.num_replicas_in_sync == replicas
    config = _config(dataset_dir)
    data = RunData(config, strategy)
    assert data.num_eval == NUM_EXAMPLES
    # The last step is padded (23 zero-weight examples on 1 and on 2 replicas).
    assert data.eval_steps * PER_REPLICA_BATCH * replicas - NUM_EXAMPLES == 23
    with strategy.scope():
        model = run.build_model(config)
    model.set_weights(weights)

    evaluate = evaluation.make_evaluator(
        strategy, data, lambda images: model(images, training=False), show_progress=False
    )
    result = evaluate()

    assert result['num_examples'] == NUM_EXAMPLES
    hits = {key: result[key] * NUM_EXAMPLES for key in ('top1', 'top5')}
    assert hits['top1'] == pytest.approx(reference['top1_hits'], abs=1e-6), 'top-1 hits'
    assert hits['top5'] == pytest.approx(reference['top5_hits'], abs=1e-6), 'top-5 hits'
    assert result['cross_entropy'] == pytest.approx(reference['cross_entropy'], rel=1e-5), (
        'mean cross-entropy'
    )

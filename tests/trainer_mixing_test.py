"""Mixup and CutMix train end to end through main.py's path, and the label contract they use.

The input pipeline hands the step int class ids, or with mixup or CutMix float target
distributions `[batch, classes]`; the step takes both (trainer/engine/step.py). Each run
here trains the demo's model through main.py's path (in this process,
`tests/in_process.py`) for a few steps with mixing on, and the loss on a fixed set of
batches (the 300 validation digits in batches of 100, computed in this process from
the run's checkpoints) must fall between its first and its last checkpoint.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

import densenet
from in_process import run_main_in_process
from main_runs import checkpoints
from trainer.artifacts import checkpoint as checkpoint_lib
from trainer.engine import step as step_lib
import pipelines

_DEMO = ['--flagfile=demo.cfg', '--prepare_digits_demo=false']
_STEPS = 20


def _validation_loss(digits_dir, prefix):
    """Mean cross-entropy of the demo model at `prefix` over the 300 validation digits.

    With batch statistics (training mode), in three fixed batches of 100: a few steps
    in, the moving statistics still lag the weights, and would hide the progress.
    """
    model = densenet.create_model('densenet_bc_22_12', num_classes=10, image_size=32)
    checkpoint_lib.restore_weights(model, prefix)
    files = sorted(tf.io.gfile.glob(os.path.join(digits_dir, 'validation-*')))
    batches = pipelines.evaluate(
        files, batch_size=100, image_size=32, num_classes=10, num_examples=300, crop_fraction=1.0
    )
    total = count = 0.0
    for images, labels, weights in batches:
        logits = model(step_lib.model_input(images, tf.float32), training=True)
        total += float(tf.reduce_sum(step_lib.cross_entropy_loss(labels, logits) * weights))
        count += float(tf.reduce_sum(weights))
    assert count == 300
    return total / count


MIXINGS = {
    'mixup': ['--mixup_alpha=0.2'],
    'cutmix': ['--cutmix_alpha=1.0'],
    'both_and_label_smoothing': [
        '--mixup_alpha=0.2',
        '--cutmix_alpha=1.0',
        '--label_smoothing=0.1',
    ],
}


@pytest.fixture(scope='module')
def mixing_runs(digits_dir, tmp_path_factory):
    """Name -> (main.py result, model_dir) of each mixing's run."""
    tmp = tmp_path_factory.mktemp('mixing')
    model_dirs = {name: str(tmp / name) for name in MIXINGS}
    results = [
        run_main_in_process(
            [
                *_DEMO,
                *mixing,
                f'--dataset_dir={digits_dir}',
                f'--model_dir={model_dirs[name]}',
                f'--train_steps={_STEPS}',
                '--export_last_step=false',
                '--checkpoint_every_steps=1',
                f'--keep_checkpoints={_STEPS}',
                '--log_every_steps=10',
            ]
        )
        for name, mixing in MIXINGS.items()
    ]
    return {name: (result, model_dirs[name]) for name, result in zip(MIXINGS, results)}


@pytest.mark.parametrize('name', sorted(MIXINGS))
@pytest.mark.slow
def test_mixing_trains_through_main(name, mixing_runs, digits_dir):
    result, model_dir = mixing_runs[name]
    assert result.returncode == 0, result.stderr[-3000:]
    saved = checkpoints(model_dir)
    assert sorted(saved)[0] == 1 and max(saved) == _STEPS
    first, last = (_validation_loss(digits_dir, saved[s]) for s in (1, _STEPS))
    print(f'{name}: validation loss {first:.4f} after step 1, {last:.4f} after {_STEPS}')
    assert np.isfinite(last) and last < first - 0.2, (first, last)


def test_step_takes_class_ids_and_target_distributions_alike():
    # One-hot targets are the class ids in the other form: same loss, same hits.
    logits = tf.constant([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    ids = tf.constant([0, 1])
    targets = tf.one_hot(ids, 3)
    for eps in (0.0, 0.1):
        np.testing.assert_allclose(
            step_lib.cross_entropy_loss(ids, logits, eps),
            step_lib.cross_entropy_loss(targets, logits, eps),
            rtol=1e-6,
        )
    # Smoothing after mixing equals timm's smoothing before it (both are affine).
    mixed = 0.7 * tf.one_hot([0, 2], 3) + 0.3 * tf.one_hot([1, 0], 3)
    timm = 0.7 * (tf.one_hot([0, 2], 3) * 0.9 + 0.1 / 3) + 0.3 * (
        tf.one_hot([1, 0], 3) * 0.9 + 0.1 / 3
    )
    expected = -tf.reduce_sum(timm * tf.nn.log_softmax(logits), axis=-1)
    np.testing.assert_allclose(step_lib.cross_entropy_loss(mixed, logits, 0.1), expected, rtol=1e-6)
    # Top-k counts hits of the dominant source class.
    np.testing.assert_array_equal(step_lib.reference_classes(mixed), [0, 2])

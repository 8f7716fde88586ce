"""Progressive resizing and the evaluation size: the rule, the streams, a resumed run.

The rule is checked against FFCV's own formula; the streams of a progressive run
against fixed-size runs' streams (the same examples, crops and labels at each size);
a run stopped just before, at and just after a size change against the run that was
never stopped, bit for bit.
"""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from in_process import run_main_in_process
from main_runs import assert_identical
from main_runs import checkpoint_values
from main_runs import checkpoints
from main_runs import events
from trainer import config as config_lib
from trainer.artifacts import export
from trainer import image_sizes
from trainer import run_data


def _ffcv_resolution(epoch, min_res, max_res, start_ramp, end_ramp):
    """FFCV's ImageNet example's `get_resolution`, written out with NumPy."""
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    interp = np.interp([epoch], [start_ramp, end_ramp], [min_res, max_res])
    return int(np.round(interp[0] / 32)) * 32


@pytest.mark.parametrize(
    'min_res, max_res, start_ramp, end_ramp',
    [(160, 192, 65, 76), (160, 192, 11, 13), (128, 224, 2, 30), (96, 256, 0, 5)],
)
def test_the_schedule_is_ffcvs_rule_with_at_most_one_trace_per_size(
    min_res, max_res, start_ramp, end_ramp
):
    config = config_lib.RunConfig(
        image_size=max_res,
        min_image_size=min_res,
        resize_start_epoch=start_ramp,
        resize_end_epoch=end_ramp,
        epochs=end_ramp + 4,
    )
    sizes = image_sizes.ImageSizes.from_settings(config)
    epochs = range(end_ramp + 4)
    expected = [_ffcv_resolution(e, min_res, max_res, start_ramp, end_ramp) for e in epochs]
    assert [sizes.train(epoch) for epoch in epochs] == expected
    # One stretch per size, in order: each size is traced once.
    phases = sizes.phases(config.epochs)
    assert [size for _, size in phases] == sorted(set(expected))
    assert len(phases) <= (max_res - min_res) // 32 + 1
    assert f'({len(phases)} traced shapes)' in sizes.describe(config.epochs)
    for first, size in phases:
        assert expected[first] == size and (first == 0 or expected[first - 1] != size)


@pytest.mark.parametrize(
    'settings, message',
    [
        (dict(min_image_size=100), '--image_size=224 and --min_image_size=100 must be multiples'),
        (dict(min_image_size=160), '--min_image_size needs 0 <= --resize_start_epoch < --resize'),
        (dict(min_image_size=256, resize_end_epoch=3), '--min_image_size=256 must be positive'),
        (dict(eval_image_size=-1), '--eval_image_size must be positive'),
        (dict(image_size_step=0), '--image_size_step must be positive'),
    ],
)
def test_a_schedule_that_cannot_work_is_a_one_line_error_naming_the_flag(settings, message):
    with pytest.raises(config_lib.ConfigError) as raised:
        config_lib.RunConfig(**settings)
    assert str(raised.value).startswith(message) and '\n' not in str(raised.value)


def _config(digits_dir, **settings):
    return config_lib.RunConfig(
        dataset_dir=digits_dir,
        model_dir='unused',
        model='densenet_bc_10_4',
        num_classes=10,
        batch_size=64,
        bfloat16=False,
        seed=5,
        **settings,
    )


def _batches(dataset):
    return [(images.numpy(), labels.numpy()) for images, labels in dataset]


def test_streams_end_at_a_size_change_and_hold_the_fixed_size_runs_examples(digits_dir):
    """Epoch 1 at 8 px, epoch 2 on at 16 px, against runs at 8 and at 16 px throughout."""
    strategy = tf.distribute.get_strategy()
    progressive = run_data.RunData(
        _config(
            digits_dir,
            image_size=16,
            min_image_size=8,
            image_size_step=8,
            resize_start_epoch=0,
            resize_end_epoch=1,
            eval_image_size=24,
        ),
        strategy,
    )
    steps = progressive.steps_per_epoch
    assert progressive.size_change_after(0) == progressive.size_change_after(steps - 1) == steps
    assert progressive.size_change_after(steps) is None
    # The stream started two steps before the change ends there: reading on would
    # train at the old size.
    before = _batches(progressive.train(steps - 2))
    after = _batches(progressive.train(steps).take(2))
    assert [images.shape[1:3] for images, _ in before] == [(8, 8)] * 2
    assert [images.shape[1:3] for images, _ in after] == [(16, 16)] * 2
    for size, start, got in ((8, steps - 2, before), (16, steps, after)):
        fixed = run_data.RunData(_config(digits_dir, image_size=size), strategy)
        want = _batches(fixed.train(start).take(2))
        for (images, labels), (want_images, want_labels) in zip(got, want):
            np.testing.assert_array_equal(labels, want_labels)
            np.testing.assert_array_equal(images, want_images)
    # Evaluation reads at its own size.
    images, _, _ = next(iter(progressive.eval_dataset()))
    assert images.shape[1:3] == (24, 24)


_PROGRESSIVE = [
    '--model=densenet_bc_10_4',
    '--num_classes=10',
    '--bfloat16=false',
    '--batch_size=64',
    '--random_flip=false',
    '--eval_crop_fraction=1.0',
    '--deterministic',
    '--seed=3',
    '--epochs=3',
    '--image_size=16',
    '--min_image_size=8',
    '--image_size_step=8',
    '--resize_start_epoch=0',
    '--resize_end_epoch=1',
    '--eval_image_size=24',
    # The guarantees that must hold across the change: averaged weights, mixed batches.
    '--ema_decay=0.9',
    '--mixup_alpha=0.2',
    '--steps_per_loop=8',
    '--log_every_steps=2',  # And at the epoch's end: steps 22, 23, 24 and 26.
    '--checkpoint_every_steps=2',
    '--keep_checkpoints=40',
    '--save_every_epoch=false',
]


@pytest.mark.slow
def test_a_run_stopped_before_at_and_after_a_size_change_resumes_bit_identical(
    digits_dir, tmp_path
):
    """Epoch 1 (steps 1-23) at 8 px, then 16 px; stops at steps 22, 23 and 24.

    The straight run changes size inside one process, starting the stream anew at step
    23; the stopped run starts a process at 22 (its stream ends at 23), at 23 and at 24.
    """
    common = [*_PROGRESSIVE, f'--dataset_dir={digits_dir}']
    straight, stopped = str(tmp_path / 'straight'), str(tmp_path / 'stopped')
    result = run_main_in_process([*common, f'--model_dir={straight}', '--train_steps=26'])
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr
    assert 'progressive training image sizes (2 traced shapes): 8 px for epoch 1' in log
    assert 'Step 23: training images are 16x16 from here' in log
    traced = [line for line in log.splitlines() if 'Traced the train loop' in line]
    assert len(traced) == 2 and '8x8' in traced[0] and '16x16' in traced[1], traced
    # TensorBoard's image_size: what each logged step trained at.
    sizes = events(straight, 'train')['image_size']
    assert {step: float(value) for step, value in sizes.items() if step in (22, 23, 24, 26)} == {
        22: 8.0,
        23: 8.0,
        24: 16.0,
        26: 16.0,
    }
    # Evaluated at the epoch's end, across the change, and at the last step.
    with open(os.path.join(straight, 'eval_results.jsonl')) as stream:
        assert [json.loads(line)['step'] for line in stream] == [23, 26]
    # The export takes the evaluation size.
    (saved,) = os.listdir(os.path.join(straight, 'saves'))
    _, exported_size = export.load_predict_fn(os.path.join(straight, 'saves', saved))
    assert exported_size == 24

    for steps in (22, 23, 24, 26):
        resumed = run_main_in_process(
            [
                *common,
                f'--model_dir={stopped}',
                f'--train_steps={steps}',
                '--export_last_step=false',
            ]
        )
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        if steps > 22:
            assert 'Resumed from' in resumed.stderr
    straight_checkpoints, stopped_checkpoints = checkpoints(straight), checkpoints(stopped)
    for step in (22, 23, 24, 26):
        assert_identical(straight_checkpoints[step], stopped_checkpoints[step])
    assert any('weight_average' in name for name in checkpoint_values(stopped_checkpoints[26]))


def test_fast_cfg_is_ffcvs_schedule_and_says_it_was_not_run_here():
    """The recipe file parses into the schedule its comments promise."""
    from trainer.tools import train as train_command  # noqa: PLC0415
    from absl import flags  # noqa: PLC0415

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'fast.cfg')
    with open(path) as stream:
        head = stream.read(600)
    assert 'NOT RUN ON IMAGENET HERE' in head and 'Expected:' in head
    flag_values = flags.FlagValues()
    train_command._define_flags(flag_values)  # pylint: disable=protected-access
    train_command._parse_flags(['main.py', f'--flagfile={path}'], flag_values)  # pylint: disable=protected-access
    fields = [field.name for field in dataclasses.fields(config_lib.RunConfig)]
    config = config_lib.RunConfig(**{name: flag_values[name].value for name in fields})
    sizes = image_sizes.ImageSizes.from_settings(config)
    assert [sizes.train(e) for e in range(16)] == [
        _ffcv_resolution(e, 160, 192, 11, 13) for e in range(16)
    ]
    assert sizes.phases(16) == [(0, 160), (12, 192)] and sizes.eval == 224
    assert (config.model, config.epochs, config.label_smoothing) == ('densenet121', 16, 0.1)

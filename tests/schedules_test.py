"""Tests of trainer/optimization/schedules.py: each schedule against its formula, and as applied.

The schedules are checked against formulas written out here, and against what a Keras
optimizer driven by them does to the weights.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.optimization import optimizers
from trainer.optimization import schedules
from trainer.engine import step as step_lib
from trainer.config import RunConfig

SPE, TOTAL, INITIAL, FINAL = 10, 900, 0.05, 1e-5
PROBES = (0, 1, 9, 10, 299, 300, 301, 450, 599, 600, 799, 800, 899, 900)


def _check(schedule, expected_fn):
    for step in PROBES:
        expected = expected_fn(step)
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-7 * INITIAL), step


@pytest.mark.parametrize('name', ['steps', 'linear', 'exponential', 'cosine'])
def test_schedule_matches_formula(name):
    spe, total, initial, final = 10, 900, 0.05, 1e-5
    schedule = schedules.EpochSchedule(
        name,
        initial_lr=initial,
        final_lr=final,
        steps_per_epoch=spe,
        total_steps=total,
        decay_epochs=30,
    )
    for step in (0, 1, 299, 300, 301, 450, 599, 600, 899, 900):
        epoch, progress = step / spe, step / total
        expected = {
            'steps': initial * 0.1 ** (int(epoch) // 30),
            'linear': initial + (final - initial) * progress,
            'exponential': initial * (final / initial) ** progress,
            'cosine': final + (initial - final) * 0.5 * (1 + math.cos(math.pi * progress)),
        }[name]
        # float32 arithmetic: relative to the expected value, or to initial_lr near zero.
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-7 * initial), step


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match='lr_sched'):
        schedules.EpochSchedule('poly', initial_lr=1, final_lr=0, steps_per_epoch=1, total_steps=1)


def test_piecewise_schedule_matches_formula():
    boundaries, values = (30, 60, 80), (0.1, 0.01, 0.001, 0.0001)
    schedule = schedules.EpochSchedule(
        'piecewise',
        initial_lr=INITIAL,
        final_lr=FINAL,
        steps_per_epoch=SPE,
        total_steps=TOTAL,
        boundaries=boundaries,
        values=values,
    )
    _check(schedule, lambda step: values[sum(step / SPE >= b for b in boundaries)])


def test_piecewise_default_values_decay_tenfold():
    schedule = schedules.EpochSchedule(
        'piecewise',
        initial_lr=INITIAL,
        final_lr=FINAL,
        steps_per_epoch=SPE,
        total_steps=TOTAL,
        boundaries=(2.5, 45),
    )
    # Fractional boundaries: epoch 2.5 is step 25.
    assert float(schedule(24)) == pytest.approx(INITIAL)
    assert float(schedule(25)) == pytest.approx(INITIAL * 0.1)
    assert float(schedule(450)) == pytest.approx(INITIAL * 0.01)


@pytest.mark.parametrize('name', ['steps', 'piecewise', 'linear', 'exponential', 'cosine'])
def test_warmup_multiplies_every_schedule_by_a_linear_ramp(name):
    kwargs = dict(
        initial_lr=INITIAL,
        final_lr=FINAL,
        steps_per_epoch=SPE,
        total_steps=TOTAL,
        boundaries=(30, 60),
    )
    plain = schedules.EpochSchedule(name, **kwargs)
    warm = schedules.EpochSchedule(name, warmup_steps=50, **kwargs)
    _check(warm, lambda step: float(plain(step)) * min(1.0, (step + 1) / 50))
    assert float(warm(0)) == pytest.approx(float(plain(0)) / 50)


def test_schedule_from_config_scales_linearly_with_the_global_batch():
    config = RunConfig(
        lr_sched='cosine', initial_lr=0.1, final_lr=0.001, lr_scaling='linear', warmup_epochs=0.5
    )
    schedule = schedules.from_config(
        config, steps_per_epoch=SPE, total_steps=TOTAL, global_batch_size=1024
    )
    assert schedule.initial_lr == pytest.approx(0.4) and schedule.final_lr == pytest.approx(0.004)
    assert schedule.warmup_steps == 5
    progress = 100 / TOTAL
    expected = 0.004 + (0.4 - 0.004) * 0.5 * (1 + math.cos(math.pi * progress))
    assert float(schedule(100)) == pytest.approx(expected, rel=1e-5)
    unscaled = schedules.from_config(
        RunConfig(lr_sched='steps', initial_lr=0.1),
        steps_per_epoch=SPE,
        total_steps=TOTAL,
        global_batch_size=1024,
    )
    assert float(unscaled(0)) == pytest.approx(0.1)


@pytest.mark.parametrize(
    'kwargs,match',
    [
        (dict(name='piecewise'), 'lr_boundaries'),
        (dict(name='piecewise', boundaries=(10, 5)), 'lr_boundaries'),
        (dict(name='piecewise', boundaries=(10,), values=(1.0,)), 'lr_values'),
    ],
)
def test_bad_piecewise_schedules_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        schedules.EpochSchedule(
            initial_lr=1, final_lr=0, steps_per_epoch=1, total_steps=1, **kwargs
        )


def test_the_optimizer_applies_the_schedule_at_the_updates_it_has_done():
    # What `learning_rate` at step s means: the s-th update (1-based) moves the weights
    # by schedule(s - 1) times the gradient. Plain SGD on one dense layer, whose
    # gradient is written out here: softmax(logits) - one_hot(label), times the input 1.
    schedule = schedules.EpochSchedule(
        'cosine', initial_lr=0.5, final_lr=0.01, steps_per_epoch=2, total_steps=4, warmup_steps=3
    )
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(3, use_bias=False)])
    optimizer = optimizers.create_optimizer('sgd', schedule, momentum=0.0)
    optimizer.build(model.trainable_variables)
    train_step = step_lib.TrainStep(model, optimizer, global_batch_size=1)
    image, label = tf.ones([1, 1]), tf.constant([1])
    kernel = model.trainable_variables[0]
    for step in range(1, 5):
        before = kernel.numpy()[0].astype(np.float64)
        probabilities = np.exp(before - before.max()) / np.exp(before - before.max()).sum()
        gradient = probabilities - np.eye(3)[1]
        gradients, _ = train_step.gradients(image, label)
        train_step.apply(gradients)
        rate = (before - kernel.numpy()[0]) / gradient
        assert rate == pytest.approx([float(schedule(step - 1))] * 3, rel=1e-4), step
        assert rate[0] != pytest.approx(float(schedule(step)), rel=1e-2), step

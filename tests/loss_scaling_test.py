"""Tests of trainer/optimization/loss_scaling.py: the loss-scaling rule, skipped steps, its checkpoint."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.engine import loop
from trainer.optimization import loss_scaling
from trainer.engine import step as step_lib
from trainer.reporting import summaries


def _reference_rule(finite_steps, scale, interval):
    """The dynamic rule written out in plain Python, step by step."""
    good = skipped = 0
    for finite in finite_steps:
        if finite:
            good += 1
            if good >= interval:
                scale, good = scale * 2.0, 0
        else:
            scale, good, skipped = max(scale / 2.0, 1.0), 0, skipped + 1
    return scale, good, skipped


def test_dynamic_scale_follows_the_rule():
    rng = np.random.default_rng(0)
    finite_steps = list(rng.random(60) > 0.2) + [True] * 7 + [False] * 20
    scaler = loss_scaling.LossScaler(dynamic=True, initial_scale=2.0**15, growth_interval=3)
    for finite in finite_steps:
        scaler.update(bool(finite))
    scale, good, skipped = _reference_rule(finite_steps, 2.0**15, 3)
    assert float(scaler.scale.numpy()) == scale
    assert int(scaler.good_steps.numpy()) == good
    assert int(scaler.skipped_steps.numpy()) == skipped > 0
    assert int(scaler.consecutive_skipped.numpy()) == 20
    # Halving stops at 1: below it scaling would shrink the gradients.
    floor = loss_scaling.LossScaler(dynamic=True, initial_scale=4.0)
    for _ in range(5):
        floor.update(False)
    assert float(floor.scale.numpy()) == 1.0


def test_defaults_double_after_2000_finite_steps():
    scaler = loss_scaling.create_loss_scaler('float16')
    assert scaler.dynamic and float(scaler.scale.numpy()) == 2.0**15
    for _ in range(1999):
        scaler.update(True)
    assert float(scaler.scale.numpy()) == 2.0**15
    scaler.update(True)
    assert float(scaler.scale.numpy()) == 2.0**16 and int(scaler.good_steps.numpy()) == 0


@pytest.mark.parametrize(
    'precision_name,loss_scale,dynamic,scale',
    [
        ('bfloat16', 'auto', False, 1.0),
        ('float32', 'auto', False, 1.0),
        ('float16', 'auto', True, 2.0**15),
        ('bfloat16', 'dynamic', True, 2.0**15),
        ('bfloat16', '128', False, 128.0),
    ],
)
def test_create_loss_scaler(precision_name, loss_scale, dynamic, scale):
    scaler = loss_scaling.create_loss_scaler(precision_name, loss_scale)
    assert scaler.dynamic == dynamic and float(scaler.scale.numpy()) == scale


@pytest.mark.parametrize('loss_scale', ['0', '-2', 'big'])
def test_bad_loss_scale_is_refused(loss_scale):
    with pytest.raises(ValueError, match='loss_scale'):
        loss_scaling.create_loss_scaler('float16', loss_scale)


def test_scale_and_unscale():
    scaler = loss_scaling.LossScaler(initial_scale=8.0)
    assert float(scaler.scale_loss(tf.constant(3.0))) == 24.0
    unscaled = scaler.unscale([tf.constant([8.0, 16.0]), None])
    np.testing.assert_array_equal(unscaled[0].numpy(), [1.0, 2.0])
    assert unscaled[1] is None
    gradients = [tf.constant([1.0, np.inf]), tf.constant([np.nan]), None]
    assert float(scaler.count_non_finite(gradients)) == 2.0


def _tiny_step(scaler, batch_size=8, input_scale=1.0):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    train_step = step_lib.TrainStep(
        model, optimizer, loss_scaler=scaler, global_batch_size=batch_size
    )
    rng = np.random.default_rng(1)
    data = tf.data.Dataset.from_tensors(
        (
            (input_scale * rng.normal(size=(batch_size, 4))).astype('float32'),
            np.arange(batch_size) % 3,
        )
    ).repeat()
    train_loop = loop.make_train_loop(tf.distribute.get_strategy(), train_step)
    return model, optimizer, train_loop, iter(data)


def test_overflowing_step_is_skipped_and_counted():
    # Large inputs (a loss of hundreds) and a scale near float32's maximum: the scaled
    # loss overflows and the gradients are non-finite, as an fp16 overflow makes them.
    scaler = loss_scaling.LossScaler(dynamic=True, initial_scale=3e38)
    model, optimizer, train_loop, iterator = _tiny_step(scaler, input_scale=100.0)
    before = [w.numpy() for w in model.weights]
    totals = train_loop(iterator, tf.constant(1))
    assert float(totals['skipped']) == 1.0
    # The skipped step's inf gradients do not reach the logged gradient norm: the call's
    # last step was skipped, so it counts as not measured.
    assert float(totals['grad_norm_sq']) == 0.0
    assert float(totals['grad_norm_steps']) == 0.0
    skipped_totals = {key: float(value) for key, value in totals.items()}
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, new.numpy())
    # The step still counts (data position and schedule follow batches).
    assert int(optimizer.iterations.numpy()) == 1
    assert scaler.scale.numpy() == np.float32(3e38) / 2
    assert int(scaler.skipped_steps.numpy()) == 1
    # At a sane scale the next step applies, and equals an unscaled step.
    scaler.scale.assign(2.0**10)
    totals = train_loop(iterator, tf.constant(1))
    assert float(totals['skipped']) == 0.0 and int(optimizer.iterations.numpy()) == 2
    assert float(totals['grad_norm_steps']) == 1.0
    # An interval of the two steps: the norm is the applied step's, not NaN or halved.
    keys = loop.TRAIN_METRICS
    window = {key: skipped_totals[key] + float(totals[key]) for key in keys}
    scalars = summaries.train_scalars(
        window, steps=2, seconds=1.0, learning_rate=0.1, epoch=1.0, weight_norm=1.0
    )
    assert scalars['gradient_norm'] == pytest.approx(math.sqrt(float(totals['grad_norm_sq'])))
    assert scalars['gradient_norm'] > 0 and scalars['skipped_steps'] == 1.0
    scaled = [w.numpy() for w in model.weights]
    reference, _, reference_loop, reference_iterator = _tiny_step(
        loss_scaling.LossScaler(), input_scale=100.0
    )
    reference_loop(reference_iterator, tf.constant(1))
    for got, expected in zip(scaled, reference.weights):
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6, atol=1e-7)


def test_float16_training_with_dynamic_scaling_moves_the_loss():
    keras.utils.set_random_seed(0)
    policy = keras.mixed_precision.Policy('mixed_float16')
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(16, activation='relu', dtype=policy),
            keras.layers.Dense(3, dtype='float32'),
        ]
    )
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
    scaler = loss_scaling.create_loss_scaler('float16')
    train_step = step_lib.TrainStep(model, optimizer, loss_scaler=scaler, global_batch_size=32)
    rng = np.random.default_rng(2)
    images = rng.normal(size=(32, 4)).astype('float32')
    labels = (images[:, 0] > 0).astype('int32') + (images[:, 1] > 0).astype('int32')
    data = tf.data.Dataset.from_tensors((images, labels)).repeat()
    train_loop = loop.make_train_loop(tf.distribute.get_strategy(), train_step)
    iterator = iter(data)
    first = float(train_loop(iterator, tf.constant(1))['cross_entropy'])
    totals = train_loop(iterator, tf.constant(30))
    last = float(train_loop(iterator, tf.constant(1))['cross_entropy'])
    assert float(totals['skipped']) == 0.0
    assert last < 0.8 * first


def _underflow_case(compute_dtype, scaler):
    """Gradients of a model whose first kernel's gradient is about 1e-10 per value.

    Tiny inputs (1e-4) times a small backpropagated signal (the mean over a global batch
    of 2^14 examples) fall below float16's smallest subnormal, 6e-8: computed in float16
    at scale 1 that gradient is exactly zero, while float32 represents it. The loss scale
    exists for this case.
    """
    keras.utils.set_random_seed(3)
    policy = keras.mixed_precision.Policy(
        'mixed_float16' if compute_dtype == 'float16' else 'float32'
    )
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(16, dtype=policy),
            keras.layers.Dense(3, dtype='float32'),
        ]
    )
    optimizer = keras.optimizers.SGD(0.1)
    train_step = step_lib.TrainStep(model, optimizer, loss_scaler=scaler, global_batch_size=2**14)
    rng = np.random.default_rng(4)
    images = (1e-4 * rng.normal(size=(8, 4))).astype('float32')
    labels = np.arange(8) % 3
    gradients, _ = tf.function(train_step.gradients)(images, labels)
    return [g.numpy() for g in gradients]


def test_float16_loss_scale_rescues_underflowing_gradients():
    reference = _underflow_case('float32', loss_scaling.LossScaler())
    first_kernel = reference[0]
    assert 0 < np.max(np.abs(first_kernel)) < 1e-8
    # The case is real: without scaling float16 flushes that gradient to zero...
    unscaled = _underflow_case('float16', loss_scaling.LossScaler())
    assert not np.any(unscaled[0]), 'float16 at scale 1 should underflow here'
    # ...and float16's own scaler (dynamic, from 2^15) recovers float32's gradients.
    scaled = _underflow_case('float16', loss_scaling.create_loss_scaler('float16'))
    for got, want in zip(scaled, reference):
        np.testing.assert_allclose(got, want, rtol=2e-2, atol=1e-3 * np.max(np.abs(want)))


def test_state_is_checkpointed(tmp_path):
    scaler = loss_scaling.LossScaler(dynamic=True, initial_scale=2.0**15)
    for finite in (True, False, True):
        scaler.update(finite)
    path = tf.train.Checkpoint(loss_scaler=scaler).save(str(tmp_path / 'ckpt'))
    names = {name for name, _ in tf.train.list_variables(path)}
    assert {
        f'loss_scaler/{v}/.ATTRIBUTES/VARIABLE_VALUE'
        for v in ('scale', 'good_steps', 'skipped_steps', 'consecutive_skipped')
    } <= names
    restored = loss_scaling.LossScaler(dynamic=True, initial_scale=1.0)
    tf.train.Checkpoint(loss_scaler=restored).restore(path).assert_consumed()
    assert float(restored.scale.numpy()) == 2.0**14
    assert int(restored.good_steps.numpy()) == 1
    assert int(restored.skipped_steps.numpy()) == 1

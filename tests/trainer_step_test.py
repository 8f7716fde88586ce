"""Tests of the step, the loop, optimizers and weight averaging.

Each is checked against an independent reference: a formula written out in NumPy, or
a second code path (one big batch against micro-batches, one loop call against
several, XLA against none).
"""

import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.optimization import ema
from trainer.engine import loop
from trainer.optimization import optimizers
from trainer.engine import step as step_lib
from trainer.reporting import summaries

# --- Optimizers against their update formulas. ---------------------------------


def _two_updates(name, **kwargs):
    """Two updates of a kernel and a bias with fixed gradients; returns (w, b) after each."""
    kernel = tf.Variable([[1.0, -2.0], [0.5, 3.0]])
    bias = tf.Variable([0.25, -0.5])
    optimizer = optimizers.create_optimizer(
        name, 0.1, variables=[kernel, bias], decayed_variables=[kernel], **kwargs
    )
    optimizer.build([kernel, bias])
    gradients = [
        (np.array([[0.1, -0.2], [0.3, 0.4]], np.float32), np.array([0.5, -0.25], np.float32)),
        (np.array([[-0.3, 0.1], [0.2, -0.1]], np.float32), np.array([0.1, 0.2], np.float32)),
    ]
    history = []
    for grad_kernel, grad_bias in gradients:
        optimizer.apply_gradients([(grad_kernel, kernel), (grad_bias, bias)])
        history.append((kernel.numpy().copy(), bias.numpy().copy()))
    start = (np.array([[1.0, -2.0], [0.5, 3.0]]), np.array([0.25, -0.5]))
    return start, gradients, history


def _reference(update, start, gradients, state_fn):
    """Runs `update(w, g, state, t, decayed) -> w` on each variable for both steps."""
    results = []
    values = [v.astype(np.float64) for v in start]
    states = [state_fn(v) for v in values]
    for t, grads in enumerate(gradients, start=1):
        values = [
            update(v, g.astype(np.float64), s, t, decayed=(i == 0))
            for i, (v, g, s) in enumerate(zip(values, grads, states))
        ]
        results.append([v.copy() for v in values])
    return results


LR = 0.1


def _sgd(nesterov):
    def update(w, g, s, t, decayed):
        s['v'] = 0.9 * s['v'] - LR * g
        return w + (0.9 * s['v'] - LR * g if nesterov else s['v'])

    return update


def _adam(weight_decay=0.0):
    def update(w, g, s, t, decayed, b1=0.9, b2=0.999, eps=1e-7):
        if decayed:
            w = w - w * weight_decay * LR
        s['m'] = b1 * s['m'] + (1 - b1) * g
        s['v'] = b2 * s['v'] + (1 - b2) * g * g
        alpha = LR * math.sqrt(1 - b2**t) / (1 - b1**t)
        return w - alpha * s['m'] / (np.sqrt(s['v']) + eps)

    return update


def _rmsprop(w, g, s, t, decayed, rho=0.9, momentum=0.9, eps=1.0):
    s['ms'] = rho * s['ms'] + (1 - rho) * g * g
    s['mom'] = momentum * s['mom'] + LR * g / np.sqrt(s['ms'] + eps)
    return w - s['mom']


@pytest.mark.parametrize(
    'name,kwargs,update',
    [
        ('sgd', dict(momentum=0.9), _sgd(False)),
        ('sgd', dict(momentum=0.9, nesterov=True), _sgd(True)),
        ('adam', {}, _adam()),
        ('adamw', dict(weight_decay=0.5), _adam(weight_decay=0.5)),
        ('rmsprop', dict(momentum=0.9), _rmsprop),
    ],
)
def test_optimizer_matches_update_formula(name, kwargs, update):
    start, gradients, history = _two_updates(name, **kwargs)
    zeros = lambda v: {
        'v': np.zeros_like(v),
        'm': np.zeros_like(v),
        'ms': np.zeros_like(v),
        'mom': np.zeros_like(v),
    }
    expected = _reference(update, start, gradients, zeros)
    for (kernel, bias), (want_kernel, want_bias) in zip(history, expected):
        np.testing.assert_allclose(kernel, want_kernel, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(bias, want_bias, rtol=2e-5, atol=1e-6)


def test_only_adamw_leaves_weight_decay_to_the_optimizer():
    assert optimizers.loss_weight_decay('adamw', 0.05) == 0.0
    for name in ('sgd', 'adam', 'rmsprop'):
        assert optimizers.loss_weight_decay(name, 1e-4) == 1e-4
    with pytest.raises(ValueError, match='optimizer'):
        optimizers.create_optimizer('lamb', 0.1)


# --- The step and the loop. ----------------------------------------------------


def test_label_smoothing_matches_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 4)).astype(np.float32)
    labels = np.array([0, 3, 1, 2, 3])
    eps = 0.1
    targets = np.full((5, 4), eps / 4) + (1 - eps) * np.eye(4)[labels]
    log_softmax = logits - np.log(np.sum(np.exp(logits), axis=1, keepdims=True))
    expected = -np.sum(targets * log_softmax, axis=1)
    got = step_lib.cross_entropy_loss(tf.constant(labels), tf.constant(logits), eps)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    plain = step_lib.cross_entropy_loss(tf.constant(labels), tf.constant(logits))
    np.testing.assert_allclose(plain.numpy(), -log_softmax[np.arange(5), labels], rtol=1e-5)


def _mlp():
    """A tiny model without batch norm, so micro-batches change nothing."""
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation='relu'),
            keras.layers.Dense(4),
        ]
    )


def _data(batch, steps_count=3):
    rng = np.random.default_rng(3)
    images = rng.normal(size=(batch * steps_count, 6)).astype(np.float32)
    labels = rng.integers(0, 4, batch * steps_count).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)


def _train(
    batch,
    *,
    grad_accum_steps=1,
    calls=(3,),
    jit_compile=False,
    weight_average=False,
    norm_counter=None,
):
    """Trains `_mlp` on `_data(batch)`, one loop call of each of `calls` steps.

    `norm_counter`, a tf.Variable, counts the runs of `TrainStep.grad_norm_sq`.
    """
    model = _mlp()
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    average = ema.WeightAverage(model, 0.5) if weight_average else None
    train_step = step_lib.TrainStep(
        model,
        optimizer,
        global_batch_size=batch,
        weight_decay=1e-2,
        label_smoothing=0.1,
        grad_accum_steps=grad_accum_steps,
        weight_average=average,
    )
    if norm_counter is not None:
        measure = train_step.grad_norm_sq

        def counted(gradients):
            norm_counter.assign_add(1)
            return measure(gradients)

        train_step.grad_norm_sq = counted
    train_loop = loop.make_train_loop(
        tf.distribute.get_strategy(), train_step, jit_compile=jit_compile
    )
    iterator = iter(_data(batch))
    totals = [train_loop(iterator, tf.constant(n)) for n in calls]
    return model, totals, average


def _assert_same_weights(a, b, **tolerance):
    assert len(a.weights) == len(b.weights)
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_allclose(x.numpy(), y.numpy(), **tolerance)


def test_gradient_accumulation_equals_the_whole_batch():
    whole, whole_totals, _ = _train(16)
    accumulated, accumulated_totals, _ = _train(16, grad_accum_steps=4)
    _assert_same_weights(whole, accumulated, rtol=1e-5, atol=1e-6)
    for key in ('cross_entropy', 'l2', 'top1', 'count'):
        assert float(accumulated_totals[0][key]) == pytest.approx(
            float(whole_totals[0][key]), rel=1e-5
        )
    # And it is not trivially equal: a quarter of the batch trains differently.
    quarter, _, _ = _train(4)
    assert not np.allclose(whole.weights[0].numpy(), quarter.weights[0].numpy(), atol=1e-4)


def test_steps_per_loop_equals_one_step_per_call():
    looped, looped_totals, _ = _train(8, calls=(3,))
    single, single_totals, _ = _train(8, calls=(1, 1, 1))
    _assert_same_weights(looped, single, rtol=1e-6, atol=1e-7)
    for key in loop.TRAIN_METRICS:
        if key.startswith('grad_norm'):
            continue
        summed = sum(float(totals[key]) for totals in single_totals)
        assert float(looped_totals[0][key]) == pytest.approx(summed, rel=1e-5, abs=1e-6), key
    assert float(looped_totals[0]['count']) == 24.0
    # The gradient norm is measured once per call, at its last step: the same step, so
    # the same figure, as the last one-step call's.
    assert [float(totals['grad_norm_steps']) for totals in single_totals] == [1.0] * 3
    assert float(looped_totals[0]['grad_norm_steps']) == 1.0
    assert float(looped_totals[0]['grad_norm_sq']) == pytest.approx(
        float(single_totals[-1]['grad_norm_sq']), rel=1e-5
    )


def _reference_gradient_norm(model, images, labels):
    """The global norm of the gradient of `_train`'s loss, by a tape and Keras' own loss.

    `_train`'s step: cross-entropy with label smoothing 0.1, mean over the batch, plus
    L2 of 1e-2 on the two kernels.
    """
    smoothed = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    kernels = [layer.kernel for layer in model.layers]
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        l2 = 0.5 * 1e-2 * tf.add_n([tf.reduce_sum(tf.square(k)) for k in kernels])
        loss = smoothed(tf.one_hot(labels, 4), logits) + l2
    return float(tf.linalg.global_norm(tape.gradient(loss, model.trainable_variables)))


def test_gradient_norm_is_measured_at_each_calls_last_step_only():
    batches = list(_data(8))
    # The weights the third step starts from: the same training, stopped after two steps.
    two_steps, _, _ = _train(8, calls=(2,))
    want = _reference_gradient_norm(two_steps, *batches[2])
    # One call of three steps runs the norm once, at its last step, and logs that.
    runs = tf.Variable(0)
    _, (totals,), _ = _train(8, calls=(3,), norm_counter=runs)
    assert int(runs.numpy()) == 1, 'the norm ran on steps other than the last'
    assert float(totals['grad_norm_steps']) == 1.0
    window = {key: float(value) for key, value in totals.items()}
    logged = summaries.train_scalars(
        window, steps=3, seconds=1.0, learning_rate=0.1, epoch=1.0, weight_norm=1.0
    )['gradient_norm']
    assert logged == pytest.approx(want, rel=1e-5)
    # Neither the first step's norm nor the RMS over the call's steps would pass.
    first = _reference_gradient_norm(_mlp(), *batches[0])
    assert abs(first - want) > 1e-2 * want
    # Calls of one and two steps: one measurement each, at steps 1 and 3.
    runs.assign(0)
    _, split, _ = _train(8, calls=(1, 2), norm_counter=runs)
    assert int(runs.numpy()) == 2
    assert [float(totals['grad_norm_steps']) for totals in split] == [1.0, 1.0]
    assert float(split[0]['grad_norm_sq']) == pytest.approx(first**2, rel=1e-5)
    assert float(split[1]['grad_norm_sq']) == pytest.approx(want**2, rel=1e-5)


def test_xla_step_equals_plain_step():
    plain, (plain_totals,), _ = _train(8)
    compiled, (compiled_totals,), _ = _train(8, jit_compile=True)
    _assert_same_weights(plain, compiled, rtol=1e-5, atol=1e-6)
    # The norm's replica function is compiled too.
    assert float(compiled_totals['grad_norm_sq']) == pytest.approx(
        float(plain_totals['grad_norm_sq']), rel=1e-5
    )


def test_weight_average_follows_its_formula_and_is_swapped_in(tmp_path):
    # The average after each step from the weights after that step, in NumPy.
    model = _mlp()
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
    average = ema.WeightAverage(model, 0.75)
    train_step = step_lib.TrainStep(model, optimizer, global_batch_size=8, weight_average=average)
    expected = [w.numpy().astype(np.float64) for w in model.weights]
    for images, labels in _data(8):
        gradients, _ = train_step.gradients(images, labels)
        train_step.apply(gradients)
        expected = [0.75 * e + 0.25 * w.numpy() for e, w in zip(expected, model.weights)]
    for got, want in zip(average.averages, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-7)

    training = [w.numpy() for w in model.weights]
    with average.swapped_in():
        for weight, want in zip(model.weights, expected):
            np.testing.assert_allclose(weight.numpy(), want, rtol=1e-6, atol=1e-7)
    for weight, want in zip(model.weights, training):
        np.testing.assert_array_equal(weight.numpy(), want)

    # Checkpointed beside the model, and loadable into a model for evaluation.
    path = tf.train.Checkpoint(model=model, weight_average=average).save(str(tmp_path / 'c'))
    assert any(name.startswith('weight_average/') for name, _ in tf.train.list_variables(path))
    fresh = _mlp()
    tf.train.Checkpoint(model=fresh).restore(path).expect_partial()
    assert ema.restore_averages_into(fresh, path)
    for weight, want in zip(fresh.weights, expected):
        np.testing.assert_allclose(weight.numpy(), want, rtol=1e-6, atol=1e-7)


def test_weight_average_in_the_loop_matches_the_step():
    looped, _, looped_average = _train(8, weight_average=True)
    model = _mlp()
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    average = ema.WeightAverage(model, 0.5)
    train_step = step_lib.TrainStep(
        model,
        optimizer,
        global_batch_size=8,
        weight_decay=1e-2,
        label_smoothing=0.1,
        weight_average=average,
    )
    for images, labels in _data(8):
        gradients, _ = train_step.gradients(images, labels)
        train_step.apply(gradients)
    for a, b in zip(looped_average.averages, average.averages):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


# --- Flag validation in main.py (before TensorFlow is imported: fast). ---------------


@pytest.mark.parametrize(
    'flags,message',
    [
        (['--batch_size=64', '--grad_accum_steps=3'], '--grad_accum_steps=3 must be positive'),
        (['--lr_sched=piecewise'], '--lr_sched=piecewise needs --lr_boundaries'),
        (
            ['--lr_sched=piecewise', '--lr_boundaries=30,60', '--lr_values=0.1,0.01'],
            '--lr_values needs 3 values',
        ),
        (['--loss_scale=huge'], "--loss_scale=huge must be 'auto', 'dynamic'"),
        (['--ema_decay=1.5'], '--ema_decay=1.5 must be in [0, 1)'),
    ],
)
def test_bad_training_flags_are_one_line_errors(tmp_path, flags, message):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(root, 'main.py'),
            '--synthetic_data',
            f'--model_dir={tmp_path}',
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('main.py: error: ' + message), last


@pytest.mark.parametrize('grad_accum_steps', [1, 2])
@pytest.mark.parametrize('targets', ['class_ids', 'mixed'])
def test_logged_top1_and_top5_are_a_numpy_count_of_the_batch(targets, grad_accum_steps):
    """The train scalars' `top1` and `top5`, through the step, the loop's sums and
    `summaries.train_scalars`, against a count made here: 32 examples whose reference
    class is, by construction, the model's first choice for 10, its 2nd-5th for 12 and
    lower for 10 (so top-1 10/32 and top-5 22/32 differ). Mixed targets (mixup, CutMix)
    give each example its reference class the larger share and another class the rest:
    the larger share is the class the figures count (`step.reference_classes`).
    Accumulation splits the batch in two micro-batches, whose counts must add up."""
    num_classes, batch = 12, 32
    rng = np.random.default_rng(11)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(num_classes)])
    model.layers[0].set_weights(
        [rng.normal(size=(6, num_classes)).astype(np.float32), np.zeros(num_classes, np.float32)]
    )
    images = rng.normal(size=(batch, 6)).astype(np.float32)
    ranking = np.argsort(-model(images).numpy(), axis=1)  # Classes, best first.
    ranks = rng.permutation([0] * 10 + [1, 2, 3, 4] * 3 + [5, 7, 9, 11, 6] * 2)
    reference = ranking[np.arange(batch), ranks]
    if targets == 'mixed':
        other = (reference + rng.integers(1, num_classes, batch)) % num_classes
        share = rng.uniform(0.55, 0.95, batch)[:, None]
        eye = np.eye(num_classes, dtype=np.float32)
        labels = (share * eye[reference] + (1 - share) * eye[other]).astype(np.float32)
    else:
        labels = reference.astype(np.int32)
    expected_top1 = np.mean(ranking[:, 0] == reference)
    expected_top5 = np.mean([ref in row[:5] for ref, row in zip(reference, ranking)])
    assert (expected_top1, expected_top5) == (10 / 32, 22 / 32)

    optimizer = keras.optimizers.SGD(0.0)
    optimizer.build(model.trainable_variables)
    train_step = step_lib.TrainStep(
        model, optimizer, global_batch_size=batch, grad_accum_steps=grad_accum_steps
    )
    train_loop = loop.make_train_loop(tf.distribute.get_strategy(), train_step)
    batches = iter(tf.data.Dataset.from_tensors((images, labels)))
    totals = {key: float(value) for key, value in train_loop(batches, tf.constant(1)).items()}
    logged = summaries.train_scalars(
        totals, steps=1, seconds=1.0, learning_rate=0.0, epoch=1.0, weight_norm=1.0
    )
    assert totals['count'] == batch
    assert logged['top1'] == pytest.approx(expected_top1, abs=1e-6)
    assert logged['top5'] == pytest.approx(expected_top5, abs=1e-6)

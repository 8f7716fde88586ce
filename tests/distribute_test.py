"""Tests of trainer/devices/distribute.py and of training under several replicas and workers.

MirroredStrategy runs over the two logical CPUs that conftest.py makes (its `two_cpus`
fixture, which skips with the reason when there are none); the multi-worker test
starts two `main.py` processes on localhost ports.
"""

import functools
import importlib.util
import json
import math
import os
import re
import socket
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import config as config_lib
from trainer.devices import distribute
from trainer.optimization import ema
from base import errors
from trainer.devices import gaudi
from trainer.engine import loop
from trainer.optimization import loss_scaling
from trainer.engine import step as step_lib
from trainer.reporting import summaries

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_REPLICA_BATCH = 8
WEIGHT_DECAY = 1e-2
LABEL_SMOOTHING = 0.1


def _local_values(strategy, weight):
    variable = weight if isinstance(weight, tf.Variable) else weight.value
    return [v.numpy() for v in strategy.experimental_local_results(variable)]


def _batches(global_batch_size, num_steps, *, poison=None):
    """`num_steps` batches of random examples; fewer steps give a prefix of more.

    Images and labels come from streams of their own, so the first steps' examples do
    not depend on how many steps are drawn.
    """
    images = np.random.default_rng(5).normal(size=(global_batch_size * num_steps, 6))
    labels = np.random.default_rng(6).integers(0, 4, global_batch_size * num_steps)
    images = images.astype(np.float32)
    if poison is not None:
        images[poison] = np.inf
    return images, labels.astype(np.int32)


def _train(
    strategy,
    global_batch_size,
    *,
    poison=None,
    initial_scale=2.0**15,
    num_steps=3,
    grad_accum_steps=1,
    snapshots=None,
):
    """A tiny model without batch norm through TrainStep and the loop under `strategy`.

    Without batch norm, micro-batches change no result: accumulation must give the
    whole batch's update exactly. With a `snapshots` list, the loop runs one step per
    call and the list receives the trainable weights before each step.
    """
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = keras.Sequential(
            [
                keras.Input((6,)),
                keras.layers.Dense(8, activation='relu'),
                keras.layers.Dense(4),
            ]
        )
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)
        optimizer.build(model.trainable_variables)
        scaler = loss_scaling.LossScaler(dynamic=True, initial_scale=initial_scale)
        average = ema.WeightAverage(model, 0.5)
    train_step = step_lib.TrainStep(
        model,
        optimizer,
        loss_scaler=scaler,
        global_batch_size=global_batch_size,
        num_replicas=strategy.num_replicas_in_sync,
        weight_decay=WEIGHT_DECAY,
        label_smoothing=LABEL_SMOOTHING,
        grad_accum_steps=grad_accum_steps,
        weight_average=average,
    )
    images, labels = _batches(global_batch_size, num_steps, poison=poison)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(global_batch_size)
    iterator = iter(strategy.experimental_distribute_dataset(data))
    train_loop = loop.make_train_loop(strategy, train_step)
    if snapshots is None:
        totals = train_loop(iterator, tf.constant(num_steps))
        return model, optimizer, scaler, average, {k: float(v) for k, v in totals.items()}
    totals = {}
    for _ in range(num_steps):
        snapshots.append([weight.numpy() for weight in model.trainable_weights])
        for key, value in train_loop(iterator, tf.constant(1)).items():
            totals[key] = totals.get(key, 0.0) + float(value)
    return model, optimizer, scaler, average, totals


@functools.cache
def _one_device_reference(global_batch_size):
    """`_train` on one device, as NumPy values: the reference of several mirrored runs."""
    model, optimizer, scaler, average, totals = _train(
        tf.distribute.get_strategy(), global_batch_size
    )
    return types.SimpleNamespace(
        weights=[weight.numpy() for weight in model.weights],
        averages=[average.numpy() for average in average.averages],
        totals=totals,
        iterations=int(optimizer.iterations.numpy()),
        good_steps=int(scaler.good_steps.numpy()),
    )


@pytest.mark.parametrize('grad_accum_steps', [1, 2])
def test_mirrored_equals_one_device_with_the_double_batch(two_cpus, grad_accum_steps):
    """Two replicas, each accumulating over micro-batches or not, make one device's steps.

    Each replica divides its loss by the global batch and the optimizer sums over
    replicas; with accumulation each replica also sums over its micro-batches and splits
    the L2 term over replicas and micro-batches. Any of these divisions taken per
    replica or per micro-batch instead changes the update.
    """
    strategy = two_cpus
    assert strategy.num_replicas_in_sync == 2
    global_batch_size = 2 * PER_REPLICA_BATCH
    model, optimizer, scaler, average, totals = _train(
        strategy, global_batch_size, grad_accum_steps=grad_accum_steps
    )
    reference = _one_device_reference(global_batch_size)
    for weight, want in zip(model.weights, reference.weights):
        replicas = _local_values(strategy, weight)
        np.testing.assert_array_equal(replicas[0], replicas[1])  # Replicas in sync.
        np.testing.assert_allclose(replicas[0], want, rtol=1e-5, atol=1e-6)
    for got, want in zip(average.averages, reference.averages):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    # Metrics summed over replicas are the one device's.
    for key in ('cross_entropy', 'l2', 'top1', 'top5', 'count', 'skipped'):
        assert totals[key] == pytest.approx(reference.totals[key], rel=1e-5, abs=1e-6), key
    assert totals['count'] == 3 * global_batch_size
    assert int(optimizer.iterations.numpy()) == reference.iterations == 3
    assert int(scaler.good_steps.numpy()) == reference.good_steps == 3
    # Not trivially equal: training moved the weights.
    keras.utils.set_random_seed(0)
    untrained = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8), keras.layers.Dense(4)])
    assert not np.allclose(model.weights[0].numpy(), untrained.weights[0].numpy())


def _estimate_norm_sq(weights, images, labels):
    """Squared global norm of one replica's own estimate of the loss gradient.

    Written out independently of `TrainStep`, in float64: the gradient of the mean
    label-smoothed cross-entropy over the replica's examples plus the whole L2 term
    (WEIGHT_DECAY / 2 * the squared kernels), by a plain tape through `_train`'s model
    (Dense-ReLU-Dense) given as `weights` [kernel, bias, kernel, bias].
    """
    variables = [tf.Variable(np.asarray(w, np.float64)) for w in weights]
    kernel1, bias1, kernel2, bias2 = variables
    num_classes = weights[-1].shape[0]
    targets = np.eye(num_classes)[labels] * (1 - LABEL_SMOOTHING) + LABEL_SMOOTHING / num_classes
    with tf.GradientTape() as tape:
        hidden = tf.nn.relu(tf.constant(images, tf.float64) @ kernel1 + bias1)
        log_probs = tf.nn.log_softmax(hidden @ kernel2 + bias2)
        cross_entropy = -tf.reduce_mean(tf.reduce_sum(targets * log_probs, axis=-1))
        l2 = 0.5 * WEIGHT_DECAY * (tf.reduce_sum(kernel1**2) + tf.reduce_sum(kernel2**2))
        loss = cross_entropy + l2
    return sum(float(tf.reduce_sum(g**2)) for g in tape.gradient(loss, variables))


def test_gradient_norm_on_two_replicas_is_readmes_formula(two_cpus):
    """README's `gradient_norm` on several replicas, from the loop's totals as logged.

    README: the root of the mean over steps of the squared gradient norm; on several
    replicas, of each replica's estimate of the gradient. Each replica's estimate is
    the gradient of the mean loss over its own share of the batch; the squares are
    averaged over replicas and steps. Checked with accumulation on, whose micro-batches
    must sum to the replica's estimate, against a plain tape on each replica's half of
    each batch at the weights the step started from.
    """
    strategy = two_cpus
    global_batch_size, num_steps = 2 * PER_REPLICA_BATCH, 3
    snapshots = []
    *_, totals = _train(
        strategy, global_batch_size, num_steps=num_steps, grad_accum_steps=2, snapshots=snapshots
    )
    logged = summaries.train_scalars(
        totals, steps=num_steps, seconds=1.0, learning_rate=0.1, epoch=1.0, weight_norm=1.0
    )['gradient_norm']

    images, labels = _batches(global_batch_size, num_steps)
    squares, global_squares = [], []
    for index, weights in enumerate(snapshots):
        step = slice(index * global_batch_size, (index + 1) * global_batch_size)
        # experimental_distribute_dataset deals each batch's first half to replica 0.
        halves = [
            (
                images[step][r * PER_REPLICA_BATCH : (r + 1) * PER_REPLICA_BATCH],
                labels[step][r * PER_REPLICA_BATCH : (r + 1) * PER_REPLICA_BATCH],
            )
            for r in range(2)
        ]
        squares += [_estimate_norm_sq(weights, *half) for half in halves]
        global_squares.append(_estimate_norm_sq(weights, images[step], labels[step]))
    want = math.sqrt(sum(squares) / len(squares))
    assert logged == pytest.approx(want, rel=1e-5), 'logged gradient_norm vs README formula'
    # The test tells the formula from its neighbours: the all-reduced gradient's norm,
    # and the sum rather than the mean over replicas.
    assert abs(math.sqrt(sum(global_squares) / num_steps) - want) > 1e-3 * want
    assert abs(math.sqrt(sum(squares) / num_steps) - want) > 1e-3 * want


def test_mirrored_skips_on_every_replica_when_one_overflows(two_cpus):
    strategy = two_cpus
    global_batch_size = 2 * PER_REPLICA_BATCH
    keras.utils.set_random_seed(0)
    # Example 12 of the first batch goes to the second replica: only its gradients
    # are non-finite, yet both replicas must skip.
    model, optimizer, scaler, average, totals = _train(
        strategy, global_batch_size, poison=12, num_steps=1
    )
    fresh, *_ = _train(tf.distribute.get_strategy(), global_batch_size, num_steps=0)
    assert totals['skipped'] == 1.0
    for weight, want in zip(model.weights, fresh.weights):
        for value in _local_values(strategy, weight):
            np.testing.assert_array_equal(value, want.numpy())
    for got, want in zip(average.averages, fresh.weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert int(optimizer.iterations.numpy()) == 1
    assert [float(v.numpy()) for v in strategy.experimental_local_results(scaler.scale)] == [
        2.0**14
    ] * 2
    assert int(scaler.skipped_steps.numpy()) == 1


def test_is_chief_task_follows_tf_config(monkeypatch):
    def config(task_type, index, chief=False):
        cluster = {'worker': ['a:1', 'b:2']}
        if chief:
            cluster['chief'] = ['c:3']
        return json.dumps({'cluster': cluster, 'task': {'type': task_type, 'index': index}})

    monkeypatch.delenv('TF_CONFIG', raising=False)
    assert config_lib.is_chief_task()
    for value, chief in (
        (config('worker', 0), True),
        (config('worker', 1), False),
        (config('worker', 0, chief=True), False),
        (config('chief', 0, chief=True), True),
    ):
        monkeypatch.setenv('TF_CONFIG', value)
        assert config_lib.is_chief_task() == chief, value


def test_xla_updates_need_one_replica_or_gpus(two_cpus):
    assert distribute.xla_compiles_updates(tf.distribute.get_strategy())
    assert not distribute.xla_compiles_updates(two_cpus)


def test_mirrored_tests_skip_saying_why_there_are_no_two_cpus(monkeypatch, request):
    """Where conftest.py cannot split the CPU, `two_cpus` skips with the reason.

    By now TensorFlow has initialised its devices, so a new split (three parts: the
    same two would be a no-op) fails as the first one does when something runs
    TensorFlow before conftest.py is imported (a plugin, a script calling pytest.main).
    The reason recorded must name that and TensorFlow's own error, and the skip must
    carry it, so that a run which lost its mirrored tests says why.
    """
    import conftest  # pylint: disable=g-import-not-at-top

    tf.config.list_logical_devices('CPU')  # Initialised, whatever ran before.
    reason = conftest._split_the_cpu_in_two(parts=3)  # pylint: disable=protected-access
    assert reason.startswith('TensorFlow had already initialised its devices'), reason
    assert 'Virtual devices cannot be modified after being initialized' in reason
    monkeypatch.setattr(conftest, '_TWO_CPUS_MISSING', reason)
    with pytest.raises(pytest.skip.Exception) as info:
        request.getfixturevalue('two_cpus')
    assert str(info.value) == f'needs two logical CPUs: {reason}'


@pytest.mark.skipif(
    os.path.exists(gaudi.HABANA_DRIVER), reason='a Gaudi driver is loaded on this machine'
)
@pytest.mark.stack
def test_hpu_without_a_gaudi_is_one_clear_error():
    # Before habana-tensorflow loads: without the driver it would abort the process.
    with pytest.raises(errors.UserError) as info:
        distribute.create_strategy('hpu')
    message = str(info.value)
    assert '\n' not in message
    if importlib.util.find_spec('habana_frameworks') is None:
        assert '--device=hpu needs habana-tensorflow' in message
    else:  # The Gaudi stand-in of .ci/gaudi_standin.
        assert '--device=hpu: no Gaudi driver on this machine' in message


# --- Two workers on localhost through main.py. -------------------------------------


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(('localhost', 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _files_under(folder):
    return sorted(
        os.path.relpath(os.path.join(path, name), folder)
        for path, _, names in os.walk(folder)
        for name in names
    )


@pytest.mark.slow
def test_multi_worker_trains_in_sync_and_only_the_chief_writes(tmp_path):
    from input_pipeline import digits

    data = str(tmp_path / 'data')
    digits.ensure_digits_dataset(data)
    workers = [f'localhost:{port}' for port in _free_ports(2)]
    model_dirs = [str(tmp_path / 'chief'), str(tmp_path / 'worker')]
    processes = []
    for index in range(2):
        tf_config = {'cluster': {'worker': workers}, 'task': {'type': 'worker', 'index': index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), TF_CPP_MIN_LOG_LEVEL='2')
        args = [
            sys.executable,
            os.path.join(ROOT, 'main.py'),
            '--model=densenet_bc_10_4',
            '--image_size=32',
            '--num_classes=10',
            '--precision=float32',
            '--loss_scale=dynamic',  # The skip decision's path, across workers.
            '--ema_decay=0.5',
            f'--batch_size={PER_REPLICA_BATCH}',
            '--train_steps=4',
            '--steps_per_loop=2',
            '--log_every_steps=4',
            '--checkpoint_every_steps=4',
            '--save_every_epoch=false',
            '--export_last_step=false',
            '--random_flip=false',
            '--eval_crop_fraction=1.0',
            '--shuffle_buffer=256',
            '--distribution_strategy=multi_worker_mirrored',
            f'--dataset_dir={data}',
            f'--model_dir={model_dirs[index]}',
        ]
        processes.append(
            subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=300))
    finally:
        for process in processes:
            process.kill()
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    fingerprints = [
        re.findall(r'Trainable weights fingerprint at step 4: (\w+)', stderr)
        for _, stderr in outputs
    ]
    assert len(fingerprints[0]) == 1 and fingerprints[0] == fingerprints[1], fingerprints
    # Two replicas, one per worker: the global batch is twice the per-replica batch.
    for _, stderr in outputs:
        assert f'global batch {2 * PER_REPLICA_BATCH} ({PER_REPLICA_BATCH} per replica)' in stderr
    chief_files = _files_under(model_dirs[0])
    assert 'checkpoints/ckpt-4.index' in chief_files
    assert 'flags.cfg' in chief_files and 'eval_results.jsonl' in chief_files
    assert any(name.startswith('logs/train/') for name in chief_files)
    with open(os.path.join(model_dirs[0], 'eval_results.jsonl')) as stream:
        result = json.loads(stream.readlines()[-1])
    assert result['step'] == 4 and result['num_examples'] == 300
    reader = tf.train.load_checkpoint(os.path.join(model_dirs[0], 'checkpoints', 'ckpt-4'))
    names = reader.get_variable_to_shape_map()
    assert 'loss_scaler/scale/.ATTRIBUTES/VARIABLE_VALUE' in names
    assert any(name.startswith('weight_average/') for name in names)
    assert _files_under(model_dirs[1]) == []

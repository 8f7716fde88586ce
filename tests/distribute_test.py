"""Tests of trainer/distribute.py and of training under several replicas and workers.

MirroredStrategy runs over the two logical CPUs that conftest.py makes; the
multi-worker test starts two `main.py` processes on localhost ports.
"""

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import distribute
from trainer import ema
from trainer import errors
from trainer import gaudi
from trainer import loop
from trainer import precision
from trainer import step as steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_REPLICA_BATCH = 8


def _mirrored():
    if len(tf.config.list_logical_devices('CPU')) < 2:
        pytest.skip('needs the two logical CPUs that conftest.py sets up')
    return tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])


def _local_values(strategy, weight):
    variable = weight if isinstance(weight, tf.Variable) else weight.value
    return [v.numpy() for v in strategy.experimental_local_results(variable)]


def _train(strategy, global_batch, *, poison=None, initial_scale=2.0**15, num_steps=3):
    """A tiny model without batch norm through TrainStep and the loop under `strategy`."""
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
        scaler = precision.LossScaler(dynamic=True, initial_scale=initial_scale)
        average = ema.WeightAverage(model, 0.5)
    train_step = steps.TrainStep(
        model,
        optimizer,
        loss_scaler=scaler,
        global_batch_size=global_batch,
        num_replicas=strategy.num_replicas_in_sync,
        weight_decay=1e-2,
        label_smoothing=0.1,
        weight_average=average,
    )
    rng = np.random.default_rng(5)
    images = rng.normal(size=(global_batch * num_steps, 6)).astype(np.float32)
    labels = rng.integers(0, 4, global_batch * num_steps).astype(np.int32)
    if poison is not None:
        images[poison] = np.inf
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(global_batch)
    iterator = iter(strategy.experimental_distribute_dataset(data))
    train_loop = loop.make_train_loop(strategy, train_step)
    totals = train_loop(iterator, tf.constant(num_steps))
    return model, optimizer, scaler, average, {k: float(v) for k, v in totals.items()}


def test_mirrored_equals_one_device_with_the_double_batch():
    strategy = _mirrored()
    assert strategy.num_replicas_in_sync == 2
    global_batch = 2 * PER_REPLICA_BATCH
    model, optimizer, scaler, average, totals = _train(strategy, global_batch)
    reference, ref_optimizer, ref_scaler, ref_average, ref_totals = _train(
        tf.distribute.get_strategy(), global_batch
    )
    for weight, want in zip(model.weights, reference.weights):
        replicas = _local_values(strategy, weight)
        np.testing.assert_array_equal(replicas[0], replicas[1])  # Replicas in sync.
        np.testing.assert_allclose(replicas[0], want.numpy(), rtol=1e-5, atol=1e-6)
    for got, want in zip(average.averages, ref_average.averages):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    # Metrics summed over replicas are the one device's.
    for key in ('cross_entropy', 'l2', 'top1', 'top5', 'count', 'skipped'):
        assert totals[key] == pytest.approx(ref_totals[key], rel=1e-5, abs=1e-6), key
    assert totals['count'] == 3 * global_batch
    assert int(optimizer.iterations.numpy()) == int(ref_optimizer.iterations.numpy()) == 3
    assert int(scaler.good_steps.numpy()) == int(ref_scaler.good_steps.numpy()) == 3
    # Not trivially equal: training moved the weights.
    untrained = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8), keras.layers.Dense(4)])
    keras.utils.set_random_seed(0)
    assert not np.allclose(model.weights[0].numpy(), untrained.weights[0].numpy())


def test_mirrored_skips_on_every_replica_when_one_overflows():
    strategy = _mirrored()
    global_batch = 2 * PER_REPLICA_BATCH
    keras.utils.set_random_seed(0)
    # Example 12 of the first batch goes to the second replica: only its gradients
    # are non-finite, yet both replicas must skip.
    model, optimizer, scaler, average, totals = _train(
        strategy, global_batch, poison=12, num_steps=1
    )
    fresh, *_ = _train(tf.distribute.get_strategy(), global_batch, num_steps=0)
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
    assert distribute.is_chief_task()
    for value, chief in (
        (config('worker', 0), True),
        (config('worker', 1), False),
        (config('worker', 0, chief=True), False),
        (config('chief', 0, chief=True), True),
    ):
        monkeypatch.setenv('TF_CONFIG', value)
        assert distribute.is_chief_task() == chief, value


def test_xla_updates_need_one_replica_or_gpus():
    assert distribute.xla_compiles_updates(tf.distribute.get_strategy())
    assert not distribute.xla_compiles_updates(_mirrored())


@pytest.mark.skipif(
    os.path.exists(gaudi.HABANA_DRIVER), reason='a Gaudi driver is loaded on this machine'
)
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

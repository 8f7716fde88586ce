"""Tests of trainer/artifacts/checkpoint.py, nonfinite.py and preemption.py, in process.

Damaged checkpoints, lost state files, NaN weights, pretrained .h5 files and signals,
on a tiny DenseNet-BC; whole runs of main.py are in resume_kill_test.py.
"""

import logging
import os
import re
import shutil
import signal
import threading
import time

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

import densenet
from main_runs import run_main
from random_weights import randomise_batch_norm
from trainer.artifacts import checkpoint as checkpoint_lib
from base import errors
from trainer import artifacts
from trainer.engine import loop
from trainer.engine import nonfinite
from trainer.engine import preemption
from trainer.engine import step as step_lib
from trainer.artifacts import weights_by_name


def _model(num_classes=10, name='densenet_bc_10_4', seed=0):
    keras.utils.set_random_seed(seed)
    return densenet.create_model(name, num_classes=num_classes, image_size=32)


def _state(directory, *, num_classes=10, seed=0, **extra):
    model = _model(num_classes, seed=seed)
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    return checkpoint_lib.CheckpointState(
        model=model, optimizer=optimizer, directory=str(directory), keep=5, **extra
    )


def _weights(model):
    return [w.numpy() for w in model.weights]


def _saved(directory, steps=(4, 8, 12)):
    """A checkpoint folder with one checkpoint per step; returns the weights at each step."""
    state = _state(directory)
    weights = {}
    for step in steps:
        for variable in state.checkpoint.model.trainable_variables:
            variable.assign_add(tf.fill(variable.shape, 0.01 * step))
        state.checkpoint.optimizer.iterations.assign(step)
        state.save(step)
        weights[step] = _weights(state.checkpoint.model)
    return weights


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    """(folder, weights at each step) of checkpoints 4, 8, 12, written once per module."""
    folder = tmp_path_factory.mktemp('saved')
    return str(folder), _saved(folder)


def _copy_of(saved, tmp_path):
    folder = str(tmp_path / 'checkpoints')
    shutil.copytree(saved[0], folder)
    return folder, saved[1]


def _truncate(path, fraction=0.5):
    with open(path, 'r+b') as stream:
        stream.truncate(int(os.path.getsize(path) * fraction))


def test_extra_trackables_are_saved_and_restored(tmp_path):
    ema = tf.Variable([1.0, 2.0], name='ema')
    scale = tf.Variable(2.0**15, name='loss_scale')
    state = _state(tmp_path, ema=ema, scale=scale)
    assert any(v is ema for v in state.variables())
    state.save(4)
    ema.assign([5.0, 6.0])
    scale.assign(1.0)
    fresh_ema, fresh_scale = tf.Variable([0.0, 0.0]), tf.Variable(0.0)
    again = _state(tmp_path, seed=1, ema=fresh_ema, scale=fresh_scale)
    assert again.restore_latest().endswith('ckpt-4')
    assert fresh_ema.numpy().tolist() == [1.0, 2.0] and fresh_scale.numpy() == 2.0**15
    assert int(again.checkpoint.optimizer.iterations.numpy()) == 0


@pytest.mark.parametrize(
    'damage',
    ['truncated index', 'truncated data', 'missing data', 'flipped byte'],
)
def test_damaged_newest_checkpoint_falls_back_with_a_warning(saved, tmp_path, caplog, damage):
    tmp_path, weights = _copy_of(saved, tmp_path)
    newest = os.path.join(tmp_path, 'ckpt-12')
    data = newest + '.data-00000-of-00001'
    if damage == 'truncated index':
        _truncate(newest + '.index')
    elif damage == 'truncated data':
        _truncate(data)
    elif damage == 'missing data':
        os.remove(data)
    else:
        content = bytearray(open(data, 'rb').read())
        content[len(content) // 3] ^= 0xFF
        open(data, 'wb').write(bytes(content))

    state = _state(tmp_path, seed=1)
    with caplog.at_level(logging.WARNING):
        assert state.restore_latest() == os.path.join(tmp_path, 'ckpt-8')
    assert f'Checkpoint {newest} is unusable' in caplog.text
    for ours, saved in zip(_weights(state.checkpoint.model), weights[8]):
        np.testing.assert_array_equal(ours, saved)
    # The damaged files are kept aside, and the folder is consistent again: the manager
    # names ckpt-8 as newest, and a new ckpt-12 can be written and resumed.
    assert os.path.exists(os.path.join(tmp_path, 'unusable', 'ckpt-12.index'))
    assert state.latest == os.path.join(tmp_path, 'ckpt-8')
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith('ckpt-8')
    state.save(12)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert _state(tmp_path, seed=2).restore_latest().endswith('ckpt-12')
    assert 'unusable' not in caplog.text


def test_no_usable_checkpoint_stops_with_one_line_naming_them(saved, tmp_path):
    tmp_path, _ = _copy_of(saved, tmp_path)
    for step in (4, 8, 12):
        _truncate(os.path.join(tmp_path, f'ckpt-{step}.data-00000-of-00001'))
    with pytest.raises(artifacts.CheckpointError) as error:
        _state(tmp_path, seed=1).restore_latest()
    message = str(error.value)
    assert '\n' not in message
    assert message.startswith(f'no usable checkpoint in {tmp_path} (ckpt-12: ')
    assert (
        '; ckpt-8: ' in message
        and '; ckpt-4: ' in message
        and message.endswith('move the folder away to start afresh')
    )
    # Nothing was moved: the user decides what to do with them.
    assert not os.path.exists(os.path.join(tmp_path, 'unusable'))


def test_lost_state_file_finds_checkpoints_by_step(saved, tmp_path, caplog):
    tmp_path, weights = _copy_of(saved, tmp_path)
    os.remove(os.path.join(tmp_path, 'checkpoint'))
    state = _state(tmp_path, seed=1)
    with caplog.at_level(logging.WARNING):
        assert state.restore_latest() == os.path.join(tmp_path, 'ckpt-12')
    assert 'found 3 checkpoints by name' in caplog.text
    for ours, saved in zip(_weights(state.checkpoint.model), weights[12]):
        np.testing.assert_array_equal(ours, saved)
    # The state file is written again, so retention sees the old checkpoints.
    assert tf.train.get_checkpoint_state(str(tmp_path)).all_model_checkpoint_paths[:] == [
        os.path.join(tmp_path, f'ckpt-{step}') for step in (4, 8, 12)
    ]


def test_checkpoint_of_another_model_is_refused_not_skipped(saved, tmp_path):
    tmp_path, _ = _copy_of(saved, tmp_path)
    with pytest.raises(artifacts.CheckpointError, match='ckpt-12 does not fit this model'):
        _state(tmp_path, num_classes=5).restore_latest()
    assert os.path.exists(os.path.join(tmp_path, 'ckpt-12.index'))


def test_nonfinite_weights_are_never_checkpointed(tmp_path):
    state = _state(tmp_path)
    state.save(4)
    kernel = state.checkpoint.model.get_layer('predictions').kernel
    kernel.assign(tf.fill(kernel.shape, float('nan')))
    with pytest.raises(
        nonfinite.NonFiniteError, match=r'predictions/kernel is not finite at step 8'
    ):
        state.save(8)
    assert state.latest.endswith('ckpt-4')
    assert not os.path.exists(os.path.join(tmp_path, 'ckpt-8.index'))


def test_training_guard_names_the_step_and_the_value():
    guard = nonfinite.TrainingGuard()
    guard.check({'cross_entropy': 9.0, 'l2': 0.1, 'count': 4.0}, first_step=1, last_step=2)
    with pytest.raises(nonfinite.NonFiniteError) as error:
        guard.check(
            {'cross_entropy': float('nan'), 'l2': 0.1, 'count': 4.0},
            first_step=3,
            last_step=4,
            newest_checkpoint='/run/checkpoints/ckpt-2',
        )
    assert str(error.value) == (
        'training loss is nan in steps 3-4 (one loop: its sum); stopped at step 4 without '
        'checkpointing: the newest checkpoint, /run/checkpoints/ckpt-2, is unaffected'
    )
    with pytest.raises(nonfinite.NonFiniteError, match='loss is inf at step 5'):
        guard.check({'cross_entropy': 1.0, 'l2': float('inf')}, first_step=5, last_step=5)


def test_loop_names_the_first_nonfinite_step_not_the_loop():
    # Six steps in one loop call; the fourth batch holds a NaN, so steps 4-6 (global
    # steps 14-16 of a loop that starts at 11) are not finite.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    optimizer = keras.optimizers.SGD(0.01)
    optimizer.build(model.trainable_variables)
    train_step = step_lib.TrainStep(model, optimizer, global_batch_size=8)
    images = np.random.default_rng(0).normal(size=(6, 8, 4)).astype('float32')
    images[3, 5, 2] = np.nan
    labels = np.tile(np.arange(8) % 3, (6, 1))
    iterator = iter(tf.data.Dataset.from_tensor_slices((images, labels)))
    train_loop = loop.make_train_loop(tf.distribute.get_strategy(), train_step)
    totals = train_loop(iterator, tf.constant(6))
    assert int(totals['first_nonfinite_step']) == 3
    assert np.isnan(float(totals['first_nonfinite_loss']))
    with pytest.raises(nonfinite.NonFiniteError, match=r'^training loss is nan at step 14; '):
        nonfinite.TrainingGuard().check(totals, first_step=11, last_step=16)
    # A finite loop reports no step, and passes.
    finite = iter(tf.data.Dataset.from_tensor_slices((images[:3], labels[:3])))
    keras.utils.set_random_seed(0)
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])
    totals = train_loop(finite, tf.constant(3))
    assert int(totals['first_nonfinite_step']) == -1
    nonfinite.TrainingGuard().check(totals, first_step=17, last_step=19)


def test_training_guard_counts_consecutive_skipped_steps():
    guard = nonfinite.TrainingGuard(max_skipped_steps=5)
    totals = {'cross_entropy': 1.0, 'count': 1.0}
    guard.check({**totals, 'skipped': 3.0}, first_step=1, last_step=4)  # Not a whole loop.
    guard.check({**totals, 'skipped': 4.0}, first_step=5, last_step=8)
    assert guard.consecutive_skipped == 4
    guard.check({**totals, 'skipped': 1.0}, first_step=9, last_step=12)  # Resets the run.
    guard.check({**totals, 'skipped': 4.0}, first_step=13, last_step=16)
    with pytest.raises(nonfinite.NonFiniteError, match=r'^8 consecutive steps up to step 20'):
        guard.check({**totals, 'skipped': 4.0}, first_step=17, last_step=20)
    # The loss scaler's own count, where it keeps one, is exact.
    exact = nonfinite.TrainingGuard(max_skipped_steps=5, consecutive_skipped=lambda: 6)
    with pytest.raises(nonfinite.NonFiniteError, match='max_skipped_steps=5'):
        exact.check({**totals, 'skipped': 1.0}, first_step=1, last_step=4)


# Pretrained weights.


def _write_keras2_h5(path, model, *, rename=lambda name: name, order=None):
    """A Keras 2 `save_weights('x.h5')` file, written with h5py as Keras 2 writes it.

    `rename` maps our layer names to the file's (Keras 2 Applications wrote 'conv1/conv'
    where Keras 3 writes 'conv1_conv'); `order` permutes the layers.
    """
    layers = [layer for layer in model.layers]
    if order is not None:
        layers = [layers[i] for i in order]
    with h5py.File(path, 'w') as handle:
        handle.attrs['layer_names'] = [rename(layer.name).encode('utf8') for layer in layers]
        handle.attrs['backend'] = b'tensorflow'
        handle.attrs['keras_version'] = b'2.15.0'
        for layer in layers:
            group = handle.create_group(rename(layer.name))
            names = [
                f'{rename(layer.name)}/{w.name.split("/")[-1].split(":")[0]}:0'
                for w in layer.weights
            ]
            group.attrs['weight_names'] = [name.encode('utf8') for name in names]
            for name, weight in zip(names, layer.weights):
                group.create_dataset(name, data=weight.numpy())


@pytest.mark.parametrize('layout', ['keras2 save_weights', 'applications names', 'model.save'])
@pytest.mark.stack
def test_h5_weights_load_by_layer_name(tmp_path, layout):
    source, target = _model(seed=0), _model(seed=1)
    path = str(tmp_path / 'weights.h5')
    if layout == 'keras2 save_weights':
        # Layers in reverse order: a by-position loader would fail.
        _write_keras2_h5(path, source, order=list(reversed(range(len(source.layers)))))
    elif layout == 'applications names':
        _write_keras2_h5(path, source, rename=lambda name: name.replace('conv1_', 'conv1/'))
    else:
        source.save(path)  # Keras 2 and 3 both write the legacy layout under model_weights.
    assert checkpoint_lib.load_initial_weights(target, path).source == path
    for ours, theirs in zip(_weights(target), _weights(source)):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.stack
def test_keras_weights_h5_file_loads(tmp_path):
    source, target = _model(seed=0), _model(seed=1)
    path = str(tmp_path / 'model.weights.h5')
    source.save_weights(path)
    checkpoint_lib.load_initial_weights(target, path)
    for ours, theirs in zip(_weights(target), _weights(source)):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.skipif(
    keras.__version__.startswith('3'),
    reason='Keras 2 must write the file: runs in the TensorFlow 2.15 stages of .ci/run',
)
@pytest.mark.slow
@pytest.mark.stack
def test_keras2_densenet121_save_weights_file_initialises_a_run(tmp_path):
    """A file Keras 2 itself wrote, `DenseNet121.save_weights('x.h5')`, through main.py.

    Keras 2's Applications name layers `conv1/conv` and order them its own way; the run
    starts from the file with `--init_checkpoint`, takes one step that changes nothing
    (learning rate 0, moving statistics frozen by a batch-norm momentum of 1), and the
    model restored from its checkpoint must give Keras' logits on a real photograph.
    """
    import skimage.data  # pylint: disable=g-import-not-at-top

    keras.utils.set_random_seed(0)
    reference = keras.applications.DenseNet121(
        weights=None, input_shape=(64, 64, 3), classes=10, classifier_activation=None
    )
    randomise_batch_norm(reference, np.random.default_rng(0))
    path = str(tmp_path / 'densenet121_keras2.h5')
    reference.save_weights(path)
    with h5py.File(path) as handle:  # The legacy layout, with Keras 2's own names.
        assert 'conv1/conv' in [weights_by_name._text(name) for name in handle.attrs['layer_names']]

    model_dir = str(tmp_path / 'run')
    result = run_main(
        [
            f'--init_checkpoint={path}',
            '--model=densenet121',
            '--image_size=64',
            '--num_classes=10',
            '--synthetic_data',
            '--bfloat16=false',
            '--batch_size=2',
            '--train_steps=1',
            '--initial_lr=0',
            '--weight_decay=0',
            '--batch_norm_momentum=1.0',
            f'--model_dir={model_dir}',
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'Initialised the weights from {path}' in result.stderr

    model = densenet.create_model('densenet121', num_classes=10, image_size=64)
    checkpoint_lib.restore_weights(model, os.path.join(model_dir, 'checkpoints'))
    photo = tf.image.resize(skimage.data.astronaut()[None].astype(np.float32) / 255.0, (64, 64))
    photo = (photo - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    want = reference(photo, training=False).numpy()
    got = model(photo, training=False).numpy()
    difference = float(np.max(np.abs(got - want)))
    print(f'max abs logit difference: {difference:.2g}')
    assert np.max(np.abs(want)) > 0.1 and difference < 1e-5, difference


def test_h5_file_of_another_model_names_the_file_and_layer(tmp_path):
    path = str(tmp_path / 'other.h5')
    _write_keras2_h5(path, _model(name='densenet_bc_16_4'))
    target = _model()
    before = _weights(target)
    with pytest.raises(artifacts.CheckpointError, match=rf'^{path} does not fit --model='):
        checkpoint_lib.load_initial_weights(target, path)
    # A layer of another shape, other than the classifier, is refused by name.
    source = _model()
    _write_keras2_h5(path, source)
    with h5py.File(path, 'r+') as handle:
        del handle['conv1_conv']['conv1_conv/kernel:0']
        handle['conv1_conv'].create_dataset('conv1_conv/kernel:0', data=np.zeros((3, 3, 3, 9)))
    with pytest.raises(artifacts.CheckpointError) as error:
        checkpoint_lib.load_initial_weights(target, path)
    assert str(error.value) == (
        f'{path} does not fit the model: conv1_conv/kernel is (3, 3, 3, 8) in the model but '
        '(3, 3, 3, 9) in the file (check --model and --num_classes)'
    )
    # A failed load changes nothing.
    for ours, old in zip(_weights(target), before):
        np.testing.assert_array_equal(ours, old)


def test_init_from_checkpoint_reads_weights_only(saved):
    folder, weights = saved
    model = _model(seed=1)
    assert checkpoint_lib.load_initial_weights(model, folder).source.endswith('ckpt-12')
    for ours, theirs in zip(_weights(model), weights[12]):
        np.testing.assert_array_equal(ours, theirs)
    with pytest.raises(FileNotFoundError):
        checkpoint_lib.load_initial_weights(model, os.path.join(folder, 'nothing'))


@tf.function
def _busy(seconds):
    """Computes inside one TensorFlow call for `seconds`, as a train loop does."""
    start = tf.timestamp()
    return tf.while_loop(
        lambda x: tf.timestamp() - start < seconds,
        lambda x: tf.tanh(tf.matmul(x, x) * 0.01),
        [tf.ones([32, 32])],
    )


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT], ids=['SIGTERM', 'SIGINT'])
def test_signal_checkpoints_at_the_boundary_and_restores_the_handlers(
    tmp_path, signum, caplog, absl_info_logs
):
    # A scheduler's SIGTERM and a person's Ctrl-C (SIGINT) are handled alike. The signal
    # comes while the main thread is inside a TensorFlow call, as in training: Python's
    # handler runs only after the call, 1.3 s later, yet the delay logged must be the
    # true one, from the signal's arrival to the checkpoint (it was timed from the
    # handler, and read 0.6 s for a checkpoint 6.3 s after the signal).
    state = _state(tmp_path)
    previous = signal.getsignal(signum)
    determinism = tf_config.is_op_determinism_enabled()
    tf_config.disable_op_determinism()  # It forbids tf.timestamp in a graph.
    try:
        _busy(tf.constant(0.01, tf.float64))  # Traced before the clock starts.
        with preemption.PreemptionWatcher() as watcher:
            # Checked before sending: an unwatched SIGINT would end pytest itself.
            assert signal.getsignal(signum) is not previous, f'{signum.name} is not watched'
            watcher.attach(tf.distribute.get_strategy(), state)
            assert not watcher.checkpoint_and_stop(2)
            sent = []
            sender = threading.Timer(
                0.2, lambda: (sent.append(time.monotonic()), os.kill(os.getpid(), signum))
            )
            sender.start()
            _busy(tf.constant(1.5, tf.float64))
            sender.join()
            assert watcher.requested and watcher.signal_name == signum.name
            before = time.monotonic()
            with caplog.at_level(logging.INFO):
                assert watcher.checkpoint_and_stop(3)
            after = time.monotonic()
    finally:
        if determinism:
            tf_config.enable_op_determinism()
    assert state.latest.endswith('ckpt-3')
    assert signal.getsignal(signum) is previous
    logged = re.search(r'written at step 3, ([\d.]+) s after the signal;', caplog.text)
    assert logged, caplog.text
    # Logged to 0.1 s; the arrival is noted by a thread that the signal wakes.
    assert before - sent[0] - 0.1 <= float(logged.group(1)) <= after - sent[0] + 0.05, (
        logged.group(0),
        before - sent[0],
        after - sent[0],
    )
    # Stopped before the last step: the run's last line says so and names the stale
    # evaluation as such; stopped at the last step, the run is finished.
    with pytest.raises(errors.StoppedEarly) as stopped:
        watcher.raise_if_stopped(
            3, 10, {'step': 2, 'top1': 0.5, 'top5': 0.75, 'cross_entropy': 1.25}
        )
    assert re.fullmatch(
        rf'stopped by {signum.name} at step 3 of 10, not finished: checkpoint \S*ckpt-3 '
        r'written [\d.]+ s after the signal; start the same command again to resume \(exit '
        r'status 75; the last evaluation, at step 2: top-1 0\.5000, top-5 0\.7500, '
        r'cross-entropy '
        r'1\.2500\)',
        str(stopped.value),
    ), str(stopped.value)
    watcher.raise_if_stopped(10, 10, None)

"""Whole runs of main.py that are killed, preempted, damaged or diverge, and recover.

One uninterrupted run is the reference. A second run of the same flags is killed with
SIGKILL after it logs a step, killed again while a checkpoint is being written, stopped
with SIGTERM, has its newest checkpoint truncated, and is started again each time. Every
checkpoint the two runs have in common, and the final one, must hold bit-identical
values: resuming changed nothing.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STEPS = 23  # One epoch: 1,497 training digits at batch 64.
FLAGS = [
    '--model=densenet_bc_10_4',
    '--image_size=32',
    '--num_classes=10',
    '--bfloat16=false',
    '--batch_size=64',
    '--optimizer=sgd',
    '--initial_lr=0.05',
    # Unlike cosine, the steps schedule does not depend on the run's length.
    '--lr_sched=steps',
    '--random_flip=false',
    '--deterministic',
    '--seed=3',
    '--steps_per_loop=2',
    '--log_every_steps=2',
    '--checkpoint_every_steps=4',
    '--keep_checkpoints=20',
    '--shuffle_buffer=512',
    '--epochs=1',
]

# Runs main.py with CheckpointManager.save patched so that the save of checkpoint
# PAUSE_AT stops after its files are written but before the `checkpoint` state file
# names it (a write callback runs between the two), and says so: the test kills it
# there, in the middle of a checkpoint write.
_PAUSING_LAUNCHER = """
import os, runpy, sys, time
sys.path.insert(0, {root!r})
import tensorflow as tf

PAUSE_AT = int(os.environ['PAUSE_CHECKPOINT_AT'])
original_save = tf.train.CheckpointManager.save

def save(self, checkpoint_number=None, check_interval=True, options=None):
    if checkpoint_number == PAUSE_AT:
        def pause(save_path):
            print('PAUSED IN CHECKPOINT WRITE', save_path, file=sys.stderr, flush=True)
            time.sleep(600)
        options = tf.train.CheckpointOptions(experimental_write_callbacks=[pause])
    return original_save(self, checkpoint_number, check_interval, options)

tf.train.CheckpointManager.save = save
sys.argv = ['main.py', *sys.argv[1:]]
runpy.run_path({main!r}, run_name='__main__')
"""


@pytest.fixture(scope='module')
def digits_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('digits') / 'data')
    from input_pipeline import digits

    digits.ensure_digits_dataset(path)
    return path


def _run(args, timeout=300):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'main.py'), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result


class _Started:
    """A main.py process whose stderr is read line by line as it runs."""

    def __init__(self, args, *, launcher=None, env=None, timeout=300):
        command = [sys.executable, launcher or os.path.join(ROOT, 'main.py'), *args]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines = []
        # A hung run fails the test instead of hanging it.
        self._watchdog = threading.Timer(timeout, self.process.kill)
        self._watchdog.start()

    def wait_for(self, pattern):
        """Reads stderr until a line matches `pattern`; returns the match."""
        for line in self.process.stderr:
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f'no line matched {pattern!r}; stderr ends:\n{self.tail()}')

    def finish(self):
        """Reads the rest of stderr and waits; returns the exit status."""
        self.lines.extend(self.process.stderr)
        status = self.process.wait()
        self._watchdog.cancel()
        return status

    def tail(self):
        return ''.join(self.lines[-30:])


def _checkpoint_values(prefix):
    """Every training value in a checkpoint (not the save counter, which counts saves)."""
    reader = tf.train.load_checkpoint(prefix)
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
        if not name.startswith(('save_counter', '_CHECKPOINTABLE_OBJECT_GRAPH'))
    }


def _checkpoints(model_dir):
    """Step -> prefix of the checkpoints the state file lists."""
    state = tf.train.get_checkpoint_state(os.path.join(model_dir, 'checkpoints'))
    return {int(path.rsplit('-', 1)[1]): path for path in state.all_model_checkpoint_paths}


def _assert_identical(prefix_a, prefix_b):
    a, b = _checkpoint_values(prefix_a), _checkpoint_values(prefix_b)
    assert a.keys() == b.keys() and len(a) > 50
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=f'{name} in {prefix_b}')


@pytest.fixture(scope='module')
def straight_run(digits_dir, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp('straight'))
    result = _run([*FLAGS, f'--dataset_dir={digits_dir}', f'--model_dir={model_dir}'])
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir


def test_killed_preempted_and_damaged_run_ends_bit_identical(
    digits_dir, straight_run, tmp_path, record_property
):
    model_dir = str(tmp_path / 'killed')
    args = [*FLAGS, f'--dataset_dir={digits_dir}', f'--model_dir={model_dir}']

    # 1. SIGKILL right after step 6 is logged: steps 5-6 are lost, ckpt-4 remains.
    run = _Started(args)
    run.wait_for(r'step 6/')
    run.process.kill()
    assert run.finish() == -signal.SIGKILL
    # ckpt-8 only if the machine was so slow that the kill came after the next loop.
    assert max(_checkpoints(model_dir)) in (4, 8)

    # 2. SIGKILL in the middle of writing ckpt-12: its files exist but the state file
    #    does not name them, so the restart resumes from ckpt-8 and writes ckpt-12 anew.
    launcher = tmp_path / 'pausing_main.py'
    launcher.write_text(_PAUSING_LAUNCHER.format(root=ROOT, main=os.path.join(ROOT, 'main.py')))
    run = _Started(args, launcher=str(launcher), env={'PAUSE_CHECKPOINT_AT': '12'})
    run.wait_for(r'PAUSED IN CHECKPOINT WRITE')
    run.process.kill()
    assert run.finish() == -signal.SIGKILL
    assert os.path.exists(os.path.join(model_dir, 'checkpoints', 'ckpt-12.index'))
    assert max(_checkpoints(model_dir)) == 8

    # 3. SIGTERM after step 14 is logged: a checkpoint at the next loop boundary, exit 0.
    run = _Started(args)
    run.wait_for(r'Resumed from \S*ckpt-8\b')
    run.wait_for(r'step 14/')
    signalled = time.monotonic()
    run.process.send_signal(signal.SIGTERM)
    status = run.finish()
    exit_seconds = time.monotonic() - signalled
    assert status == 0, run.tail()
    stopped_at = max(_checkpoints(model_dir))
    assert stopped_at in (14, 16), run.tail()
    assert any('SIGTERM: checkpoint' in line for line in run.lines), run.tail()
    record_property('sigterm_to_exit_seconds', round(exit_seconds, 2))
    print(f'SIGTERM to exit: {exit_seconds:.2f} s, checkpoint at step {stopped_at}')
    assert exit_seconds < 30

    # 4. The newest checkpoint's data file is truncated (a torn copy, a full disk): the
    #    restart warns, naming it, sets it aside and resumes from the one before.
    newest = _checkpoints(model_dir)[stopped_at]
    with open(newest + '.data-00000-of-00001', 'r+b') as stream:
        stream.truncate(os.path.getsize(newest + '.data-00000-of-00001') // 2)
    result = _run(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(rf'Checkpoint \S*ckpt-{stopped_at} is unusable', result.stderr)
    assert os.path.exists(
        os.path.join(model_dir, 'checkpoints', 'unusable', f'ckpt-{stopped_at}.index')
    )

    # Every checkpoint both runs wrote, the final one included, is bit-identical.
    straight, killed = _checkpoints(straight_run), _checkpoints(model_dir)
    common = sorted(set(straight) & set(killed))
    assert common[-1] == STEPS and {4, 8, 12, 16, 20} <= set(common), common
    for step in common:
        _assert_identical(straight[step], killed[step])
    print(f'bit-identical checkpoints at steps {common}')


def test_nonfinite_loss_stops_naming_step_and_value(digits_dir, straight_run, tmp_path):
    # Fine-tunes from the reference run's weights with an absurd learning rate: step 1
    # (computed with good weights) is finite and checkpointed; its update blows the
    # weights up, so step 2's loss is not finite.
    model_dir = str(tmp_path / 'diverged')
    result = _run(
        [
            *FLAGS,
            f'--dataset_dir={digits_dir}',
            f'--model_dir={model_dir}',
            f'--init_checkpoint={os.path.join(straight_run, "checkpoints")}',
            '--initial_lr=1e30',
            '--steps_per_loop=1',
            '--log_every_steps=1',
            '--checkpoint_every_steps=1',
            '--train_steps=5',
        ]
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert re.search(r'Initialised the weights from \S*ckpt-23', result.stderr), result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r'main\.py: error: training loss is (nan|inf) at step 2; stopped at step 2 without '
        r'checkpointing: the newest checkpoint, \S*ckpt-1, is unaffected',
        last,
    ), last
    # The newest checkpoint is the last good one, and it is usable: every value finite.
    assert sorted(_checkpoints(model_dir)) == [1]
    values = _checkpoint_values(_checkpoints(model_dir)[1])
    assert all(np.all(np.isfinite(v)) for v in values.values() if v.dtype.kind == 'f')

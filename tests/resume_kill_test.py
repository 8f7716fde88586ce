"""Whole runs of main.py that are killed, preempted, damaged or diverge, and recover.

One uninterrupted run is the reference. A second run of the same flags is killed with
SIGKILL after it logs a step, killed again while a checkpoint is being written, stopped
with SIGTERM, then with SIGINT (Ctrl-C) (each ends with status 75 and a last line
naming the step and the checkpoint), has its newest checkpoint truncated, is killed
in the middle of its export (which nothing may read, and the next start removes), and
is started again each time. Every checkpoint the two runs have in common, and the final
one, must hold bit-identical values: resuming changed nothing.
"""

import os
import re
import signal
import time

import numpy as np
import pytest

from main_runs import Started as _Started
from main_runs import assert_identical as _assert_identical
from main_runs import checkpoint_values as _checkpoint_values
from main_runs import checkpoints as _checkpoints
from main_runs import run_main as _run
from main_runs import start_main
from in_process import run_main_in_process
from main_runs import MAIN
from main_runs import ROOT
from main_runs import write_pausing_launcher
from base import errors
from trainer.artifacts import export

pytestmark = pytest.mark.slow

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


@pytest.fixture(scope='module')
def straight_run(digits_dir, tmp_path_factory):
    """`finished() -> model_dir` of the uninterrupted run, which starts at once and goes
    on beside the test's own runs until a test needs it."""
    model_dir = str(tmp_path_factory.mktemp('straight'))
    future = start_main([*FLAGS, f'--dataset_dir={digits_dir}', f'--model_dir={model_dir}'])

    def finished():
        result = future.result()
        assert result.returncode == 0, result.stderr[-3000:]
        return model_dir

    return finished


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
    launcher = write_pausing_launcher(tmp_path)
    run = _Started(args, launcher=launcher, env={'PAUSE_CHECKPOINT_AT': '12'})
    run.wait_for(r'PAUSED IN CHECKPOINT WRITE')
    run.process.kill()
    assert run.finish() == -signal.SIGKILL
    assert os.path.exists(os.path.join(model_dir, 'checkpoints', 'ckpt-12.index'))
    assert max(_checkpoints(model_dir)) == 8

    # 3. SIGTERM after step 14 is logged: a checkpoint at the next loop boundary, and
    #    exit status 75 (errors.EXIT_STOPPED: stopped early, resume me), not 0.
    run = _Started(args)
    run.wait_for(r'Resumed from \S*ckpt-8\b')
    run.wait_for(r'step 14/')
    signalled = time.monotonic()
    run.process.send_signal(signal.SIGTERM)
    logged = run.wait_for(r'SIGTERM: checkpoint \S+ written at step \d+, ([\d.]+) s after the')
    seen = time.monotonic()
    status = run.finish()
    exit_seconds = time.monotonic() - signalled
    assert status == errors.EXIT_STOPPED == 75, run.tail()
    stopped_at = max(_checkpoints(model_dir))
    assert stopped_at in (14, 16), run.tail()
    # The delay logged runs from the signal's arrival to the checkpoint, so it is at
    # most the time from sending it to reading the line, and not much less.
    delay = float(logged.group(1))
    assert seen - signalled - 3 < delay <= seen - signalled + 0.05, (delay, seen - signalled)
    _assert_stopped_line(run, 'SIGTERM', stopped_at)
    record_property('sigterm_to_exit_seconds', round(exit_seconds, 2))
    print(
        f'SIGTERM to exit: {exit_seconds:.2f} s, checkpoint at step {stopped_at} '
        f'{delay:.1f} s after the signal (the test saw its line {seen - signalled:.2f} s after)'
    )
    assert exit_seconds < 30

    # 4. Ctrl-C (SIGINT) after step 18 is logged: the same checkpoint and exit status.
    run = _Started(args)
    run.wait_for(rf'Resumed from \S*ckpt-{stopped_at}\b')
    run.wait_for(r'step 18/')
    run.process.send_signal(signal.SIGINT)
    assert run.finish() == errors.EXIT_STOPPED, run.tail()
    stopped_at = max(_checkpoints(model_dir))
    assert stopped_at in (18, 20), run.tail()
    assert any('SIGINT: checkpoint' in line for line in run.lines), run.tail()
    _assert_stopped_line(run, 'SIGINT', stopped_at)

    # 5. The newest checkpoint's data file is truncated (a torn copy, a full disk): the
    #    restart warns, naming it, sets it aside and resumes from the one before.
    newest = _checkpoints(model_dir)[stopped_at]
    with open(newest + '.data-00000-of-00001', 'r+b') as stream:
        stream.truncate(os.path.getsize(newest + '.data-00000-of-00001') // 2)
    #    It is also SIGKILLed in the middle of its export at step 23, once the SavedModel's
    #    files are written and before their folder is renamed.
    result = _run(args, launcher=_write_export_killing_launcher(tmp_path))
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert 'KILLED IN EXPORT' in result.stderr, result.stderr[-3000:]
    assert re.search(rf'Checkpoint \S*ckpt-{stopped_at} is unusable', result.stderr)
    assert os.path.exists(
        os.path.join(model_dir, 'checkpoints', 'unusable', f'ckpt-{stopped_at}.index')
    )

    # 6. The half-written export is never read: trainer.tools.predict does not serve it (it
    #    did, with exit 0), --only_eval refuses it, and the restart removes it, naming
    #    it, and exports epoch 1 anew.
    saves = os.path.join(model_dir, 'saves')
    partial = os.path.join(saves, 'epoch_001.partial')
    assert os.listdir(saves) == ['epoch_001.partial']
    assert os.path.exists(os.path.join(partial, 'saved_model.pb'))
    with pytest.raises(errors.UserError, match=r'only unfinished ones: epoch_001\.partial'):
        export.find_export(model_dir)
    evaluated = run_main_in_process(
        [*args[:4], f'--dataset_dir={digits_dir}', f'--only_eval={partial}']
    )
    assert evaluated.returncode == 1
    assert (
        evaluated.stderr.strip()
        .splitlines()[-1]
        .startswith(f'main.py: error: --only_eval={partial} is an unfinished export')
    )
    result = _run(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'Removed {partial}: an unfinished export' in result.stderr
    assert os.listdir(saves) == ['epoch_001']
    assert export.find_export(model_dir) == os.path.join(saves, 'epoch_001')

    # Every checkpoint both runs wrote, the final one included, is bit-identical.
    straight, killed = _checkpoints(straight_run()), _checkpoints(model_dir)
    common = sorted(set(straight) & set(killed))
    assert common[-1] == STEPS and {4, 8, 12, 16, 20} <= set(common), common
    for step in common:
        _assert_identical(straight[step], killed[step])
    print(f'bit-identical checkpoints at steps {common}')


# Runs main.py with tf.saved_model.save patched to SIGKILL the process once it has
# written an export's files, before the trainer renames their folder to its final name.
_EXPORT_KILLING_LAUNCHER = """
import os, runpy, signal, sys
sys.path.insert(0, {root!r})
import tensorflow as tf

original_save = tf.saved_model.save

def save(obj, export_dir, *args, **kwargs):
    original_save(obj, export_dir, *args, **kwargs)
    print('KILLED IN EXPORT', export_dir, file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

tf.saved_model.save = save
sys.argv = ['main.py', *sys.argv[1:]]
runpy.run_path({main!r}, run_name='__main__')
"""


def _write_export_killing_launcher(folder) -> str:
    path = os.path.join(str(folder), 'export_killing_main.py')
    with open(path, 'w') as stream:
        stream.write(_EXPORT_KILLING_LAUNCHER.format(root=ROOT, main=MAIN))
    return path


def _assert_stopped_line(run, signal_name, step):
    """The run's last line says where it stopped, unfinished, and what to do."""
    last = ''.join(run.lines).strip().splitlines()[-1]
    assert re.fullmatch(
        rf'main\.py: stopped by {signal_name} at step {step} of {STEPS}, not finished: '
        rf'checkpoint \S*ckpt-{step} written [\d.]+ s after the signal; start the same '
        r'command again to resume \(exit status 75; no evaluation yet\)',
        last,
    ), last


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
            f'--init_checkpoint={os.path.join(straight_run(), "checkpoints")}',
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

"""The model_dir under the faults long runs meet: a second trainer, a full or read-only
disk, a folder moved elsewhere (`trainer/artifacts/run_lock.py`, `main.py`).

A second trainer started while the first runs, as real processes, is in
`tests/determinism_test.py` (`test_killed_in_checkpoint_write_and_resumed_equals_uninterrupted`):
refused with the holder's pid and host, the folder byte-identical, and the SIGKILLed
holder's folder restarts. Here: the lock itself, the file systems (real tmpfs and
read-only bind mounts, which need root; skipped with the reason where they cannot be
made), and recovery from a full disk into a moved folder, value for value.
"""

import os
import shutil
import socket
import subprocess
import sys
import uuid

import numpy as np
import pytest
from in_process import run_main_in_process
from main_runs import ROOT, checkpoint_values, checkpoints, folder_bytes

from base import errors
from trainer.artifacts import run_lock


def test_a_held_folder_is_refused_naming_its_holder_and_free_once_released(tmp_path):
    held = run_lock.acquire(str(tmp_path / 'run'))
    with pytest.raises(run_lock.FolderInUseError) as refused:
        run_lock.acquire(str(tmp_path / 'run'))
    assert f'is in use by pid {os.getpid()} on host {socket.gethostname()}, training since' in (
        str(refused.value)
    )
    held.release()
    run_lock.acquire(str(tmp_path / 'run')).release()


def test_a_killed_holder_leaves_no_lock(tmp_path):
    # A holder that cannot clean up (SIGKILL): the kernel drops its lock with it.
    holder = subprocess.Popen(
        [
            sys.executable,
            '-c',
            'import sys, time; from trainer.artifacts import run_lock; '
            f'run_lock.acquire({str(tmp_path)!r}); print("held", flush=True); time.sleep(600)',
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == 'held\n'
        with pytest.raises(run_lock.FolderInUseError, match=f'pid {holder.pid} '):
            run_lock.acquire(str(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    run_lock.acquire(str(tmp_path)).release()


@pytest.fixture
def mounted(tmp_path):
    """`mount(options) -> folder`: real file systems made for the test; unmounted after."""
    points = []

    def mount(*args):
        point = tmp_path / f'mount{len(points)}'
        point.mkdir()
        done = subprocess.run(['mount', *args, str(point)], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f'cannot mount here (needs root): {done.stderr.strip()}')
        points.append(point)
        return point

    yield mount
    for point in reversed(points):
        subprocess.run(['umount', '-l', str(point)], check=False)


def _last_line(result):
    return result.stderr.strip().splitlines()[-1]


TINY = [
    '--model=densenet_bc_10_4',
    '--image_size=16',
    '--num_classes=10',
    '--bfloat16=false',
    '--batch_size=16',
    '--train_steps=8',
    '--steps_per_loop=2',
    '--log_every_steps=2',
    '--checkpoint_every_steps=2',
    '--keep_checkpoints=10',
    '--save_every_epoch=false',
    '--export_last_step=false',
    '--shuffle_buffer=64',
    '--deterministic',
    '--seed=4',
]


def test_a_folder_that_cannot_be_written_is_one_line_before_anything_runs(
    digits_dir, tmp_path, mounted
):
    data = f'--dataset_dir={digits_dir}'
    a_file = tmp_path / 'a_file'
    a_file.write_text('not a folder')
    result = run_main_in_process([*TINY, data, f'--model_dir={a_file}'])
    assert result.returncode == 1
    assert _last_line(result) == (
        f'main.py: error: --model_dir={a_file} cannot be written: it is a file, not a folder'
    )
    source = tmp_path / 'source'
    source.mkdir()
    read_only = mounted('--bind', '-o', 'ro', str(source))
    result = run_main_in_process([*TINY, data, f'--model_dir={read_only}/run'])
    assert result.returncode == 1
    assert _last_line(result) == (
        f'main.py: error: --model_dir={read_only}/run cannot be written: the file system is '
        'read-only'
    )


@pytest.mark.slow
def test_a_full_disk_ends_in_one_line_and_the_moved_run_resumes_value_for_value(
    digits_dir, tmp_path, mounted
):
    straight = tmp_path / 'straight'
    run_main_in_process(
        [*TINY, f'--dataset_dir={digits_dir}', f'--model_dir={straight}'], check=True
    )

    # A disk with room for the first checkpoints only (each is about 40 kB). The
    # dataset path is relative, as typed in a shell: flags.cfg must make it absolute.
    disk = mounted('-t', 'tmpfs', '-o', 'size=150k', 'tmpfs')
    full = run_main_in_process(
        [*TINY, f'--dataset_dir={os.path.relpath(digits_dir, ROOT)}', f'--model_dir={disk}/run']
    )
    assert full.returncode == 1, full.stderr[-3000:]
    line = _last_line(full)
    assert line.startswith(f'main.py: error: {disk}/run/'), line
    assert line.endswith(
        ': no space left on the device (free some space, or move the model_dir elsewhere, '
        'and start the same command again: it resumes from the last checkpoint, which is '
        'intact)'
    ), line
    written = sorted(checkpoints(f'{disk}/run'))
    assert written and written[-1] < 8, written

    # Moved off the full disk, with an unfinished checkpoint write left behind.
    moved = tmp_path / 'moved'
    shutil.copytree(f'{disk}/run', moved)
    unfinished = moved / 'checkpoints' / 'ckpt-99_temp'
    unfinished.mkdir()
    (unfinished / 'part-00000-of-00001.data-00000-of-00001').write_bytes(b'cut short')
    flagfile = f'--flagfile={moved}/flags.cfg'
    # Its flags.cfg still names the full disk: refused, not a fresh start there.
    refused = run_main_in_process([flagfile], cwd=tmp_path)
    assert refused.returncode == 1
    assert _last_line(refused) == (
        f'main.py: error: {flagfile} is in {moved}, but its --model_dir is {disk}/run (the '
        f'run was moved or copied?): to continue it in {moved}, add --model_dir={moved} after '
        "--flagfile; to use the other folder, pass that one's flags.cfg"
    )
    # As the line says, from another working folder: the relative dataset path was
    # stored absolute, and the run resumes where the disk filled up.
    resumed = run_main_in_process([flagfile, f'--model_dir={moved}'], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f'Resumed from {moved}/checkpoints/ckpt-{written[-1]}' in resumed.stderr
    assert not unfinished.exists()
    ours, theirs = checkpoint_values(str(moved)), checkpoint_values(str(straight))
    assert len(ours) > 50 and ours.keys() == theirs.keys()
    differing = [name for name in ours if not np.array_equal(ours[name], theirs[name])]
    assert not differing, f'{len(differing)} of {len(ours)} values differ: {differing[:5]}'

    # --only_eval of a folder in use evaluates, but leaves the trainer's results alone.
    held = run_lock.acquire(str(moved))
    before = folder_bytes(moved)
    try:
        evaluated = run_main_in_process(
            [*TINY[:4], f'--dataset_dir={digits_dir}', f'--only_eval={moved}/checkpoints']
        )
        after = folder_bytes(moved)
    finally:
        held.release()
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f'Not added to {moved}/eval_results.jsonl, which is in use by pid {os.getpid()}' in (
        evaluated.stderr
    )
    assert after == before


def test_full_read_only_and_forbidden_file_systems_are_the_users_errors():
    # What TensorFlow's file ops raise: the path and the cause, as the OS said them.
    import tensorflow as tf  # noqa: PLC0415

    full = tf.errors.ResourceExhaustedError(
        None,
        None,
        '{{function_node __wrapped__SaveV2}} /runs/r/checkpoints/ckpt-8_temp/part-00000-of-'
        '00001.data-00000-of-00001.tempstate1; No space left on device [Op:SaveV2]',
    )
    assert errors.is_user_error(full)
    assert errors.one_line(full).startswith(
        '/runs/r/checkpoints/ckpt-8: no space left on the device (free some space'
    )
    denied = PermissionError(13, 'Permission denied', f'/runs/{uuid.uuid4().hex}')
    assert errors.is_user_error(denied)
    assert errors.one_line(denied).startswith(f'{denied.filename}: permission denied (')
    # Any other failed op is still a bug, reported as one.
    assert not errors.is_user_error(tf.errors.InternalError(None, None, 'a kernel failed'))

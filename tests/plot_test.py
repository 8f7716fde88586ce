"""Tests of `python -m trainer.tools.plot`: curves read from event files and eval_results.jsonl."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from trainer.tools import plot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS_PER_EPOCH = 10


def _write_run(model_dir, *, with_epoch_scalar=True, resumed=False):
    """A run of 3 epochs as the trainer writes it: train scalars every 5 steps."""
    writer = tf.summary.create_file_writer(os.path.join(model_dir, 'logs', 'train'))
    with writer.as_default():
        for step in range(5, 31, 5):
            tf.summary.scalar('top1', step / 40, step=step)
            tf.summary.scalar('cross_entropy', 3.0 - step / 15, step=step)
            tf.summary.scalar('loss', 3.1 - step / 15, step=step)
            if with_epoch_scalar:
                tf.summary.scalar('epoch', step / STEPS_PER_EPOCH, step=step)
    writer.close()
    if resumed:
        # A restart from the checkpoint at step 20 logs steps 25 and 30 again. Its event
        # file must sort after the first, as a restart's does: the name starts with the
        # second it was opened, then the process's writer count, which sorts as text
        # ('10' before '9'), so two writers opened in one second could swap.
        opened = int(time.time())
        while int(time.time()) == opened:
            time.sleep(0.05)
        writer = tf.summary.create_file_writer(os.path.join(model_dir, 'logs', 'train'))
        with writer.as_default():
            for step in (25, 30):
                tf.summary.scalar('top1', 0.9, step=step)
        writer.close()
    rows = [
        {'epoch': 1, 'step': 10, 'top1': 0.3, 'top5': 0.8, 'cross_entropy': 2.0, 'num_examples': 9},
        {'epoch': 2, 'step': 20, 'top1': 0.5, 'top5': 0.9, 'cross_entropy': 1.5, 'num_examples': 9},
        # As versions before the figure's rename wrote it (a run resumed across them).
        {'epoch': 3, 'step': 30, 'top1': 0.6, 'top5': 0.9, 'loss': 1.2, 'num_examples': 9},
        # --only_eval rows: not part of the training curve.
        {'epoch': 3, 'step': 30, 'top1': 0.1, 'loss': 9, 'num_examples': 9, 'path': 'x'},
        {'epoch': None, 'step': None, 'top1': 0.1, 'loss': 9, 'num_examples': 9, 'path': 'y'},
    ]
    with open(os.path.join(model_dir, 'eval_results.jsonl'), 'w') as stream:
        stream.write(''.join(json.dumps(row) + '\n' for row in rows))


def test_reads_train_scalars_and_trainer_evaluations(tmp_path):
    _write_run(str(tmp_path), resumed=True)
    train = plot.read_scalars(str(tmp_path / 'logs' / 'train'))
    assert sorted(train['top1']) == [5, 10, 15, 20, 25, 30]
    assert train['top1'][20] == pytest.approx(0.5)
    assert train['top1'][30] == pytest.approx(0.9)  # The resumed run's value wins.
    evals = plot.read_eval_results(str(tmp_path))
    assert [(row['epoch'], row['top1']) for row in evals] == [(1, 0.3), (2, 0.5), (3, 0.6)]


@pytest.mark.parametrize('with_epoch_scalar', [True, False])
def test_steps_become_epochs(tmp_path, with_epoch_scalar):
    _write_run(str(tmp_path), with_epoch_scalar=with_epoch_scalar)
    train = plot.read_scalars(str(tmp_path / 'logs' / 'train'))
    to_epoch, label = plot.steps_to_epochs(train, plot.read_eval_results(str(tmp_path)))
    assert label == 'epoch'
    assert [to_epoch(step) for step in (5, 10, 25)] == pytest.approx([0.5, 1.0, 2.5])


def test_plot_draws_both_panels_into_a_png(tmp_path):
    _write_run(str(tmp_path))
    output = plot.plot_run(str(tmp_path), str(tmp_path / 'out' / 'curves.png'))
    image = tf.io.decode_png(tf.io.read_file(output)).numpy()
    assert image.shape[:2] == (420, 1100)
    # The train (C0 blue) and validation (C1 orange) curves are drawn.
    colours = image[..., :3].reshape(-1, 3).astype(int)
    assert (np.abs(colours - [31, 119, 180]).sum(axis=1) < 30).sum() > 200
    assert (np.abs(colours - [255, 127, 14]).sum(axis=1) < 30).sum() > 200


@pytest.mark.slow
def test_command_line_writes_the_png(tmp_path):
    _write_run(str(tmp_path))
    result = subprocess.run(
        [sys.executable, '-m', 'trainer.tools.plot', str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f'Wrote {tmp_path / "curves.png"}'
    assert os.path.getsize(tmp_path / 'curves.png') > 10000


def test_command_line_refuses_a_folder_without_curves(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        plot.main([str(tmp_path)])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == (
        f'python -m trainer.tools.plot: error: {tmp_path} holds no training curves: no logs/train '
        'event files with scalars and no eval_results.jsonl\n'
    )

"""Tests of trainer/: the L2 term, the schedules, and whole runs through main.py.

The epoch runs (a run, a restart from its flags.cfg, evaluations of what it wrote)
go through main.py's path in this process (`tests/in_process.py`); the run killed in
its second epoch is a real process, and so is the command-line error.
"""

import json
import os
import shutil
import re
import signal

import numpy as np
import pytest
import tensorflow as tf

import densenet
from in_process import run_main_in_process
from main_runs import Started
from main_runs import assert_identical
from main_runs import checkpoint_values
from main_runs import checkpoints
from main_runs import run_main
from main_runs import start_main
from trainer import evaluation
from trainer.engine import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_l2_term_matches_formula_and_skips_batch_norm():
    model = densenet.create_model('densenet_bc_10_4', num_classes=10, image_size=32)
    variables = step_lib.decayed_variables_of(model)
    kernels = [w for w in model.weights if 'kernel' in w.name]
    assert len(variables) == len(kernels) > 0
    assert not any('gamma' in v.name or 'beta' in v.name or 'bias' in v.name for v in variables)
    expected = (
        0.5 * 1e-4 * sum(float(np.sum(np.square(w.numpy().astype(np.float64)))) for w in kernels)
    )
    assert float(step_lib.l2_term(variables, 1e-4)) == pytest.approx(expected, rel=1e-5)
    # Its gradient is wd * w: the paper's (and PyTorch's) weight decay.
    with tf.GradientTape() as tape:
        term = step_lib.l2_term(variables, 1e-4)
    gradient = tape.gradient(term, variables[0])
    np.testing.assert_allclose(gradient.numpy(), 1e-4 * variables[0].numpy(), rtol=1e-6)


# Whole runs through main.py in subprocesses, on the bundled digits.

TINY = [
    '--model=densenet_bc_10_4',
    '--image_size=32',
    '--num_classes=10',
    '--bfloat16=false',
    '--batch_size=64',
    '--optimizer=sgd',
    '--initial_lr=0.05',
    '--lr_sched=cosine',
    '--random_flip=false',
    '--eval_crop_fraction=1.0',
    '--deterministic',
    '--seed=3',
    '--steps_per_loop=4',
    '--log_every_steps=4',
    '--checkpoint_every_steps=4',
    '--shuffle_buffer=512',
]


def _main(*args, check=True):
    return run_main(args, timeout=600, check=check)


def _results(model_dir):
    with open(os.path.join(model_dir, 'eval_results.jsonl')) as stream:
        return [json.loads(line) for line in stream]


@pytest.mark.slow
def test_run_killed_in_its_second_epoch_resumes_bit_identical(digits_dir, tmp_path):
    """A SIGKILL in epoch 2 with the defaults users train with: flips, bfloat16, EMA.

    The resumed stream must continue epoch 2's shuffle and augmentation at the step the
    checkpoint holds; replaying epoch 1's order there (the easy bug) changes every value
    after the resume. Within the first epoch the two orders coincide, so the kill must
    come after the epoch boundary (23 steps of 1,497 digits at batch 64).
    """
    common = [
        *TINY,
        '--bfloat16=true',
        '--random_flip=true',
        '--ema_decay=0.9',
        f'--dataset_dir={digits_dir}',
        '--train_steps=32',
        '--keep_checkpoints=20',
        '--save_every_epoch=false',  # Exports are not what this test checks: seconds each.
        '--export_last_step=false',
    ]
    straight, killed = str(tmp_path / 'straight'), str(tmp_path / 'killed')
    straight_run = start_main([*common, f'--model_dir={straight}'])  # Beside the killed run.
    run = Started([*common, f'--model_dir={killed}'])
    run.wait_for(r'step 28/')
    run.process.kill()
    assert run.finish() == -signal.SIGKILL
    # ckpt-28 only if the kill came after its write; either way a checkpoint in epoch 2.
    resumed_from = max(checkpoints(killed))
    assert resumed_from in (24, 28), sorted(checkpoints(killed))
    result = _main(*common, f'--model_dir={killed}')
    assert f'ckpt-{resumed_from}' in result.stderr and 'Resumed from' in result.stderr
    assert straight_run.result().returncode == 0, straight_run.result().stderr[-3000:]

    straight_checkpoints, killed_checkpoints = checkpoints(straight), checkpoints(killed)
    assert sorted(straight_checkpoints) == sorted(killed_checkpoints)
    for step in (resumed_from, 32):
        assert_identical(straight_checkpoints[step], killed_checkpoints[step])
    # The averaged weights are checkpointed and were resumed too.
    assert any('weight_average' in name for name in checkpoint_values(killed_checkpoints[32]))
    assert _results(straight)[-1]['step'] == _results(killed)[-1]['step'] == 32
    assert _results(straight)[-1]['top1'] == _results(killed)[-1]['top1']


def _epoch_run_and_evaluations(precision, digits_dir, model_dir):
    """An epoch's run, a restart from its flags.cfg, evaluations of its export and checkpoint.

    Each step is checked as it ends.
    """
    flags = [*TINY, f'--bfloat16={precision == "bfloat16"}']
    result = run_main_in_process(
        [*flags, f'--dataset_dir={digits_dir}', f'--model_dir={model_dir}', '--epochs=1'],
        check=True,
    )
    assert 'Validation top-1' in result.stdout
    assert f'{precision} compute' in result.stderr
    # Mixed precision keeps float32 weights (and optimizer state) whatever it computes in.
    values = checkpoint_values(model_dir)
    floats = {str(value.dtype) for value in values.values() if value.dtype.kind == 'f'}
    assert floats == {'float32'}, precision
    # 1,497 training digits at batch 64: 23 steps in the epoch.
    last = _results(model_dir)[-1]
    assert last['epoch'] == 1 and last['step'] == 23 and last['num_examples'] == 300
    assert set(last) >= {'epoch', 'step', 'top1', 'top5', 'cross_entropy', 'num_examples'}
    assert os.path.exists(os.path.join(model_dir, 'saves', 'epoch_001', 'saved_model.pb'))
    assert os.listdir(os.path.join(model_dir, 'logs', 'train'))
    assert os.listdir(os.path.join(model_dir, 'logs', 'eval'))
    flag_lines = open(os.path.join(model_dir, 'flags.cfg')).read().splitlines()
    assert '--model=densenet_bc_10_4' in flag_lines
    assert ('--bfloat16' if precision == 'bfloat16' else '--nobfloat16') in flag_lines
    # The flag file reproduces the run's configuration: a restart with it resumes and
    # only evaluates.
    # Flags after --flagfile override the file's (it says --keep_checkpoints=5); a flag
    # before it, which the file would silently override, is refused.
    flagfile = f'--flagfile={os.path.join(model_dir, "flags.cfg")}'
    refused = run_main_in_process(['--keep_checkpoints=7', flagfile])
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        f'main.py: error: --keep_checkpoints=7 comes before {flagfile}, which sets '
        '--keep_checkpoints again and would win: put --keep_checkpoints=7 after --flagfile'
    )
    again = run_main_in_process([flagfile, '--keep_checkpoints=3'], check=True)
    assert 'Training already complete' in again.stderr
    rewritten = open(os.path.join(model_dir, 'flags.cfg')).read().splitlines()
    assert '--keep_checkpoints=5' in flag_lines and '--keep_checkpoints=3' in rewritten
    # Evaluating the export and the checkpoint gives the trainer's own figures. It reads
    # only the validation records: here the training shards are damaged beyond reading
    # (counting them, as training does, fails), and the checkpoint's epoch comes from
    # the run's own rows.
    damaged = os.path.join(os.path.dirname(model_dir), f'{precision}_damaged_data')
    shutil.copytree(digits_dir, damaged)
    for name in os.listdir(damaged):
        if name.startswith('train-'):
            with open(os.path.join(damaged, name), 'wb') as stream:
                stream.write(b'not a TFRecord' * 100)
    for path, epoch in (
        (os.path.join(model_dir, 'saves', 'epoch_001'), None),
        (os.path.join(model_dir, 'checkpoints'), 1),
    ):
        run_main_in_process([*flags, f'--dataset_dir={damaged}', f'--only_eval={path}'], check=True)
        evaluated = _results(model_dir)[-1]
        assert evaluated['num_examples'] == 300
        assert evaluated['epoch'] == epoch and evaluated['path'] == path
        assert evaluated['top1'] == pytest.approx(last['top1'], abs=1e-6)
        assert evaluated['cross_entropy'] == pytest.approx(last['cross_entropy'], rel=1e-4)
    # Training on that data reads the training shards, and names the damaged one.
    refused = run_main_in_process(
        [*flags, f'--dataset_dir={damaged}', f'--model_dir={model_dir}_other', '--epochs=1']
    )
    assert refused.returncode == 1
    assert 'train-' in refused.stderr.strip().splitlines()[-1], refused.stderr[-2000:]


PRECISIONS = ('float32', 'bfloat16')


@pytest.mark.parametrize('precision', PRECISIONS)
@pytest.mark.slow
def test_epoch_run_writes_everything_and_evaluates_again(precision, digits_dir, tmp_path):
    # bfloat16 is the default precision: the whole path runs in it too.
    _epoch_run_and_evaluations(precision, digits_dir, str(tmp_path / precision))


@pytest.mark.slow
def test_steps_skipped_in_a_row_stop_the_run_with_exit_1_and_no_later_checkpoint(
    digits_dir, tmp_path
):
    """--max_skipped_steps through the trainer: the guard, its line, no checkpoint after.

    An absurd weight decay with dynamic loss scaling makes every step's gradient
    overflow while the loss stays finite: the L2 term is about 4e37, but its gradient
    times the loss scale (2^15, halved after each skip) is past float32's 3.4e38 for
    the first six scales. Steps 1-4 are skipped; the fourth is one more than 3.
    """
    model_dir = str(tmp_path / 'skipping')
    result = run_main_in_process(
        [
            *TINY,
            '--loss_scale=dynamic',
            '--weight_decay=1e36',
            '--max_skipped_steps=3',
            '--steps_per_loop=1',
            '--log_every_steps=1',
            '--checkpoint_every_steps=2',
            '--train_steps=10',
            f'--dataset_dir={digits_dir}',
            f'--model_dir={model_dir}',
        ]
    )
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r'main\.py: error: 4 consecutive steps up to step 4 were skipped for non-finite '
        r'gradients \(more than --max_skipped_steps=3\); stopped without checkpointing: the '
        r'newest checkpoint, \S*ckpt-2, is unaffected',
        last,
    ), last
    assert sorted(checkpoints(model_dir)) == [2]


def test_conflicting_flags_are_one_line_errors(tmp_path):
    result = _main(
        '--synthetic_data',
        f'--model_dir={tmp_path}',
        '--only_eval=x',
        '--train_steps=5',
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        'main.py: error: --only_eval evaluates and exits; it cannot be combined with --train_steps'
    )


def test_eval_result_of_a_repeated_step_replaces_the_earlier_row(tmp_path):
    # A run killed after an evaluation and before its checkpoint evaluates the same
    # step again on resume; a kill mid-write leaves half a line.
    path = tmp_path / 'eval_results.jsonl'
    only_eval = {'epoch': 2, 'step': 20, 'top1': 0.5, 'path': '/runs/a/checkpoints'}
    path.write_text(
        json.dumps({'epoch': 1, 'step': 10, 'top1': 0.25})
        + '\n'
        + json.dumps(only_eval)
        + '\n'
        + json.dumps({'epoch': 2, 'step': 20, 'top1': 0.5})
        + '\n'
        + '{"epoch": 3, "st'
    )
    evaluation.append_result(str(tmp_path), {'epoch': 2, 'step': 20, 'top1': 0.75})
    evaluation.append_result(str(tmp_path), only_eval)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(row['step'], row['top1'], 'path' in row) for row in rows] == [
        (10, 0.25, False),
        (20, 0.5, True),
        (20, 0.75, False),
        (20, 0.5, True),
    ]

"""A run interrupted by an earlier version of the trainer resumes with this one.

The earlier version is the code before the trainer's restructuring (flags, config,
controller): commit `OLD_CODE`. This test takes it from the repository's history
(`git archive`), lets it run `tests/fixtures/write_resume_fixture.py` on the shared
data in `tests/fixtures/resume/data` (its checkpoint at step 15 of 30, and what the same
run wrote when not interrupted: its checkpoint at step 30 and its evaluations), then
resumes its step-15 model_dir with this code, its flags.cfg as the flagfile. This is
what a user does when upgrading in the middle of a run, and what they are promised:

- until the training input's bits changed (issue 22: uint8 images rounded after the
  resize, `input_pipeline/preprocessing.VERSION` 2), the run ended where the old code
  ended, every checkpointed value bit-identical;
- since, the run resumes exactly (the same checkpoint, step, evaluations and export
  cadence) and says in one line that its input changed, so that it cannot silently
  become another run: the line is checked here, and so is that the values did change
  (the line is true), and that the new checkpoints record the new version (so that a
  further resume says nothing).

Why the old code runs here rather than ship its output: its output held only on CPUs
like the one that wrote it. Both runs are made under `trainer/cpu_isa.PORTABLE_ENV`
(oneDNN's ops off, its kernels capped at AVX, one intra-op thread), which made core
counts and instruction-set caps agree, yet a checkpoint written that way on an AMD
EPYC (AVX512_BF16, no AMX) and the same run on an Intel Xeon with AMX differed in 123
of 128 values after 15 steps, on TensorFlow 2.21 and 2.15 alike (cause not found; see
README, "Across machines"). Made on the machine that runs the test, both sides share
the CPU, and bit-identical stays the bar: a tolerance wide enough for CPUs (unpinned,
up to 0.62 in some value) would let through a changed augmentation seed (2.3).
"""

import json
import os
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from main_runs import ROOT, checkpoint_values, checkpoints, run_main

from input_pipeline import preprocessing
from trainer import config as config_lib
from trainer.devices import cpu_isa

pytestmark = pytest.mark.slow

FIXTURE = os.path.join(ROOT, 'tests', 'fixtures', 'resume')
OLD_CODE = '819b125'


@pytest.fixture(scope='module')
def written(tmp_path_factory):
    """The old code's model_dir at step 15 and its uninterrupted end, made on this CPU."""
    old = tmp_path_factory.mktemp('old_code')
    archive = subprocess.run(['git', 'archive', OLD_CODE], cwd=ROOT, capture_output=True)
    if archive.returncode != 0:
        pytest.skip(
            f'needs the repository history to run the old code (git archive {OLD_CODE}: '
            f'{archive.stderr.decode(errors="replace").strip()})'
        )
    subprocess.run(['tar', '-x', '-C', str(old)], input=archive.stdout, check=True)
    os.makedirs(old / 'tests' / 'fixtures' / 'resume', exist_ok=True)
    shutil.copy(
        os.path.join(ROOT, 'tests', 'fixtures', 'write_resume_fixture.py'),
        old / 'tests' / 'fixtures',
    )
    # Its portable environment, where the earlier code kept the module.
    shutil.copy(os.path.join(ROOT, 'trainer', 'devices', 'cpu_isa.py'), old / 'trainer')
    shutil.copytree(os.path.join(FIXTURE, 'data'), old / 'tests' / 'fixtures' / 'resume' / 'data')
    result = subprocess.run(
        [sys.executable, os.path.join('tests', 'fixtures', 'write_resume_fixture.py')],
        cwd=old,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return str(old / 'tests' / 'fixtures' / 'resume' / f'keras{keras.__version__.split(".")[0]}')


@pytest.mark.stack
def test_a_run_checkpointed_by_the_earlier_code_resumes_and_says_its_input_changed(
    tmp_path, written
):
    run = tmp_path / 'run'
    shutil.copytree(os.path.join(written, 'run'), run)
    flagfile = run / 'flags.cfg'
    before = flagfile.read_text()
    # The flags.cfg names the folders of the machine that wrote it: point them here.
    result = run_main(
        [f'--flagfile={flagfile}', f'--model_dir={run}', f'--dataset_dir={FIXTURE}/data'],
        env=cpu_isa.PORTABLE_ENV,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r'Resumed from \S*ckpt-15', result.stderr), result.stderr[-3000:]
    changed = [line for line in result.stderr.splitlines() if 'training input changed' in line]
    assert len(changed) == 1, result.stderr[-3000:]
    assert re.search(
        r'since \S*ckpt-15 was written: it was made with input version 1 .* this code makes '
        rf'version {preprocessing.VERSION} ',
        changed[0],
    ), changed[0]

    saved = checkpoints(str(run))
    assert {20, 25, 30} <= set(saved), saved
    ours = checkpoint_values(saved[30])
    theirs = checkpoint_values(os.path.join(written, 'reference', 'ckpt-30'))
    assert ours.keys() == theirs.keys(), sorted(set(ours) ^ set(theirs))[:5]
    assert len(ours) > 50
    differing = [name for name in sorted(ours) if not np.array_equal(ours[name], theirs[name])]
    assert differing, 'the input changed, yet every value is what the old code made'
    reader = tf.train.load_checkpoint(saved[30])
    assert reader.get_tensor('input_version/.ATTRIBUTES/VARIABLE_VALUE') == preprocessing.VERSION

    def rows(path):
        with open(path) as stream:
            return [json.loads(line) for line in stream]

    # The same evaluations, at the same steps, of as many examples.
    def cadence(path):
        return [(row.get('step'), row.get('num_examples')) for row in rows(path)]

    assert cadence(run / 'eval_results.jsonl') == cadence(
        os.path.join(written, 'reference', 'eval_results.jsonl')
    )
    assert (run / 'saves' / 'epoch_001' / 'saved_model.pb').exists()

    # The flags it was started with are written back unchanged, but for the folders;
    # flags added since are written with their defaults (the run did not set them).
    def flag_lines(text):
        values = {}
        for line in text.splitlines():
            if not line.startswith('--'):
                continue
            name, equals, value = line[2:].partition('=')
            if not equals:  # absl writes a boolean as --name or --noname.
                name, value = (name[2:], 'false') if name.startswith('no') else (name, 'true')
            if name not in ('model_dir', 'dataset_dir'):
                values[name] = value
        return values

    old, new = flag_lines(before), flag_lines(flagfile.read_text())
    assert {name: new[name] for name in old if name in new} == old
    assert old.keys() <= new.keys()
    defaults = config_lib.RunConfig()
    for name in new.keys() - old.keys():
        default = getattr(defaults, name)
        assert new[name] == (str(default).lower() if isinstance(default, bool) else str(default))

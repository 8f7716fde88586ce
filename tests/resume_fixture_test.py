"""A run interrupted by an earlier version of the trainer resumes with this one.

`tests/fixtures/resume/` holds a run folder written by the code before the trainer's
restructuring (flags, config, controller; see `tests/fixtures/write_resume_fixture.py`):
its flags.cfg and its checkpoint at step 15 of 30, and what the same run wrote when
it was not interrupted (its checkpoint at step 30 and its evaluations). Resumed here
with that flags.cfg as the flagfile, the run must end where the old code ended: every
checkpointed value bit-identical, the same evaluations, an export at the epoch end.
This is the promise a user relies on when upgrading in the middle of a run.

Both runs, the fixture's and this one, are made under `trainer/cpu_isa.PORTABLE_ENV`
(oneDNN's ops off, its kernels capped at AVX, one intra-op thread), in a process of its
own because the pin must be in place before TensorFlow starts: without it the bits
depend on the CPU (on TensorFlow 2.21, an AVX-512 CPU without BF16 or oneDNN off
changed 123 of the 128 values, another core count 9), and the test held only on the
CPU that wrote the fixture. Bit-identical stays the bar: unpinned, this CPU's run ends
up to 0.62 away from the pinned fixture in some value, and a changed augmentation seed
2.3 away, so a tolerance wide enough for CPUs would let through changes of a few times
the drift.
"""

import json
import os
import re
import shutil

import keras
import numpy as np
import pytest
from main_runs import ROOT, checkpoint_values, checkpoints, run_main

from trainer import config as config_lib
from trainer import cpu_isa

pytestmark = pytest.mark.slow

FIXTURE = os.path.join(ROOT, 'tests', 'fixtures', 'resume')


@pytest.mark.stack
def test_a_run_checkpointed_by_the_earlier_code_resumes_bit_identical(tmp_path):
    written = os.path.join(FIXTURE, f'keras{keras.__version__.split(".")[0]}')
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

    saved = checkpoints(str(run))
    assert {20, 25, 30} <= set(saved), saved
    ours = checkpoint_values(saved[30])
    theirs = checkpoint_values(os.path.join(written, 'reference', 'ckpt-30'))
    assert ours.keys() == theirs.keys(), sorted(set(ours) ^ set(theirs))[:5]
    assert len(ours) > 50
    differing = [name for name in sorted(ours) if not np.array_equal(ours[name], theirs[name])]
    assert not differing, f'{len(differing)} of {len(ours)} values differ: {differing[:5]}'

    def rows(path):
        with open(path) as stream:
            return [json.loads(line) for line in stream]

    assert rows(run / 'eval_results.jsonl') == rows(
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

"""The benches' own checks: what can be tested of them without a GPU, in seconds.

`bench/gpu.sh` must refuse at once, in one line, where no GPU is visible: a person who
runs it on the wrong machine should learn so before anything slow starts. The
largest-batch search of `bench/train_step.py` is checked with a stand-in for its child
processes, and the overhead case runs once at tiny sizes to show that its RESULT line
carries the ratios the README quotes.
"""

import json
import os
import stat
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _stub(folder, name, script):
    path = os.path.join(folder, name)
    with open(path, 'w') as stream:
        stream.write('#!/bin/sh\n' + script)
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


def test_gpu_sh_without_gpu_fails_fast_in_one_line(tmp_path):
    """Exit status 1 and one line on stderr, before any Python (TensorFlow) starts.

    A stand-in nvidia-smi answers as it does on a machine without a GPU (so the test
    holds on a GPU machine too), and stand-in pythons record whether they were called:
    the check must come first, not after a TensorFlow import or a bench.
    """
    stubs = tmp_path / 'bin'
    stubs.mkdir()
    called = tmp_path / 'python_called'
    _stub(stubs, 'nvidia-smi', 'echo "No devices were found"\nexit 6\n')
    for python in ('python', 'python3'):
        _stub(stubs, python, f'touch {called}\nexit 0\n')
    env = {key: value for key, value in os.environ.items() if key != 'GPU_SH_ALLOW_CPU'}
    env.pop('PYTHON', None)
    env['PATH'] = f'{stubs}{os.pathsep}{env.get("PATH", "")}'
    start = time.perf_counter()
    result = subprocess.run(
        ['bash', os.path.join(ROOT, 'bench', 'gpu.sh')],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    seconds = time.perf_counter() - start
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith('bench/gpu.sh: no GPU visible'), lines[0]
    assert result.stdout == ''
    assert not called.exists(), 'gpu.sh ran Python before its GPU check'
    assert seconds < 5, f'{seconds:.1f} s before refusing'


def test_largest_batch_search_doubles_then_bisects():
    """Against a stand-in device that fits up to a known batch: found within tolerance."""
    program = textwrap.dedent(
        f"""
        import importlib.util, json
        spec = importlib.util.spec_from_file_location(
            'train_step', {os.path.join(ROOT, 'bench', 'train_step.py')!r})
        train_step = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(train_step)
        train_step.FLAGS(['train_step', '--max_batch_start=256', '--max_batch_limit=8192',
                          '--max_batch_tolerance=0.125'])
        found = {{}}
        for largest in (1000, 100, 256, 5000, 20000):
            tried = []
            def fits(batch, memory_efficient, largest=largest):
                tried.append(batch)
                return batch <= largest
            train_step._fits = fits
            found[largest] = dict(train_step._largest_batch(False), tried=tried)
        print(json.dumps(found))
        """
    )
    result = subprocess.run(
        [sys.executable, '-c', program], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    found = {int(key): value for key, value in json.loads(result.stdout).items()}
    for largest in (1000, 100, 256, 5000):
        search = found[largest]
        assert search['largest'] <= largest < search['first_too_big'], search
        assert search['first_too_big'] - search['largest'] <= 0.125 * search['largest'], search
        assert search['tries'] == len(search['tried']) <= 12, search
    assert found[256]['tried'][:2] == [256, 512]  # Doubling first.
    # Never a failure: the search stops at the limit and says so.
    assert found[20000]['largest'] == 8192 and found[20000]['first_too_big'] is None


@pytest.mark.slow
def test_train_step_overhead_case_reports_fit_at_steps_per_execution():
    """The overhead case at tiny sizes: RESULT has both fit ratios, finite and positive."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, 'bench', 'train_step.py'),
            '--parts=overhead',
            '--overhead_image_size=8',
            '--overhead_batch_size=2',
            '--overhead_steps=4',
            '--steps_per_loop=2',
            '--repeats=1',
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith('RESULT '), result.stdout
    figures = json.loads(last[len('RESULT ') :])
    assert 'vs_fit_spe' in figures  # None: the DenseNet-121 part did not run.
    for key in ('overhead_vs_fit_spe', 'overhead_vs_fit'):
        assert isinstance(figures[key], float) and figures[key] > 0, figures
    assert figures['overhead_fit_spe_images_per_second'] > 0

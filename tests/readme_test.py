"""Keeps README.md true: its quick start, its flags table, its picture, its test commands."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme():
    with open(os.path.join(ROOT, 'README.md')) as stream:
        return stream.read()


def test_quick_start_commands_are_the_ones_ci_runs():
    # .ci/run installs and tests exactly as these two lines say.
    readme = _readme()
    assert (
        'python3 -m venv .venv && . .venv/bin/activate && pip install . && '
        'python main.py --flagfile=demo.cfg\n'
    ) in readme
    assert '. .venv/bin/activate && pip install ".[test]" && python -m pytest -q\n' in readme


def test_flags_table_lists_every_flag_of_main():
    # main.py's own flags, without importing it here (it would define them in this
    # process): its --helpfull lists them under main.py's module heading.
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'main.py'), '--helpfull'],
        capture_output=True,
        text=True,
        timeout=120,
    )
    ours = result.stdout.split('main.py:', 1)[1].split('\nabsl.', 1)[0]
    names = set(re.findall(r'^  --(?:\[no\])?(\w+)', ours, re.MULTILINE))
    assert {'dataset_dir', 'model_dir', 'only_eval', 'profile_steps'} <= names
    table = _readme().split('## Flags', 1)[1].split('\n## ', 1)[0]
    listed = set(re.findall(r'`--(\w+)`', table))
    assert not names - listed, f'add to the README flags table: {sorted(names - listed)}'
    assert not listed - names, f'not flags of main.py: {sorted(listed - names)}'


def test_pictures_exist():
    for path in re.findall(r'!\[[^\]]*\]\(([^)]+)\)', _readme()):
        assert os.path.exists(os.path.join(ROOT, path)), path


def test_gaudi_install_command_names_the_containers_tensorflow():
    # .ci/gaudi_standin runs this command in a stand-in of Habana's container and checks
    # that it leaves one TensorFlow; here, that setup.py reads the variable it sets.
    section = _readme().split('## Intel Gaudi', 1)[1].split('\n## ', 1)[0]
    command = re.search(r'```sh\n([^\n]+)\n', section).group(1)
    assert command == 'DENSENET_TENSORFLOW=tensorflow-cpu pip install .'
    with open(os.path.join(ROOT, 'setup.py')) as stream:
        assert "os.environ.get('DENSENET_TENSORFLOW', 'tensorflow')" in stream.read()


@pytest.mark.slow
def test_fast_loop_command_selects_every_test_file_and_stack_the_standins(tmp_path):
    """README's fast-loop command, verbatim, with `--collect-only -n 0` added.

    It must collect tests from every test file but those whose every test is slow;
    `-m stack` (what .ci/gaudi_standin runs) must name the stand-in's files.
    """
    section = _readme().split('## Tests', 1)[1].split('\n## ', 1)[0]
    command = re.search(r'```sh\n([^\n]+)\n', section).group(1)
    assert command == 'python -m pytest -q -m "not slow"'

    def collected(*marks):
        result = subprocess.run(
            [sys.executable, '-m', 'pytest', '-q', *marks, '--collect-only', '-n', '0'],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return {line.split('::')[0] for line in result.stdout.splitlines() if '::' in line}

    files = {
        f'tests/{name}'
        for name in os.listdir(os.path.join(ROOT, 'tests'))
        if name.endswith('_test.py')
    }
    wholly_slow = {  # Files of one slow run or process, checked in several ways.
        f'tests/{name}_test.py'
        for name in (
            'errors',
            'resume_kill',
            'ema',
            'resume_fixture',
            'readme_imagenet',
            'input_pipeline_distributed',
        )
    }
    assert collected('-m', 'not slow') == files - wholly_slow
    assert collected('-m', 'stack') == {
        'tests/checkpoint_test.py',
        'tests/densenet_test.py',
        'tests/distribute_test.py',
        'tests/resume_fixture_test.py',
    }

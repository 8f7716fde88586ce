"""Keeps README.md true: its quick start, its flags table and its picture."""

import os
import re
import subprocess
import sys

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

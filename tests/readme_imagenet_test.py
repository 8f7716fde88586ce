"""README's ImageNet conversion command, run verbatim on miniature downloads.

Step 2 of "From the ImageNet tars to a trained model" is the command a user copies. It
runs here as written, with only its `/downloads/` and `/data/` folders moved to
temporary ones holding ILSVRC2012 in miniature, so that README and builder cannot
drift apart again (the README once passed a label file the builder refused).
"""

import os
import re
import subprocess
import sys

import pytest

from input_pipeline_build_test import check_labels
from input_pipeline_build_test import make_ilsvrc2012
from input_pipeline_build_test import read_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _section() -> str:
    with open(os.path.join(ROOT, 'README.md')) as stream:
        readme = stream.read()
    return readme.split('## From the ImageNet tars', 1)[1].split('\n## ', 1)[0]


def _build_command(section: str) -> str:
    """The ```sh block that runs the builder, as written (indentation removed)."""
    blocks = re.findall(r'^( *)```sh\n(.*?)^\1```', section, re.MULTILINE | re.DOTALL)
    commands = [
        ''.join(line[len(indent) :] for line in block.splitlines(keepends=True))
        for indent, block in blocks
        if 'input_pipeline.build_imagenet' in block
    ]
    assert len(commands) == 1, commands
    return commands[0]


@pytest.mark.slow
def test_readme_conversion_command_builds_labelled_records(tmp_path):
    section = _section()
    command = _build_command(section)
    downloads, data = tmp_path / 'downloads', tmp_path / 'data'
    downloads.mkdir()
    truth = make_ilsvrc2012(downloads)
    # Every download the command reads is one that step 1 tells the user to fetch.
    step1 = section.split('\n2. ', 1)[0]
    for name in re.findall(r'/downloads/(\S+?)(?=\s|\\|$)', command):
        assert f'`{name}`' in step1, name
        assert (downloads / name).exists(), name

    moved = command.replace('/downloads/', f'{downloads}/').replace('/data/', f'{data}/')
    # `python` is this interpreter, as it is for a user in the project's venv.
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', '')
    result = subprocess.run(
        ['bash', '-c', moved],
        cwd=ROOT,
        env={**os.environ, 'PATH': path},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    output = data / 'imagenet'
    names = sorted(os.listdir(output))
    # The shard names README promises.
    assert names[0] == 'train-00000-of-01024' and names[-1] == 'validation-00127-of-00128'
    assert len(names) == 1024 + 128
    check_labels(read_records(output, 'train') + read_records(output, 'validation'), truth)

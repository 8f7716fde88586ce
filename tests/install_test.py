"""What `pip install .` puts on a machine: four packages and seven commands, no `main`.

The design card's top-level packages are installed under their own names (README,
"Install", says why); `main.py` stays the checkout's way in and is not installed, so
that no module named `main` lands in site-packages. Each command's `--help` runs from
a folder that is not the checkout, in a virtualenv that holds only this project: its
dependencies come from the test's own environment through a `.pth` file, which spares
a TensorFlow download per run while the project's files come only from the install.
"""

import glob
import os
import subprocess
import sys

import pytest
from main_runs import ROOT

# Each command, a word of its help, and the status of `--help` (absl's exits with 1).
COMMANDS = {
    'densenet-train': ('--model_dir', 1),
    'densenet-predict': ('--model', 0),
    'densenet-plot': ('model_dir', 0),
    'densenet-build-imagenet': ('--train_tar', 0),
    'densenet-build-folders': ('--image_dir', 0),
    'densenet-validate': ('--dataset_dir', 0),
    'densenet-data-service': ('dispatcher', 0),
}


@pytest.mark.slow
def test_a_clean_virtualenv_gets_four_packages_and_every_command(tmp_path):
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    python = str(venv / 'bin' / 'python')
    installed = subprocess.run(
        [python, '-m', 'pip', 'install', '--no-deps', '--quiet', ROOT],
        capture_output=True,
        text=True,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    (site,) = glob.glob(str(venv / 'lib' / 'python*' / 'site-packages'))
    ours = {
        name
        for name in os.listdir(site)
        if not name.startswith(('_', 'pip', 'setuptools', 'pkg_resources', 'distutils'))
        and not name.endswith(('.dist-info', '.pth'))
    }
    assert ours == {'base', 'densenet', 'input_pipeline', 'trainer'}, sorted(ours)
    (top_level,) = glob.glob(os.path.join(site, 'densenet_trainer-*.dist-info', 'top_level.txt'))
    with open(top_level) as stream:
        assert sorted(stream.read().split()) == ['base', 'densenet', 'input_pipeline', 'trainer']
    # The dependencies (TensorFlow, absl, ...) of this environment, after the venv's own.
    with open(os.path.join(site, 'dependencies.pth'), 'w') as stream:
        stream.write('\n'.join(p for p in sys.path if p.endswith('site-packages')) + '\n')

    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    where = subprocess.run(
        [python, '-c', 'import trainer; print(trainer.__file__)'],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(site), where.stdout
    for command, (fragment, status) in COMMANDS.items():
        result = subprocess.run(
            [str(venv / 'bin' / command), '--help'],
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == status, (command, result.stderr[-2000:])
        assert fragment in result.stdout, (command, result.stdout[-2000:])

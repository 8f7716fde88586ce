"""The layers of setup.cfg's import-linter contracts, checked by the tool itself.

main.py -> trainer -> (input_pipeline | densenet) -> base, and inside trainer/: tools
-> run -> its parts -> artifacts | reporting -> engine -> optimization | devices ->
config. `lint-imports` (import-linter, a test extra) reads the contracts from
setup.cfg; the second test shows it breaks on an inverted import of each kind, so
that a contract which checks nothing cannot pass here.
"""

import os
import shutil
import subprocess
import sys

from main_runs import ROOT

_LINT_IMPORTS = os.path.join(os.path.dirname(sys.executable), 'lint-imports')
_PACKAGES = ('base', 'densenet', 'input_pipeline', 'trainer')


def _lint_imports(cwd):
    assert os.path.exists(_LINT_IMPORTS), 'import-linter is a test extra: pip install ".[test]"'
    return subprocess.run(
        [_LINT_IMPORTS, '--no-cache'], cwd=cwd, capture_output=True, text=True, check=False
    )


def test_imports_point_down_as_setup_cfg_declares():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'Contracts: 2 kept, 0 broken.' in result.stdout, result.stdout


def test_each_inverted_import_breaks_a_contract(tmp_path):
    for name in _PACKAGES:
        shutil.copytree(
            os.path.join(ROOT, name), tmp_path / name, ignore=shutil.ignore_patterns('__pycache__')
        )
    shutil.copy(os.path.join(ROOT, 'setup.cfg'), tmp_path)
    inverted = {
        'densenet/blocks.py': 'from trainer import config',
        'input_pipeline/formats.py': 'from trainer.artifacts import model_dir',
        'base/errors.py': 'import input_pipeline',
        'trainer/engine/loop.py': 'from trainer import run',
        'trainer/config.py': 'from trainer.devices import gaudi',
    }
    for path, line in inverted.items():
        with open(tmp_path / path, 'a') as stream:
            stream.write(f'\n{line}  # inverted\n')
    result = _lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout
    assert 'Contracts: 0 kept, 2 broken.' in result.stdout, result.stdout
    for found in (
        'densenet.blocks -> trainer.config',
        'input_pipeline.formats -> trainer.artifacts.model_dir',
        'base.errors -> input_pipeline',
        'trainer.engine.loop -> trainer.run',
        'trainer.config -> trainer.devices.gaudi',
    ):
        assert found in result.stdout, (found, result.stdout)


def test_the_base_and_the_command_line_load_without_tensorflow():
    """A mistyped command fails before TensorFlow loads: what runs until then imports none."""
    modules = 'base.errors base.stderr_filter input_pipeline trainer.config trainer.preflight'
    code = (
        f'import importlib, sys\n'
        f'for name in {modules.split() + ["trainer.tools.train"]!r}:\n'
        f'    importlib.import_module(name)\n'
        f'print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")))\n'
    )
    result = subprocess.run(
        [sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == '[]', result.stdout


def test_main_py_is_the_top_layer():
    """main.py is a script, not a package, so import-linter cannot hold it: its imports
    are read here. It imports the training command only, and no package imports it."""
    import ast  # noqa: PLC0415

    def imported(path):
        with open(path) as stream:
            tree = ast.parse(stream.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                yield from (alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                yield node.module

    assert sorted(set(imported(os.path.join(ROOT, 'main.py')))) == ['trainer.tools']
    for package in _PACKAGES:
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            for name in names:
                if name.endswith('.py'):
                    path = os.path.join(folder, name)
                    assert 'main' not in set(imported(path)), path

"""Keeps README.md true: its quick start, its flags table, its picture, its test commands."""

import difflib
import importlib.util
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
    # main.py's own flags, without importing them here (they would be defined in this
    # process): its --help lists them under main.py's heading (and no others).
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'main.py'), '--help'],
        capture_output=True,
        text=True,
        timeout=120,
    )
    ours = result.stdout.split('main.py:\n', 1)[1].split('\nTry --helpfull', 1)[0]
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
            'finetune',
            'readme_own_images',
            'install',
        )
    }
    assert collected('-m', 'not slow') == files - wholly_slow
    assert collected('-m', 'stack') == {
        'tests/checkpoint_test.py',
        'tests/densenet_test.py',
        'tests/distribute_test.py',
        'tests/resume_fixture_test.py',
        'tests/weights_by_name_test.py',
    }


def _update_readme():
    """docs/update_readme.py, the script that writes README's figures and sample log."""
    spec = importlib.util.spec_from_file_location(
        'update_readme', os.path.join(ROOT, 'docs', 'update_readme.py')
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_what_update_readme_renders_from_the_demo_log_and_the_flags():
    # Seen stale: the curves said 99.67% where the text said 99.33%, the sample log
    # predated the banner, --label_offset's default was not --help's.
    command = 'python docs/update_readme.py --check'
    assert f'\n{command}    #' in _readme()
    checked = subprocess.run(
        [sys.executable, *command.split()[1:]], cwd=ROOT, capture_output=True, text=True
    )
    update_readme = _update_readme()
    readme = _readme()
    with open(update_readme.DEMO_LOG) as stream:
        rendered = update_readme.render(readme, stream.read())
    assert (checked.returncode == 0) == (rendered == readme), checked.stderr
    differences = [
        line
        for line in difflib.unified_diff(readme.splitlines(), rendered.splitlines(), lineterm='')
        if line.startswith(('+', '-'))
    ]
    assert not differences, (
        'README.md is not what `python docs/update_readme.py --check` renders:\n'
        + '\n'.join(differences[:20])
    )


def test_the_demo_logs_sample_has_the_shape_the_trainer_prints_today(digits_dir):
    """The log's banner, step and evaluation lines against the code that prints them.

    Numbers, versions and the two folders are masked: what must match is every word,
    so that a changed banner or log line fails until the demo is run again.
    """
    import tensorflow as tf  # noqa: PLC0415

    from trainer.reporting import banner, console, progress  # noqa: PLC0415
    from trainer.config import RunConfig  # noqa: PLC0415
    from trainer.run_data import RunData  # noqa: PLC0415

    update_readme = _update_readme()
    with open(update_readme.DEMO_LOG) as stream:
        logged = update_readme.sample(stream.read())
    config = RunConfig(
        dataset_dir=digits_dir,
        model_dir='/runs/demo',
        model='densenet_bc_22_12',
        image_size=32,
        num_classes=10,
        bfloat16=False,
        batch_size=64,
        epochs=12,
    )
    strategy = tf.distribute.get_strategy()
    data = RunData(config, strategy)
    total = 12 * data.steps_per_epoch
    lines = banner.banner_lines(
        model=config.model,
        num_classes=config.num_classes,
        image_sizes=data.image_sizes.describe(config.epochs),
        precision=config.precision,
        strategy=strategy,
        global_batch_size=data.global_batch_size,
        data_description=data.description,
        steps_per_epoch=data.steps_per_epoch,
        total_steps=total,
        start_step=0,
        model_dir=config.model_dir,
    )
    train_console = console.TrainConsole(total_steps=total, steps_per_epoch=data.steps_per_epoch)
    values = {'loss': 1.5, 'top1': 0.5, 'learning_rate': 0.1, 'images_per_second': 9.0}
    bar = progress.ProgressBar('Evaluating', 5, enabled=False)
    bar.update(5)
    lines += [
        train_console.line(23, {**values, 'step_time': 1.0}, now=0.0),
        bar.line(),
        train_console.line(46, {**values, 'step_time': 1.0}, now=60.0),
    ]

    def masked(line, folders):
        for folder, name in folders:
            line = line.replace(folder, name)
        return re.sub(r'\d+(\.\d+)*', 'N', line)

    ours = [masked(line, [(digits_dir, 'DATA'), ('/runs/demo', 'RUN')]) for line in lines]
    theirs = [
        masked(line, [('demo_run/data', 'DATA'), ('demo_run/model', 'RUN')]) for line in logged
    ]
    assert theirs == ours, 'run `python docs/update_readme.py`: the demo log is stale'

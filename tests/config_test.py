"""`RunConfig` built in Python and `main.py`'s flags: the same defaults, the same errors.

main.py derives its flags from the config's fields; these tests hold the two paths to
each other: the flags' defaults build the config's defaults, and a bad value gives the
same one-line error whether it comes from the command line (a real `main.py` process)
or from Python.
"""

import dataclasses

import pytest

from main_runs import run_main
from trainer import config as config_lib
from trainer import preflight
from trainer.config import RunConfig


def test_the_flags_defaults_build_the_configs_defaults():
    from trainer.tools import train  # noqa: PLC0415  (absl flags, defined once per process)

    fields = [field.name for field in dataclasses.fields(RunConfig)]
    assert sorted(fields) == sorted(name for name in fields if name in train.FLAGS)
    from_flags = RunConfig(**{name: train.FLAGS[name].default for name in fields})
    assert from_flags == RunConfig()
    # The flag's choices are the config's.
    assert train.FLAGS['optimizer'].parser.enum_values == list(config_lib.OPTIMIZERS)
    assert train.FLAGS['distribution_strategy'].parser.enum_values == list(config_lib.STRATEGIES)


# (keyword arguments of RunConfig, the same as flags)
CASES = [
    ({'batch_size': 0}, ['--batch_size=0']),
    ({'crop_area_range': (0.5,)}, ['--crop_area_range=0.5']),
    ({'crop_aspect_range': (2.0, 1.0)}, ['--crop_aspect_range=2,1']),
    ({'color_jitter': 1.5}, ['--color_jitter=1.5']),
    ({'mixup_alpha': -1.0}, ['--mixup_alpha=-1']),
    ({'lr_sched': 'piecewise'}, ['--lr_sched=piecewise']),
    ({'grad_accum_steps': 3}, ['--grad_accum_steps=3']),
    ({'loss_scale': 'huge'}, ['--loss_scale=huge']),
    ({'profile_steps': (5, 2)}, ['--profile_steps=5,2']),
    # Trained 104 s until the weights went non-finite, before it was checked.
    ({'initial_lr': -0.1}, ['--initial_lr=-0.1']),
    (
        {'distribution_strategy': 'tpu', 'device': 'gpu'},
        ['--distribution_strategy=tpu', '--device=gpu'],
    ),
]


@pytest.mark.parametrize('kwargs, flags', CASES, ids=[flags[0][2:] for _, flags in CASES])
def test_a_bad_value_fails_alike_in_python_and_on_the_command_line(kwargs, flags, tmp_path):
    with pytest.raises(config_lib.ConfigError) as error:
        RunConfig(synthetic_data=True, model_dir=str(tmp_path), **kwargs)
    result = run_main(['--synthetic_data', f'--model_dir={tmp_path}', *flags])
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f'main.py: error: {error.value}'
    assert not list(tmp_path.iterdir())  # Refused before anything was written.


def test_missing_folders_are_checked_by_preflight_alike(tmp_path):
    config = RunConfig(dataset_dir=str(tmp_path / 'nowhere'), model_dir=str(tmp_path / 'run'))
    with pytest.raises(config_lib.ConfigError) as error:
        preflight.check(config)
    result = run_main([f'--dataset_dir={tmp_path / "nowhere"}', f'--model_dir={tmp_path / "run"}'])
    assert result.stderr.strip().splitlines()[-1] == f'main.py: error: {error.value}'
    # Built without folders, a config is still usable for what needs none.
    assert RunConfig(lr_sched='cosine').precision == 'bfloat16'
    assert RunConfig(bfloat16=False).precision == 'float32'
    assert RunConfig(precision='float16').bfloat16 is False


def test_num_classes_must_agree_with_a_built_class_list(tmp_path):
    # input_pipeline/build_folders.py lists the classes of the folders it built from.
    (tmp_path / 'classes.txt').write_text('cat\ndog\nhorse\n')
    config = RunConfig(dataset_dir=str(tmp_path), model_dir=str(tmp_path / 'run'), num_classes=10)
    with pytest.raises(config_lib.ConfigError) as error:
        preflight.check(config)
    assert str(error.value) == (
        f'--num_classes=10, but {tmp_path / "classes.txt"} lists 3 classes: give --num_classes=3'
    )
    preflight.check(
        RunConfig(dataset_dir=str(tmp_path), model_dir=str(tmp_path / 'run'), num_classes=3)
    )

"""Trains or evaluates DenseNet on ImageNet-format TFRecords: the flags and the call.

  python main.py --flagfile=imagenet.cfg --dataset_dir=/data/imagenet --model_dir=/runs/d121
  python main.py --flagfile=demo.cfg                      # CPU demo on bundled digits
  python main.py --flagfile=imagenet.cfg --only_eval=/runs/d121/saves/epoch_090

Each flag is a field of `RunConfig` (`trainer/config.py`), which holds its default and
help text and checks its value. This file defines the flags from those fields, builds
the config, refuses a `--model_dir` that holds another model's run, writes the flags
to `model_dir/flags.cfg`, and calls `trainer/run.py`. All of that happens before
TensorFlow is loaded, so that a mistyped command fails at once.
"""

import dataclasses
import sys
import typing

from absl import app
from absl import flags
from absl import logging

from trainer import config as config_lib
from trainer import errors
from trainer import run_folder
from trainer import stderr_filter

FLAGS = flags.FLAGS


def _define_flags(flag_values: flags.FlagValues) -> None:
    """One flag per RunConfig field, of the field's type, with its default and help."""
    for field in dataclasses.fields(config_lib.RunConfig):
        kind, default = field.type, field.default
        if typing.get_origin(kind) is typing.Union:  # Optional[X]
            kind = typing.get_args(kind)[0]
        help_text, choices = field.metadata['help'], field.metadata['choices']
        define = dict(name=field.name, help=help_text, flag_values=flag_values)
        if choices:
            flags.DEFINE_enum(default=default, enum_values=choices, **define)
        elif typing.get_origin(kind) is tuple:  # Numbers separated by commas.
            flags.DEFINE_list(default=[str(value) for value in default or ()], **define)
        elif kind is bool:
            flags.DEFINE_bool(default=default, **define)
        else:
            {int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}[kind](
                default=default, **define
            )


_define_flags(FLAGS)
_FIELDS = [field.name for field in dataclasses.fields(config_lib.RunConfig)]


def _check_run_dir(config: config_lib.RunConfig) -> None:
    """Refuses a run folder whose checkpoints hold another model (its flags.cfg says).

    The folder is `--model_dir`, or the one the `--only_eval` checkpoint is in.
    """
    if config.only_eval and run_folder.is_saved_model(config.only_eval):
        return
    run_dir = run_folder.of(config.only_eval) if config.only_eval else config.model_dir
    lines = run_folder.checkpointed_flags(run_dir)
    if not lines:
        return
    previous = flags.FlagValues()
    _define_flags(previous)
    previous(['main.py', *lines], known_only=True)  # absl reads flags.cfg as it wrote it
    values = {name: previous[name].value for name in config_lib.RUN_IDENTITY}
    present = {name: value for name, value in values.items() if previous[name].present}
    run_folder.check_same_run(config, present, run_dir)


def checked_config(flag_values: flags.FlagValues) -> config_lib.RunConfig:
    """The run's config from parsed flags, checked, without TensorFlow; raises UserError."""
    config = config_lib.RunConfig(**{name: flag_values[name].value for name in _FIELDS})
    config.check_run()
    _check_run_dir(config)
    return config


def execute(config: config_lib.RunConfig, flag_values: flags.FlagValues):
    """Writes flags.cfg and trains, or evaluates with --only_eval; returns the last evaluation.

    Also what tests call to run the trainer inside their own process
    (`tests/in_process.py`), so that they run exactly this path.
    """
    # flags.cfg holds the resolved pair (--precision wins over the seed's --bfloat16),
    # so that a restart from it is the same run.
    flag_values.precision, flag_values.bfloat16 = config.precision, config.bfloat16
    from trainer import distribute  # pylint: disable=g-import-not-at-top  (TensorFlow)
    from trainer import run  # pylint: disable=g-import-not-at-top

    if config.only_eval:
        return run.evaluate(config)
    if distribute.is_chief_task():  # Other workers of a multi-worker run write nothing.
        lines = [flag_values[name].serialize() for name in sorted(_FIELDS)]
        run_folder.write_flagfile(config.model_dir, lines)
    return run.train(config)


def result_line(result) -> str:
    return (
        f'Validation top-1 {result["top1"]:.4f}, top-5 {result["top5"]:.4f}, loss '
        f'{result["loss"]:.4f} over {result["num_examples"]} examples (step {result["step"]})'
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    # Before TensorFlow is imported: its harmless C++ start-up lines stay off the console.
    stderr_filter.install()
    try:
        config = checked_config(FLAGS)
    except errors.UserError as error:
        errors.exit_with(error)
    with errors.reported():
        result = execute(config, FLAGS)
    if result:
        print(result_line(result))


def _parse_flags(argv, flag_values: flags.FlagValues = FLAGS):
    """absl's parser, with a bad flag reported in the same one line as other errors.

    A flag given after `--flagfile` overrides the file's; one given before it is
    overridden by it. `tests/in_process.py` parses with it too, into flags of its own.
    """
    try:
        return flag_values(argv)
    except flags.Error as error:
        logging.debug('Full error', exc_info=True)
        print(f'main.py: error: {errors.one_line(error)} (see --helpfull)', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    app.run(main, flags_parser=_parse_flags)

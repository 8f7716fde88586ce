"""Trains or evaluates DenseNet on ImageNet-format TFRecords: the flags and the call.

  python main.py --flagfile=imagenet.cfg --dataset_dir=/data/imagenet --model_dir=/runs/d121
  python main.py --flagfile=demo.cfg                      # CPU demo on bundled digits
  python main.py --flagfile=imagenet.cfg --only_eval=/runs/d121/saves/epoch_090

`python main.py` and the installed `densenet-train` both run `run()` here; the command
lives in the package so that an install puts no module named `main` on the path.

Each flag is a field of `RunConfig` (`trainer/config.py`), which holds its default and
help text and checks its value. This file defines the flags from those fields, builds
the config, refuses a `--model_dir` that holds another model's run, writes the flags
to `model_dir/flags.cfg`, and calls `trainer/run.py`. All of that happens before
TensorFlow is loaded, so that a mistyped command fails at once.
"""

import dataclasses
import os
import sys
import typing
from typing import Optional

from absl import app
from absl import flags
from absl import logging

from trainer import config as config_lib
from trainer import preflight
from trainer.devices import cpu_isa
from base import errors
from trainer.artifacts import model_dir as model_dir_lib
from trainer.artifacts import run_lock
from base import stderr_filter

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


def _check_model_dir(config: config_lib.RunConfig) -> None:
    """Refuses a model_dir whose checkpoints hold another model (its flags.cfg says).

    The folder is `--model_dir`, or the one the `--only_eval` checkpoint is in.
    """
    if config.only_eval and model_dir_lib.is_saved_model(config.only_eval):
        return
    model_dir = model_dir_lib.of(config.only_eval) if config.only_eval else config.model_dir
    lines = model_dir_lib.checkpointed_flags(model_dir)
    if not lines:
        return
    previous = flags.FlagValues()
    _define_flags(previous)
    previous(['main.py', *lines], known_only=True)  # absl reads flags.cfg as it wrote it
    values = {name: previous[name].value for name in config_lib.RUN_IDENTITY}
    present = {name: value for name, value in values.items() if previous[name].present}
    model_dir_lib.check_same_run(config, present, model_dir)


def checked_config(flag_values: flags.FlagValues) -> config_lib.RunConfig:
    """The run's config from parsed flags, checked, without TensorFlow; raises UserError."""
    config = config_lib.RunConfig(**{name: flag_values[name].value for name in _FIELDS})
    preflight.check(config)
    cpu_isa.check_environment(config.precision)
    _check_model_dir(config)
    return config


def execute(config: config_lib.RunConfig, flag_values: flags.FlagValues):
    """Writes flags.cfg and trains, or evaluates with --only_eval; returns the last evaluation.

    Also what tests call to run the trainer inside their own process
    (`tests/in_process.py`), so that they run exactly this path.
    """
    # flags.cfg holds the resolved pair (--precision wins over the seed's --bfloat16),
    # so that a restart from it is the same run.
    flag_values.precision, flag_values.bfloat16 = config.precision, config.bfloat16
    if config.only_eval or not config_lib.is_chief_task():
        # Other workers of a multi-worker run write nothing; --only_eval writes one row.
        from trainer import run  # pylint: disable=g-import-not-at-top  (TensorFlow)

        return run.evaluate(config) if config.only_eval else run.train(config)
    # Taken before TensorFlow loads and before anything is written: a second trainer on
    # the folder is refused at once, leaving it as it was (trainer/artifacts/run_lock.py).
    folder_lock = run_lock.acquire(config.model_dir)
    try:
        from trainer import run  # pylint: disable=g-import-not-at-top

        model_dir_lib.write_flagfile(config.model_dir, _flagfile_lines(flag_values))
        return run.train(config, folder_lock)
    finally:
        folder_lock.release()


def _flagfile_lines(flag_values: flags.FlagValues):
    """flags.cfg's lines: every flag, with local paths made absolute.

    So that `--flagfile=<run>/flags.cfg` resumes the same run from any working folder.
    """
    lines = []
    for name in sorted(_FIELDS):
        value = flag_values[name].value
        if name in config_lib.PATH_FIELDS and value and config_lib.is_local(value):
            lines.append(f'--{name}={os.path.abspath(value)}')
        else:
            lines.append(flag_values[name].serialize())
    return lines


def result_line(result) -> str:
    return (
        f'Validation top-1 {result["top1"]:.4f}, top-5 {result["top5"]:.4f}, cross-entropy '
        f'{result["cross_entropy"]:.4f} over {result["num_examples"]} examples '
        f'(step {result["step"]})'
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
    try:
        with errors.reported():
            result = execute(config, FLAGS)
    except errors.StoppedEarly as stopped:  # Preempted: resume by starting again.
        print(f'main.py: {stopped}', file=sys.stderr)
        sys.exit(errors.EXIT_STOPPED)
    if result:
        print(result_line(result))


def _parse_flags(argv, flag_values: flags.FlagValues = FLAGS):
    """absl's parser, with a bad flag reported in the same one line as other errors.

    A flag given after `--flagfile` overrides the file's. One given before a flagfile
    that sets it again would be overridden silently, so it is refused, as is a run's
    flags.cfg that is not in the folder its --model_dir names (`_check_flagfiles`).
    `tests/in_process.py` parses with it too, into flags of its own.
    """
    given = list(argv)
    try:
        _check_flag_order(given, flag_values)
        remaining = flag_values(given)
    except flags.Error as error:
        logging.debug('Full error', exc_info=True)
        message = errors.one_line(error).removeprefix('ERROR:: ')  # absl's, for a flagfile
        print(f'main.py: error: {message} (see --helpfull)', file=sys.stderr)
        sys.exit(1)
    except errors.UserError as error:
        errors.exit_with(error)
    try:
        _check_run_flagfile(given, flag_values)
    except errors.UserError as error:
        errors.exit_with(error)
    return remaining


def _flag_name(arg: str, flag_values: flags.FlagValues) -> Optional[str]:
    """The flag an argument sets: `--model_dir=x` and `--nodeterministic` alike."""
    if not arg.startswith('-') or arg in ('-', '--'):
        return None
    name = arg.lstrip('-').split('=', 1)[0]
    if name not in flag_values and name.startswith('no') and name[2:] in flag_values:
        return name[2:]
    return name


def _flagfiles(args):
    """(position, path) of each `--flagfile=PATH` among `args`."""
    return [
        (index, arg.split('=', 1)[1])
        for index, arg in enumerate(args)
        if arg.lstrip('-').startswith('flagfile=')
    ]


def _check_flag_order(argv, flag_values: flags.FlagValues) -> None:
    """Refuses a flag that a flagfile after it sets again: the file would win silently."""
    for index, path in _flagfiles(argv):
        # absl's own reading of the file (nested --flagfile lines included).
        in_file = flag_values.read_flags_from_files(['main.py', f'--flagfile={path}'])
        set_by_file = {_flag_name(arg, flag_values) for arg in in_file[1:]}
        for arg in argv[1:index]:
            name = _flag_name(arg, flag_values)
            if name and name != 'flagfile' and name in set_by_file:
                raise errors.UserError(
                    f'{arg} comes before --flagfile={path}, which sets --{name} again and '
                    f'would win: put {arg} after --flagfile'
                )


def _check_run_flagfile(argv, flag_values: flags.FlagValues) -> None:
    """Refuses a run's flags.cfg that is not in the folder its --model_dir names.

    A model_dir that was moved or copied still holds the old --model_dir in its
    flags.cfg: followed silently, it would start again from step 0 in the old place.
    A --model_dir given after the flagfile is the user's choice and wins.
    """
    files = _flagfiles(argv)
    if not files:
        return
    index, path = files[-1]
    if os.path.basename(path) != model_dir_lib.FLAGFILE or not flag_values['model_dir'].value:
        return
    if any(_flag_name(arg, flag_values) == 'model_dir' for arg in argv[index + 1 :]):
        return
    folder = os.path.dirname(os.path.abspath(path))
    model_dir = flag_values['model_dir'].value
    if config_lib.is_local(model_dir) and os.path.abspath(model_dir) != folder:
        raise errors.UserError(
            f'--flagfile={path} is in {folder}, but its --model_dir is {model_dir} (the run '
            f'was moved or copied?): to continue it in {folder}, add --model_dir={folder} '
            'after --flagfile; to use the other folder, pass that one\'s flags.cfg'
        )


def run() -> None:
    """The command (`python main.py`, `densenet-train`)."""
    # absl's --help lists the flags of the module that sys.argv[0] names (main.py, or
    # the installed script): these, defined here.
    for name in _FIELDS:
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
    app.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
    run()

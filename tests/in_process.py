"""main.py's own path run inside the test process: parse, check, write flags.cfg, train.

A short `python main.py ...` in a subprocess spends most of its time importing
TensorFlow and Keras on one of the machine's two cores. Where the process itself is
not what a test checks (a feature row, a short training to compare or inspect), the
test calls `run_main_in_process(args)` instead: the same flags (`main._define_flags`)
parsed by `main._parse_flags`, then `main.checked_config` and `main.execute`, which is
everything `main.main` does; a user's error ends in main.py's own one line and status
1 (`errors.exit_with`), caught here as SystemExit. It returns a `subprocess.CompletedProcess`
as `main_runs.run_main` does, so a test reads `returncode`, `stdout` (the final
"Validation top-1" line) and `stderr` (the log lines, progress bars and the one-line
error) alike either way.

What stays a real process (`main_runs.run_main`): command-line errors that must come
before TensorFlow loads, kills and signals, README's commands run verbatim, the
console as a terminal sees it, and anything about a second process.

What TensorFlow and Keras keep between runs in one process, and how each is reset
after every run here (`reset_between_runs`), so that a run starts as in a new process:

- Keras' global state (layer-name counters, Keras 2's graph, Keras 3's seed
  generator): `keras.backend.clear_session()`.
- Op determinism, which `--deterministic` turns on for the whole process:
  `tensorflow.python.framework.config.disable_op_determinism()`.
- The global random seed the trainer sets: `tf.random.set_seed(None)`, the state of a
  new process.
- absl's verbosity, raised to INFO for the run's log lines: restored.

A bug in the trainer (any exception that is not the user's) is raised, not turned into
a status, so that the test fails with its traceback.
"""

import contextlib
import io
import logging as py_logging
import os
import subprocess

from absl import flags
from absl import logging
import keras
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from trainer.tools import train as train_command
from base import errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reset_between_runs() -> None:
    """What one trainer run leaves in the process, reset (see the module docstring)."""
    keras.backend.clear_session()
    tf_config.disable_op_determinism()
    tf.random.set_seed(None)


@contextlib.contextmanager
def _in_folder(path):
    """The working folder of a main.py subprocess (`main_runs.run_main` uses ROOT).

    `contextlib.chdir` would do, but it is Python 3.11's, and the Gaudi stand-in runs 3.10.
    """
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@contextlib.contextmanager
def _captured_log(stream):
    """absl's log lines at INFO and anything written to sys.stderr, into `stream`."""
    handler = py_logging.StreamHandler(stream)
    handler.setFormatter(py_logging.Formatter('%(levelname).1s %(message)s'))
    absl_logger = logging.get_absl_logger()
    verbosity = logging.get_verbosity()
    absl_logger.addHandler(handler)
    logging.set_verbosity(logging.INFO)
    try:
        with contextlib.redirect_stderr(stream):
            yield
    finally:
        absl_logger.removeHandler(handler)
        logging.set_verbosity(verbosity)


def run_main_in_process(args, check=False, cwd=ROOT) -> subprocess.CompletedProcess:
    """`python main.py *args` inside this process; see the module docstring.

    With `check`, a run that does not end with status 0 raises with its log's end, as
    `main_runs.run_main` does. `cwd` is the working folder it runs in.
    """
    flag_values = flags.FlagValues()
    # pylint: disable=protected-access  (main.py's own definitions and parser)
    train_command._define_flags(flag_values)
    stream = io.StringIO()
    result, returncode = None, 0
    try:
        with _in_folder(cwd), _captured_log(stream):
            try:
                train_command._parse_flags(['main.py', *args], flag_values)
                result = train_command.execute(
                    train_command.checked_config(flag_values), flag_values
                )
            except errors.StoppedEarly as stopped:  # As main.py: its line, status 75.
                print(f'main.py: {stopped}', file=stream)
                raise SystemExit(errors.EXIT_STOPPED) from None
            except Exception as error:  # pylint: disable=broad-except
                if not errors.is_user_error(error):
                    raise
                errors.exit_with(error)  # main.py's one line, then SystemExit(1).
    except SystemExit as stop:  # A bad flag or a user's error: main.py's exit.
        returncode = stop.code
    finally:
        reset_between_runs()
    if check and returncode != 0:
        raise AssertionError(f'main.py {" ".join(args)} failed:\n{stream.getvalue()[-3000:]}')
    stdout = train_command.result_line(result) + '\n' if result else ''
    return subprocess.CompletedProcess(['main.py', *args], returncode, stdout, stream.getvalue())

"""The two kinds of failure: a user's mistake, and a bug in the trainer.

`UserError` is a mistake the user can fix: a flag, a file, the data. A command prints
its message as one line and exits with status 1 (`exit_with`). Every other exception
is a bug: the command shows its traceback and says so (`report_bug`). Code raises
`UserError` (or a subclass) only for causes outside the program, with a message
that names the flag or file.

The packages below the trainer raise their own types (`densenet.ModelError`,
`input_pipeline.DataError`); which of those are a user's mistake is for the command
that runs them to say (`reported(user_errors=...)`; the trainer's list is
`trainer/run.py`'s `USER_ERRORS`).

It is a `ValueError`, so that callers of the library who catch `ValueError` keep
working.
"""

import contextlib
import errno
import re
import sys
import traceback
from typing import Iterator, NoReturn, Optional

from absl import logging

from base import stderr_filter


class UserError(ValueError):
    """A mistake in the flags, files or data, described in one line."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the flags name is not there."""


# What the input pipeline's in-graph checks say (input_pipeline/decode.py,
# input_pipeline/records.py): an InvalidArgumentError with one of these is bad data.
_DATA_CHECK = re.compile(
    r'label out of range|label missing|undecodable image in|TFRecord file ', re.IGNORECASE
)


# What the operating system says when the disk or its permissions stop a read or
# write: an OSError's errno, or the text TensorFlow's file ops put in their message
# (a checkpoint on a full disk raises ResourceExhaustedError "...; No space left on
# device"). The machine's state, not the trainer's doing: one line naming the path.
_ENVIRONMENT = {
    errno.ENOSPC: 'no space left on the device',
    errno.EDQUOT: 'over the disk quota',
    errno.EROFS: 'the file system is read-only',
    errno.EACCES: 'permission denied',
    errno.EPERM: 'permission denied',
}
_ENVIRONMENT_TEXT = re.compile(
    r'(?P<path>\S+?)[;:,]?\s*(?P<cause>No space left on device|Disk quota exceeded|'
    r'Read-only file system|Permission denied)',
    re.IGNORECASE,
)


def _environment_line(error: BaseException) -> Optional[str]:
    """'PATH: CAUSE (what to do)' for a full, read-only or forbidden file system."""
    if isinstance(error, OSError) and error.errno in _ENVIRONMENT:
        path, cause = error.filename, _ENVIRONMENT[error.errno]
    else:
        message = getattr(error, 'message', None) or str(error)
        message = re.sub(r'\{\{function_node [^}]*\}\}', '', message)
        match = _ENVIRONMENT_TEXT.search(message)
        if not match or not isinstance(error, (OSError, _tf_op_error())):
            return None
        path, cause = match.group('path'), match.group('cause').lower()
        if cause.startswith('no space'):
            cause = 'no space left on the device'
    # A checkpoint is written as ckpt-N_temp/part-... and a file as NAME.tmpHEX, then
    # renamed: name what was being written.
    path = re.sub(r'(_temp/part-\S*|\.tmp[0-9a-f]+)$', '', str(path or '?'))
    if 'space' in cause or 'quota' in cause:
        advice = (
            'free some space, or move the model_dir elsewhere, and start the same command '
            'again: it resumes from the last checkpoint, which is intact'
        )
    else:
        advice = 'use a folder this user can write, or change its permissions'
    return f'{path}: {cause} ({advice})'


def _tf_op_error():
    if 'tensorflow' not in sys.modules:
        return ()
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (loaded by then)

    return tf.errors.OpError


def one_line(error: BaseException) -> str:
    """A readable single line for an error the user caused.

    TensorFlow wraps the cause of an op's failure in the names of the functions and
    ops it ran in (`{{function_node ...}}`, `[Op:...]`), and prints the data of a
    `tf.debugging.Assert` as `] [`-separated items: all that is noise to the user.
    """
    environment = _environment_line(error)
    if environment:
        return environment
    message = getattr(error, 'message', None) or str(error) or type(error).__name__
    # The input pipeline's own messages name the file: a bad label, image or TFRecord file.
    match = re.search(f'({_DATA_CHECK.pattern})[^\\n]*', message, re.IGNORECASE)
    if match:
        message = re.sub(r'\]\s*\[', ' ', match.group(0)).rstrip(']')
    message = re.sub(r'\{\{function_node [^}]*\}\}', '', message.split('\n')[0])
    message = re.sub(r'\s*\[Op:[^\]]*\].*$', '', message)
    return ' '.join(message.split())


def is_user_error(error: BaseException, user_errors: tuple = ()) -> bool:
    """Whether `error` is a mistake in the flags, files or data, rather than a bug.

    `user_errors`: the types of the packages below that the caller counts as the user's.
    """
    if isinstance(error, (UserError, FileNotFoundError, PermissionError) + tuple(user_errors)):
        return True
    if _environment_line(error):
        return True  # A full, read-only or forbidden file system.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (loaded by then)

    if isinstance(error, (tf.errors.DataLossError, tf.errors.NotFoundError)):
        return True  # A damaged or missing file; TensorFlow's message names it.
    if isinstance(error, tf.errors.InvalidArgumentError):
        return bool(_DATA_CHECK.search(getattr(error, 'message', None) or str(error)))
    return False


def exit_with(error: BaseException) -> NoReturn:
    """Ends the program with one readable line; the traceback only with --v=1."""
    logging.debug('Full error', exc_info=True)
    stderr_filter.print_last(f'main.py: error: {one_line(error)}')
    sys.exit(1)


def report_bug() -> NoReturn:
    """The traceback of the exception being handled, which is not the user's doing."""
    import keras  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    traceback.print_exc()
    stderr_filter.print_last(
        'main.py: internal error: the exception above is a bug in the trainer, not a '
        f'mistake in your flags or data (TensorFlow {tf.__version__}, Keras '
        f'{keras.__version__}); please report it with the traceback'
    )
    sys.exit(2)


@contextlib.contextmanager
def reported(user_errors: tuple = ()) -> Iterator[None]:
    """Ends the program on an exception: one line for the user's errors, else a bug report.

    `user_errors`: as `is_user_error`'s.
    """
    try:
        yield
    except Exception as error:  # pylint: disable=broad-except
        if is_user_error(error, user_errors):
            exit_with(error)
        report_bug()


# The exit status of a training run stopped early on SIGTERM or SIGINT after writing its
# checkpoint: not finished, to be started again. sysexits.h's EX_TEMPFAIL ("a temporary
# failure; the user is invited to retry"): distinct from success (0), a user's mistake
# (1), a bug (2), and the 128 + N that shells and schedulers report for a process that
# a signal killed without its cleanup (143 after a second SIGTERM, 137 after SIGKILL),
# which promises no checkpoint.
EXIT_STOPPED = 75


class StoppedEarly(BaseException):
    """Training stopped on a signal at a checkpoint before its last step; its message says
    where. `main.py` prints it as one line and exits with `EXIT_STOPPED`.

    A `BaseException`, as `KeyboardInterrupt` is: it is no error, so the handlers that
    turn an `Exception` into a one-line error or a bug report (`reported`) let it pass.
    """

"""The two kinds of failure: a user's mistake, and a bug in the trainer.

`UserError` is a mistake the user can fix: a flag, a file, the data. `main.py` prints
its message as one line and exits with status 1. Every other exception is a bug:
`main.py` shows its traceback and says so (`main.py`'s `_report_bug`). Code raises
`UserError` (or a subclass) only for causes outside the trainer, with a message
that names the flag or file.

It is a `ValueError`, so that callers of the library who catch `ValueError` keep
working.
"""


class UserError(ValueError):
    """A mistake in the flags, files or data, described in one line."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the flags name is not there."""

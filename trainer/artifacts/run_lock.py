"""One trainer per model_dir: `model_dir/run.lock`, taken before anything is written.

Two trainers on one `--model_dir` would write the same checkpoint files, each
overwrite the other's flags.cfg and results, and both report success. So `main.py`
takes the folder before it writes anything (flags.cfg included), and a second start
is refused in one line that names the holder, leaving the folder as it was.

What holds where:

- **A local or network file system** (anything with a path): an exclusive
  `fcntl.flock` on `run.lock`, held by the open file until the process ends. The
  kernel drops it however the process ends (exit, crash, SIGKILL), so a killed run
  never blocks its restart, and there is no stale lock to clean. On NFS the server
  keeps a dead client's lock until the client's lease runs out (about 90 s), after
  which a restart on another host takes it. A file system that cannot lock at all
  (ENOLCK, EOPNOTSUPP: some FUSE mounts) gets a warning and no lock.
- **A remote store** (`gs://...`), which has no locks or exclusive create: the run
  writes its own token into `run.lock`, and before each checkpoint checks that the
  token is still its own (`RunLock.check`). A second start takes over; the first stops
  at its next checkpoint, before writing it, with one line naming the newer holder.
  So the last start wins (right after a preemption, when the old holder is gone), and
  two overlap by at most one checkpoint interval, without either finishing silently.

The file's text names the holder (host, pid, start time) for the refusal's line; it
stays in place after the run, naming the last holder, since removing a lock file
while another process may be opening it would let two processes hold it.
"""

import contextlib
import dataclasses
import datetime
import errno
import json
import os
import socket
import uuid
from typing import Iterator, Optional

from absl import logging

from trainer import config as config_lib
from base import errors

LOCKFILE = 'run.lock'


class FolderInUseError(errors.UserError):
    """Another process holds the model_dir; `holder` names it."""

    def __init__(self, message: str, holder: str):
        super().__init__(message)
        self.holder = holder


def _holder_text(purpose: str) -> str:
    return json.dumps(
        {
            'host': socket.gethostname(),
            'pid': os.getpid(),
            'started': datetime.datetime.now(datetime.timezone.utc).strftime(
                '%Y-%m-%d %H:%M:%S UTC'
            ),
            'purpose': purpose,
            'token': uuid.uuid4().hex,
        }
    )


def _describe(text: str) -> str:
    """'pid 123 on host h, training since 2026-...' from a lock file's text."""
    try:
        holder = json.loads(text)
        return (
            f'pid {holder["pid"]} on host {holder["host"]}, {holder.get("purpose", "training")} '
            f'since {holder["started"]}'
        )
    except (ValueError, KeyError, TypeError):
        return 'another process'


@dataclasses.dataclass
class RunLock:
    """The held lock: keep it referenced for as long as the run writes to the folder."""

    path: str
    token: str
    _fd: Optional[int] = None

    def check(self) -> None:
        """Raises FolderInUseError when another run has taken a remote folder over."""
        if self._fd is not None or not self.token:
            return  # flock holds by itself (or no lock could be taken).
        import tensorflow as tf  # pylint: disable=g-import-not-at-top

        text = tf.io.gfile.GFile(self.path).read() if tf.io.gfile.exists(self.path) else ''
        if self.token not in text:
            holder = _describe(text)
            raise FolderInUseError(
                f'{os.path.dirname(self.path)} was taken over by {holder}: this trainer '
                'stops without writing its next checkpoint',
                holder,
            )

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # Closing the file drops the flock.
            self._fd = None


def _folder_error(model_dir: str, error: OSError) -> errors.UserError:
    """The one line for a model_dir that cannot be created or written."""
    reasons = {
        errno.EACCES: 'permission denied',
        errno.EPERM: 'permission denied',
        errno.EROFS: 'the file system is read-only',
        errno.ENOSPC: 'no space left on the device',
        errno.EDQUOT: 'over the disk quota',
        errno.EEXIST: 'it is a file, not a folder',
        errno.ENOTDIR: 'a part of the path is a file, not a folder',
    }
    reason = reasons.get(error.errno, error.strerror or str(error))
    return errors.UserError(f'--model_dir={model_dir} cannot be written: {reason}')


def acquire(model_dir: str, purpose: str = 'training') -> RunLock:
    """Creates `model_dir` if needed and takes it for this process.

    Raises:
      FolderInUseError: another live process holds it (named in the message).
      errors.UserError: the folder cannot be created or written (read-only, permission,
        no space, a file in the way), naming the path and the cause.
    """
    path = os.path.join(model_dir, LOCKFILE)
    if not config_lib.is_local(model_dir):
        return _acquire_remote(model_dir, path, purpose)
    try:
        os.makedirs(model_dir, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise _folder_error(model_dir, error) from None
    try:
        import fcntl  # pylint: disable=g-import-not-at-top  (POSIX only)

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        with os.fdopen(fd) as stream:
            holder = _describe(stream.read())
        raise FolderInUseError(
            f'--model_dir={model_dir} is in use by {holder}: wait for it to end or stop it, '
            'or use another --model_dir',
            holder,
        ) from None
    except (ImportError, OSError) as error:
        if isinstance(error, OSError) and error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
            os.close(fd)
            raise _folder_error(model_dir, error) from None
        logging.warning(
            '%s cannot be locked here (%s): make sure no other trainer uses this --model_dir',
            model_dir,
            error,
        )
        os.close(fd)
        return RunLock(path=path, token='')
    text = _holder_text(purpose)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, text.encode() + b'\n')
    except OSError as error:
        os.close(fd)
        raise _folder_error(model_dir, error) from None
    return RunLock(path=path, token=json.loads(text)['token'], _fd=fd)


def _acquire_remote(model_dir: str, path: str, purpose: str) -> RunLock:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    text = _holder_text(purpose)
    tf.io.gfile.makedirs(model_dir)
    if tf.io.gfile.exists(path):
        logging.warning(
            '%s was last taken by %s; this run takes it over (on %s the last start wins, '
            'and an earlier trainer still running stops at its next checkpoint)',
            model_dir,
            _describe(tf.io.gfile.GFile(path).read()),
            model_dir.split('://')[0],
        )
    with tf.io.gfile.GFile(path, 'w') as stream:
        stream.write(text + '\n')
    return RunLock(path=path, token=json.loads(text)['token'])


@contextlib.contextmanager
def holding(model_dir: str, lock: Optional[RunLock], *, chief: bool) -> Iterator[Optional[RunLock]]:
    """Yields `lock` when the caller took it (`main.py`), else takes the folder for the block.

    So a run started from Python is protected as one started from the command line.
    Only the chief writes the folder, so only the chief takes it.
    """
    if lock is not None or not chief:
        yield lock
        return
    lock = acquire(model_dir)
    try:
        yield lock
    finally:
        lock.release()

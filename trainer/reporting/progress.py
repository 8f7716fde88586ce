"""A progress bar for long loops (evaluation, dataset building) that suits logs too.

On a terminal the bar redraws one line in place with a carriage return. When the
stream is not a terminal (a log file, a pipe, a batch system's capture), a redrawn
line would leave control characters and hundreds of partial lines in the log, so the
bar writes a plain line only every `log_interval_s` seconds and one at the end. No
TensorFlow here: any loop can use it.

    with ProgressBar('Evaluating', total=num_steps, unit='steps') as bar:
        for _ in range(num_steps):
            ...
            bar.advance()
"""

import sys
import time
from typing import Optional, TextIO

# Width of the bar itself, in characters; the whole line stays under 80.
_BAR_WIDTH = 30
# A terminal redraw costs a write: more than ~10 per second is invisible anyway.
_MIN_REDRAW_S = 0.1


def format_duration(seconds: float) -> str:
    """`3725.2` -> `'1:02:05'`; `90061` -> `'1d 01:01:01'`. Whole seconds, rounded up."""
    seconds = max(0, int(-(-seconds // 1)))
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    clock = f'{hours}:{minutes:02d}:{seconds:02d}'
    return f'{days}d {hours:02d}:{minutes:02d}:{seconds:02d}' if days else clock


def is_terminal(stream: TextIO) -> bool:
    """True when `stream` is an interactive terminal (and can take carriage returns)."""
    isatty = getattr(stream, 'isatty', None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # A closed stream.
        return False


class ProgressBar:
    """Shows `done/total`, a bar, the rate and the time left of a loop.

    Args:
      description: what is being done, e.g. 'Evaluating'.
      total: the number of units the loop will do.
      unit: the unit's name in the rate, e.g. 'steps' or 'images'.
      stream: where to write; standard error by default, beside the log.
      log_interval_s: on a non-terminal stream, seconds between plain lines.
      enabled: False makes every call a no-op (e.g. on workers other than the chief).
    """

    def __init__(
        self,
        description: str,
        total: int,
        *,
        unit: str = 'steps',
        stream: Optional[TextIO] = None,
        log_interval_s: float = 30.0,
        enabled: bool = True,
    ):
        self.description = description
        self.total = max(int(total), 0)
        self.unit = unit
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._terminal = is_terminal(self._stream)
        self._log_interval_s = log_interval_s
        self._enabled = enabled
        self._start = time.monotonic()
        # A terminal shows the bar at once; a log gets its first line after an interval,
        # so a short loop leaves one line only.
        self._last_write = float('-inf') if self._terminal else self._start
        self._written_done = None  # `done` as last written, so the end is written once.
        self._finished = False

    def __enter__(self) -> 'ProgressBar':
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.close(completed=exc_type is None)

    def advance(self, units: int = 1) -> None:
        """Records `units` more units done."""
        self.update(self.done + units)

    def update(self, done: int) -> None:
        """Records that `done` units of `total` are done, and redraws when due."""
        self.done = min(int(done), self.total) if self.total else int(done)
        if not self._enabled:
            return
        now = time.monotonic()
        interval = _MIN_REDRAW_S if self._terminal else self._log_interval_s
        finished = self.done >= self.total and self._written_done != self.done
        if finished or now - self._last_write >= interval:
            self._write(now)

    def line(self, now: Optional[float] = None) -> str:
        """The progress as one line of text, without control characters."""
        elapsed = (time.monotonic() if now is None else now) - self._start
        fraction = self.done / self.total if self.total else 1.0
        filled = int(round(fraction * _BAR_WIDTH))
        bar = '#' * filled + '.' * (_BAR_WIDTH - filled)
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.done >= self.total:
            timing = f'in {format_duration(elapsed)}'
        elif self.done:
            timing = f'ETA {format_duration(elapsed / self.done * (self.total - self.done))}'
        else:
            timing = 'ETA ?'
        return (
            f'{self.description} [{bar}] {self.done}/{self.total} {self.unit} '
            f'({rate:.1f} {self.unit}/s, {timing})'
        )

    def _write(self, now: float) -> None:
        self._last_write, self._written_done = now, self.done
        if self._terminal:
            # Redraw in place; `\033[K` clears what a longer earlier line left behind.
            self._stream.write('\r' + self.line(now) + '\033[K')
        else:
            self._stream.write(self.line(now) + '\n')
        self._stream.flush()

    def close(self, completed: bool = True) -> None:
        """Ends the bar: writes the final state, and the line end a terminal needs."""
        if self._finished or not self._enabled:
            return
        self._finished = True
        if completed and self._written_done != self.done:
            self._write(time.monotonic())
        if self._terminal and self._written_done is not None:
            self._stream.write('\n')
            self._stream.flush()

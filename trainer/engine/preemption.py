"""Preemption: SIGTERM or SIGINT checkpoints at the next loop boundary and stops cleanly.

Cloud schedulers send SIGTERM some seconds before they reclaim a machine, and a
person stops a run with Ctrl-C. Either way the work since the last checkpoint should
survive. The signal only sets a flag (Python runs signal handlers between bytecodes,
so the handler could not interrupt the running `tf.function` anyway); after every loop
of `steps_per_loop` steps the trainer asks `checkpoint_and_stop(step)`, which writes a
checkpoint and tells it to return. The time from the signal to the exit is therefore
bounded by one loop plus one checkpoint write (plus an evaluation and an export when
the loop ends an epoch). A second signal of the same kind acts as it normally would:
it ends the program at once (status 128 + N as a shell reports it, no checkpoint).

A run stopped before its last step ends with `errors.StoppedEarly`: `main.py` prints
one line (the step it stopped at, its checkpoint, the last evaluation's step) and
exits with `errors.EXIT_STOPPED` (75), so that a scheduler tells "preempted, start me
again" from "finished" (0) and from a failure (1, 2). A signal that comes during the
last loop changes nothing: the run is finished and ends as one.

The logged delay runs from the signal's arrival to the checkpoint's write. Python's
own handler runs only when the main thread next executes Python code, which is after
the `tf.function` call in progress returns, seconds later; timed from there, the log
said "0.6 s after the signal" for a checkpoint that came 6.3 s after it. Python's
C-level handler, though, writes the signal's number to the `signal.set_wakeup_fd`
pipe at once, from whatever thread the kernel chose; a thread of ours blocked on that
pipe wakes (TensorFlow releases the GIL while it computes) and notes
`time.monotonic()`: the arrival, to within the thread's wake-up time (milliseconds).
Where the wakeup fd is someone else's already (an asyncio loop), it is left theirs;
where the pipe did not see the signal, the delay is timed from the Python handler, and
the log says so. Code that takes the wakeup fd over while this watches (the tf.data
service's watchdog, `input_pipeline/data_service.py`) should pass the bytes it reads
on to the fd it replaced.

With MultiWorkerMirroredStrategy and TPUStrategy all workers must stop at the same step
and write the checkpoint together, which a local flag cannot arrange:
`tf.distribute.experimental.PreemptionCheckpointHandler` agrees on the step through
the coordination service. We give it our own save function and an exit function that
returns control to the trainer, so the shutdown path is the same in both cases.
"""

import os
import signal
import threading
import time
from typing import Dict, Optional, Tuple

from absl import logging
import tensorflow as tf

from base import errors

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _HandlerExit(Exception):
    """Raised by the PreemptionCheckpointHandler's exit function once it has saved."""


def _uses_preemption_handler(strategy: tf.distribute.Strategy) -> bool:
    # Its API supports these two only (not MirroredStrategy).
    return isinstance(
        strategy, (tf.distribute.MultiWorkerMirroredStrategy, tf.distribute.TPUStrategy)
    )


class PreemptionWatcher:
    """A context manager that turns SIGTERM and SIGINT into a checkpoint and a clean stop.

    The signals are watched from `__enter__` on, so a signal during the start-up
    (counting the data, building and restoring the model) is honoured at the first loop
    boundary; `attach` names what to save once it exists. In the training loop:

        with PreemptionWatcher() as preemption:
            ...
            preemption.attach(strategy, state)
            while step < total_steps:
                ...  # one loop of steps, summaries, cadence checkpoints
                if preemption.checkpoint_and_stop(step):
                    break
    """

    def __init__(self):
        self._state = None
        self._previous = {}
        self._handler = None
        self.signal_name: Optional[str] = None
        # When Python's handler ran, and when the signal arrived (`_watch_arrivals`).
        self.signal_time: Optional[float] = None
        self._arrivals: Dict[int, float] = {}
        self._wakeup = None  # (read fd, write fd, thread) while arrivals are watched.
        self.stopped_at: Optional[int] = None  # The step checkpoint_and_stop stopped at.
        self.stop_delay: Optional[float] = None  # Seconds from the signal to the checkpoint.

    def __enter__(self) -> 'PreemptionWatcher':
        if threading.current_thread() is not threading.main_thread():
            # Only the main thread may install signal handlers (a notebook or test that
            # trains in a thread): stop requests are not available there.
            logging.warning('Training outside the main thread: SIGTERM/SIGINT not watched')
            return self
        self._previous = {signum: signal.getsignal(signum) for signum in _SIGNALS}
        for signum in _SIGNALS:
            signal.signal(signum, self._on_signal)
        self._watch_wakeup_fd()
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        if self._wakeup is not None:
            read_fd, write_fd, thread = self._wakeup
            self._wakeup = None
            signal.set_wakeup_fd(-1)
            os.close(write_fd)  # The thread reads the end of the pipe and returns.
            thread.join(timeout=5)
            os.close(read_fd)

    def _watch_wakeup_fd(self) -> None:
        """Starts the thread that notes when each signal arrives (module docstring)."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)  # set_wakeup_fd's requirement.
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        if previous != -1:  # Someone else's (an asyncio loop): leave it to them.
            signal.set_wakeup_fd(previous)
            os.close(read_fd)
            os.close(write_fd)
            return
        thread = threading.Thread(
            target=self._watch_arrivals, args=(read_fd,), name='signal-arrivals', daemon=True
        )
        thread.start()
        self._wakeup = (read_fd, write_fd, thread)

    def _watch_arrivals(self, read_fd: int) -> None:
        while True:
            try:
                numbers = os.read(read_fd, 64)
            except OSError:
                return
            if not numbers:
                return
            now = time.monotonic()
            for signum in numbers:
                self._arrivals.setdefault(signum, now)

    def attach(self, strategy: tf.distribute.Strategy, state) -> None:
        """Names the run's strategy and `checkpoint.CheckpointState`, once both exist.

        MultiWorkerMirrored and TPU strategies hand the signals to
        `PreemptionCheckpointHandler` from here on. It attaches a run counter to the
        checkpoint; since the checkpoint was restored before, TensorFlow's deferred
        restoration gives the counter its saved value on every worker.
        """
        self._state = state
        if not self._previous or not _uses_preemption_handler(strategy):
            return
        self._handler = tf.distribute.experimental.PreemptionCheckpointHandler(
            strategy.cluster_resolver,
            state.manager,
            termination_config=tf.distribute.experimental.TerminationConfig(
                exit_fn=self._handler_exit, save_fn=state.save
            ),
        )
        # The handler watches SIGTERM itself (where it does not poll a cloud's
        # metadata instead); let Ctrl-C, and a signal that came before, take that path.
        term_handler = signal.getsignal(signal.SIGTERM)
        if callable(term_handler) and term_handler != self._on_signal:
            signal.signal(signal.SIGINT, lambda _, frame: term_handler(signal.SIGTERM, frame))
            if self.requested:
                term_handler(signal.SIGTERM, None)

    def _on_signal(self, signum, frame) -> None:  # pylint: disable=unused-argument
        self.signal_name = signal.Signals(signum).name
        self.signal_time = time.monotonic()
        # A second signal of this kind takes its usual course: the program ends at once.
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    @staticmethod
    def _handler_exit() -> None:
        raise _HandlerExit()

    @property
    def requested(self) -> bool:
        """Whether a stop was requested (seen by this process's own signal handler)."""
        return self.signal_name is not None

    def _arrival(self) -> Tuple[float, bool]:
        """When the signal that asked to stop arrived, and whether that is its arrival.

        Its handler's time where the wakeup pipe did not see it (the pipe was not ours,
        or another module took it over meanwhile without passing the bytes on).
        """
        arrived = self._arrivals.get(int(getattr(signal, self.signal_name)))
        if arrived is None:
            return self.signal_time, False
        return min(arrived, self.signal_time), True

    def checkpoint_and_stop(self, step: int) -> bool:
        """At a loop boundary: if a stop was requested, checkpoints `step`; True means stop."""
        if self._handler is not None:
            try:
                self._handler.save_checkpoint_if_preempted(step)
            except _HandlerExit:
                self.stopped_at = step
                logging.info(
                    'Preempted: checkpoint written at step %d by all workers; stopping', step
                )
                return True
            return False
        if not self.requested:
            return False
        if not self._state.has_checkpoint_at(step):
            self._state.save(step)
        self.stopped_at = step
        arrived, exact = self._arrival()
        self.stop_delay = time.monotonic() - arrived
        logging.info(
            '%s: checkpoint %s written at step %d, %.1f s after the signal%s; stopping. '
            'Start again with the same flags to resume.',
            self.signal_name,
            self._state.latest,
            step,
            self.stop_delay,
            '' if exact else ' (timed from when Python saw it, after the loop in progress)',
        )
        return True

    def raise_if_stopped(self, step: int, last_step: int, last_evaluation) -> None:
        """Raises `errors.StoppedEarly` if a signal stopped training at `step` < `last_step`.

        Its message is the run's last line: where it stopped, the checkpoint to resume
        from, and the step of `last_evaluation` (the newest, or None), which can be
        older than the stop and must not read as the run's result.
        """
        if self.stopped_at is None or step >= last_step:
            return
        if last_evaluation:
            evaluated = (
                f'the last evaluation, at step {last_evaluation["step"]}: top-1 '
                f'{last_evaluation["top1"]:.4f}, top-5 {last_evaluation["top5"]:.4f}, '
                f'cross-entropy {last_evaluation["cross_entropy"]:.4f}'
            )
        else:
            evaluated = 'no evaluation yet'
        checkpoint = self._state.latest if self._state is not None else None
        written = f'checkpoint {checkpoint} written' if checkpoint else 'checkpoint written'
        if self.stop_delay is not None:
            written += f' {self.stop_delay:.1f} s after the signal'
        raise errors.StoppedEarly(
            f'stopped by {self.signal_name or "preemption"} at step {step} of {last_step}, '
            f'not finished: {written}; start the same command again to resume '
            f'(exit status {errors.EXIT_STOPPED}; {evaluated})'
        )

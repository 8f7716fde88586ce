"""Preemption: SIGTERM or SIGINT checkpoints at the next loop boundary and stops cleanly.

Cloud schedulers send SIGTERM some seconds before they reclaim a machine, and a
person stops a run with Ctrl-C. Either way the work since the last checkpoint should
survive. The signal only sets a flag (Python runs signal handlers between bytecodes,
so the handler could not interrupt the running `tf.function` anyway); after every loop
of `steps_per_loop` steps the trainer asks `checkpoint_and_stop(step)`, which writes a
checkpoint and tells it to return. The time from the signal to the exit is therefore
bounded by one loop plus one checkpoint write (plus an evaluation and an export when
the loop ends an epoch). A second signal of the same kind acts as it normally would:
it ends the program at once.

With MultiWorkerMirroredStrategy and TPUStrategy all workers must stop at the same step
and write the checkpoint together, which a local flag cannot arrange:
`tf.distribute.experimental.PreemptionCheckpointHandler` agrees on the step through
the coordination service. We give it our own save function and an exit function that
returns control to the trainer, so the shutdown path is the same in both cases.
"""

import signal
import threading
import time
from typing import Optional

from absl import logging
import tensorflow as tf

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
        self.signal_time: Optional[float] = None

    def __enter__(self) -> 'PreemptionWatcher':
        if threading.current_thread() is not threading.main_thread():
            # Only the main thread may install signal handlers (a notebook or test that
            # trains in a thread): stop requests are not available there.
            logging.warning('Training outside the main thread: SIGTERM/SIGINT not watched')
            return self
        self._previous = {signum: signal.getsignal(signum) for signum in _SIGNALS}
        for signum in _SIGNALS:
            signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

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

    def checkpoint_and_stop(self, step: int) -> bool:
        """At a loop boundary: if a stop was requested, checkpoints `step`; True means stop."""
        if self._handler is not None:
            try:
                self._handler.save_checkpoint_if_preempted(step)
            except _HandlerExit:
                logging.info(
                    'Preempted: checkpoint written at step %d by all workers; stopping', step
                )
                return True
            return False
        if not self.requested:
            return False
        if not self._state.has_checkpoint_at(step):
            self._state.save(step)
        logging.info(
            '%s: checkpoint %s written at step %d, %.1f s after the signal; stopping. '
            'Start again with the same flags to resume.',
            self.signal_name,
            self._state.latest,
            step,
            time.monotonic() - self.signal_time,
        )
        return True

"""`--profile_steps=A,B`: a profiler trace of train steps A to B, for TensorBoard.

The trace goes to `model_dir/logs/train/plugins/profile/<time>/`, where TensorBoard's
profile plugin (`pip install tensorboard-plugin-profile`) finds it beside the train
scalars, as the Keras TensorBoard callback does. The loop cuts its calls at A - 1 and
B (see `steps_to_boundary`), so the trace holds exactly those steps.
"""

from typing import Optional, Tuple

from absl import logging
import tensorflow as tf


class StepProfiler:
    """Starts the profiler before train step `first` and stops it after step `last`.

    Steps count from 1: step k is the k-th update, after which the global step is k.
    A run resumed inside the window traces what is left of it.

    Args:
      steps: (first, last), or None to trace nothing.
      logdir: where the trace goes.
      enabled: False on workers other than the chief.
    """

    def __init__(self, steps: Optional[Tuple[int, int]], logdir: str, *, enabled: bool = True):
        self._steps = steps if enabled else None
        self._logdir = logdir
        self._running = False

    def steps_to_boundary(self, step: int) -> Optional[int]:
        """Steps from global step `step` to the next start or stop, None when none is due."""
        if not self._steps:
            return None
        first, last = self._steps
        for boundary in (first - 1, last):
            if step < boundary:
                return boundary - step
        return None

    def before_steps(self, step: int) -> None:
        """Call before running the steps that follow global step `step`."""
        if not self._steps or self._running:
            return
        first, last = self._steps
        if first - 1 <= step < last:
            tf.profiler.experimental.start(self._logdir)
            self._running = True
            logging.info('Profiling train steps %d to %d into %s', step + 1, last, self._logdir)

    def after_steps(self, step: int) -> None:
        """Call once the steps up to global step `step` are done (their results read)."""
        if self._running and step >= self._steps[1]:
            self.stop()

    def stop(self) -> None:
        """Stops a running trace and writes it out; a no-op otherwise."""
        if self._running:
            tf.profiler.experimental.stop()
            self._running = False
            self._steps = None
            logging.info('Profiler trace written to %s', self._logdir)

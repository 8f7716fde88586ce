"""The console line written once per log interval, with the time left to the end.

    epoch 3.52/90 step 3960/101250 (3.9%): loss 4.7301 top-1 0.1432 lr 0.05000
    812.3 images/s ETA 1d 09:17:40

(one line in the log). The line is plain text whatever the output: it goes through the
absl log, which a terminal and a log file both read well.
"""

import time
from typing import Dict, Optional

from trainer.reporting import progress


class TrainConsole:
    """Formats the per-interval training line and estimates the time left.

    The estimate divides the wall time since the *first* log line by the steps done
    since, so it leaves out the start-up (tracing, compiling, filling the shuffle
    buffer) but counts what every epoch pays besides the steps: evaluation, checkpoints
    and exports. Before the first line there is only the first window to go by, which
    includes the start-up and overestimates.

    Args:
      total_steps: the global step the run ends at.
      steps_per_epoch: global steps in one epoch.
    """

    def __init__(self, *, total_steps: int, steps_per_epoch: int):
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self._reference = None  # (time, step) of the first log line.

    def eta_seconds(self, step: int, window_seconds_per_step: float, now: float) -> float:
        remaining = max(self.total_steps - step, 0)
        if self._reference is not None and step > self._reference[1]:
            start, start_step = self._reference
            return remaining * (now - start) / (step - start_step)
        return remaining * window_seconds_per_step

    def line(self, step: int, values: Dict[str, float], now: Optional[float] = None) -> str:
        """The line for `step`, from the interval's train scalars.

        Args:
          step: the global step just reached.
          values: the interval's scalars; reads `loss`, `top1`, `learning_rate`,
            `images_per_second` and `step_time`.
          now: the time (`time.time()`) of the line; for tests.
        """
        now = time.time() if now is None else now
        eta = self.eta_seconds(step, values['step_time'], now)
        if self._reference is None:
            self._reference = (now, step)
        spe = self.steps_per_epoch
        return (
            f'epoch {step / spe:.2f}/{self.total_steps / spe:.4g} '
            f'step {step}/{self.total_steps} ({100.0 * step / self.total_steps:.1f}%): '
            f'loss {values["loss"]:.4f} top-1 {values["top1"]:.4f} '
            f'lr {values["learning_rate"]:.5f} {values["images_per_second"]:.1f} images/s '
            f'ETA {progress.format_duration(eta)}'
        )

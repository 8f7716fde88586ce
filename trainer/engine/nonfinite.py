"""Stopping on non-finite values: the loss after every loop, the weights before writing.

A NaN or infinite loss never heals: once a weight is NaN every later step is NaN too,
so going on only burns accelerator time and, worse, overwrites good checkpoints with
useless ones. The trainer therefore checks the loss after every loop of
`steps_per_loop` steps and stops with one line naming the step and the value, and it
checks every variable before writing a checkpoint or an export, so that the newest
checkpoint on disk is always one a run can resume from.

fp16 loss scaling skips steps whose gradients overflow and lowers the scale; a few
skips are normal, a long run of them means the model diverged in a way the loss
scale cannot fix. `TrainingGuard` stops after more than `max_skipped_steps` of them
in a row.
"""

import math
from typing import Callable, Iterable, Mapping, Optional

import tensorflow as tf
from base import errors


class NonFiniteError(errors.UserError):
    """A non-finite loss or weight, or too many skipped steps: the run cannot go on.

    A `ValueError`, so `main.py` prints it as one line and exits non-zero.
    """


class TrainingGuard:
    """Checks each loop's summed metrics; raises `NonFiniteError` when training diverged.

    Args:
      max_skipped_steps: most consecutive steps that loss scaling may skip before the
        run stops; 0 disables the check.
      consecutive_skipped: optional callable returning the loss scaler's own count of
        consecutive skipped steps. Without it the count is derived from the loop's
        `skipped` total, which can only tell that a whole loop was skipped, so runs
        are counted in whole loops (a run that starts mid-loop is counted from the
        next loop on).
    """

    def __init__(
        self,
        *,
        max_skipped_steps: int = 0,
        consecutive_skipped: Optional[Callable[[], int]] = None,
    ):
        self.max_skipped_steps = max_skipped_steps
        self._consecutive_skipped_fn = consecutive_skipped
        self.consecutive_skipped = 0

    def check(
        self,
        totals: Mapping[str, float],
        *,
        first_step: int,
        last_step: int,
        newest_checkpoint: Optional[str] = None,
    ) -> None:
        """Raises `NonFiniteError` if the loop's loss is not finite or too many steps skipped.

        Args:
          totals: the loop's metrics summed over replicas and steps (`cross_entropy`,
            `l2`, `count` and, with loss scaling, `skipped`), and, where the loop tracks
            it, `first_nonfinite_step` (index in the loop, -1 for none) with its loss.
          first_step: the global step of the loop's first step (1-based).
          last_step: the global step after the loop.
          newest_checkpoint: named in the message, so the user knows where to go back to.
        """
        num_steps = last_step - first_step + 1
        count = max(float(totals.get('count', 1.0)), 1.0)
        loss = float(totals['cross_entropy']) / count + float(totals.get('l2', 0.0)) / max(
            num_steps, 1
        )
        where = (
            f'at step {last_step}'
            if num_steps == 1
            else f'in steps {first_step}-{last_step} (one loop: its sum)'
        )
        first_bad = int(totals.get('first_nonfinite_step', -1))
        if first_bad >= 0:
            # The loop knows the step: name it and its own loss, not the loop's sum.
            loss, where = float(totals['first_nonfinite_loss']), f'at step {first_step + first_bad}'
        after = (
            f'the newest checkpoint, {newest_checkpoint}, is unaffected'
            if newest_checkpoint
            else 'no checkpoint was written'
        )
        if not math.isfinite(loss):
            raise NonFiniteError(
                f'training loss is {loss} {where}; stopped at step {last_step} without '
                f'checkpointing: {after}'
            )
        if 'skipped' not in totals or self.max_skipped_steps <= 0:
            return
        skipped = int(round(float(totals['skipped'])))
        if self._consecutive_skipped_fn is not None:
            self.consecutive_skipped = int(self._consecutive_skipped_fn())
        elif skipped >= num_steps:
            self.consecutive_skipped += skipped
        else:
            self.consecutive_skipped = 0
        if self.consecutive_skipped > self.max_skipped_steps:
            raise NonFiniteError(
                f'{self.consecutive_skipped} consecutive steps up to step {last_step} were '
                f'skipped for non-finite gradients (more than --max_skipped_steps='
                f'{self.max_skipped_steps}); stopped without checkpointing: {after}'
            )


@tf.function
def _all_finite(variables):
    return tf.reduce_all(
        tf.stack([tf.reduce_all(tf.math.is_finite(variable)) for variable in variables])
    )


def floating_variables(variables: Iterable[tf.Variable]) -> list:
    """The floating-point variables among `variables`, each once."""
    seen, result = set(), []
    for variable in variables:
        if not tf.as_dtype(variable.dtype).is_floating or id(variable) in seen:
            continue
        seen.add(id(variable))
        result.append(variable)
    return result


def first_nonfinite(variables: Iterable[tf.Variable]) -> Optional[str]:
    """Returns the name of a variable holding a NaN or infinity, or None when all are finite.

    One fused check on the device in the common (all finite) case; the names are only
    looked up one by one when something is wrong.
    """
    variables = floating_variables(variables)
    if not variables or bool(_all_finite(variables)):
        return None
    for variable in variables:
        if not bool(tf.reduce_all(tf.math.is_finite(variable))):
            # Keras 3 names it by path ('predictions/kernel'), Keras 2 by name (':0' added).
            return (getattr(variable, 'path', None) or variable.name).split(':')[0]
    return None

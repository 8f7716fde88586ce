"""Loss scaling for 16-bit training, written out rather than borrowed from Keras.

float16 has 5 exponent bits: gradients below about 6e-8 flush to zero, so the loss is
multiplied by a large scale before the backward pass and the gradients divided by it
after. Too large a scale overflows to inf, so the scale is *dynamic* (Micikevicius et
al., "Mixed Precision Training", 2018): it starts at 2^15, doubles after 2,000 steps in
a row with finite gradients, and halves on a step with a non-finite gradient, which is
then skipped. bfloat16 has float32's exponent range and needs no scaling: its scale is
fixed at 1 unless a run asks for another (`--loss_scale`).

Why not `keras.mixed_precision.LossScaleOptimizer`: its Keras 3 version fails inside
`merge_call` under MirroredStrategy and with `jit_compile` (keras-team/keras#18666,
#21366), and Keras 2 and 3 disagree on its API (`get_scaled_loss` exists in one only).
This module needs no optimizer wrapper. The skip is decided *outside* the replicas
(`trainer/engine/loop.py`): every replica reports how many non-finite gradient values it
computed, the loop sums those counts over replicas, and the update runs only when the
sum is zero. A sum over replicas of finite values is finite, and a single non-finite
value anywhere makes the all-reduced gradient non-finite too, so this is the decision
the all-reduced gradients would give (short of a float32 overflow in the sum itself),
and every replica takes the same one by construction.
"""

from typing import Optional, Sequence, Union

import tensorflow as tf
from trainer import config as config_lib
from base import errors

PRECISIONS = config_lib.PRECISIONS  # The flag's choices, defined with it (trainer/config.py).

# Micikevicius et al. and Keras' LossScaleOptimizer: start at 2^15, double after
# 2,000 finite steps.
INITIAL_DYNAMIC_SCALE = 2.0**15
GROWTH_INTERVAL = 2000
# Never halve below 1: below it scaling would shrink gradients instead of lifting
# them, and a run whose gradients are NaN at every scale has diverged, which the
# trainer's non-finite guard reports.
MIN_SCALE = 1.0


def _state_variable(value, dtype) -> tf.Variable:
    # Aggregation NONE: every replica assigns the same value (its inputs are summed
    # over replicas first), so each updates its own copy without a cross-replica
    # merge, which also keeps the update legal inside XLA and control flow.
    return tf.Variable(
        value,
        dtype=dtype,
        trainable=False,
        synchronization=tf.VariableSynchronization.ON_WRITE,
        aggregation=tf.VariableAggregation.NONE,
    )


class LossScaler(tf.Module):
    """Scales the loss up and the gradients down; with `dynamic`, adapts and skips.

    Create it under the strategy's scope, next to the model. Its state is four
    variables, checkpointed with the model so that a resumed run continues with the
    scale it had reached:

    - `scale`: the current loss scale (float32).
    - `good_steps`: finite steps since the scale last changed (int64).
    - `skipped_steps`: steps skipped in the whole run (int64).
    - `consecutive_skipped`: steps skipped in a row up to now (int64).

    Args:
      dynamic: adapt the scale and skip updates with non-finite gradients.
      initial_scale: the starting (or, without `dynamic`, fixed) scale.
      growth_interval: finite steps in a row after which a dynamic scale doubles.
    """

    def __init__(
        self,
        *,
        dynamic: bool = False,
        initial_scale: float = 1.0,
        growth_interval: int = GROWTH_INTERVAL,
    ):
        super().__init__(name='loss_scaler')
        if initial_scale <= 0:
            raise errors.UserError(f'the loss scale must be positive, not {initial_scale}')
        self.dynamic = bool(dynamic)
        self.growth_interval = int(growth_interval)
        self.scale = _state_variable(float(initial_scale), tf.float32)
        self.good_steps = _state_variable(0, tf.int64)
        self.skipped_steps = _state_variable(0, tf.int64)
        self.consecutive_skipped = _state_variable(0, tf.int64)
        # A fixed scale of 1 is no scaling: skip the multiplications entirely.
        self._identity = not self.dynamic and float(initial_scale) == 1.0

    @property
    def skips_steps(self) -> bool:
        """Whether a step with non-finite gradients is skipped (dynamic scaling only)."""
        return self.dynamic

    def scale_loss(self, loss: tf.Tensor) -> tf.Tensor:
        """`loss * scale`: differentiate this instead of the loss."""
        if self._identity:
            return loss
        return loss * tf.cast(self.scale, loss.dtype)

    def unscale(self, gradients: Sequence[Optional[tf.Tensor]]) -> list:
        """Gradients of the scaled loss, divided by the scale; `None` stays `None`."""
        if self._identity:
            return list(gradients)
        inverse = 1.0 / self.scale
        return [None if g is None else g * tf.cast(inverse, g.dtype) for g in gradients]

    @staticmethod
    def count_non_finite(gradients: Sequence[Optional[tf.Tensor]]) -> tf.Tensor:
        """How many gradient values are inf or NaN (float32 scalar, summable over replicas)."""
        counts = [
            tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(g)), tf.float32))
            for g in gradients
            if g is not None
        ]
        return tf.add_n(counts) if counts else tf.constant(0.0)

    def update(self, finite: Union[bool, tf.Tensor]) -> None:
        """Advances the state after a step whose (all-reduced) gradients were `finite`.

        Call it once per step, in cross-replica context (the loop does). Without
        `dynamic` only the counters move.
        """
        finite = tf.convert_to_tensor(finite, tf.bool)
        good = tf.where(finite, self.good_steps + 1, 0)
        if self.dynamic:
            grow = good >= self.growth_interval
            scale = tf.where(
                finite,
                tf.where(grow, self.scale * 2.0, self.scale),
                tf.maximum(self.scale * 0.5, MIN_SCALE),
            )
            self.scale.assign(scale)
            good = tf.where(grow, tf.zeros_like(good), good)
        self.good_steps.assign(good)
        skipped = tf.cast(tf.logical_not(finite), tf.int64)
        self.skipped_steps.assign_add(skipped)
        self.consecutive_skipped.assign(
            tf.where(finite, tf.zeros_like(skipped), self.consecutive_skipped + 1)
        )


def create_loss_scaler(precision: str, loss_scale: str = 'auto') -> LossScaler:
    """The scaler for `--precision` and `--loss_scale`.

    Args:
      precision: one of PRECISIONS.
      loss_scale: 'auto' (dynamic for float16, none otherwise), 'dynamic', or a
        positive number for a fixed scale.

    Raises:
      ValueError: an unknown precision or a loss scale that is neither a keyword nor
        a positive number.
    """
    if precision not in PRECISIONS:
        raise errors.UserError(f'--precision={precision!r} is not one of {", ".join(PRECISIONS)}')
    if loss_scale == 'auto':
        loss_scale = 'dynamic' if precision == 'float16' else '1'
    if loss_scale == 'dynamic':
        return LossScaler(dynamic=True, initial_scale=INITIAL_DYNAMIC_SCALE)
    try:
        value = float(loss_scale)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise errors.UserError(
            f"--loss_scale={loss_scale!r} must be 'auto', 'dynamic' or a positive number"
        )
    return LossScaler(dynamic=False, initial_scale=value)

"""Learning-rate schedules as functions of the global step.

Each schedule is a Keras `LearningRateSchedule`, so the optimizer evaluates it on its
own step counter (`optimizer.iterations`, which is also our global step) on every
device kind and in both Keras 2 and Keras 3. Epochs are derived from the step and the
steps per epoch; the learning rate changes per step, not per epoch, except for `steps`
and `piecewise`, which are piecewise constant by definition.
"""

import math
from typing import Optional, Sequence

import keras
import tensorflow as tf
from trainer import config as config_lib
from base import errors

# The flags' choices, defined with them (trainer/config.py).
SCHEDULES = config_lib.SCHEDULES
LR_SCALINGS = config_lib.LR_SCALINGS

# Goyal et al., "Accurate, Large Minibatch SGD" (2017): lr = 0.1 * batch / 256 for
# ResNet-50; the paper's DenseNet recipe is the same 0.1 at batch 256.
REFERENCE_BATCH = 256


class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The schedules of the seed and their usual companions, in terms of epochs.

    With epoch = step / steps_per_epoch and progress = min(step / total_steps, 1):

    - steps: initial_lr * 0.1 ** floor(floor(epoch) / decay_epochs) (the seed's default).
    - piecewise: values[i] from boundaries[i-1] to boundaries[i] (epochs, fractional
      allowed); values default to initial_lr * 0.1 ** i.
    - linear: initial_lr + (final_lr - initial_lr) * progress.
    - exponential: initial_lr * (final_lr / initial_lr) ** progress.
    - cosine: final_lr + (initial_lr - final_lr) * (1 + cos(pi * progress)) / 2.

    With warmup_steps > 0 each is multiplied by min(1, (step + 1) / warmup_steps): a
    linear ramp over the first warmup_steps steps (Goyal et al.) that reaches the
    schedule's own value at the end. The schedule is not shifted: after the warmup it
    is where it would have been without one.
    """

    def __init__(
        self,
        name: str,
        *,
        initial_lr: float,
        final_lr: float,
        steps_per_epoch: int,
        total_steps: int,
        decay_epochs: int = 30,
        boundaries: Sequence[float] = (),
        values: Optional[Sequence[float]] = None,
        warmup_steps: int = 0,
    ):
        super().__init__()
        if name not in SCHEDULES:
            raise errors.UserError(f'--lr_sched={name!r} is not one of {", ".join(SCHEDULES)}')
        boundaries = [float(b) for b in boundaries]
        if name == 'piecewise':
            if not boundaries or boundaries != sorted(boundaries) or boundaries[0] <= 0:
                raise errors.UserError(
                    '--lr_sched=piecewise needs --lr_boundaries: increasing positive epochs'
                )
            if values is None or not len(values):
                values = [initial_lr * 0.1**i for i in range(len(boundaries) + 1)]
            if len(values) != len(boundaries) + 1:
                raise errors.UserError(
                    f'--lr_values needs one value more than --lr_boundaries '
                    f'({len(boundaries) + 1}), not {len(values)}'
                )
        if warmup_steps < 0:
            raise errors.UserError(f'warmup_steps must be 0 or more, not {warmup_steps}')
        self.name = name
        self.initial_lr = float(initial_lr)
        self.final_lr = float(final_lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_steps = int(total_steps)
        self.decay_epochs = int(decay_epochs)
        self.boundaries = boundaries
        self.values = [float(v) for v in values] if values is not None else None
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        lr = self._decayed(step)
        if self.warmup_steps:
            lr *= tf.minimum(1.0, (step + 1.0) / float(self.warmup_steps))
        return lr

    def _decayed(self, step):
        initial, final = self.initial_lr, self.final_lr
        if self.name == 'steps':
            epoch = tf.math.floordiv(step, float(self.steps_per_epoch))
            return initial * tf.pow(0.1, tf.math.floordiv(epoch, float(self.decay_epochs)))
        if self.name == 'piecewise':
            # Boundaries compared in steps: exact where an epoch boundary is a whole step.
            passed = tf.add_n(
                [
                    tf.cast(step >= boundary * self.steps_per_epoch, tf.int32)
                    for boundary in self.boundaries
                ]
            )
            return tf.gather(tf.constant(self.values, tf.float32), passed)
        progress = tf.minimum(step / float(max(self.total_steps, 1)), 1.0)
        if self.name == 'linear':
            return initial + (final - initial) * progress
        if self.name == 'exponential':
            return initial * tf.pow(final / initial, progress)
        return final + (initial - final) * 0.5 * (1.0 + tf.cos(math.pi * progress))

    def get_config(self):
        return dict(
            name=self.name,
            initial_lr=self.initial_lr,
            final_lr=self.final_lr,
            steps_per_epoch=self.steps_per_epoch,
            total_steps=self.total_steps,
            decay_epochs=self.decay_epochs,
            boundaries=self.boundaries,
            values=self.values,
            warmup_steps=self.warmup_steps,
        )


def lr_multiplier(lr_scaling: str, global_batch_size: int) -> float:
    """The factor `--lr_scaling` applies to every learning rate of a schedule.

    `linear` (Goyal et al.): global_batch_size / 256, so the flags' learning rates are those
    of a batch of 256 and stay right when replicas or the batch change.

    Raises:
      ValueError: an unknown scaling.
    """
    if lr_scaling == 'none':
        return 1.0
    if lr_scaling == 'linear':
        return global_batch_size / REFERENCE_BATCH
    raise errors.UserError(f'--lr_scaling={lr_scaling!r} is not one of {", ".join(LR_SCALINGS)}')


def from_config(
    config, *, steps_per_epoch: int, total_steps: int, global_batch_size: int
) -> EpochSchedule:
    """The schedule of a `RunConfig`: its flags, scaled with the global batch when asked."""
    scale = lr_multiplier(config.lr_scaling, global_batch_size)
    values = [v * scale for v in config.lr_values] if config.lr_values else None
    return EpochSchedule(
        config.lr_sched,
        initial_lr=config.initial_lr * scale,
        final_lr=config.final_lr * scale,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        decay_epochs=config.lr_decay_epochs,
        boundaries=config.lr_boundaries,
        values=values,
        warmup_steps=int(round(config.warmup_epochs * steps_per_epoch)),
    )

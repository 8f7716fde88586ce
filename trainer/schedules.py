"""Learning-rate schedules as functions of the global step.

Each schedule is a Keras `LearningRateSchedule`, so the optimizer evaluates it on its
own step counter (`optimizer.iterations`, which is also our global step) on every
device kind and in both Keras 2 and Keras 3. Epochs are derived from the step and the
steps per epoch; the learning rate changes per step, not per epoch, except for `steps`,
which is piecewise constant by definition.
"""

import math

import keras
import tensorflow as tf

SCHEDULES = ('steps', 'linear', 'exponential', 'cosine')


class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The schedules of the seed, in terms of fractional epochs.

    - steps: initial_lr * 0.1 ** floor(epoch / decay_epochs) (the seed's default).
    - linear: initial_lr -> final_lr linearly over the run.
    - exponential: initial_lr * (final_lr / initial_lr) ** (epoch / epochs).
    - cosine: final_lr + (initial_lr - final_lr) * (1 + cos(pi * epoch / epochs)) / 2.
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
    ):
        super().__init__()
        if name not in SCHEDULES:
            raise ValueError(f'--lr_sched={name!r} is not one of {", ".join(SCHEDULES)}')
        self.name = name
        self.initial_lr = float(initial_lr)
        self.final_lr = float(final_lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_steps = int(total_steps)
        self.decay_epochs = int(decay_epochs)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        initial, final = self.initial_lr, self.final_lr
        if self.name == 'steps':
            epoch = tf.math.floordiv(step, float(self.steps_per_epoch))
            return initial * tf.pow(0.1, tf.math.floordiv(epoch, float(self.decay_epochs)))
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
        )

"""Optimizer construction from the configuration.

Weight decay is *not* delegated to the optimizer, except for AdamW: the step adds the
L2 term to the loss (see `step.l2_term`), so SGD, Adam and RMSprop all see the same,
documented decay. AdamW's point is the opposite, decay decoupled from the adaptive
gradient scaling (Loshchilov and Hutter, 2019), so there the optimizer decays the
same conv and dense kernels itself and the loss carries no L2 term.
"""

from typing import Sequence

import keras
import tensorflow as tf
from trainer import config as config_lib
from base import errors

OPTIMIZERS = config_lib.OPTIMIZERS  # The flag's choices, defined with it (trainer/config.py).


def create_optimizer(
    name: str,
    learning_rate,
    *,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    variables: Sequence[tf.Variable] = (),
    decayed_variables: Sequence[tf.Variable] = (),
) -> keras.optimizers.Optimizer:
    """Returns the Keras optimizer `name` driven by `learning_rate` (a float or schedule).

    Args:
      name: one of OPTIMIZERS.
      learning_rate: a float or a `LearningRateSchedule` of the global step.
      momentum: SGD's and RMSprop's momentum.
      nesterov: Nesterov momentum for SGD (the DenseNet paper's choice).
      weight_decay: AdamW's decoupled decay per unit of learning rate (Keras'
        convention: w -= lr * weight_decay * w); ignored by the others.
      variables: the trainable variables (AdamW only), so that those not in
        `decayed_variables` can be excluded from its decay.
      decayed_variables: the variables AdamW decays (conv and dense kernels).

    Raises:
      ValueError: `name` is not one of OPTIMIZERS.
    """
    if name == 'sgd':
        return keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=nesterov)
    if name == 'adam':
        return keras.optimizers.Adam(learning_rate)
    if name == 'adamw':
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
        keep = {id(v) for v in decayed_variables}
        excluded = [v for v in variables if id(v) not in keep]
        if excluded:
            # Batch-norm scales and offsets and biases are not decayed, as with L2.
            optimizer.exclude_from_weight_decay(var_list=excluded)
        return optimizer
    if name == 'rmsprop':
        # The Inception/EfficientNet settings: decay 0.9, momentum 0.9, epsilon 1.0.
        return keras.optimizers.RMSprop(learning_rate, rho=0.9, momentum=momentum, epsilon=1.0)
    raise errors.UserError(f'--optimizer={name!r} is not one of {", ".join(OPTIMIZERS)}')


def loss_weight_decay(name: str, weight_decay: float) -> float:
    """The L2 coefficient the step adds to the loss: none where the optimizer decays."""
    return 0.0 if name == 'adamw' else weight_decay

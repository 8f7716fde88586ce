"""Optimizer construction from the configuration.

Weight decay is *not* delegated to the optimizer: the step adds the L2 term to the loss
(see `step.l2_term`), so SGD, Adam and RMSprop all see the same, documented decay.
"""

import keras

OPTIMIZERS = ('sgd', 'adam', 'rmsprop')


def create_optimizer(
    name: str, learning_rate, *, momentum: float = 0.9, nesterov: bool = False
) -> keras.optimizers.Optimizer:
    """Returns the Keras optimizer `name` driven by `learning_rate` (a float or schedule).

    Raises:
      ValueError: `name` is not one of OPTIMIZERS.
    """
    if name == 'sgd':
        return keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=nesterov)
    if name == 'adam':
        return keras.optimizers.Adam(learning_rate)
    if name == 'rmsprop':
        # The Inception/EfficientNet settings: decay 0.9, momentum 0.9, epsilon 1.0.
        return keras.optimizers.RMSprop(learning_rate, rho=0.9, momentum=momentum, epsilon=1.0)
    raise ValueError(f'--optimizer={name!r} is not one of {", ".join(OPTIMIZERS)}')

"""Batch norm whose every input receives exactly one gradient: bit-reproducible backprop.

Why this exists. When a tensor feeds several ops, TensorFlow sums the gradients they
send back with one AddN. TensorFlow's AddN kernel accumulates into whichever input
buffer it can reuse and moves that input to the front of the sum; which buffer is
free first depends on thread timing (`forward_input_to_output_with_shape` in
TensorFlow's `core/kernels/aggregate_ops.h`). Floating-point addition commutes but
does not associate: with two addends the order cannot matter, with three or more
the gradient changes in its last bits from run to run, and op determinism
(`tf.config.experimental.enable_op_determinism`) does not cover it.

Keras' BatchNormalization builds training-mode batch norm from separate ops (mean,
variance, normalisation), so its input feeds three of them; inside a dense block the
concatenation is a fourth. Every batch-norm input of a DenseNet got its gradient
from a 3- or 4-way AddN, and two `--deterministic` runs drifted apart from the first
step (tests/determinism_test.py). Here:

- `normalize` is training-mode batch norm as one differentiable unit with the
  textbook backward pass, so its input receives one gradient;
- `moments` is a mean and variance with one gradient for its input (the
  memory-efficient blocks compute moments apart from the normalisation);

and the plain and memory-efficient DenseNets are built so that no tensor feeds more
than two gradient-carrying ops (`tests/determinism_test.py` checks the traced step).

`BatchNormalization` is Keras' layer with `normalize` in training mode; inference and
the variables (names, order, shapes) are Keras' own, so Keras Applications weights
load unchanged.
"""

from typing import Sequence, Tuple

import keras
import tensorflow as tf

# Keras 2's fused batch norm updates the moving variance with the unbiased batch
# variance (n / (n - 1) times the biased one), Keras 3's with the biased one. We
# follow the installed Keras, so that our models train as Keras Applications' do.
UNBIASED_MOVING_VARIANCE = keras.__version__.startswith('2.')


def _reduced_axes(x: tf.Tensor) -> Sequence[int]:
    """Every axis but the last (channels)."""
    return list(range(x.shape.rank - 1))


def _count(x: tf.Tensor) -> tf.Tensor:
    """Elements per channel, float32."""
    return tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)


@tf.custom_gradient
def moments(x: tf.Tensor):
    """Per-channel batch mean and biased variance of float32 `x`, over all but the last axis.

    The same values as `tf.nn.moments`; the backward pass is one expression, so `x`
    receives one gradient however the two statistics are used.
    """
    axes = _reduced_axes(x)
    mean, variance = tf.nn.moments(x, axes)

    def backward(d_mean, d_variance):
        count = _count(x)
        d_mean = tf.zeros_like(mean) if d_mean is None else d_mean
        d_variance = tf.zeros_like(variance) if d_variance is None else d_variance
        # d/dx of mean is 1/n; of the biased variance 2 (x - mean) / n.
        return (d_mean + 2.0 * d_variance * (x - mean)) / count

    return (mean, variance), backward


def normalize(
    x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, epsilon: float
) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Training-mode batch norm of float32 `x` with its own batch statistics.

    Returns:
      `(y, mean, variance)`: `y` as Keras computes it (`tf.nn.batch_normalization`
      with the `tf.nn.moments` statistics); the statistics, for the moving averages,
      carry no gradient.
    """

    @tf.custom_gradient
    def unit(x, gamma, beta):
        axes = _reduced_axes(x)
        mean, variance = tf.nn.moments(x, axes)
        y = tf.nn.batch_normalization(x, mean, variance, beta, gamma, epsilon)

        def backward(d_y, *unused_statistics_gradients):
            # The textbook batch-norm backward pass (Ioffe and Szegedy, 2015), written
            # with subtractions: no sum of three same-shaped terms for Grappler to fuse
            # into one AddN again.
            inverse_std = tf.math.rsqrt(variance + epsilon)
            x_hat = (x - mean) * inverse_std
            count = _count(x)
            d_beta = tf.reduce_sum(d_y, axes)
            d_gamma = tf.reduce_sum(d_y * x_hat, axes)
            centred = d_y - d_beta / count
            d_x = (centred - x_hat * (d_gamma / count)) * (gamma * inverse_std)
            return d_x, d_gamma, d_beta

        return (y, tf.stop_gradient(mean), tf.stop_gradient(variance)), backward

    return unit(x, gamma, beta)


def update_moving_statistics(layer, mean: tf.Tensor, variance: tf.Tensor, count) -> None:
    """Keras' moving averages of a BatchNormalization layer from one batch's moments."""
    mean, variance = tf.stop_gradient(mean), tf.stop_gradient(variance)
    if UNBIASED_MOVING_VARIANCE:
        count = tf.cast(count, tf.float32)
        variance = variance * count / tf.maximum(count - 1.0, 1.0)
    momentum = layer.momentum
    for moving, value in ((layer.moving_mean, mean), (layer.moving_variance, variance)):
        moving.assign(moving * momentum + value * (1.0 - momentum))


@keras.saving.register_keras_serializable(package='densenet')
class BatchNormalization(keras.layers.BatchNormalization):
    """Keras' BatchNormalization, trained through `normalize` (see the module docstring).

    Only the case DenseNet uses takes the new path: training, channels last, scale and
    centre, no mask, renorm or virtual batches. Anything else, and inference, is
    Keras' own code.
    """

    def call(self, inputs, training=None, **kwargs):
        if not self._normalizes_itself(inputs, training, kwargs):
            return super().call(inputs, training=training, **kwargs)
        x = tf.cast(inputs, tf.float32)
        y, mean, variance = normalize(
            x, tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32), self.epsilon
        )
        update_moving_statistics(self, mean, variance, _count(x))
        return tf.cast(y, self.compute_dtype)

    def _normalizes_itself(self, inputs, training, kwargs) -> bool:
        axis = self.axis[0] if isinstance(self.axis, (list, tuple)) else self.axis
        return (
            training is True
            and self.trainable
            and kwargs.get('mask') is None
            and self.scale
            and self.center
            and not getattr(self, 'renorm', False)
            and not getattr(self, 'virtual_batch_size', None)
            and not getattr(self, 'synchronized', False)
            and axis in (-1, len(inputs.shape) - 1)
        )

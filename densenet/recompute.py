"""Memory-efficient dense blocks: BN-ReLU-conv recomputed in the backward pass.

A dense layer's input is the concatenation of every earlier layer's output, so a
plain implementation stores, per layer, a concatenation, its batch-normalised copy and
that copy after ReLU, each as wide as everything before it: memory quadratic in the
depth of a block (Pleiss et al., "Memory-Efficient Implementation of DenseNets", 2017).
Here each dense layer, BN-ReLU-conv1x1-BN-ReLU-conv3x3, runs inside `tf.recompute_grad`
and takes the *list* of earlier outputs: the concatenation happens inside, so what the
forward pass keeps per layer is only its k new channels; everything in between is
recomputed, one layer at a time, when the backward pass needs it. The transition's
BN-ReLU-conv is recomputed the same way.

Batch norm in a recomputed segment would update its moving statistics twice, once in
the forward pass and again in the recomputation (the bug of
gpleiss/efficient_densenet_pytorch#73). Here the segment never touches the moving
statistics: it *returns* the batch moments it normalised with, and the layer updates
the moving averages from those, outside the segment, once per call. The first BN's
moments are computed outside and passed in (a concatenation's per-channel moments are
its parts' moments side by side, so each layer's output is reduced once); gradients
flow through the moments as in a plain batch norm. Dropout inside a segment is
stateless, keyed by a seed drawn once per call, so the recomputation draws the mask
the forward pass drew.

The layers inside keep the names, shapes and order of the plain model's weights, so
`set_weights` moves weights between the two and the checkpoints hold the same values
(`model.weights` is the same list). In inference the sublayers run as ordinary Keras
layers, exactly the plain model's computation.
"""

from typing import Any, List, Optional

import keras
import tensorflow as tf

from densenet import batch_norm
from densenet import blocks

def _moments(x: tf.Tensor):
    """Per-channel batch mean and (biased) variance, in float32, one gradient for `x`."""
    return batch_norm.moments(tf.cast(x, tf.float32))


def _bn_relu_conv(x, norm, conv, mean, variance, compute_dtype):
    """Batch norm with the given moments, ReLU, convolution (no variable updates)."""
    # Normalise in float32, as Keras' BatchNormalization does under a mixed policy.
    scale = tf.cast(norm.gamma, tf.float32) * tf.math.rsqrt(variance + norm.epsilon)
    offset = tf.cast(norm.beta, tf.float32) - mean * scale
    y = tf.nn.relu(tf.cast(x, tf.float32) * scale + offset)
    kernel = tf.cast(conv.kernel, compute_dtype)
    return tf.nn.conv2d(tf.cast(y, compute_dtype), kernel, strides=1, padding='SAME')


def _concat(features):
    return features[0] if len(features) == 1 else tf.concat(features, axis=blocks.CHANNEL_AXIS)


class RecomputedDenseBlock(keras.layers.Layer):
    """A dense block (and the BN-ReLU-conv of the transition after it), recomputed.

    Holds the same BatchNormalization and Conv2D layers, with the same names and in
    the same weight order, as `blocks.dense_block` followed by the first half of
    `blocks.transition_block`.

    Args:
      channels: the block's input channels.
      num_layers: dense layers in the block.
      growth_rate: k, channels each dense layer adds.
      prefix: the stage's name prefix, e.g. 'conv2' (layers 'conv2_block1_0_bn', ...).
      transition: the transition's name prefix (e.g. 'pool2') to end with its
        BN-ReLU-conv1x1, or None for the last block (output: the concatenation).
      reduction: the transition's compression factor theta.
      dropout_rate: dropout after each dense layer's convolutions, as in the paper.
      batch_norm_momentum: the moving statistics' decay.
      recompute: False runs the same functions without `tf.recompute_grad` (storing
        everything, as the plain model does): a second code path for tests.
    """

    def __init__(
        self,
        channels: int,
        num_layers: int,
        growth_rate: int,
        *,
        prefix: str,
        transition: Optional[str] = None,
        reduction: float = 0.5,
        dropout_rate: float = 0.0,
        batch_norm_momentum: float = 0.99,
        recompute: bool = True,
        **kwargs: Any,
    ):
        kwargs.setdefault('name', f'{prefix}_recomputed')
        super().__init__(**kwargs)
        self.channels = channels
        self.num_layers = num_layers
        self.growth_rate = growth_rate
        self.prefix = prefix
        self.transition = transition
        self.reduction = reduction
        self.dropout_rate = dropout_rate
        self.batch_norm_momentum = batch_norm_momentum
        self.recompute = recompute
        dtype = self.dtype_policy
        k = growth_rate

        def norm(name):
            return batch_norm.BatchNormalization(
                axis=blocks.CHANNEL_AXIS,
                epsilon=blocks.BN_EPSILON,
                momentum=batch_norm_momentum,
                name=name,
                dtype=dtype,
            )

        def conv(filters, size, name):
            return keras.layers.Conv2D(
                filters, size, padding='same', use_bias=False, name=name, dtype=dtype
            )

        # In the plain model's weight order: per dense layer BN, 1x1 conv, BN, 3x3 conv;
        # then the transition's BN and 1x1 conv. ('same' padding is 'valid' for 1x1.)
        parts = []
        for i in range(num_layers):
            name = f'{prefix}_block{i + 1}'
            parts += [
                norm(f'{name}_0_bn'),
                conv(4 * k, 1, f'{name}_1_conv'),
                norm(f'{name}_1_bn'),
                conv(k, 3, f'{name}_2_conv'),
            ]
        if transition:
            parts += [norm(f'{transition}_bn'), conv(self._channels_out(), 1, f'{transition}_conv')]
        self._parts = parts

    @property
    def layers(self) -> List[keras.layers.Layer]:
        """The BatchNormalization and Conv2D layers inside, in weight order."""
        return list(self._parts)

    @property
    def weights(self):
        # Layer by layer, as a functional model lists them. (Keras 2's default would
        # put every trainable weight before every moving statistic.)
        return [weight for layer in self._parts for weight in layer.weights]

    def _channels_out(self) -> int:
        total = self.channels + self.num_layers * self.growth_rate
        return int(total * self.reduction) if self.transition else total

    def _dense_layer(self, i: int):
        """(BN, conv1x1, BN, conv3x3) of dense layer i."""
        return self._parts[4 * i : 4 * i + 4]

    def build(self, input_shape):
        shape = list(input_shape[:-1])
        k = self.growth_rate
        widths = []
        for i in range(self.num_layers):
            widths += [self.channels + i * k] * 2 + [4 * k] * 2
        if self.transition:
            widths += [self.channels + self.num_layers * k] * 2
        for layer, width in zip(self._parts, widths):
            # Built here, in weight order, so that the model has its weights before
            # its first call. The name scope gives Keras 2's variable names the
            # layer's name, as building on a first call would.
            with tf.name_scope(layer.name):
                layer.build(tuple(shape + [width]))
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self._channels_out(),)

    def call(self, inputs, training=None):
        if training:
            return self._train(inputs)
        return self._infer(inputs)

    def _infer(self, x):
        """The plain model's computation, layer by layer (no recomputation needed)."""
        for i in range(self.num_layers):
            norm0, conv1, norm1, conv2 = self._dense_layer(i)
            y = conv1(tf.nn.relu(norm0(x, training=False)))
            y = conv2(tf.nn.relu(norm1(y, training=False)))
            x = tf.concat([x, y], axis=blocks.CHANNEL_AXIS)
        if self.transition:
            norm, conv = self._parts[-2:]
            x = conv(tf.nn.relu(norm(x, training=False)))
        return x

    def _train(self, x):
        features = [x]
        # The moments of the concatenation so far, grown by one part per layer: each
        # part's moments then feed two ops (this layer and the next concatenation),
        # not every later layer, so their gradients are sums of two terms, whose
        # order cannot change the result (see densenet/batch_norm.py).
        mean, variance = _moments(x)
        count = tf.reduce_prod(tf.shape(x)[:3])
        for i in range(self.num_layers):
            norm0, _, norm1, _ = self._dense_layer(i)
            batch_norm.update_moving_statistics(norm0, mean, variance, count)
            seeds = []
            if self.dropout_rate > 0:
                # Drawn here, once per call, so that the recomputation draws the same
                # masks. Float, because recompute_grad watches its arguments; whole
                # numbers below 2^24 are exact in float32.
                seeds = [tf.cast(tf.random.uniform([2, 2], 0, 2**24, tf.int32), tf.float32)]
            y, mean1, variance1, *features = self._recomputed(self._dense_layer_fn(i))(
                mean, variance, *seeds, *features
            )
            batch_norm.update_moving_statistics(norm1, mean1, variance1, count)
            features.append(y)
            new_mean, new_variance = _moments(y)
            mean = tf.concat([mean, new_mean], axis=0)
            variance = tf.concat([variance, new_variance], axis=0)
        if not self.transition:
            return _concat(features)
        norm, conv = self._parts[-2:]
        batch_norm.update_moving_statistics(norm, mean, variance, count)
        compute_dtype = self.compute_dtype

        def transition(mean, variance, *features):
            return _bn_relu_conv(_concat(features), norm, conv, mean, variance, compute_dtype)

        return self._recomputed(transition)(mean, variance, *features)

    def _recomputed(self, function):
        return tf.recompute_grad(function) if self.recompute else function

    def _dense_layer_fn(self, i: int):
        """Dense layer i as a pure function of (moments, [seeds,] features).

        Returns its k new channels, the batch moments its second batch norm used, and
        the input features again. The next layer takes those copies, not the originals:
        then a feature's gradient is summed layer by layer on the way back, instead of
        in one sum over every later layer's contribution, all held until the last one
        is computed (memory quadratic in the block's depth again).
        """
        norm0, conv1, norm1, conv2 = self._dense_layer(i)
        compute_dtype, rate = self.compute_dtype, self.dropout_rate

        def dropout(y, seed):
            return tf.nn.experimental.stateless_dropout(y, rate, tf.cast(seed, tf.int32))

        def dense_layer(mean, variance, *args):
            seeds, features = (args[0], args[1:]) if rate > 0 else (None, args)
            y = _bn_relu_conv(_concat(features), norm0, conv1, mean, variance, compute_dtype)
            if rate > 0:
                y = dropout(y, seeds[0])
            mean1, variance1 = _moments(y)
            y = _bn_relu_conv(y, norm1, conv2, mean1, variance1, compute_dtype)
            if rate > 0:
                y = dropout(y, seeds[1])
            return (y, mean1, variance1, *[tf.identity(f) for f in features])

        return dense_layer

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            num_layers=self.num_layers,
            growth_rate=self.growth_rate,
            prefix=self.prefix,
            transition=self.transition,
            reduction=self.reduction,
            dropout_rate=self.dropout_rate,
            batch_norm_momentum=self.batch_norm_momentum,
            recompute=self.recompute,
        )
        return config

"""Memory-efficient dense blocks: BN-ReLU-conv recomputed in the backward pass.

A dense layer's input is the concatenation of every earlier layer's output, so a
plain implementation stores, per layer, a concatenation, its batch-normalised copy and
that copy after ReLU, each as wide as everything before it: memory quadratic in the
depth of a block (Pleiss et al., "Memory-Efficient Implementation of DenseNets", 2017).
Here each dense layer, BN-ReLU-conv1x1-BN-ReLU-conv3x3, runs inside `recompute_grad`
(`tf.recompute_grad` without its copies of every argument) and takes the *list* of
earlier outputs: the concatenation happens inside, so what the forward pass keeps per
layer is only its k new channels; everything in between is recomputed, one layer at a
time, when the backward pass needs it. The whole transition (BN-ReLU-conv, dropout,
average pool) is recomputed the same way and keeps only its pooled output. So is the
ImageNet stem (7x7/2 conv, BN, ReLU, 3x3/2 max pool, held by the first block), with a
hand-written backward pass: it keeps only the padded images, not its four 112x112
tensors, and goes back through them one at a time.

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
from tensorflow.python.eager import record  # `tf.recompute_grad`'s own: no public form.

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


def recompute_grad(function):
    """`function` with its intermediate tensors recomputed in the backward pass.

    `tf.recompute_grad`'s computation without its copies: in a graph, that one orders
    the recomputation after the incoming gradients by adding a zero that depends on
    them to *every argument*, which copies each argument (here: every earlier feature
    of the block, for every dense layer, a transient as wide as the block and memory
    traffic quadratic in its depth). Here the arguments pass through `tf.identity`
    (which shares the buffer) under a control dependency on the incoming gradients:
    the same order, no copy. (XLA ignores control dependencies; under `--jit_compile`
    XLA schedules the recomputation itself.)
    """

    @tf.custom_gradient
    def recomputed(*args):
        with record.stop_recording():
            result = function(*args)

        def backward(*result_gradients, variables=None):
            ready = [g for g in result_gradients if g is not None]
            with tf.control_dependencies(ready):
                inputs = [tf.identity(arg) for arg in args]
            variables = list(variables or [])
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                tape.watch(variables)
                again = function(*inputs)
            gradients = tape.gradient(
                again,
                inputs + variables,
                output_gradients=list(result_gradients),
                unconnected_gradients=tf.UnconnectedGradients.ZERO,
            )
            return gradients[: len(inputs)], gradients[len(inputs) :]

        return result, backward

    return recomputed


_STEM_STRIDES = [1, 2, 2, 1]


def _stem(images, kernel, gamma, beta, epsilon):
    """The ImageNet stem in training mode: 7x7/2 conv, batch norm, ReLU, 3x3/2 max pool.

    Returns `(conv, inverse_std, padded, pooled, mean, variance)`: the conv output in
    float32, the batch norm's 1/sqrt(variance + epsilon), the ReLU output padded by 1,
    the pooled output (in `kernel.dtype`, the compute dtype) and the batch moments.
    """
    y = tf.nn.conv2d(tf.cast(images, kernel.dtype), kernel, strides=2, padding='VALID')
    y = tf.cast(y, tf.float32)
    mean, variance = _moments(y)
    inverse_std = tf.math.rsqrt(variance + epsilon)
    scale = gamma * inverse_std
    z = tf.cast(tf.nn.relu(y * scale + (beta - mean * scale)), kernel.dtype)
    padded = tf.pad(z, [[0, 0], [1, 1], [1, 1], [0, 0]])
    pooled = tf.nn.max_pool2d(padded, 3, 2, 'VALID')
    return y, inverse_std, padded, pooled, mean, variance


def _recomputed_stem(images, kernel, gamma, beta, epsilon):
    """`_stem`'s (pooled, mean, variance), keeping only `images` for the backward pass.

    The backward pass recomputes the stem, then goes back through it by hand, each
    112x112 tensor dropped as soon as it is used: max pool, ReLU (on the padded
    tensor, whose border gets no gradient), batch norm with batch statistics (the
    textbook expression of `batch_norm.normalize`), convolution. The moments carry no
    gradient: they only feed the moving averages, through a stop_gradient.
    """

    @tf.custom_gradient
    def stem(images, kernel, gamma, beta):
        with record.stop_recording():
            pooled, mean, variance = _stem(images, kernel, gamma, beta, epsilon)[-3:]

        def backward(d_pooled, *unused_moment_gradients):
            # After the incoming gradient, not in the forward pass.
            with tf.control_dependencies([d_pooled]):
                again = tf.identity(images)
            y, inverse_std, padded, pooled, mean, _ = _stem(again, kernel, gamma, beta, epsilon)
            d = tf.raw_ops.MaxPoolGrad(
                orig_input=padded,
                orig_output=pooled,
                grad=d_pooled,
                ksize=[1, 3, 3, 1],
                strides=_STEM_STRIDES,
                padding='VALID',
            )
            d = tf.raw_ops.ReluGrad(gradients=d, features=padded)
            d = tf.cast(d[:, 1:-1, 1:-1, :], tf.float32)
            x_hat = (y - mean) * inverse_std
            count = tf.cast(tf.size(y) // tf.shape(y)[-1], tf.float32)
            d_beta = tf.reduce_sum(d, [0, 1, 2])
            d_gamma = tf.reduce_sum(d * x_hat, [0, 1, 2])
            d = (d - d_beta / count - x_hat * (d_gamma / count)) * (gamma * inverse_std)
            d = tf.cast(d, kernel.dtype)
            x = tf.cast(again, kernel.dtype)
            d_kernel = tf.raw_ops.Conv2DBackpropFilter(
                input=x,
                filter_sizes=tf.shape(kernel),
                out_backprop=d,
                strides=_STEM_STRIDES,
                padding='VALID',
            )
            d_images = tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x),
                filter=kernel,
                out_backprop=d,
                strides=_STEM_STRIDES,
                padding='VALID',
            )
            return tf.cast(d_images, images.dtype), d_kernel, d_gamma, d_beta

        return (pooled, mean, variance), backward

    return stem(images, kernel, gamma, beta)


def _seed() -> tf.Tensor:
    """Two stateless-dropout seeds, drawn once per call, as float32 [2, 2].

    Float, because recompute_grad watches its arguments; whole numbers below 2^24 are
    exact in float32.
    """
    return tf.cast(tf.random.uniform([2, 2], 0, 2**24, tf.int32), tf.float32)


def _dropout(y, rate, seed):
    return tf.nn.experimental.stateless_dropout(y, rate, tf.cast(seed, tf.int32))


def _max_pool(x):
    """The ImageNet stem's pooling: zero padding by 1 (after a ReLU), 3x3/2 max pool."""
    x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    return tf.nn.max_pool2d(x, 3, 2, 'VALID')


def _average_pool(x):
    """The transition's 2x2/2 average pool."""
    return tf.nn.avg_pool2d(x, 2, 2, 'VALID')


def _stem_size(side: Optional[int]) -> Optional[int]:
    if side is None:
        return None
    side = (side - 7) // 2 + 1
    return (side + 2 - 3) // 2 + 1


def _concat(features):
    return features[0] if len(features) == 1 else tf.concat(features, axis=blocks.CHANNEL_AXIS)


class RecomputedDenseBlock(keras.layers.Layer):
    """A dense block (and the transition after it, and the stem before it), recomputed.

    Holds the same BatchNormalization and Conv2D layers, with the same names and in
    the same weight order, as (with `stem`) the plain model's stem, then
    `blocks.dense_block` followed by `blocks.transition_block` (with `pool`; else its
    first half, BN-ReLU-conv).

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
      pool: with `transition`, end with its dropout and 2x2/2 average pool too (the
        whole transition), inside the recomputation; else the output is unpooled.
      stem: begin with the ImageNet stem, 'conv1_conv' (7x7/2, 'valid', `channels`
        filters), 'conv1_bn', ReLU, zero padding by 1 and 3x3/2 max pool; the input
        is then the images padded by 3, as the plain model's 'conv1_conv' takes them.
      recompute: False runs the same functions without recomputation (storing
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
        pool: bool = False,
        stem: bool = False,
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
        self.pool = pool and bool(transition)
        self.stem = stem
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

        def conv(filters, size, name, **options):
            options.setdefault('padding', 'same')
            return keras.layers.Conv2D(
                filters, size, use_bias=False, name=name, dtype=dtype, **options
            )

        # In the plain model's weight order: the stem's conv and BN; per dense layer BN,
        # 1x1 conv, BN, 3x3 conv; then the transition's BN and 1x1 conv. ('same' padding
        # is 'valid' for 1x1.)
        parts = []
        if stem:
            parts += [
                conv(channels, 7, 'conv1_conv', strides=2, padding='valid'),
                norm('conv1_bn'),
            ]
        self._first = len(parts)
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
        if not keras.__version__.startswith('2.'):
            # Keras 3 keeps a list of layers in a list of its own that TensorFlow's
            # checkpoints do not follow: without a dependency each, a checkpoint held
            # only what the optimizer tracks (no moving statistics), and a run could
            # not resume. Keras 2 wraps the list in a tracked one itself.
            for part in parts:
                self._track_trackable(part, name=part.name)

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
        start = self._first + 4 * i
        return self._parts[start : start + 4]

    def build(self, input_shape):
        shape = list(input_shape[:-1])
        k = self.growth_rate
        widths = [input_shape[-1], self.channels] if self.stem else []
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
        batch, height, width = input_shape[:3]
        if self.stem:  # 7x7/2 'valid' conv, then 3x3/2 max pool after padding by 1.
            height, width = (_stem_size(side) for side in (height, width))
        if self.pool:  # 2x2/2 average pool.
            height, width = (None if side is None else side // 2 for side in (height, width))
        return (batch, height, width, self._channels_out())

    def call(self, inputs, training=None):
        if training:
            return self._train(inputs)
        return self._infer(inputs)

    def _infer(self, x):
        """The plain model's computation, layer by layer (no recomputation needed)."""
        if self.stem:
            conv, norm = self._parts[:2]
            x = _max_pool(tf.nn.relu(norm(conv(x), training=False)))
        for i in range(self.num_layers):
            norm0, conv1, norm1, conv2 = self._dense_layer(i)
            y = conv1(tf.nn.relu(norm0(x, training=False)))
            y = conv2(tf.nn.relu(norm1(y, training=False)))
            x = tf.concat([x, y], axis=blocks.CHANNEL_AXIS)
        if self.transition:
            norm, conv = self._parts[-2:]
            x = conv(tf.nn.relu(norm(x, training=False)))
            if self.pool:
                x = _average_pool(x)
        return x

    def _train(self, x):
        if self.stem:
            x = self._train_stem(x)
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
                seeds = [_seed()]
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
        compute_dtype, pool = self.compute_dtype, self.pool
        rate = self.dropout_rate if pool else 0.0
        seeds = [_seed()] if rate > 0 else []

        def transition(mean, variance, *args):
            seeds, features = (args[:1], args[1:]) if rate > 0 else ((), args)
            y = _bn_relu_conv(_concat(features), norm, conv, mean, variance, compute_dtype)
            if rate > 0:
                y = _dropout(y, rate, seeds[0][0])
            # Pooled inside, the forward pass keeps only the pooled output.
            return _average_pool(y) if pool else y

        return self._recomputed(transition)(mean, variance, *seeds, *features)

    def _train_stem(self, images):
        """The stem's conv-BN-ReLU-max pool, recomputed: it keeps only its input and output.

        Its batch norm's moments are computed inside (its input exists only there) and
        returned for the moving averages, as a dense layer's second batch norm does.
        Recomputed, the backward pass is written out (`_recomputed_stem`): autodiff of
        the recomputation would hold about seven 112x112x64 tensors at once.
        """
        conv, norm = self._parts[:2]
        kernel = tf.cast(conv.kernel, self.compute_dtype)
        gamma, beta = tf.cast(norm.gamma, tf.float32), tf.cast(norm.beta, tf.float32)
        if self.recompute:
            x, mean, variance = _recomputed_stem(images, kernel, gamma, beta, norm.epsilon)
        else:
            x, mean, variance = _stem(images, kernel, gamma, beta, norm.epsilon)[-3:]
        shape = tf.shape(images)
        count = shape[0] * ((shape[1] - 7) // 2 + 1) * ((shape[2] - 7) // 2 + 1)
        batch_norm.update_moving_statistics(norm, mean, variance, count)
        return x

    def _recomputed(self, function):
        return recompute_grad(function) if self.recompute else function

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
            return _dropout(y, rate, seed)

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
            pool=self.pool,
            stem=self.stem,
            recompute=self.recompute,
        )
        return config

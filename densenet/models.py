"""DenseNet variants by name, and `create_model` that builds one.

Two families, both from Huang et al., "Densely Connected Convolutional Networks"
(CVPR 2017, arXiv:1608.06993):

* ImageNet models 'densenet121', '169', '201', '161', '264' (paper Table 1).
  They are built layer for layer like `keras.applications.DenseNet121` etc.,
  so that `set_weights` moves weights between the two and the logits agree.
  The tests pin this, since our published numbers are compared with Keras'.
* DenseNet-BC for 32x32 images, 'densenet_bc_{depth}_{growth}' (paper section 3,
  Table 2), e.g. 'densenet_bc_100_12'. Small and fast: the unit tests and smoke
  runs train these on CPU.

The model returns logits in float32: the loss applies the softmax (it is more
stable in one op), and a float32 classifier keeps bfloat16 rounding out of the
logits. Inputs are images already normalised by the input pipeline.
"""

import re
from typing import Dict, Iterator, Optional, Tuple

import keras

from densenet import blocks
from densenet import recompute


class ModelError(ValueError):
    """A model that cannot be built as asked: an unknown name, a too small image, a bad
    precision, dropout rate or class count. The message names the value."""


# name -> (growth rate k, layers in each of the 4 dense blocks); paper Table 1.
IMAGENET_VARIANTS: Dict[str, Tuple[int, Tuple[int, int, int, int]]] = {
    'densenet121': (32, (6, 12, 24, 16)),
    'densenet169': (32, (6, 12, 32, 32)),
    'densenet201': (32, (6, 12, 48, 32)),
    'densenet161': (48, (6, 12, 36, 24)),
    'densenet264': (32, (6, 12, 64, 48)),
}

# Any 'densenet_bc_{depth}_{growth}' with (depth - 4) % 6 == 0 is accepted;
# these are a small one for tests and the three of paper Table 2 (0.8M, 15.3M
# and 25.6M parameters with 10 classes).
_BC_PATTERN = re.compile(r'densenet_bc_(\d+)_(\d+)')
BC_EXAMPLES: Tuple[str, ...] = (
    'densenet_bc_40_12',
    'densenet_bc_100_12',
    'densenet_bc_250_24',
    'densenet_bc_190_40',
)

# The names `create_model` knows, for flag help and error messages; besides these, any
# 'densenet_bc_{depth}_{growth}' with (depth - 4) % 6 == 0 is accepted.
MODEL_NAMES: Tuple[str, ...] = tuple(IMAGENET_VARIANTS) + BC_EXAMPLES

# precision -> Keras dtype policy. The mixed ones compute in 16 bits but
# keep float32 variables, so that small SGD updates are not rounded away.
_POLICIES = {
    'float32': 'float32',
    'bfloat16': 'mixed_bfloat16',
    'float16': 'mixed_float16',
}

# Compression factor theta of DenseNet-BC ("C"), used by all variants here.
COMPRESSION = 0.5


def all_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """Every layer, descending into nested models and layers that list their sublayers.

    The memory-efficient DenseNet keeps its convolutions inside one layer per dense
    block (`densenet/recompute.py`), which lists them in `layers` like a model does.
    """
    for layer in model.layers:
        if isinstance(layer, keras.Model) or getattr(layer, 'layers', None):
            yield from all_layers(layer)
        else:
            yield layer


def _parse_bc(name: str) -> Optional[Tuple[int, int]]:
    """(depth, growth) of a valid 'densenet_bc_{depth}_{growth}', else None."""
    match = _BC_PATTERN.fullmatch(name)
    if not match:
        return None
    depth, growth = int(match.group(1)), int(match.group(2))
    # Depth counts the first conv, 3 blocks of n (1x1 + 3x3) layers, the two
    # transition convs and the classifier: depth = 6n + 4.
    if depth < 10 or (depth - 4) % 6 or growth < 1:
        return None
    return depth, growth


def _unknown_name_error(name: str) -> ModelError:
    return ModelError(
        f'Unknown model name {name!r}; valid names: {", ".join(MODEL_NAMES)}, '
        'or densenet_bc_{depth}_{growth} with (depth - 4) % 6 == 0 and '
        'depth >= 10.'
    )


def _classifier(x, num_classes: int, policy: keras.mixed_precision.Policy):
    """Final BN-ReLU, global average pool and the float32 Dense logits layer."""
    x = blocks.batch_norm(x, 'bn', policy)
    x = keras.layers.Activation('relu', name='relu', dtype=policy)(x)
    x = keras.layers.GlobalAveragePooling2D(name='avg_pool', dtype=policy)(x)
    # float32 even under a mixed policy: 16-bit logits would round the softmax.
    return keras.layers.Dense(num_classes, name='predictions', dtype='float32')(x)


def _imagenet_features(
    x,
    growth_rate: int,
    block_sizes: Tuple[int, ...],
    dropout_rate: float,
    policy: keras.mixed_precision.Policy,
    **options,
):
    """Stem (7x7/2 conv, 3x3/2 max pool) and four dense blocks, as in Keras."""
    # The explicit padding and names are those Keras Applications produces in a
    # fresh process; 'valid' convs after explicit padding match its arithmetic.
    x = keras.layers.ZeroPadding2D(((3, 3), (3, 3)), name='zero_padding2d', dtype=policy)(x)
    if not options.get('memory_efficient'):
        x = keras.layers.Conv2D(
            2 * growth_rate, 7, strides=2, use_bias=False, name='conv1_conv', dtype=policy
        )(x)
        x = blocks.batch_norm(x, 'conv1_bn', policy)
        x = keras.layers.Activation('relu', name='conv1_relu', dtype=policy)(x)
        x = keras.layers.ZeroPadding2D(((1, 1), (1, 1)), name='zero_padding2d_1', dtype=policy)(x)
        x = keras.layers.MaxPooling2D(3, strides=2, name='pool1', dtype=policy)(x)
    # Memory-efficient: the stem's conv, BN, ReLU and max pool are recomputed in the
    # first dense block's layer (`stem`), which keeps only the padded images.
    for i, num_layers in enumerate(block_sizes):
        stage = i + 2  # The stem is stage 1: then conv2..conv5, pool2..pool4.
        last = i == len(block_sizes) - 1
        x = _dense_stage(
            x, num_layers, growth_rate, stage, last, dropout_rate, policy, stem=i == 0, **options
        )
    return x


def _dense_stage(
    x,
    num_layers: int,
    growth_rate: int,
    stage: int,
    last: bool,
    dropout_rate: float,
    policy: keras.mixed_precision.Policy,
    *,
    memory_efficient: bool = False,
    batch_norm_momentum: float = 0.99,
    stem: bool = False,
):
    """Dense block `conv{stage}` and, unless `last`, transition `pool{stage}`.

    With `memory_efficient`, the block and the whole transition (BN-ReLU-conv, dropout,
    average pool) are one `recompute.RecomputedDenseBlock` holding the same weights
    under the same names; with `stem` too, it begins with the ImageNet stem's conv, BN,
    ReLU and max pool (its input is then the padded images). `stem` is only read
    with `memory_efficient`: the plain model builds its stem in `_imagenet_features`.
    """
    if not memory_efficient:
        x = blocks.dense_block(
            x, num_layers, growth_rate, f'conv{stage}', dropout_rate=dropout_rate, dtype=policy
        )
        if not last:
            x = blocks.transition_block(
                x, COMPRESSION, f'pool{stage}', dropout_rate=dropout_rate, dtype=policy
            )
        return x
    return recompute.RecomputedDenseBlock(
        2 * growth_rate if stem else int(x.shape[blocks.CHANNEL_AXIS]),
        num_layers,
        growth_rate,
        prefix=f'conv{stage}',
        transition=None if last else f'pool{stage}',
        reduction=COMPRESSION,
        dropout_rate=dropout_rate,
        batch_norm_momentum=batch_norm_momentum,
        pool=True,
        stem=stem,
        dtype=policy,
    )(x)


def _cifar_features(
    x,
    depth: int,
    growth_rate: int,
    dropout_rate: float,
    policy: keras.mixed_precision.Policy,
    **options,
):
    """DenseNet-BC for small images: 3x3 conv (2k channels), three dense blocks.

    No stem BN/ReLU or pooling: at 32x32 the paper keeps full resolution for the
    first block, and the first dense layer normalises its input itself.
    """
    layers_per_block = (depth - 4) // 6
    x = keras.layers.Conv2D(
        2 * growth_rate, 3, padding='same', use_bias=False, name='conv1_conv', dtype=policy
    )(x)
    for stage in (2, 3, 4):
        x = _dense_stage(
            x, layers_per_block, growth_rate, stage, stage == 4, dropout_rate, policy, **options
        )
    return x


def check_image_size(name: str, image_size: int) -> None:
    """Raises UserError when model `name` cannot take `image_size`-pixel images.

    The ImageNet models halve the image five times (total stride 32), DenseNet-BC
    twice (stride 4): a smaller image leaves nothing to pool.
    """
    min_size = 4 if name not in IMAGENET_VARIANTS and _parse_bc(name) else 32
    if image_size < min_size:
        raise ModelError(f'{name} needs image_size >= {min_size}, got {image_size}.')


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    image_size: Optional[int] = 224,
    dropout_rate: float = 0.0,
    precision: str = 'float32',
    batch_norm_momentum: float = 0.99,
    memory_efficient: bool = False,
) -> keras.Model:
    """Builds a DenseNet by name, with random weights.

    Args:
      name: one of `MODEL_NAMES`, or 'densenet_bc_{depth}_{growth}'.
      num_classes: width of the logits.
      image_size: height and width of the square input images. At least 32 for
        the ImageNet models (total stride 32), at least 4 for DenseNet-BC. None: any
        size (the network is convolutional up to a global pooling), for runs that
        train at several sizes or evaluate at another (`trainer/image_sizes.py`);
        each size a `tf.function` meets is traced once.
      dropout_rate: if > 0, dropout after every convolution but the first, as in
        the paper (which used 0.2 on CIFAR without augmentation and none on
        ImageNet). 0 adds no Dropout layers at all.
      precision: 'float32', or 'bfloat16' / 'float16' for mixed precision:
        16-bit activations, float32 variables and float32 logits.
      batch_norm_momentum: decay of the batch-norm moving statistics. 0.99 is
        Keras Applications' value, right for ImageNet's thousands of steps per
        epoch; the paper's Torch code used 0.9, which tracks the weights closely
        enough to evaluate after the few hundred steps of a small data set.
      memory_efficient: recompute each dense layer's BN-ReLU-conv in the backward
        pass instead of storing it (`densenet/recompute.py`): activation memory
        linear rather than quadratic in block depth, for about one more forward
        pass of compute. Same weights, names and outputs as the plain model.

    Returns:
      A functional `keras.Model` mapping [B, image_size, image_size, 3] float
      images (float32 or the compute dtype) to [B, num_classes] float32 logits.

    Raises:
      ValueError: for an unknown name or an invalid argument.
    """
    if precision not in _POLICIES:
        raise ModelError(f'precision must be one of {sorted(_POLICIES)}, got {precision!r}.')
    if not 0.0 <= dropout_rate < 1.0:
        raise ModelError(f'dropout_rate must be in [0, 1), got {dropout_rate}.')
    if num_classes < 1:
        raise ModelError(f'num_classes must be positive, got {num_classes}.')
    bc = None if name in IMAGENET_VARIANTS else _parse_bc(name)
    if name not in IMAGENET_VARIANTS and bc is None:
        raise _unknown_name_error(name)
    if image_size is not None:
        check_image_size(name, image_size)

    # Passed to every layer rather than set globally, so building a model never
    # changes the policy of layers other code creates.
    policy = keras.mixed_precision.Policy(_POLICIES[precision])
    # A float32 input accepts float32 or 16-bit images (the first layer casts),
    # and keeps a SavedModel's serving signature float32 whatever the policy.
    images = keras.Input(shape=(image_size, image_size, 3), name='images')
    options = dict(memory_efficient=memory_efficient, batch_norm_momentum=batch_norm_momentum)
    if bc is None:
        growth_rate, block_sizes = IMAGENET_VARIANTS[name]
        x = _imagenet_features(images, growth_rate, block_sizes, dropout_rate, policy, **options)
    else:
        depth, growth_rate = bc
        x = _cifar_features(images, depth, growth_rate, dropout_rate, policy, **options)
    logits = _classifier(x, num_classes, policy)
    model = keras.Model(images, logits, name=name)
    # Momentum is no weight: setting it after construction leaves the layer list and
    # the weights exactly those of Keras Applications.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = batch_norm_momentum
    return model

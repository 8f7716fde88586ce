"""The building blocks of a DenseNet: dense layer, dense block, transition.

They mirror `keras.applications.densenet` layer for layer (same names, same
order, same BatchNormalization epsilon, bias-free convolutions) so that weights
trained with Keras Applications load into our models by `set_weights`, and so
that a checkpoint of ours reads the same to anyone who knows those models.

Two things Keras Applications lacks are added here without changing the weight
list: a growth rate other than 32 (DenseNet-161, DenseNet-BC) and the paper's
dropout after every convolution. Dropout layers own no variables, so a model
with dropout has exactly the weights, in exactly the order, of one without.

Every layer takes `dtype`, a Keras dtype policy, so that a mixed-precision model
computes in bfloat16/float16 while its variables stay float32, without touching
the process-wide global policy.
"""

from typing import Any, Optional

import keras

from densenet import batch_norm as batch_norm_lib

# Keras Applications' value: its ported Caffe/Torch weights were trained with
# it, and the Keras default (1e-3) would change their outputs.
BN_EPSILON = 1.001e-5
# Channels-last only: it is what Keras Applications supports and what the
# input pipeline produces, and the fast layout on GPU (cuDNN), TPU and Gaudi.
CHANNEL_AXIS = 3


def batch_norm(x: Any, name: str, dtype: Any) -> Any:
    """BatchNormalization over channels with the Keras Applications epsilon.

    Our subclass of Keras' layer, whose training-mode backward pass is reproducible
    (`densenet/batch_norm.py`); the weights and inference are Keras'.
    """
    return batch_norm_lib.BatchNormalization(
        axis=CHANNEL_AXIS, epsilon=BN_EPSILON, name=name, dtype=dtype
    )(x)


def dropout(x: Any, rate: float, name: str, dtype: Any) -> Any:
    """Dropout if `rate > 0`, else nothing at all.

    With rate 0 no layer is added, so the default model has the same layer list
    as Keras Applications, not merely the same weights.
    """
    if rate <= 0.0:
        return x
    return keras.layers.Dropout(rate, name=name, dtype=dtype)(x)


def conv_block(
    x: Any, growth_rate: int, name: str, dropout_rate: float = 0.0, dtype: Optional[Any] = None
) -> Any:
    """A bottleneck dense layer: BN-ReLU-Conv1x1(4k)-BN-ReLU-Conv3x3(k), concat.

    The 1x1 bottleneck to 4k channels (the "B" of DenseNet-BC) keeps the 3x3
    convolution cheap however wide the concatenated input has grown. The new k
    feature maps are concatenated to the input, which is what makes the network
    dense: every later layer sees every earlier one.

    Args:
      x: NHWC input tensor.
      growth_rate: k, the number of channels this layer adds.
      name: prefix of the layer names, e.g. 'conv2_block1'.
      dropout_rate: dropout after each of the two convolutions, as in the paper.
      dtype: Keras dtype policy (or name) for every layer.

    Returns:
      The input with k more channels.
    """
    y = batch_norm(x, f'{name}_0_bn', dtype)
    y = keras.layers.Activation('relu', name=f'{name}_0_relu', dtype=dtype)(y)
    y = keras.layers.Conv2D(4 * growth_rate, 1, use_bias=False, name=f'{name}_1_conv', dtype=dtype)(
        y
    )
    y = dropout(y, dropout_rate, f'{name}_1_drop', dtype)
    y = batch_norm(y, f'{name}_1_bn', dtype)
    y = keras.layers.Activation('relu', name=f'{name}_1_relu', dtype=dtype)(y)
    y = keras.layers.Conv2D(
        growth_rate, 3, padding='same', use_bias=False, name=f'{name}_2_conv', dtype=dtype
    )(y)
    y = dropout(y, dropout_rate, f'{name}_2_drop', dtype)
    return keras.layers.Concatenate(axis=CHANNEL_AXIS, name=f'{name}_concat', dtype=dtype)([x, y])


def dense_block(
    x: Any,
    num_layers: int,
    growth_rate: int,
    name: str,
    dropout_rate: float = 0.0,
    dtype: Optional[Any] = None,
) -> Any:
    """`num_layers` dense layers in a row, named '{name}_block1', '_block2', ...

    The block keeps the spatial size and adds `num_layers * growth_rate`
    channels.
    """
    for i in range(num_layers):
        x = conv_block(
            x, growth_rate, f'{name}_block{i + 1}', dropout_rate=dropout_rate, dtype=dtype
        )
    return x


def transition_block(
    x: Any, reduction: float, name: str, dropout_rate: float = 0.0, dtype: Optional[Any] = None
) -> Any:
    """BN-ReLU-Conv1x1-(Dropout)-AvgPool2x2 between two dense blocks.

    Halving the resolution between blocks is where the network downsamples
    (inside a block the concatenation needs equal sizes). `reduction` is the
    compression factor theta (0.5 for DenseNet-BC): the 1x1 convolution keeps
    floor(theta * channels) channels, rounded as Keras Applications rounds, so
    that the widths and hence the weight shapes agree.

    Args:
      x: NHWC input tensor.
      reduction: compression factor theta in (0, 1].
      name: prefix of the layer names, e.g. 'pool2'.
      dropout_rate: dropout after the convolution, as in the paper.
      dtype: Keras dtype policy (or name) for every layer.

    Returns:
      The tensor at half the height and width with theta times the channels.
    """
    x = batch_norm(x, f'{name}_bn', dtype)
    x = keras.layers.Activation('relu', name=f'{name}_relu', dtype=dtype)(x)
    x = keras.layers.Conv2D(
        int(x.shape[CHANNEL_AXIS] * reduction), 1, use_bias=False, name=f'{name}_conv', dtype=dtype
    )(x)
    x = dropout(x, dropout_rate, f'{name}_drop', dtype)
    return keras.layers.AveragePooling2D(2, strides=2, name=f'{name}_pool', dtype=dtype)(x)

"""RandAugment (Cubuk et al. 2019) as stateless TensorFlow image ops on uint8 images.

Each of `num_layers` layers picks one of the 14 operations of the paper uniformly at
random and applies it at a fixed `magnitude` on the 0..10 scale of TF's and timm's
implementations. Where those two differ we follow timm, whose recipe gives DenseNet-121
its best published ImageNet result (75.6%): enhancement factors are `1 +- 0.9 m/10`
with a random sign (TF's `0.1 + 1.8 m/10` is the same at every draw), solarize and
posterize grow stronger with the magnitude, and geometric operations fill with gray
128. All randomness is drawn from the `seed` argument, so an example gets the same
operations whenever it is augmented with the same seed.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import tensorflow as tf
from input_pipeline import augment
from input_pipeline import DataError

MAX_MAGNITUDE = 10.0

# Geometric extremes at magnitude 10, as in TF's autoaugment.py and timm.
_MAX_ROTATE_DEGREES = 30.0
_MAX_SHEAR = 0.3
_MAX_TRANSLATE = 0.45  # of the image side: TF's 100 pixels at 224
_MAX_ENHANCE = 0.9
_FILL = 128.0
_LUMA = (0.299, 0.587, 0.114)


def _as_float(image: tf.Tensor) -> tf.Tensor:
    return tf.cast(image, tf.float32)


def _enhance(image: tf.Tensor, degenerate: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL's `ImageEnhance`: `augment.blend` of the uint8 image, rounded and clipped."""
    return augment.to_uint8(augment.blend(_as_float(image), degenerate, factor))


def _gray(image: tf.Tensor) -> tf.Tensor:
    return tf.tensordot(_as_float(image), tf.constant(_LUMA), 1)[..., tf.newaxis]


def _transform(image: tf.Tensor, transform: list) -> tf.Tensor:
    """Applies a projective transform (output -> input coordinates), filling with gray."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    transform = tf.cast(tf.stack(transform), tf.float32)[tf.newaxis]
    transformed = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis],
        transforms=transform,
        output_shape=tf.stack([height, width]),
        fill_value=_FILL,
        interpolation='NEAREST',
        fill_mode='CONSTANT',
    )
    return transformed[0]


def identity(image: tf.Tensor, level: tf.Tensor) -> tf.Tensor:
    del level
    return image


def auto_contrast(image: tf.Tensor, level: tf.Tensor) -> tf.Tensor:
    """Stretches each channel to the full 0..255 range (flat channels stay as they are)."""
    del level
    pixels = _as_float(image)
    low = tf.reduce_min(pixels, axis=[0, 1])
    high = tf.reduce_max(pixels, axis=[0, 1])
    scale = tf.where(high > low, 255.0 / tf.maximum(high - low, 1.0), 1.0)
    offset = tf.where(high > low, low, 0.0)
    return augment.to_uint8((pixels - offset) * scale)


def equalize(image: tf.Tensor, level: tf.Tensor) -> tf.Tensor:
    """Histogram equalisation per channel, as PIL's `ImageOps.equalize` computes it."""
    del level
    pixels = tf.cast(image, tf.int32)
    channels = tf.range(3)
    # One bincount for the three channels: channel c counts into bins 256c..256c+255.
    histograms = tf.reshape(
        tf.math.bincount(tf.reshape(pixels + 256 * channels, [-1]), minlength=768, maxlength=768),
        [3, 256],
    )
    # PIL leaves out the last occupied bin, so a two-valued channel maps to 0 and 255.
    last = 255 - tf.argmax(tf.cast(histograms[:, ::-1] > 0, tf.int32), axis=1, output_type=tf.int32)
    last_count = tf.gather(histograms, last, batch_dims=1)
    step = (tf.reduce_sum(histograms, axis=1) - last_count) // 255
    safe_step = tf.maximum(step, 1)[:, tf.newaxis]
    before = tf.cumsum(histograms, axis=1, exclusive=True)
    lookup = tf.clip_by_value((before + safe_step // 2) // safe_step, 0, 255)
    equalized = tf.gather(lookup, tf.transpose(pixels, [2, 0, 1]), batch_dims=1)
    equalized = tf.transpose(equalized, [1, 2, 0])
    return tf.cast(tf.where(step[tf.newaxis, tf.newaxis] > 0, equalized, pixels), tf.uint8)


def rotate(image: tf.Tensor, level: tf.Tensor) -> tf.Tensor:
    angle = level * _MAX_ROTATE_DEGREES * math.pi / 180.0
    height = tf.cast(tf.shape(image)[0], tf.float32) - 1.0
    width = tf.cast(tf.shape(image)[1], tf.float32) - 1.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    x_offset = (width - (cos * width - sin * height)) / 2.0
    y_offset = (height - (sin * width + cos * height)) / 2.0
    return _transform(image, [cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0])


def solarize(image: tf.Tensor, level: tf.Tensor) -> tf.Tensor:
    """Inverts the pixels at or above a threshold that falls from 256 to 0 with `level`."""
    threshold = 256.0 - tf.abs(level) * 256.0
    return tf.where(_as_float(image) >= threshold, 255 - image, image)


def posterize(image: tf.Tensor, level: tf.Tensor) -> tf.Tensor:
    """Keeps the top 8 .. 4 bits of each value as `level` grows."""
    shift = tf.cast(tf.abs(level) * 4.0, tf.uint8)
    return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def color(image: tf.Tensor, level: tf.Tensor) -> tf.Tensor:
    return _enhance(image, _gray(image), 1.0 + level * _MAX_ENHANCE)


def contrast(image: tf.Tensor, level: tf.Tensor) -> tf.Tensor:
    return _enhance(image, tf.reduce_mean(_gray(image)), 1.0 + level * _MAX_ENHANCE)


def brightness(image: tf.Tensor, level: tf.Tensor) -> tf.Tensor:
    return _enhance(image, tf.constant(0.0), 1.0 + level * _MAX_ENHANCE)


def sharpness(image: tf.Tensor, level: tf.Tensor) -> tf.Tensor:
    """Blends with PIL's smoothing filter (centre 5, neighbours 1); borders stay as they are."""
    pixels = _as_float(image)
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    kernel = tf.tile(kernel[:, :, tf.newaxis, tf.newaxis], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(pixels[tf.newaxis], kernel, [1, 1, 1, 1], 'VALID')[0]
    smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    inside = tf.pad(tf.ones_like(smooth[1:-1, 1:-1]), [[1, 1], [1, 1], [0, 0]])
    degenerate = inside * smooth + (1.0 - inside) * pixels
    return _enhance(image, degenerate, 1.0 + level * _MAX_ENHANCE)


def shear_x(image: tf.Tensor, level: tf.Tensor) -> tf.Tensor:
    return _transform(image, [1.0, level * _MAX_SHEAR, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])


def shear_y(image: tf.Tensor, level: tf.Tensor) -> tf.Tensor:
    return _transform(image, [1.0, 0.0, 0.0, level * _MAX_SHEAR, 1.0, 0.0, 0.0, 0.0])


def translate_x(image: tf.Tensor, level: tf.Tensor) -> tf.Tensor:
    pixels = level * _MAX_TRANSLATE * tf.cast(tf.shape(image)[1], tf.float32)
    return _transform(image, [1.0, 0.0, -pixels, 0.0, 1.0, 0.0, 0.0, 0.0])


def translate_y(image: tf.Tensor, level: tf.Tensor) -> tf.Tensor:
    pixels = level * _MAX_TRANSLATE * tf.cast(tf.shape(image)[0], tf.float32)
    return _transform(image, [1.0, 0.0, 0.0, 0.0, 1.0, -pixels, 0.0, 0.0])


# The paper's 14 operations. Each takes a uint8 `[H, W, 3]` image and a signed level in
# [-1, 1] (magnitude / 10 with a random sign; operations without a direction use |level|
# or ignore it) and returns a uint8 image of the same shape.
OPERATIONS: tuple[Callable[[tf.Tensor, tf.Tensor], tf.Tensor], ...] = (
    identity,
    auto_contrast,
    equalize,
    rotate,
    solarize,
    color,
    posterize,
    contrast,
    brightness,
    sharpness,
    shear_x,
    shear_y,
    translate_x,
    translate_y,
)


def randaugment(
    image: tf.Tensor, seed: tf.Tensor, *, num_layers: int = 2, magnitude: float = 9.0
) -> tf.Tensor:
    """Applies `num_layers` operations drawn uniformly from `OPERATIONS`.

    Args:
      image: uint8 `[H, W, 3]`.
      seed: `[2]` integer tensor; the same seed picks the same operations and signs.
      num_layers: operations applied in sequence (the paper's N).
      magnitude: strength on the 0..10 scale (the paper's M; timm's recipe uses 9).

    Returns:
      uint8 `[H, W, 3]`.
    """
    if not 0 <= magnitude <= MAX_MAGNITUDE:
        raise DataError(f'RandAugment magnitude {magnitude} is not in [0, {MAX_MAGNITUDE:g}]')
    image = tf.convert_to_tensor(image)
    shape = image.shape
    seeds = tf.random.experimental.stateless_split(seed, 2 * max(num_layers, 1))
    for layer in range(num_layers):
        choice = tf.random.stateless_uniform(
            [], seeds[2 * layer], minval=0, maxval=len(OPERATIONS), dtype=tf.int32
        )
        sign = tf.where(tf.random.stateless_uniform([], seeds[2 * layer + 1]) < 0.5, -1.0, 1.0)
        level = sign * magnitude / MAX_MAGNITUDE
        image = tf.switch_case(
            choice,
            [functools.partial(operation, image, level) for operation in OPERATIONS],
        )
        image = tf.ensure_shape(image, shape)
    return image

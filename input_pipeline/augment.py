"""Augmentation kernels: crop-window sampling, fused decode-and-crop, flip, normalise.

Every random kernel is stateless: it takes a `seed` tensor of shape [2] and returns the
same output for the same seed. The dataset derives each example's seed from (seed,
epoch, position in the epoch), so a resumed run augments exactly as the original did
and no random generator state has to be checkpointed.

The crops decode only the pixels inside the crop window (`decode_and_crop_jpeg`): the
Inception crop keeps on average about half of an ImageNet image, and the fused op skips
the inverse DCT and colour conversion of everything outside the window, the bulk of a
JPEG decode.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from input_pipeline import decode

# Channel statistics of ImageNet train images in [0, 1] ("torch" preprocessing): what
# Keras Applications' DenseNet expects, so its pretrained weights can be evaluated here.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The standard single-crop evaluation keeps the central 87.5% (224 of 256 pixels).
CENTER_CROP_FRACTION = 0.875

# Smallest fraction of the annotated box a random crop must contain. With no annotated
# box the whole image is the box, so crops cover at least 10% of the image.
MIN_OBJECT_COVERED = 0.1


def normalize(image: tf.Tensor, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """Scales RGB pixel values in 0..255 to zero mean and unit variance per channel.

    The arithmetic runs in float32 and only the result is cast, so a bfloat16 pipeline
    loses precision once instead of at every step.

    Args:
      image: `[..., 3]` uint8 or float tensor with values in 0..255.
      dtype: dtype of the result (the model's compute dtype).

    Returns:
      `(image / 255 - IMAGENET_MEAN) / IMAGENET_STD` as `dtype`.
    """
    image = tf.cast(image, tf.float32) / 255.0
    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    std = tf.constant(IMAGENET_STD, tf.float32)
    return tf.cast((image - mean) / std, dtype)


def _central_crop_window(shape: tf.Tensor, crop_fraction: float) -> tf.Tensor:
    """Returns the window `[offset_y, offset_x, side, side]` of the central square crop.

    The side is `crop_fraction * min(height, width)`, as TPU ResNet/EfficientNet compute
    it with `CROP_PADDING` (`image_size / (image_size + 32)` is 0.875 at 224); the `+ 1`
    rounds the offset the same way they do.
    """
    height, width = shape[0], shape[1]
    side = tf.cast(crop_fraction * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
    offset_y = (height - side + 1) // 2
    offset_x = (width - side + 1) // 2
    return tf.stack([offset_y, offset_x, side, side])


def _random_crop_window(
    shape: tf.Tensor,
    bbox: tf.Tensor,
    seed: tf.Tensor,
    *,
    area_range: tuple[float, float],
    aspect_ratio_range: tuple[float, float],
    max_attempts: int,
) -> tf.Tensor:
    """Samples an Inception-style crop window `[offset_y, offset_x, height, width]`.

    When none of the `max_attempts` tries satisfies the constraints the sampler returns
    the whole image; we fall back to the central crop instead, as TPU ResNet does, so a
    failed sample still zooms in like the evaluation crop.
    """
    whole_image = tf.constant([[0.0, 0.0, 1.0, 1.0]])
    boxes = tf.cond(
        tf.shape(bbox)[0] > 0,
        # Annotation tools sometimes put a box edge a hair outside the image.
        lambda: tf.clip_by_value(tf.cast(bbox, tf.float32), 0.0, 1.0),
        lambda: whole_image,
    )
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=boxes[tf.newaxis],
        seed=seed,
        min_object_covered=MIN_OBJECT_COVERED,
        aspect_ratio_range=aspect_ratio_range,
        area_range=area_range,
        max_attempts=max_attempts,
        use_image_if_no_bounding_boxes=True,
    )
    offset_y, offset_x, _ = tf.unstack(begin)
    height, width, _ = tf.unstack(size)
    sampled = tf.stack([offset_y, offset_x, height, width])
    failed = tf.logical_and(tf.equal(height, shape[0]), tf.equal(width, shape[1]))
    return tf.where(failed, _central_crop_window(shape, CENTER_CROP_FRACTION), sampled)


def _decode_window(encoded: tf.Tensor, window_fn: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
    """Decodes the window `window_fn(image shape)` of an image as uint8 RGB.

    JPEGs (nearly all of ImageNet) are decoded inside the window only; anything else is
    decoded whole by `decode.decode_rgb` and then cropped.
    """

    def jpeg() -> tf.Tensor:
        window = window_fn(tf.io.extract_jpeg_shape(encoded))
        return tf.io.decode_and_crop_jpeg(encoded, window, channels=3)

    def other() -> tf.Tensor:
        image = decode.decode_rgb(encoded)
        offset_y, offset_x, height, width = tf.unstack(window_fn(tf.shape(image)))
        return tf.image.crop_to_bounding_box(image, offset_y, offset_x, height, width)

    return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def _resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Bilinear resize to a square; without antialiasing values stay within 0..255."""
    image = tf.image.resize(image, [image_size, image_size], method='bilinear')
    return tf.ensure_shape(image, [image_size, image_size, 3])


def decode_and_random_crop(
    encoded: tf.Tensor,
    bbox: tf.Tensor,
    seed: tf.Tensor,
    *,
    image_size: int,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
    max_attempts: int = 10,
) -> tf.Tensor:
    """Decodes a random Inception crop of an image and resizes it (the train crop).

    The crop covers `area_range` of the image (of the annotated box, at least 10% of
    it, when `bbox` is not empty) with an aspect ratio in `aspect_ratio_range`
    (Szegedy et al. 2015, "Going deeper with convolutions").

    Args:
      encoded: scalar string tensor, JPEG (or PNG) bytes.
      bbox: float `[N, 4]` boxes (ymin, xmin, ymax, xmax) in 0..1; `N` may be 0.
      seed: `[2]` int32/int64 tensor; the same seed gives the same crop.
      image_size: side of the square output.
      area_range: allowed crop area as a fraction of the image.
      aspect_ratio_range: allowed width / height of the crop.
      max_attempts: sampling tries before falling back to the central crop.

    Returns:
      float32 `[image_size, image_size, 3]` with values in 0..255.
    """

    def window_fn(shape: tf.Tensor) -> tf.Tensor:
        return _random_crop_window(
            shape,
            bbox,
            seed,
            area_range=area_range,
            aspect_ratio_range=aspect_ratio_range,
            max_attempts=max_attempts,
        )

    return _resize(_decode_window(encoded, window_fn), image_size)


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Flips an `[H, W, C]` image left to right with probability 1/2, decided by `seed`."""
    return tf.image.stateless_random_flip_left_right(image, seed)


def decode_and_center_crop(
    encoded: tf.Tensor,
    *,
    image_size: int,
    crop_fraction: float = CENTER_CROP_FRACTION,
) -> tf.Tensor:
    """Decodes the central square crop of an image and resizes it (the eval crop).

    Args:
      encoded: scalar string tensor, JPEG (or PNG) bytes.
      image_size: side of the square output.
      crop_fraction: side of the crop as a fraction of the image's shorter side.

    Returns:
      float32 `[image_size, image_size, 3]` with values in 0..255.
    """
    image = _decode_window(encoded, lambda shape: _central_crop_window(shape, crop_fraction))
    return _resize(image, image_size)

"""Augmentation kernels: crop windows, fused decode-crop-resize, flip, colour, normalise.

Every random kernel is stateless: it takes a `seed` tensor of shape [2] and returns the
same output for the same seed. The dataset derives each example's seed from (seed,
epoch, position in the epoch), so a resumed run augments exactly as the original did
and no random generator state has to be checkpointed.

Decoding is where an input pipeline spends its time, so the kernels do as little
besides as they can (measured with `bench/input_pipeline.py`):

- only the crop window is decoded (`decode_and_crop_jpeg`): libjpeg skips the inverse
  DCT and the colour conversion of everything outside it;
- the output is uint8, rounded after the resize: a quarter of the bytes of float32 to
  batch and ship, and normalisation (`normalize`) runs in the train step, on the
  accelerator, where it is free (as DALI's GPU pipelines do);
- the flip is a `tf.cond` around a static reverse of that uint8 output: only flipped
  images pay for it. A `tf.reverse` with a tensor-valued axis (no control flow, the
  way it was done before) cost every image, flipped or not; `bench/flip.py` measures both;
- PNGs and other non-JPEGs are re-encoded as JPEGs (`decode.as_jpeg`) instead of
  branching, and a missing box is sliced, not branched;
- normalisation multiplies and adds full-size constants: TensorFlow's per-channel
  broadcasting of a `[3]` vector over an image ran slower than plain element-wise
  arithmetic.

Two ideas that were measured and left out: libjpeg's DCT-domain downscaling (the
`ratio` argument) saved little of a window's decode at ImageNet's JPEG quality, where
entropy decoding dominates, and applies only to windows at least twice the output (few
Inception crops of ImageNet-sized photos at 224); the branch that picks the ratio cost
more than it saved. Resizing float32 instead of uint8 input made no measurable difference.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np
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

# PCA of ImageNet's RGB pixel values in [0, 1], as fb.resnet.torch's `Lighting`
# (after AlexNet, Krizhevsky et al. 2012) uses them; the DenseNet paper trained with it.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)

# ITU-R 601 luma weights, the grayscale of fb.resnet.torch's colour jitter.
_LUMA = (0.299, 0.587, 0.114)


@functools.lru_cache(maxsize=None)
def _normalization_constants(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    scale = 1.0 / (255.0 * np.array(IMAGENET_STD, np.float32))
    offset = -np.array(IMAGENET_MEAN, np.float32) / np.array(IMAGENET_STD, np.float32)
    shape = (height, width, 3)
    return np.broadcast_to(scale, shape).copy(), np.broadcast_to(offset, shape).copy()


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
    image = tf.cast(image, tf.float32)
    if image.shape.rank is not None and image.shape[-3:].is_fully_defined():
        scale, offset = _normalization_constants(*image.shape[-3:-1])
    else:
        scale, offset = _normalization_constants(1, 1)
        scale, offset = scale[0, 0], offset[0, 0]
    return tf.cast(image * scale + offset, dtype)


def central_crop_window(shape: tf.Tensor, crop_fraction: float) -> tf.Tensor:
    """Returns the window `[offset_y, offset_x, side, side]` of the central square crop.

    The side is `crop_fraction * min(height, width)`, as TPU ResNet/EfficientNet compute
    it with `CROP_PADDING` (`image_size / (image_size + 32)` is 0.875 at 224); the `+ 1`
    rounds the offset the same way they do.
    """
    height, width = shape[0], shape[1]
    side = tf.cast(crop_fraction * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
    side = tf.maximum(side, 1)
    offset_y = (height - side + 1) // 2
    offset_x = (width - side + 1) // 2
    return tf.stack([offset_y, offset_x, side, side])


def random_crop_window(
    shape: tf.Tensor,
    bbox: tf.Tensor,
    seed: tf.Tensor,
    *,
    crop_area_range: tuple[float, float] = (0.08, 1.0),
    crop_aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
    max_attempts: int = 10,
) -> tf.Tensor:
    """Samples an Inception-style crop window `[offset_y, offset_x, height, width]`.

    The window covers `crop_area_range` of the image with an aspect ratio in
    `crop_aspect_range`; with annotated boxes it also contains at least 10% of one of
    them, which steers crops towards the object. When none of the `max_attempts` tries
    satisfies the constraints the sampler returns the whole image; we fall back to the
    central crop instead, as TPU ResNet does, so a failed sample still zooms in like the
    evaluation crop.

    Args:
      shape: `[height, width, channels]` of the image.
      bbox: float `[N, 4]` boxes (ymin, xmin, ymax, xmax) in 0..1; `N` may be 0.
      seed: `[2]` integer tensor.
      crop_area_range: allowed crop area as a fraction of the image.
      crop_aspect_range: allowed width / height of the crop.
      max_attempts: sampling tries before falling back to the central crop.

    Returns:
      int32 `[4]` window.
    """
    shape = tf.cast(shape, tf.int32)
    # Annotation tools sometimes put a box edge a hair outside the image. The whole
    # image stands in when there is no box; slicing (not tf.cond) picks it, which
    # keeps control flow out of the per-example graph.
    boxes = tf.concat([tf.clip_by_value(tf.cast(bbox, tf.float32), 0.0, 1.0), [[0, 0, 1, 1.0]]], 0)
    boxes = boxes[: tf.maximum(tf.shape(bbox)[0], 1)]
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=boxes[tf.newaxis],
        seed=seed,
        min_object_covered=MIN_OBJECT_COVERED,
        aspect_ratio_range=crop_aspect_range,
        area_range=crop_area_range,
        max_attempts=max_attempts,
        use_image_if_no_bounding_boxes=True,
    )
    sampled = tf.stack([begin[0], begin[1], size[0], size[1]])
    failed = tf.logical_and(tf.equal(size[0], shape[0]), tf.equal(size[1], shape[1]))
    return tf.where(failed, central_crop_window(shape, CENTER_CROP_FRACTION), sampled)


def decode_window(
    encoded: tf.Tensor,
    window_fn: Callable[[tf.Tensor], tf.Tensor],
    *,
    image_size: int,
    flip: tf.Tensor | None = None,
    jpeg_only: bool = False,
) -> tf.Tensor:
    """Decodes the window `window_fn(image shape)` of an image, flipped, at `image_size`.

    JPEGs (nearly all of ImageNet) are decoded inside the window only. Anything else
    (one ImageNet train image is a PNG under a `.JPEG` name) is decoded whole and
    re-encoded as a JPEG first: that costs a full decode and encode, but only for such
    images, and it keeps the graph free of control flow. A `tf.cond` here would cost
    every image more than a whole bilinear resize: tf.data runs each branch as a
    function call of its own.

    Args:
      encoded: scalar string tensor, JPEG (or PNG, GIF, BMP) bytes.
      window_fn: `[height, width, channels]` -> int32 `[offset_y, offset_x, height,
        width]` within the image.
      image_size: side of the square output.
      flip: scalar bool, whether to mirror the window left to right; None for never.
      jpeg_only: the bytes are known to be a JPEG (see `decode.as_jpeg_batch`).

    Returns:
      uint8 `[image_size, image_size, 3]`.
    """
    jpeg = encoded if jpeg_only else decode.as_jpeg(encoded)
    window = window_fn(tf.io.extract_jpeg_shape(jpeg))
    image = tf.io.decode_and_crop_jpeg(jpeg, window, channels=3)
    # Bilinear without antialiasing keeps values within 0..255; it reads the uint8
    # pixels directly, so no float copy of the window is made.
    image = to_uint8(tf.image.resize(image, [image_size, image_size], method='bilinear'))
    if flip is not None:
        # After the resize, which commutes with the flip: the fewest bytes to move.
        image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
    return tf.ensure_shape(image, [image_size, image_size, 3])


def decode_and_random_crop(
    encoded: tf.Tensor,
    bbox: tf.Tensor,
    seed: tf.Tensor,
    *,
    image_size: int,
    crop_area_range: tuple[float, float] = (0.08, 1.0),
    crop_aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
    max_attempts: int = 10,
    flip: tf.Tensor | None = None,
    jpeg_only: bool = False,
) -> tf.Tensor:
    """Decodes a random Inception crop of an image and resizes it (the train crop).

    The crop covers `crop_area_range` of the image (of the annotated box, at least 10% of
    it, when `bbox` is not empty) with an aspect ratio in `crop_aspect_range`
    (Szegedy et al. 2015, "Going deeper with convolutions").

    Args:
      encoded: scalar string tensor, JPEG (or PNG) bytes.
      bbox: float `[N, 4]` boxes (ymin, xmin, ymax, xmax) in 0..1; `N` may be 0.
      seed: `[2]` int32/int64 tensor; the same seed gives the same crop.
      image_size: side of the square output.
      crop_area_range: allowed crop area as a fraction of the image.
      crop_aspect_range: allowed width / height of the crop.
      max_attempts: sampling tries before falling back to the central crop.
      flip: scalar bool, mirror the crop left to right (see `flip_decision`).
      jpeg_only: the bytes are known to be a JPEG (see `decode.as_jpeg_batch`).

    Returns:
      uint8 `[image_size, image_size, 3]`.
    """

    def window_fn(shape: tf.Tensor) -> tf.Tensor:
        return random_crop_window(
            shape,
            bbox,
            seed,
            crop_area_range=crop_area_range,
            crop_aspect_range=crop_aspect_range,
            max_attempts=max_attempts,
        )

    return decode_window(encoded, window_fn, image_size=image_size, flip=flip, jpeg_only=jpeg_only)


def flip_decision(seed: tf.Tensor) -> tf.Tensor:
    """A fair coin, as `tf.image.stateless_random_flip_left_right` tosses it for `seed`."""
    return tf.random.stateless_uniform([], seed) < 0.5


def decode_and_center_crop(
    encoded: tf.Tensor,
    *,
    image_size: int,
    crop_fraction: float = CENTER_CROP_FRACTION,
    jpeg_only: bool = False,
) -> tf.Tensor:
    """Decodes the central square crop of an image and resizes it (the eval crop).

    Args:
      encoded: scalar string tensor, JPEG (or PNG) bytes.
      image_size: side of the square output.
      crop_fraction: side of the crop as a fraction of the image's shorter side.
      jpeg_only: the bytes are known to be a JPEG (see `decode.as_jpeg_batch`).

    Returns:
      uint8 `[image_size, image_size, 3]`.
    """
    return decode_window(
        encoded,
        lambda shape: central_crop_window(shape, crop_fraction),
        image_size=image_size,
        jpeg_only=jpeg_only,
    )


def blend(image: tf.Tensor, degenerate: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """`factor * image + (1 - factor) * degenerate`, unclipped: fb.resnet.torch's `blend`.

    PIL's `ImageEnhance` is the same blend of uint8 images, clipped: `randaugment.py`
    passes the result through `to_uint8`.
    """
    return degenerate + factor * (image - degenerate)


def to_uint8(image: tf.Tensor) -> tf.Tensor:
    """Pixel values rounded to the nearest integer and clipped to 0..255, as uint8."""
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def color_jitter(image: tf.Tensor, seed: tf.Tensor, strength: float) -> tf.Tensor:
    """Random brightness, contrast and saturation in random order (fb.resnet.torch).

    Each factor is `1 + U(-strength, strength)`: brightness blends with black,
    contrast with the image's mean gray, saturation with its grayscale. fb.resnet.torch
    uses 0.4 for all three, and does not clip; neither does this kernel, but the
    pipeline rounds and clips its output to uint8 once, after every pixel step
    (`preprocessing.TrainPreprocessing.example`), as PIL-based jitter (torchvision,
    timm) clips.

    Args:
      image: float32 `[H, W, 3]`, values in 0..255.
      seed: `[2]` integer tensor.
      strength: the largest change of each factor, in [0, 1).

    Returns:
      float32 `[H, W, 3]`.
    """
    factor_seed, order_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    factors = 1.0 + tf.random.stateless_uniform([3], factor_seed, -strength, strength)
    order = tf.argsort(tf.random.stateless_uniform([3], order_seed))
    luma = tf.constant(_LUMA, tf.float32)

    def brightness(picture: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
        return picture * factor

    def contrast(picture: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
        mean = tf.reduce_mean(tf.tensordot(picture, luma, 1))
        return blend(picture, mean, factor)

    def saturation(picture: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
        gray = tf.tensordot(picture, luma, 1)[..., tf.newaxis]
        return blend(picture, gray, factor)

    transforms = (brightness, contrast, saturation)
    for step in range(3):
        which = order[step]
        image = tf.switch_case(
            which,
            [
                functools.partial(transform, image, factors[i])
                for i, transform in enumerate(transforms)
            ],
        )
    return image


def pca_lighting(image: tf.Tensor, seed: tf.Tensor, alpha_std: float) -> tf.Tensor:
    """AlexNet-style PCA lighting noise with ImageNet's eigenvectors (fb.resnet.torch).

    Adds `eigvec @ (alpha * eigval)` to every pixel, `alpha ~ N(0, alpha_std)` per
    component (fb.resnet.torch: 0.1), on the 0..1 scale; here scaled to 0..255.

    Args:
      image: float32 `[H, W, 3]`, values in 0..255.
      seed: `[2]` integer tensor.
      alpha_std: standard deviation of the component weights.

    Returns:
      float32 `[H, W, 3]`.
    """
    alpha = tf.random.stateless_normal([3], seed, stddev=alpha_std)
    eigvec = tf.constant(PCA_EIGVEC, tf.float32)
    rgb = tf.linalg.matvec(eigvec, alpha * tf.constant(PCA_EIGVAL, tf.float32))
    return image + 255.0 * rgb

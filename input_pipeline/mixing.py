"""Batch-level mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019), stateless.

Both pair every example with the one at the mirrored position of the batch (timm's
default "batch" mode: `x.flip(0)`) and mix with a weight `lam ~ Beta(alpha, alpha)`
drawn once per batch from the batch's seed. Labels become soft: one-hot targets mixed
with the same weight, CutMix's corrected to the exact pasted area. With both enabled
each batch uses one of the two, chosen by a fair coin, as timm does.
"""

from __future__ import annotations

import tensorflow as tf


def _beta(seed: tf.Tensor, alpha: float) -> tf.Tensor:
    """A Beta(alpha, alpha) draw from two Gamma(alpha) draws."""
    gammas = tf.random.stateless_gamma([2], seed, alpha=alpha)
    return gammas[0] / tf.maximum(gammas[0] + gammas[1], 1e-12)


def mixup(
    images: tf.Tensor, targets: tf.Tensor, seed: tf.Tensor, alpha: float
) -> tuple[tf.Tensor, tf.Tensor]:
    """Mixes each example with its mirror in the batch.

    Args:
      images: float `[B, H, W, C]`.
      targets: float32 `[B, num_classes]` (one-hot or soft).
      seed: `[2]` integer tensor.
      alpha: the Beta distribution's parameter (timm: 0.8 for mixup).

    Returns:
      `(lam * images + (1 - lam) * mirrored, the same mix of targets)`.
    """
    lam = _beta(seed, alpha)
    mixed = lam * images + (1.0 - lam) * images[::-1]
    return mixed, lam * targets + (1.0 - lam) * targets[::-1]


def cutmix(
    images: tf.Tensor, targets: tf.Tensor, seed: tf.Tensor, alpha: float
) -> tuple[tf.Tensor, tf.Tensor]:
    """Pastes a box of each example's mirror in the batch into it.

    The box has `1 - lam` of the image's area (before clipping at the border) and a
    uniformly drawn centre; targets are mixed by the area actually pasted.

    Args:
      images: float `[B, H, W, C]`.
      targets: float32 `[B, num_classes]`.
      seed: `[2]` integer tensor.
      alpha: the Beta distribution's parameter (timm: 1.0 for CutMix).

    Returns:
      The pasted images and the area-weighted targets.
    """
    lam_seed, centre_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    lam = _beta(lam_seed, alpha)
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    size = tf.cast(tf.stack([height, width]), tf.float32)
    cut = tf.cast(size * tf.sqrt(1.0 - lam), tf.int32)
    centre = tf.cast(tf.random.stateless_uniform([2], centre_seed) * size, tf.int32)
    low = tf.clip_by_value(centre - cut // 2, 0, tf.stack([height, width]))
    high = tf.clip_by_value(centre + cut // 2, 0, tf.stack([height, width]))
    rows = tf.range(height)
    columns = tf.range(width)
    inside_rows = tf.logical_and(rows >= low[0], rows < high[0])
    inside_columns = tf.logical_and(columns >= low[1], columns < high[1])
    box = tf.logical_and(inside_rows[:, tf.newaxis], inside_columns[tf.newaxis, :])
    pasted = tf.where(box[tf.newaxis, :, :, tf.newaxis], images[::-1], images)
    kept = 1.0 - tf.reduce_mean(tf.cast(box, tf.float32))
    return pasted, kept * targets + (1.0 - kept) * targets[::-1]


def mix_batch(
    images: tf.Tensor,
    labels: tf.Tensor,
    seed: tf.Tensor,
    *,
    num_classes: int,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Mixup or CutMix of one batch, with soft labels.

    Args:
      images: float `[B, H, W, C]`.
      labels: int `[B]`, 0-based.
      seed: `[2]` integer tensor, the batch's.
      num_classes: width of the targets.
      mixup_alpha: > 0 enables mixup.
      cutmix_alpha: > 0 enables CutMix; with both, a coin picks one per batch.

    Returns:
      `(images, targets)`: targets float32 `[B, num_classes]` summing to 1 per example.
    """
    targets = tf.one_hot(labels, num_classes, dtype=tf.float32)
    coin_seed, mix_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if mixup_alpha > 0 and cutmix_alpha > 0:
        return tf.cond(
            tf.random.stateless_uniform([], coin_seed) < 0.5,
            lambda: mixup(images, targets, mix_seed, mixup_alpha),
            lambda: cutmix(images, targets, mix_seed, cutmix_alpha),
        )
    if mixup_alpha > 0:
        return mixup(images, targets, mix_seed, mixup_alpha)
    if cutmix_alpha > 0:
        return cutmix(images, targets, mix_seed, cutmix_alpha)
    return images, targets

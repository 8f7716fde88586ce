"""What turns records into batches: the augmentation settings and the train/eval preprocessing.

`dataset.py` decides which records, in which order and how many (files, epochs,
shuffling, batching, skipped-record accounting); the objects here decide what each
record becomes, in three units the pipeline maps in turn:

- `prepare_batch`: per batch of serialised records: parse, check, give each example
  its seeds (one op per batch, not per example);
- `example`: per image: decode the crop window, flip, the pixel augmentations;
- `finish_batch`: per batch of images: the label check that must follow any
  skipping, and mixup or CutMix.

Images leave the host as uint8 pixels, a quarter of float32's bytes; the train and
eval steps normalise them (`augment.normalize`) on the accelerator, and the exported
signatures do the same inside.

The same objects serve the local pipeline and the tf.data service's workers
(`data_service.worker_batches`), so the two cannot drift apart, and each unit can be
called on its own (tests/preprocessing_test.py).

Adding an augmentation is a field of `Augmentation` (with the `RunConfig` field of the
same name that makes it a flag), a method of `TrainPreprocessing` listed in
`_PIXEL_STEPS`, and, if it draws random numbers, a stream of its own at the end of
`seeds.KERNELS`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf

from input_pipeline import augment
from input_pipeline import decode
from input_pipeline import formats
from input_pipeline import mixing
from input_pipeline import randaugment
from input_pipeline import seeds as seeds_lib


# The version of what records become. A run resumed by code of another version goes on
# with this code's batches and says so in one line (`version_change`); checkpoints
# record the version they were made with (trainer/artifacts/checkpoint.py), those without it
# being version 1.
#   1: normalised float images in the compute dtype, flipped before the resize.
#   2: uint8 images, rounded after the resize and flipped after it; colour jitter and
#      lighting clipped to 0..255, mixed images rounded; normalised in the step.
VERSION = 2
_VERSIONS = {
    1: 'normalised float images, flipped before the resize',
    2: 'uint8 images rounded after the resize, normalised in the step',
}


def version_change(stored: int, checkpoint: str) -> str:
    """The line a run resumed across an input version change logs."""
    return (
        f'the training input changed since {checkpoint} was written: it was made with input '
        f'version {stored} ({_VERSIONS.get(stored, "unknown")}), this code makes version '
        f'{VERSION} ({_VERSIONS[VERSION]}); the run goes on with version {VERSION}\'s '
        'batches, so it will not end bit-identical to the run the earlier code would have made'
    )


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """The training augmentations, one field each (the defaults: Inception crop and flip).

    Each field is also a `RunConfig` field (and so a `main.py` flag) of the same name,
    with its help text and checks there; `from_settings` reads them all at once.
    """

    # Inception crop (Szegedy et al. 2015): area and width/height ranges, as the flags'
    # defaults write them (tests/preprocessing_test.py holds the two equal).
    crop_area_range: tuple[float, float] = (0.08, 1.0)
    crop_aspect_range: tuple[float, float] = (0.75, 1.3333333)
    random_flip: bool = True
    # > 0: random brightness, contrast and saturation of this strength (fb.resnet.torch: 0.4).
    color_jitter: float = 0.0
    # > 0: PCA lighting noise of this standard deviation (fb.resnet.torch: 0.1).
    pca_lighting: float = 0.0
    # > 0: RandAugment with this many operations per image, at `randaugment_magnitude`.
    randaugment_layers: int = 0
    randaugment_magnitude: float = 9.0
    # > 0: mixup / CutMix with Beta(alpha, alpha) weights; labels become soft.
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0

    @classmethod
    def from_settings(cls, settings: Any) -> Augmentation:
        """The augmentation named by `settings`' attributes of the same names (a RunConfig)."""
        return cls(
            **{field.name: getattr(settings, field.name) for field in dataclasses.fields(cls)}
        )

    @property
    def mixes(self) -> bool:
        """Whether batches are mixed (labels then are float32 `[batch, num_classes]`)."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


@dataclasses.dataclass(frozen=True)
class Records:
    """How to read a split's records: their keys, labels and what to do with bad ones."""

    num_classes: int
    # Subtracted from the stored labels (1 for the slim layout's 1..1000).
    label_offset: int = 1
    schema: formats.RecordSchema = formats.SLIM_SCHEMA
    # Skip undecodable images (and damaged files' rest) instead of stopping, counted.
    skip_bad_records: bool = False

    def parse_batch(
        self, serialized: tf.Tensor, filenames: tf.Tensor, *, check_labels: bool
    ) -> dict[str, tf.Tensor]:
        """Parses and checks a batch of records: one parse and one image check per batch.

        Args:
          serialized: string `[B]`, the records.
          filenames: string `[B]`, the file of each record, for the error messages.
          check_labels: check the labels here; training checks them after skipping
            bad records instead (`TrainPreprocessing.finish_batch`).

        Returns:
          `decode.parse_records`' `encoded` (JPEG bytes unless `skip_bad_records`),
          `stored_label` and `bbox`, and `label`: int32 `stored_label - label_offset`.
        """
        parsed = decode.parse_records(serialized, schema=self.schema)
        labels = tf.cast(parsed['stored_label'] - self.label_offset, tf.int32)
        if check_labels:
            labels = self.check_labels(labels, parsed['stored_label'], filenames)
        encoded = parsed['encoded']
        if not self.skip_bad_records:
            # Named errors for bytes that would fail to decode; PNGs and the like become
            # JPEGs here, for one check per batch. With `skip_bad_records` both wait for
            # the example's own map, where an error drops that example alone.
            encoded = decode.as_jpeg_batch(decode.check_image(encoded, filenames))
        return {**parsed, 'encoded': encoded, 'label': labels}

    def check_labels(
        self, labels: tf.Tensor, stored_labels: tf.Tensor, filenames: tf.Tensor
    ) -> tf.Tensor:
        """`labels` once all are in `[0, num_classes)`; else fails naming a file."""
        return decode.check_labels(
            labels,
            stored_labels,
            filenames,
            label_offset=self.label_offset,
            num_classes=self.num_classes,
            label_key=self.schema.label_key,
        )

    def jpeg(self, encoded: tf.Tensor, filename: tf.Tensor) -> tf.Tensor:
        """One image's JPEG bytes, checked just before decoding (see `decode.check_jpeg`)."""
        if self.skip_bad_records:
            encoded = decode.as_jpeg(decode.check_header(encoded, filename))
        return decode.check_jpeg(encoded, filename)


@dataclasses.dataclass(frozen=True)
class TrainPreprocessing:
    """Records to augmented training batches: `prepare_batch`, `example`, `finish_batch`.

    `origin` below is `(labels, stored labels, filenames, positions)`: what the label
    check and the skipped-record count need after the images are made.
    """

    records: Records
    image_size: int
    augmentation: Augmentation = Augmentation()

    def prepare_batch(
        self,
        kernel_keys: tf.Tensor,
        positions: tf.Tensor,
        serialized: tf.Tensor,
        filenames: tf.Tensor,
    ):
        """Parses and checks a batch of records and gives each example its seeds.

        Args:
          kernel_keys: `seeds.kernel_keys` of the pipeline's epoch.
          positions: int64 `[B]`, the examples' positions in the epoch.
          serialized, filenames: string `[B]`.

        Returns:
          `(encoded [B], bbox [B, None, 4], seeds [B, len(KERNELS), 2], origin)`.
        """
        parsed = self.records.parse_batch(serialized, filenames, check_labels=False)
        return (
            parsed['encoded'],
            parsed['bbox'],
            seeds_lib.example_seeds(kernel_keys, positions),
            (parsed['label'], parsed['stored_label'], filenames, positions),
        )

    def example(self, encoded: tf.Tensor, bbox: tf.Tensor, seeds: tf.Tensor, origin: tuple):
        """One augmented uint8 image: the flipped Inception crop, then each pixel step in turn.

        A pixel step takes and returns uint8 or float32 pixels in 0..255; the float ones
        are rounded and clipped once, at the end.
        """
        settings = self.augmentation
        image = augment.decode_and_random_crop(
            self.records.jpeg(encoded, origin[2]),
            bbox,
            seeds[seeds_lib.CROP],
            image_size=self.image_size,
            crop_area_range=settings.crop_area_range,
            crop_aspect_range=settings.crop_aspect_range,
            flip=augment.flip_decision(seeds[seeds_lib.FLIP]) if settings.random_flip else None,
            jpeg_only=True,
        )
        for step in _PIXEL_STEPS:
            image = step(self, image, seeds)
        return augment.to_uint8(image) if image.dtype != tf.uint8 else image, origin

    def randaugment(self, image: tf.Tensor, seeds: tf.Tensor) -> tf.Tensor:
        if not self.augmentation.randaugment_layers:
            return image
        return randaugment.randaugment(
            image,
            seeds[seeds_lib.RANDAUGMENT],
            num_layers=self.augmentation.randaugment_layers,
            magnitude=self.augmentation.randaugment_magnitude,
        )

    def color_jitter(self, image: tf.Tensor, seeds: tf.Tensor) -> tf.Tensor:
        if not self.augmentation.color_jitter:
            return image
        return augment.color_jitter(
            tf.cast(image, tf.float32), seeds[seeds_lib.COLOR], self.augmentation.color_jitter
        )

    def pca_lighting(self, image: tf.Tensor, seeds: tf.Tensor) -> tf.Tensor:
        if not self.augmentation.pca_lighting:
            return image
        return augment.pca_lighting(
            tf.cast(image, tf.float32), seeds[seeds_lib.LIGHTING], self.augmentation.pca_lighting
        )

    def finish_batch(
        self, mixing_key: tf.Tensor, batch_index: tf.Tensor, images: tf.Tensor, origin: tuple
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """The batch's label check (after any skipping: a bad label always stops), and mixing.

        Mixed images are rounded to uint8 again, as timm's fast mixing collator does:
        at most half a pixel value off, far below what mixup changes.

        Returns:
          `(images, labels)`: images uint8; labels int32 `[B]`, or float32 `[B,
          num_classes]` when mixing.
        """
        labels, stored_labels, filenames, _ = origin
        labels = self.records.check_labels(labels, stored_labels, filenames)
        settings = self.augmentation
        if not settings.mixes:
            return images, labels
        images, labels = mixing.mix_batch(
            tf.cast(images, tf.float32),
            labels,
            seeds_lib.batch_seed(mixing_key, batch_index),
            num_classes=self.records.num_classes,
            mixup_alpha=settings.mixup_alpha,
            cutmix_alpha=settings.cutmix_alpha,
        )
        return augment.to_uint8(images), labels


# The pixel augmentations, in the order they apply after the crop.
_PIXEL_STEPS = (
    TrainPreprocessing.randaugment,
    TrainPreprocessing.color_jitter,
    TrainPreprocessing.pca_lighting,
)


@dataclasses.dataclass(frozen=True)
class EvalPreprocessing:
    """Records to evaluation images: the central crop (`prepare_batch`, `example`)."""

    records: Records
    image_size: int
    # Side of the central crop as a fraction of the image's shorter side (224/256).
    crop_fraction: float = augment.CENTER_CROP_FRACTION

    def prepare_batch(self, serialized: tf.Tensor, filenames: tf.Tensor):
        """Parses and checks a batch of records: `(encoded, labels, filenames)`."""
        parsed = self.records.parse_batch(serialized, filenames, check_labels=True)
        return parsed['encoded'], parsed['label'], filenames

    def example(self, encoded: tf.Tensor, filename: tf.Tensor) -> tf.Tensor:
        """One image's central crop at `image_size`, uint8."""
        return augment.decode_and_center_crop(
            self.records.jpeg(encoded, filename),
            image_size=self.image_size,
            crop_fraction=self.crop_fraction,
            jpeg_only=True,
        )

    def blank(self) -> tf.Tensor:
        """The image that stands in for an undecodable one or pads the last batch."""
        return tf.zeros([self.image_size, self.image_size, 3], tf.uint8)

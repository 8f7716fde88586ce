"""The preprocessing objects' units, each alone, and the seed contract.

`dataset.train_dataset` maps `prepare_batch`, `example` and `finish_batch` in turn;
here each is called on its own and checked against a second code path (the kernels
of `augment.py`, a seed built by hand), so that a unit that drifts from what its
docstring promises fails here, not only somewhere inside a pipeline.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import skimage.data
import tensorflow as tf

from input_pipeline import augment
from input_pipeline import preprocessing
from input_pipeline import seeds
from input_pipeline import writer
from trainer.config import RunConfig


def _record(encoded: bytes, label: int) -> bytes:
    return writer.serialize_example(writer.Example(encoded=encoded, label=label))


@pytest.fixture(scope='module')
def jpeg() -> bytes:
    return tf.io.encode_jpeg(skimage.data.chelsea(), quality=90).numpy()


def test_augmentation_reads_every_field_from_the_config():
    """Each field comes from the RunConfig field of its name: none is dropped on the way."""
    config = RunConfig(
        crop_area_range=(0.3, 0.9),
        crop_aspect_range=(0.5, 2.0),
        random_flip=False,
        color_jitter=0.3,
        pca_lighting=0.2,
        randaugment_layers=2,
        randaugment_magnitude=5.0,
        mixup_alpha=0.4,
        cutmix_alpha=0.7,
    )
    augmentation = preprocessing.Augmentation.from_settings(config)
    for field in dataclasses.fields(augmentation):
        assert getattr(augmentation, field.name) == getattr(config, field.name), field.name
        # And every field differs from its default above: a field read from nowhere
        # (left at its default) would pass unnoticed otherwise.
        assert getattr(augmentation, field.name) != field.default, field.name
    assert augmentation.mixes and not preprocessing.Augmentation().mixes


def test_augmentation_defaults_are_the_flags_defaults():
    """`Augmentation()` (a pipeline built in Python) augments as a run with default flags."""
    assert preprocessing.Augmentation() == preprocessing.Augmentation.from_settings(RunConfig())


def test_example_seeds_are_kernel_key_and_position():
    """The seed of kernel k for the example at position p is `[key_k, p]` (seeds.py)."""
    pipeline_key = seeds.pipeline_key(seeds.epoch_key(7, 3), 1)
    keys = seeds.kernel_keys(pipeline_key).numpy()
    augmentation_key = seeds.fold_in(pipeline_key, seeds.AUGMENTATION)
    for kernel in range(len(seeds.KERNELS)):
        expected = tf.random.experimental.stateless_fold_in(
            augmentation_key, tf.constant(kernel, tf.int64)
        )[0]
        assert keys[kernel] == int(expected)
    positions = tf.constant([5, 9, 200], tf.int64)
    table = seeds.example_seeds(tf.constant(keys), positions).numpy()
    assert table.shape == (3, len(seeds.KERNELS), 2)
    for row, position in zip(table, [5, 9, 200]):
        np.testing.assert_array_equal(row, [[key, position] for key in keys])


def test_train_units_alone_match_the_kernels(jpeg):
    """prepare_batch -> example gives the flipped Inception crop the kernels give."""
    train = preprocessing.TrainPreprocessing(preprocessing.Records(num_classes=10), image_size=32)
    keys = seeds.kernel_keys(seeds.pipeline_key(seeds.epoch_key(0, 0), 0))
    positions = tf.constant([0, 1, 2, 3], tf.int64)
    serialized = tf.constant([_record(jpeg, label) for label in (1, 2, 3, 4)])
    filenames = tf.constant(['a'] * 4)
    encoded, bbox, example_seeds, origin = train.prepare_batch(
        keys, positions, serialized, filenames
    )
    np.testing.assert_array_equal(origin[0], [0, 1, 2, 3])  # label_offset 1
    flips = set()
    for index in range(4):
        image, _ = train.example(encoded[index], bbox[index], example_seeds[index], origin)
        flip = augment.flip_decision(example_seeds[index][seeds.FLIP])
        flips.add(bool(flip))
        expected = augment.decode_and_random_crop(
            tf.constant(jpeg), tf.zeros([0, 4]), example_seeds[index][seeds.CROP], image_size=32
        ).numpy()
        if flip:
            expected = expected[:, ::-1]
        assert image.dtype == tf.uint8
        np.testing.assert_array_equal(image.numpy(), expected)
    assert flips == {True, False}


def test_finish_batch_checks_labels_and_mixes():
    records = preprocessing.Records(num_classes=3)
    images = tf.cast(tf.random.stateless_uniform([4, 8, 8, 3], [1, 2], 0, 256, tf.int32), tf.uint8)
    origin = (
        tf.constant([0, 1, 2, 2]),
        tf.constant([1, 2, 3, 3], tf.int64),
        tf.constant(['f'] * 4),
        tf.range(4, dtype=tf.int64),
    )
    plain = preprocessing.TrainPreprocessing(records, image_size=8)
    same, labels = plain.finish_batch(tf.constant([0, 0], tf.int64), 0, images, origin)
    np.testing.assert_array_equal(same, images)
    np.testing.assert_array_equal(labels, [0, 1, 2, 2])

    mixing = preprocessing.TrainPreprocessing(
        records, image_size=8, augmentation=preprocessing.Augmentation(mixup_alpha=1.0)
    )
    mixed, targets = mixing.finish_batch(tf.constant([0, 0], tf.int64), 0, images, origin)
    assert mixed.dtype == tf.uint8 and targets.shape == (4, 3)
    np.testing.assert_allclose(tf.reduce_sum(targets, 1), 1.0, rtol=1e-6)
    # A convex mix of each image and its mirror in the batch, rounded.
    weight = float(targets[0, 0])  # example 0 (class 0) mixed with example 3 (class 2)
    pixels = images.numpy().astype(np.float64)
    np.testing.assert_allclose(
        mixed.numpy(), weight * pixels + (1 - weight) * pixels[::-1], atol=0.5 + 1e-6
    )

    bad = (tf.constant([0, 1, 2, 3]), tf.constant([1, 2, 3, 4], tf.int64), *origin[2:])
    with pytest.raises(tf.errors.InvalidArgumentError, match='label out of range.* in file f'):
        plain.finish_batch(tf.constant([0, 0], tf.int64), 0, images, bad)


def test_eval_units_alone_match_the_kernels(jpeg):
    evaluation = preprocessing.EvalPreprocessing(
        preprocessing.Records(num_classes=10), image_size=24, crop_fraction=0.6
    )
    encoded, labels, _ = evaluation.prepare_batch(
        tf.constant([_record(jpeg, 4)]), tf.constant(['a'])
    )
    assert int(labels[0]) == 3
    image = evaluation.example(encoded[0], tf.constant('a'))
    expected = augment.decode_and_center_crop(tf.constant(jpeg), image_size=24, crop_fraction=0.6)
    np.testing.assert_array_equal(image, expected)
    assert evaluation.blank().dtype == tf.uint8 and evaluation.blank().shape == (24, 24, 3)

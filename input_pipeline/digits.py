"""The bundled demo dataset: scikit-learn's handwritten digits as slim-layout TFRecords.

`sklearn.datasets.load_digits()` ships inside scikit-learn (1,797 real 8x8 scans of
digits written by 43 people, values 0..16), so the demo needs no download. We upsample
the scans to 32x32 RGB JPEGs and write them exactly as ImageNet is laid out (1-based
labels, class folders named '0'..'9'), so the demo exercises the same decoder,
augmentation and label handling as a real run.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf
from sklearn import datasets as sklearn_datasets
from sklearn import model_selection

from input_pipeline import dataset
from input_pipeline import formats
from input_pipeline import writer

IMAGE_SIZE = 32
NUM_CLASSES = 10
NUM_VALIDATION = 300  # of 1,797: leaves 1,497 for training
TRAIN_SHARDS = 4
VALIDATION_SHARDS = 1

# Fixed so that every run, on every machine, splits the scans the same way.
_SPLIT_SEED = 0
_JPEG_QUALITY = 95


def _has_shards(dataset_dir: str) -> bool:
    try:
        formats.list_files(dataset_dir, 'train')
        formats.list_files(dataset_dir, 'validation')
    except FileNotFoundError:
        return False
    return True


def _count(dataset_dir: str) -> dict[str, int]:
    return {
        split: dataset.count_examples(formats.list_files(dataset_dir, split))
        for split in ('train', 'validation')
    }


def _digit_images() -> tuple[np.ndarray, np.ndarray]:
    """Returns the scans as uint8 `[N, 32, 32, 3]` RGB images and their digits."""
    digits = sklearn_datasets.load_digits()
    scans = digits.images.astype(np.float32) * (255.0 / 16.0)
    # Bicubic keeps the pen strokes smooth instead of blocky; it overshoots a little,
    # hence the clip.
    images = tf.image.resize(scans[..., np.newaxis], [IMAGE_SIZE, IMAGE_SIZE], method='bicubic')
    images = tf.cast(tf.round(tf.clip_by_value(images, 0.0, 255.0)), tf.uint8)
    return np.repeat(images.numpy(), 3, axis=-1), digits.target


def _write_class_folders(root: str, images: np.ndarray, digits: np.ndarray) -> None:
    for index, (image, digit) in enumerate(zip(images, digits)):
        folder = os.path.join(root, str(digit))
        os.makedirs(folder, exist_ok=True)
        jpeg = tf.io.encode_jpeg(image, quality=_JPEG_QUALITY).numpy()
        with open(os.path.join(folder, f'{index:04d}.jpg'), 'wb') as file:
            file.write(jpeg)


def ensure_digits_dataset(dataset_dir: str) -> dict[str, int]:
    """Writes the digits demo dataset into `dataset_dir` unless it is already there.

    The shards are written into a temporary sibling folder and moved into place at the
    end, so an interrupted first run leaves no half dataset behind; the content is the
    same on every run, so a second writer racing the first writes identical files.

    Args:
      dataset_dir: local folder for `train-0000k-of-00004` and
        `validation-00000-of-00001`.

    Returns:
      `{'train': 1497, 'validation': 300}`: the number of examples per split.
    """
    if _has_shards(dataset_dir):
        return _count(dataset_dir)

    dataset_dir = os.path.abspath(dataset_dir)
    parent = os.path.dirname(dataset_dir)
    os.makedirs(parent, exist_ok=True)
    images, digits = _digit_images()
    train, validation = model_selection.train_test_split(
        np.arange(len(digits)),
        test_size=NUM_VALIDATION,
        random_state=_SPLIT_SEED,
        stratify=digits,
    )
    counts = {}
    staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(dataset_dir)}.incomplete-', dir=parent)
    os.chmod(staging, 0o755)  # mkdtemp makes it private; the dataset should not be
    try:
        with tempfile.TemporaryDirectory() as folders:
            for split, indices, num_shards in (
                ('train', np.sort(train), TRAIN_SHARDS),
                ('validation', np.sort(validation), VALIDATION_SHARDS),
            ):
                root = os.path.join(folders, split)
                _write_class_folders(root, images[indices], digits[indices])
                counts[split] = writer.write_from_folders(
                    root, staging, split=split, num_shards=num_shards
                )
        try:
            # Atomic, and replaces an empty folder.
            os.rename(staging, dataset_dir)
        except OSError:
            # The folder holds other files, or a concurrent writer got there first:
            # move the shards in one by one (validation first, train last).
            for name in sorted(os.listdir(staging), reverse=True):
                os.replace(os.path.join(staging, name), os.path.join(dataset_dir, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return counts

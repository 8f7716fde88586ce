"""Tests of bad data: damaged TFRecord files, undecodable images, empty shards.

By default each stops the pipeline with an error that names the file (and main.py
prints that in one line); with `skip_bad_records` the damage is skipped and logged.
"""

from __future__ import annotations

import io
import os
import re

import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from PIL import Image

from input_pipeline import dataset
from input_pipeline import writer
from trainer import errors


def jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, 'JPEG', quality=90)
    return buffer.getvalue()


@pytest.fixture(scope='module')
def patches() -> list[bytes]:
    """24 JPEG patches of a real photo, 24x32 pixels."""
    photo = skimage.data.astronaut()
    return [jpeg(np.ascontiguousarray(photo[i * 20 : i * 20 + 24, 100:132])) for i in range(24)]


def write(folder, split: str, images: list[bytes], shards: int) -> list[str]:
    examples = [writer.Example(encoded=image, label=1 + i % 4) for i, image in enumerate(images)]
    writer.write_tfrecords(examples, str(folder), split, shards)
    return dataset.list_files(str(folder), split)


def truncate(path: str) -> None:
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[: len(data) - 700])


def corrupt(path: str) -> None:
    data = bytearray(open(path, 'rb').read())
    data[len(data) // 2] ^= 0xFF
    open(path, 'wb').write(bytes(data))


def train(files, **overrides):
    arguments = dict(batch_size=4, image_size=16, num_classes=4, seed=0)
    arguments.update(overrides)
    return dataset.train_dataset(files, **arguments)


def evaluate(files, num_examples, **overrides):
    arguments = dict(batch_size=4, image_size=16, num_classes=4, num_examples=num_examples)
    arguments.update(overrides)
    return dataset.eval_dataset(files, **arguments)


def one_line(error: Exception) -> str:
    """What main.py prints for an error."""
    return errors.one_line(error)


@pytest.mark.parametrize('damage', [truncate, corrupt])
def test_damaged_tfrecord_stops_with_the_file_named(tmp_path, patches, damage):
    files = write(tmp_path, 'train', patches, 3)
    damage(files[1])
    for run in (
        lambda: dataset.count_examples(files),
        lambda: list(train(files).take(12)),
        lambda: list(evaluate(files, 24)),
    ):
        with pytest.raises(tf.errors.InvalidArgumentError) as raised:
            run()
        line = one_line(raised.value)
        assert line.startswith(f'TFRecord file {files[1]} is truncated or corrupt'), line


@pytest.mark.parametrize('damage', [truncate, corrupt])
def test_damaged_tfrecord_is_skipped_and_logged(tmp_path, patches, damage, capfd):
    files = write(tmp_path, 'train', patches, 3)
    damage(files[1])
    readable = dataset.count_examples(files, skip_bad_records=True)
    assert 16 <= readable < 24
    assert f'skipping the rest of TFRecord file {files[1]}' in capfd.readouterr().err
    labels = np.concatenate([b[1] for b in train(files, skip_bad_records=True).take(8)])
    assert len(labels) == 32
    batches = list(evaluate(files, readable, skip_bad_records=True))
    weights = np.concatenate([b[2] for b in batches])
    assert weights.sum() == readable


def with_bad_images(patches: list[bytes]) -> list[bytes]:
    """The patches with an HTML page saved as an image and a JPEG cut in half."""
    images = list(patches)
    images[5] = b'<html><body>404 Not Found</body></html>'
    images[17] = patches[17][: len(patches[17]) // 2]
    return images


def test_undecodable_image_stops_with_the_file_named(tmp_path, patches):
    files = write(tmp_path, 'train', with_bad_images(patches), 2)
    for run, expected in (
        (lambda: list(train(files).take(12)), 'undecodable image in'),
        (lambda: list(evaluate(files, 24)), 'undecodable image in'),
    ):
        with pytest.raises(tf.errors.InvalidArgumentError) as raised:
            run()
        line = one_line(raised.value)
        assert line.startswith(expected) and any(name in line for name in files), line
        assert 'not a JPEG' in line or 'without its end marker' in line


def test_undecodable_images_are_skipped_and_counted(tmp_path, patches, capfd):
    files = write(tmp_path, 'train', with_bad_images(patches), 2)
    # Training: 22 good of 24, cut to whole batches of 4, in every epoch.
    batches = list(train(files, skip_bad_records=True).take(15))
    assert all(len(labels) == 4 for _, labels in batches)
    # Both bad images are counted in an epoch that meets both before its last whole
    # batch (which epoch depends on the shuffle), and never more than the two.
    counts = re.findall(r'skipped (\d+) bad records so far in epoch', capfd.readouterr().err)
    assert '2' in counts and set(counts) <= {'1', '2'}, counts
    # Evaluation: the two count with weight 0, so metrics cover the 22 good ones.
    batches = list(evaluate(files, 24, skip_bad_records=True))
    weights = np.concatenate([b[2] for b in batches])
    assert len(weights) == 24 and weights.sum() == 22
    assert capfd.readouterr().err.count('evaluating without an undecodable image in') == 2


def test_bad_label_stops_even_when_skipping_bad_records(tmp_path, patches):
    examples = [writer.Example(encoded=image, label=1) for image in patches]
    examples[3] = writer.Example(encoded=patches[3], label=9)
    writer.write_tfrecords(examples, str(tmp_path), 'train', 1)
    files = dataset.list_files(str(tmp_path), 'train')
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        list(train(files, skip_bad_records=True).take(6))
    line = one_line(raised.value)
    assert line.startswith('label out of range: stored label 9') and files[0] in line, line


def test_empty_shards_are_fine(tmp_path, patches):
    # 4 examples over 6 shards: shards 0 and 3 are empty (the writer's split).
    files = write(tmp_path, 'validation', patches[:4], 6)
    assert [os.path.getsize(name) == 0 for name in files].count(True) == 2
    assert dataset.count_examples(files) == 4
    weights = np.concatenate([b[2] for b in evaluate(files, 4)])
    assert weights.sum() == 4
    labels = np.concatenate([b[1] for b in train(files).take(3)])
    assert sorted(labels[:4]) == [0, 1, 2, 3]

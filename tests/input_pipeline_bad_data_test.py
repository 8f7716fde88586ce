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
from jpeg_headers import declaring
import skimage.data
import tensorflow as tf
from PIL import Image

from input_pipeline import dataset
from input_pipeline import formats
from input_pipeline import writer
from base import errors
import pipelines


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
    return formats.list_files(str(folder), split)


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
    return pipelines.train(files, **arguments)


def evaluate(files, num_examples, **overrides):
    arguments = dict(batch_size=4, image_size=16, num_classes=4, num_examples=num_examples)
    arguments.update(overrides)
    return pipelines.evaluate(files, **arguments)


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
    # The loss in records: the file's readable ones, and those after them.
    skipped = re.search(
        rf'skipping the unreadable rest: TFRecord file {files[1]} is truncated or corrupt '
        r'after record (\d+): (at least )?(\d+) records? after it (is|are) unreadable',
        capfd.readouterr().err,
    )
    assert skipped, 'no line on the damaged file'
    assert int(skipped[1]) == readable - 16
    if damage is corrupt:  # every record after the bad one is counted exactly
        assert not skipped[2] and int(skipped[1]) + int(skipped[3]) == 8, skipped[0]
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


def without_label(image: bytes) -> bytes:
    """A record as the slim layout writes it, but with no image/class/label."""
    example = tf.train.Example.FromString(writer.serialize_example(writer.Example(image, 1)))
    del example.features.feature['image/class/label']
    return example.SerializeToString()


def test_bad_label_stops_even_when_skipping_bad_records(tmp_path, patches):
    examples = [writer.Example(encoded=image, label=1) for image in patches]
    examples[3] = writer.Example(encoded=patches[3], label=9)
    writer.write_tfrecords(examples, str(tmp_path), 'train', 1)
    files = formats.list_files(str(tmp_path), 'train')
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        list(train(files, skip_bad_records=True).take(6))
    line = one_line(raised.value)
    assert line.startswith('label out of range: stored label 9') and files[0] in line, line
    # A record with no label at all is named the same way (TensorFlow's parser failed
    # on it without naming the file: a "bug", exit 2), in training and evaluation.
    path = tmp_path / 'unlabelled' / 'train-00000-of-00001'
    path.parent.mkdir()
    with tf.io.TFRecordWriter(str(path)) as records:
        for index, image in enumerate(patches):
            records.write(
                without_label(image)
                if index == 5
                else writer.serialize_example(writer.Example(image, 1))
            )
    for run in (
        lambda: list(train([str(path)], skip_bad_records=True).take(6)),
        lambda: list(evaluate([str(path)], 24)),
    ):
        with pytest.raises(tf.errors.InvalidArgumentError) as raised:
            run()
        assert errors.is_user_error(raised.value)
        line = one_line(raised.value)
        assert line == f'label missing: a record in file {path} has no image/class/label', line


def test_images_too_large_or_too_short_for_their_size_are_named_or_skipped(
    tmp_path, patches, capfd
):
    """Headers declaring 30000x30000 (TensorFlow refused it naming no file: exit 2) and
    5000x5000 in ~700 bytes (libjpeg "decoded" it as grey, with only a warning)."""
    images = list(patches)
    images[4] = declaring(patches[4], 30000, 30000)
    images[9] = declaring(patches[9], 5000, 5000)
    files = write(tmp_path, 'train', images, 2)
    expected = {
        4: 'its header declares 30000x30000 pixels, more than the 100,000,000',
        9: f'a JPEG of {len(images[9])} bytes cannot hold the 5000x5000 pixels its header',
    }
    # Stopped in training; evaluation runs the same check (`check_jpeg`) in its crop,
    # which the skipping run below passes through.
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        list(train(files).take(12))
    line = one_line(raised.value)
    assert any(line.startswith(f'undecodable image in {name}: ') for name in files), line
    assert any(text in line for text in expected.values()), line
    # With skip_bad_records both are skipped and counted, in training and evaluation.
    capfd.readouterr()
    list(train(files, skip_bad_records=True).take(15))
    counts = re.findall(r'skipped (\d+) bad records so far in epoch', capfd.readouterr().err)
    assert '2' in counts and set(counts) <= {'1', '2'}, counts
    weights = np.concatenate([b[2] for b in evaluate(files, 24, skip_bad_records=True)])
    assert weights.sum() == 22


def test_empty_shards_are_fine(tmp_path, patches):
    # 4 examples over 6 shards: shards 0 and 3 are empty (the writer's split).
    files = write(tmp_path, 'validation', patches[:4], 6)
    assert [os.path.getsize(name) == 0 for name in files].count(True) == 2
    assert dataset.count_examples(files) == 4
    weights = np.concatenate([b[2] for b in evaluate(files, 4)])
    assert weights.sum() == 4
    labels = np.concatenate([b[1] for b in train(files).take(3)])
    assert sorted(labels[:4]) == [0, 1, 2, 3]


@pytest.mark.slow
def test_main_names_a_record_without_a_label_and_exits_1(tmp_path, patches):
    """main.py's own path, as the issue found it: a traceback and "a bug", exit 2.

    (The image checks' lines go the same way: `errors._DATA_CHECK` knew their prefix.)
    """
    from in_process import run_main_in_process  # noqa: PLC0415  (imports main.py)

    data = tmp_path / 'data'
    write(data, 'validation', patches[:8], 1)
    write(data, 'train', patches, 2)
    path = data / 'train-00001-of-00002'
    with tf.io.TFRecordWriter(str(path)) as records:
        for image in patches[12:]:
            records.write(without_label(image))
    result = run_main_in_process(
        [
            '--model=densenet_bc_10_4',
            '--image_size=16',
            '--num_classes=4',
            '--bfloat16=false',
            '--batch_size=8',
            '--train_steps=3',
            f'--dataset_dir={data}',
            f'--model_dir={tmp_path / "run"}',
        ]
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f'main.py: error: label missing: a record in file {path} has no image/class/label'
    )

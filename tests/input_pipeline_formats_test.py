"""Tests of input_pipeline/formats.py: the three ImageNet layouts, detected and read.

Each layout is written the way its tool writes it (file names, folders, keys, label
convention), from real photos, and read back through the train and eval pipelines.
"""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from PIL import Image

from input_pipeline import augment
from input_pipeline import decode
from input_pipeline import formats
import pipelines

# Four classes, one photo each; their mean colours tell them apart after any crop.
PHOTOS = {
    'n01440764': skimage.data.coffee,
    'n01443537': skimage.data.astronaut,
    'n01484850': skimage.data.rocket,
    'n01491361': skimage.data.chelsea,
}
SYNSETS = sorted(PHOTOS)
PER_CLASS = 3


def jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, 'JPEG', quality=90)
    return buffer.getvalue()


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


@pytest.fixture(scope='module')
def images() -> list[tuple[str, bytes, int, int]]:
    """(synset, JPEG, height, width) for 3 small cuts of each class's photo."""
    found = []
    for synset in SYNSETS:
        photo = PHOTOS[synset]()[::4, ::4]
        for index in range(PER_CLASS):
            cut = np.ascontiguousarray(photo[index * 4 :, index * 4 :])
            found.append((synset, jpeg(cut), cut.shape[0], cut.shape[1]))
    return found


def slim_example(synset: str, encoded: bytes, height: int, width: int, name: str) -> bytes:
    """TF-slim's build_imagenet_data.py `_convert_to_example` (no boxes here)."""
    label = SYNSETS.index(synset) + 1
    feature = {
        'image/height': _int(height),
        'image/width': _int(width),
        'image/colorspace': _bytes(b'RGB'),
        'image/channels': _int(3),
        'image/class/label': _int(label),
        'image/class/synset': _bytes(synset.encode()),
        'image/class/text': _bytes(f'class {label}'.encode()),
        'image/object/bbox/xmin': tf.train.Feature(float_list=tf.train.FloatList(value=[])),
        'image/object/bbox/xmax': tf.train.Feature(float_list=tf.train.FloatList(value=[])),
        'image/object/bbox/ymin': tf.train.Feature(float_list=tf.train.FloatList(value=[])),
        'image/object/bbox/ymax': tf.train.Feature(float_list=tf.train.FloatList(value=[])),
        'image/object/bbox/label': tf.train.Feature(int64_list=tf.train.Int64List(value=[])),
        'image/format': _bytes(b'JPEG'),
        'image/filename': _bytes(name.encode()),
        'image/encoded': _bytes(encoded),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def tpu_example(synset: str, encoded: bytes, height: int, width: int, name: str) -> bytes:
    """Cloud TPU imagenet_to_gcs.py `_convert_to_example`: no text, no boxes."""
    feature = {
        'image/height': _int(height),
        'image/width': _int(width),
        'image/colorspace': _bytes(b'RGB'),
        'image/channels': _int(3),
        'image/class/label': _int(SYNSETS.index(synset) + 1),
        'image/class/synset': _bytes(synset.encode()),
        'image/format': _bytes(b'JPEG'),
        'image/filename': _bytes(name.encode()),
        'image/encoded': _bytes(encoded),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def tfds_example(synset: str, encoded: bytes, height: int, width: int, name: str) -> bytes:
    """TFDS imagenet2012: `image` (encoded), `label` (0-based ClassLabel), `file_name`."""
    del height, width
    feature = {
        'file_name': _bytes(name.encode()),
        'image': _bytes(encoded),
        'label': _int(SYNSETS.index(synset)),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_layout(root: str, layout: str, images, shards: int = 2) -> str:
    """Writes both splits as `layout`'s tool does; returns the folder to pass as dataset_dir."""
    make = {'slim': slim_example, 'tpu': tpu_example, 'tfds': tfds_example}[layout]
    for split in ('train', 'validation'):
        if layout == 'slim':
            folder, pattern = root, f'{split}-{{:05d}}-of-{shards:05d}'
        elif layout == 'tpu':
            folder, pattern = os.path.join(root, split), f'{split}-{{:05d}}-of-{shards:05d}'
        else:
            folder = os.path.join(root, 'imagenet2012', '5.1.0')
            pattern = f'imagenet2012-{split}.tfrecord-{{:05d}}-of-{shards:05d}'
        os.makedirs(folder, exist_ok=True)
        for shard in range(shards):
            with tf.io.TFRecordWriter(os.path.join(folder, pattern.format(shard))) as writer:
                for index, image in enumerate(images):
                    if index % shards == shard:
                        writer.write(make(*image, f'{split}_{index}.JPEG'))
    if layout == 'tfds':
        with open(os.path.join(root, 'imagenet2012', '5.1.0', 'dataset_info.json'), 'w') as f:
            f.write('{"name": "imagenet2012"}')
    return root


def class_of(image: np.ndarray, references: np.ndarray) -> int:
    """The class whose photo's mean colour is nearest to `image`'s."""
    return int(np.argmin(np.abs(references - image.reshape(-1, 3).mean(0)).sum(1)))


@pytest.fixture(scope='module')
def references(images) -> np.ndarray:
    means = []
    for synset in SYNSETS:
        rgb = [tf.io.decode_jpeg(e).numpy() for s, e, _, _ in images if s == synset]
        means.append(np.mean([image.reshape(-1, 3).mean(0) for image in rgb], axis=0))
    return np.array(means)


def denormalize(images: np.ndarray) -> np.ndarray:
    """The pipelines' uint8 pixels as float32."""
    return np.asarray(images, np.float32)


@pytest.mark.parametrize('layout', formats.LAYOUTS)
def test_each_layout_is_detected_and_read(
    tmp_path, images, references, layout, caplog, absl_info_logs
):
    root = write_layout(str(tmp_path), layout, images)
    with caplog.at_level(logging.INFO):
        found = formats.find_dataset(root)
    assert found.layout == layout
    assert found.schema == (formats.TFDS_SCHEMA if layout == 'tfds' else formats.SLIM_SCHEMA)
    assert found.label_offset == (0 if layout == 'tfds' else 1)
    assert len(found.train_files) == len(found.validation_files) == 2
    assert f'{layout} layout' in caplog.text and 'label offset' in caplog.text

    arguments = dict(
        image_size=32, num_classes=4, label_offset=found.label_offset, schema=found.schema
    )
    images_, labels, weights = next(
        iter(
            pipelines.evaluate(
                list(found.validation_files), batch_size=16, num_examples=12, **arguments
            )
        )
    )
    real = weights.numpy() == 1
    assert sorted(labels.numpy()[real]) == sorted(np.repeat(np.arange(4), PER_CLASS))
    # Each image shows its own class's photo: labels and pixels were paired right.
    for image, label in zip(denormalize(images_.numpy()[real]), labels.numpy()[real]):
        assert class_of(image, references) == label

    train_images, train_labels = next(
        iter(pipelines.train(list(found.train_files), batch_size=12, seed=1, **arguments))
    )
    assert sorted(train_labels.numpy()) == sorted(np.repeat(np.arange(4), PER_CLASS))


def test_layout_flag_and_label_offset_override(tmp_path, images):
    root = write_layout(str(tmp_path), 'tpu', images)
    with pytest.raises(FileNotFoundError, match=r'train-\*-of-\*'):
        formats.find_dataset(root, layout='slim')
    found = formats.find_dataset(root, layout='tpu', label_offset=0)
    assert (found.layout, found.label_offset) == ('tpu', 0)
    assert '--label_offset' in found.how
    # The overriding offset is used: label 1..4 - 0 is out of range for 4 classes.
    with pytest.raises(tf.errors.InvalidArgumentError, match='label out of range'):
        list(
            pipelines.evaluate(
                list(found.validation_files),
                batch_size=12,
                image_size=16,
                num_classes=4,
                num_examples=12,
                label_offset=found.label_offset,
            )
        )
    with pytest.raises(ValueError, match='data_layout=imagenet'):
        formats.find_dataset(root, layout='imagenet')


def test_zero_based_labels_under_slim_keys_are_detected(tmp_path, images):
    """Some converters write TF-slim keys with labels 0..999; label 0 gives them away."""
    root = write_layout(str(tmp_path), 'slim', images)
    # Rewrite the labels 1..4 as 0..3: the first record (the first class) gets label 0.
    for path in tf.io.gfile.glob(os.path.join(root, '*-of-*')):
        records = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]
        with tf.io.TFRecordWriter(path) as writer:
            for example in records:
                label = example.features.feature['image/class/label'].int64_list
                label.value[0] -= 1
                writer.write(example.SerializeToString())
    found = formats.find_dataset(root)
    assert found.label_offset == 0 and 'label 0' in found.how


def test_two_layouts_at_once_are_refused(tmp_path, images):
    write_layout(str(tmp_path), 'slim', images)
    write_layout(str(tmp_path), 'tpu', images)
    with pytest.raises(ValueError, match='several layouts'):
        formats.find_dataset(str(tmp_path))


def test_missing_folder_and_split(tmp_path, images):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        formats.find_dataset(str(tmp_path / 'nowhere'))
    # A file where the folder should be is named as a file, not as missing.
    (tmp_path / 'a_file').write_bytes(b'')
    for find in (formats.find_dataset, lambda path: formats.list_files(path, 'train')):
        with pytest.raises(ValueError) as raised:
            find(str(tmp_path / 'a_file'))
        assert str(raised.value) == (
            f'dataset directory {tmp_path / "a_file"} is a file, not a folder: give the '
            'folder that holds the TFRecord shards'
        )
    (tmp_path / 'train-00000-of-00001').write_bytes(b'')
    with pytest.raises(FileNotFoundError, match=r'no validation TFRecords'):
        formats.find_dataset(str(tmp_path))


def test_shard_numbering_that_does_not_add_up(tmp_path, images, caplog):
    """Shards of two builds are refused; missing and empty shards are named in a warning."""
    root = write_layout(str(tmp_path), 'tpu', images, shards=4)
    folder = tmp_path / 'train'
    stranger = folder / 'train-00004-of-00004'  # a fifth "of four": another build's
    stranger.write_bytes((folder / 'train-00000-of-00004').read_bytes())
    with pytest.raises(ValueError) as raised:
        formats.find_dataset(root)
    assert str(raised.value) == (
        f'{stranger} is numbered past its count (shards of 4 run from 0 to 3): a file of '
        'another build, or renamed; remove it'
    )
    stranger.rename(folder / 'train-00001-of-00008')
    with pytest.raises(
        ValueError,
        match=r'^shards of 2 builds side by side: .*train-00000-of-00004 is one of 4, .*train-00001-of-00008 one of 8: keep one set of files$',
    ):
        formats.find_dataset(root)
    (folder / 'train-00001-of-00008').unlink()
    (folder / 'train-00002-of-00004').unlink()
    (folder / 'train-00003-of-00004').write_bytes(b'')
    with caplog.at_level(logging.WARNING):
        found = formats.find_dataset(root)
    assert len(found.train_files) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        f'input_pipeline: 1 of the 4 shards {folder}/train-*-of-00004 are missing '
        f'({folder}/train-00002-of-00004 first); reading the 3 that are there'
    ) in warnings, warnings
    assert (
        f'input_pipeline: 1 shard is empty (0 bytes, no records): {folder}/train-00003-of-00004'
    ) in warnings, warnings


def test_bounding_boxes_steer_the_crop_sampler(tmp_path):
    """A box around the white right quarter of a half black image pulls small crops there."""
    image = np.zeros([96, 128, 3], np.uint8)
    image[:, 96:] = 255
    box = (0.0, 0.75, 1.0, 1.0)  # ymin, xmin, ymax, xmax
    from input_pipeline import writer

    examples = [
        writer.Example(encoded=jpeg(image), label=1, bboxes=[box] if with_box else ())
        for with_box in (True, False)
    ]
    for index, example in enumerate(examples):
        writer.write_tfrecords([example] * 16, str(tmp_path / str(index)), 'train', 1)
    brightness = []
    for index in range(2):
        files = formats.list_files(str(tmp_path / str(index)), 'train')
        record = next(iter(tf.data.TFRecordDataset(files)))
        parsed = decode.parse_records(record[tf.newaxis])
        boxes = np.array(parsed['bbox'].to_list()[0], np.float32).reshape(-1, 4)
        np.testing.assert_allclose(boxes, [box] if index == 0 else np.zeros([0, 4]))
        images_, _ = next(
            iter(
                pipelines.train(
                    files,
                    batch_size=16,
                    image_size=8,
                    num_classes=1,
                    seed=0,
                    crop_area_range=(0.1, 0.15),
                    random_flip=False,
                )
            )
        )
        brightness.append(denormalize(images_.numpy()).mean(axis=(1, 2, 3)))
    # Every crop of the boxed image covers at least 10% of the box: it shows some
    # white; without the box about two thirds of the crops are all black.
    assert np.all(brightness[0] > 20)
    assert np.mean(brightness[1] < 20) > 0.4


def test_detection_passes_over_a_damaged_first_file(tmp_path, images):
    root = write_layout(str(tmp_path), 'tfds', images)
    found = formats.find_dataset(root)
    first = sorted(found.train_files + found.validation_files)[0]
    with open(first, 'wb') as stream:  # A shard overwritten by a failed copy.
        stream.write(b'\x00' * 100)
    # Detection reads the next file; the pipeline names the damaged one when it reads it.
    again = formats.find_dataset(root)
    assert (again.layout, again.schema, again.label_offset) == ('tfds', formats.TFDS_SCHEMA, 0)
    for path in found.train_files + found.validation_files:
        with open(path, 'wb') as stream:
            stream.write(b'\x00' * 100)
    with pytest.raises(ValueError, match=r'^TFRecord file .* is truncated or corrupt: '):
        formats.find_dataset(root)

"""Tests of input_pipeline on real photos and scans: write, decode, augment, batch.

The photos come from scikit-image and scikit-learn (bundled, no downloads). Test JPEGs
are encoded with Pillow, a different library than the TensorFlow decoder under test.
Each augmentation is checked both eagerly and inside `tf.data`, where it runs as a
traced graph.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from PIL import Image
from sklearn import datasets as sklearn_datasets

from input_pipeline import augment
from input_pipeline import dataset
from input_pipeline import decode
from input_pipeline import digits
from input_pipeline import formats
from input_pipeline import writer
import pipelines


def encode(image: np.ndarray, kind: str = 'JPEG', mode: str | None = None) -> bytes:
    """Encodes an RGB or grayscale uint8 array with Pillow (`mode` converts first)."""
    picture = Image.fromarray(image)
    if mode:
        picture = picture.convert(mode)
    buffer = io.BytesIO()
    picture.save(buffer, kind, **({'quality': 95} if kind == 'JPEG' else {}))
    return buffer.getvalue()


@pytest.fixture(scope='module')
def photos() -> dict[str, np.ndarray]:
    samples = sklearn_datasets.load_sample_images()
    named = dict(zip(['china', 'flower'], samples.images))
    named.update(
        chelsea=skimage.data.chelsea(),
        astronaut=skimage.data.astronaut(),
        coffee=skimage.data.coffee(),
    )
    return named


@pytest.fixture(params=['eager', 'tf.data'])
def run(request):
    """Calls a kernel eagerly, or as a `tf.data` map function (a traced graph)."""

    def in_tf_data(fn, *args):
        return tf.data.Dataset.from_tensors(args).map(fn).get_single_element()

    return (lambda fn, *args: fn(*args)) if request.param == 'eager' else in_tf_data


def read_records(files: list[str]) -> list[dict]:
    """Parses every record of `files`, in order, as the pipelines do, labels made 0-based.

    The class synset and text, which the pipelines do not read, come from the
    `tf.train.Example` itself.
    """
    parsed = []
    for batch in tf.data.TFRecordDataset(files).batch(256):
        fields = decode.parse_records(batch)
        boxes = fields['bbox'].to_list()
        for index, record in enumerate(batch.numpy()):
            feature = tf.train.Example.FromString(record).features.feature
            parsed.append(
                {
                    'encoded': fields['encoded'][index].numpy(),
                    'label': int(fields['stored_label'][index]) - 1,
                    'bbox': np.array(boxes[index], np.float32).reshape(-1, 4),
                    'synset': feature['image/class/synset'].bytes_list.value[0],
                    'text': feature['image/class/text'].bytes_list.value[0],
                }
            )
    return parsed


def decode_whole(encoded: bytes | tf.Tensor) -> np.ndarray:
    """A whole image decoded to uint8 RGB by TensorFlow's decoder: the tests' reference."""
    return tf.io.decode_image(encoded, channels=3, expand_animations=False).numpy()


def reference_center_crop(image: np.ndarray, image_size: int, crop_fraction: float = 0.875):
    """The eval crop computed independently: numpy slicing, then `tf.image.resize`."""
    height, width = image.shape[:2]
    side = int(crop_fraction * min(height, width))
    top, left = (height - side + 1) // 2, (width - side + 1) // 2
    crop = image[top : top + side, left : left + side]
    return tf.image.resize(crop, [image_size, image_size]).numpy()


# --- writer and decoder ---------------------------------------------------------------


def test_round_trip_keeps_images_labels_synsets_and_text(tmp_path, photos):
    examples = [
        writer.Example(
            encoded=encode(image),
            label=label,
            synset=f'n0000000{label}',
            text=f'{name} café',
            height=image.shape[0],
            width=image.shape[1],
            bboxes=[(0.1, 0.2, 0.6, 0.9), (0.0, 0.0, 1.0, 0.5)] if name == 'chelsea' else (),
        )
        for label, (name, image) in enumerate(sorted(photos.items()), start=1)
    ]
    assert writer.write_tfrecords(examples, str(tmp_path), 'train', 2) == 5

    assert sorted(os.listdir(tmp_path)) == ['train-00000-of-00002', 'train-00001-of-00002']
    files = formats.list_files(str(tmp_path), 'train')
    assert dataset.count_examples(files) == 5
    parsed = read_records(files)
    assert [example['label'] for example in parsed] == [0, 1, 2, 3, 4]
    for example, original, (name, image) in zip(parsed, examples, sorted(photos.items())):
        assert example['encoded'] == original.encoded
        assert example['synset'].decode() == original.synset
        assert example['text'].decode('utf-8') == f'{name} café'
        expected_boxes = np.array(original.bboxes, np.float32).reshape(-1, 4)
        np.testing.assert_allclose(example['bbox'], expected_boxes)
        rgb = decode_whole(example['encoded'])
        assert rgb.shape == image.shape and rgb.dtype == np.uint8
        assert np.abs(rgb.astype(int) - image).mean() < 3


def test_writer_accepts_mappings_and_fills_empty_shards(tmp_path, photos):
    examples = [{'encoded': encode(photos['coffee']), 'label': 7}]
    assert writer.write_tfrecords(iter(examples), str(tmp_path), 'validation', 3) == 1
    files = formats.list_files(str(tmp_path), 'validation')
    assert [os.path.basename(name) for name in files] == writer.shard_names('validation', 3)
    assert [example['label'] for example in read_records(files)] == [6]


def test_writer_crash_leaves_no_shards(tmp_path, photos):
    def examples():
        for label in range(1, 4):
            yield writer.Example(encoded=encode(photos['chelsea']), label=label)
        raise RuntimeError('disk on fire')

    with pytest.raises(RuntimeError, match='disk on fire'):
        writer.write_tfrecords(examples(), str(tmp_path), 'train', 2, num_examples=6)
    assert os.listdir(tmp_path) == []


def test_writer_refuses_to_mix_shard_counts(tmp_path, photos):
    examples = [writer.Example(encoded=encode(photos['chelsea']), label=1)] * 2
    writer.write_tfrecords(examples, str(tmp_path), 'train', 2)
    with pytest.raises(FileExistsError, match='train-00000-of-00002'):
        writer.write_tfrecords(examples, str(tmp_path), 'train', 1)


def test_write_from_folders(tmp_path, photos):
    root = tmp_path / 'images'
    folders = {'n02': ['chelsea', 'coffee'], 'n01': ['astronaut'], 'n03': ['china']}
    for folder, names in folders.items():
        (root / folder).mkdir(parents=True)
        for name in names:
            (root / folder / f'{name}.JPEG').write_bytes(encode(photos[name]))
    (root / 'n03' / 'flower.png').write_bytes(encode(photos['flower'], 'PNG'))
    (root / 'n03' / 'notes.txt').write_text('not an image')
    (root / 'README').write_text('not a class folder')

    output = str(tmp_path / 'records')
    count = writer.write_from_folders(
        str(root), output, split='train', num_shards=2, class_names={'n01': 'astronaut'}
    )

    assert count == 5
    parsed = read_records(formats.list_files(output, 'train'))
    found = sorted((e['label'], e['synset'].decode(), e['text'].decode()) for e in parsed)
    assert found == [
        (0, 'n01', 'astronaut'),
        (1, 'n02', 'n02'),
        (1, 'n02', 'n02'),
        (2, 'n03', 'n03'),
        (2, 'n03', 'n03'),
    ]
    # The PNG was re-encoded: every stored image is a JPEG of the right size.
    assert all(tf.io.is_jpeg(e['encoded']) for e in parsed)
    sizes = sorted(tuple(tf.io.extract_jpeg_shape(e['encoded']).numpy()[:2]) for e in parsed)
    assert sizes == sorted(
        photos[name].shape[:2] for name in ['chelsea', 'coffee', 'astronaut', 'china', 'flower']
    )


def test_write_from_folders_without_class_folders(tmp_path):
    (tmp_path / 'loose.jpg').write_bytes(b'')
    with pytest.raises(FileNotFoundError, match='no class folders'):
        writer.write_from_folders(str(tmp_path), str(tmp_path / 'out'), split='train', num_shards=1)


def test_decode_grayscale_jpeg_to_rgb(run):
    camera = skimage.data.camera()  # 512x512: the whole image at its own size is itself.
    rgb = run(
        lambda e: augment.decode_and_center_crop(e, image_size=512, crop_fraction=1.0),
        tf.constant(encode(camera)),
    ).numpy()
    assert rgb.shape == camera.shape + (3,) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 1])
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    assert np.abs(rgb[..., 0].astype(int) - camera).mean() < 2


def test_decode_cmyk_jpeg_to_rgb(run, photos):
    chelsea = photos['chelsea']
    cmyk = encode(chelsea, mode='CMYK')
    assert Image.open(io.BytesIO(cmyk)).mode == 'CMYK'
    # The fused decode-and-crop path converts CMYK to RGB: at its own size, its central
    # square is the photo's.
    side = min(chelsea.shape[:2])
    square = run(
        lambda e: augment.decode_and_center_crop(e, image_size=side, crop_fraction=1.0),
        tf.constant(cmyk),
    ).numpy()
    assert square.shape == (side, side, 3)
    assert np.abs(square - reference_center_crop(chelsea, side, 1.0)).mean() < 3
    # And it crops and resizes as a whole decode does.
    rgb = decode_whole(cmyk)
    crop = run(lambda e: augment.decode_and_center_crop(e, image_size=64), tf.constant(cmyk))
    np.testing.assert_allclose(crop, reference_center_crop(rgb, 64), atol=2)


def test_png_under_jpeg_name(run, photos):
    chelsea = photos['chelsea']
    png = tf.constant(encode(chelsea, 'PNG'))
    # The crop kernels re-encode it as a near-lossless JPEG (`decode.as_jpeg`): a level
    # or two off the PNG's pixels.
    jpeg = run(decode.as_jpeg, png)
    assert tf.io.is_jpeg(jpeg)
    assert np.abs(decode_whole(jpeg).astype(int) - chelsea).mean() < 2
    # The eval crop at its native
    # size (262 = int(0.875 * 300)) is then the numpy slice within a level or two; a
    # window one pixel off would differ by ~8 (451 - 262 is odd, so the rounding of the
    # offset shows).
    crop = run(lambda e: augment.decode_and_center_crop(e, image_size=262), png).numpy()
    crop = crop.astype(int)  # uint8 differences would wrap around
    assert np.abs(crop - reference_center_crop(chelsea, 262)).mean() < 2
    # (451 - 262) / 2 = 94.5 rounds to 95; the window starting at 94 is the wrong one.
    shifted = chelsea[19 : 19 + 262, 94 : 94 + 262]
    assert np.abs(crop - shifted).mean() > 5
    image = run(
        lambda e: augment.decode_and_random_crop(
            e, tf.zeros([0, 4]), tf.constant([1, 2]), image_size=32
        ),
        png,
    )
    assert image.shape == (32, 32, 3)


@pytest.mark.parametrize('stored_label', [0, 1001])
def test_label_out_of_range_names_the_file(tmp_path, photos, stored_label):
    good = writer.Example(encoded=encode(photos['chelsea'][:64, :64]), label=1)
    bad = writer.Example(encoded=good.encoded, label=stored_label)
    writer.write_tfrecords([good, good, bad, good], str(tmp_path), 'train', 1)
    filename = formats.list_files(str(tmp_path), 'train')[0]
    record = list(tf.data.TFRecordDataset(filename))[2]

    def expect_error(iterate) -> None:
        with pytest.raises(tf.errors.InvalidArgumentError) as raised:
            iterate()
        message = raised.value.message
        assert 'label out of range' in message
        assert filename in message
        assert str(stored_label) in message

    def parse_and_check():
        parsed = decode.parse_records(record[tf.newaxis])
        stored = parsed['stored_label']
        decode.check_labels(
            stored - 1, stored, tf.constant([filename]), label_offset=1, num_classes=1000
        )

    expect_error(parse_and_check)
    expect_error(
        lambda: list(
            pipelines.train([filename], batch_size=1, image_size=16, num_classes=1000, seed=0).take(
                8
            )
        )
    )
    expect_error(
        lambda: list(
            pipelines.evaluate(
                [filename], batch_size=2, image_size=16, num_classes=1000, num_examples=4
            )
        )
    )


# --- augmentation kernels -------------------------------------------------------------


def test_decode_and_random_crop(run, photos):
    encoded = tf.constant(encode(photos['chelsea']))
    boxes = tf.constant([[0.1, 0.2, 0.6, 0.9]])

    def crop(seed, bbox=tf.zeros([0, 4])):
        return run(
            lambda e, b, s: augment.decode_and_random_crop(e, b, s, image_size=32),
            encoded,
            bbox,
            tf.constant(seed, tf.int64),
        ).numpy()

    first = crop([1, 2])
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8
    assert first.min() >= 0 and first.max() <= 255 and first.std() > 1
    np.testing.assert_array_equal(first, crop([1, 2]))
    assert not np.array_equal(first, crop([1, 3]))
    with_box = crop([1, 2], boxes)
    assert with_box.shape == (32, 32, 3)
    np.testing.assert_array_equal(with_box, crop([1, 2], boxes))


def test_random_crop_falls_back_to_center_crop(run, photos):
    encoded = tf.constant(encode(photos['chelsea']))

    # No window of aspect ratio 10 covers 90% of a 451x300 photo: sampling fails.
    def impossible_crop(e):
        return augment.decode_and_random_crop(
            e,
            tf.zeros([0, 4]),
            tf.constant([3, 4]),
            image_size=32,
            crop_area_range=(0.9, 1.0),
            crop_aspect_range=(10.0, 10.0),
        )

    center = augment.decode_and_center_crop(encoded, image_size=32)
    np.testing.assert_array_equal(run(impossible_crop, encoded), center)


def test_decode_and_center_crop_matches_reference(run, photos):
    for name in ['chelsea', 'coffee', 'flower']:
        encoded = tf.constant(encode(photos[name]))
        full = tf.io.decode_jpeg(encoded, channels=3).numpy()
        crop = run(lambda e: augment.decode_and_center_crop(e, image_size=32), encoded).numpy()
        assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8
        expected = reference_center_crop(full, 32)
        np.testing.assert_allclose(crop, expected, atol=3)
        assert np.abs(crop - expected).mean() < 0.5


def test_random_flip(run, photos):
    # The train crop's flip: `flip_decision(seed)` mirrors the window for some seeds and
    # keeps it for others, the same for the same seed.
    encoded = tf.constant(encode(photos['astronaut'][:40, :48]))

    def crop(data, flip=None):
        # The central 40x40 window at its own size: no resize between it and the flip.
        return augment.decode_window(
            data,
            lambda shape: augment.central_crop_window(shape, 1.0),
            image_size=40,
            flip=flip,
        )

    def flip_crop(data, seed):
        return crop(data, augment.flip_decision(seed))

    image = run(crop, encoded).numpy()
    flipped = image[:, ::-1]
    outcomes = set()
    for index in range(16):
        seed = tf.constant([index, 7])
        result = run(flip_crop, encoded, seed).numpy()
        np.testing.assert_array_equal(result, run(flip_crop, encoded, seed))
        if np.array_equal(result, flipped):
            outcomes.add('flipped')
        else:
            np.testing.assert_array_equal(result, image)
            outcomes.add('kept')
    assert outcomes == {'flipped', 'kept'}


@pytest.mark.parametrize('dtype', [tf.float32, tf.bfloat16])
def test_normalize(run, photos, dtype):
    image = photos['coffee'][:8, :8]
    result = run(lambda x: augment.normalize(x, dtype), tf.constant(image))
    assert result.dtype == dtype
    expected = (image / 255.0 - np.array(augment.IMAGENET_MEAN)) / np.array(augment.IMAGENET_STD)
    tolerance = 1e-5 if dtype == tf.float32 else 2e-2
    np.testing.assert_allclose(tf.cast(result, tf.float32), expected, atol=tolerance)


# --- train and eval datasets ----------------------------------------------------------

TRAIN_EXAMPLES = 62  # 15 batches of 4 per epoch; the last 2 examples are cut
TRAIN_BATCH = 4
TRAIN_BATCHES_PER_EPOCH = TRAIN_EXAMPLES // TRAIN_BATCH


@pytest.fixture(scope='module')
def train_files(tmp_path_factory, photos) -> list[str]:
    """62 real 48x64 photo patches with labels 1..62 in 3 shards.

    Includes a grayscale JPEG, a CMYK JPEG and a PNG, as ImageNet does.
    """
    rng = np.random.default_rng(0)
    names = sorted(photos)
    examples = []
    for index in range(TRAIN_EXAMPLES):
        image = photos[names[index % len(names)]]
        top = rng.integers(0, image.shape[0] - 48)
        left = rng.integers(0, image.shape[1] - 64)
        patch = np.ascontiguousarray(image[top : top + 48, left : left + 64])
        special = {0: ('JPEG', 'L'), 1: ('JPEG', 'CMYK'), 2: ('PNG', None)}
        kind, mode = special.get(index, ('JPEG', None))
        examples.append(writer.Example(encoded=encode(patch, kind, mode), label=index + 1))
    output = str(tmp_path_factory.mktemp('train'))
    writer.write_tfrecords(examples, output, 'train', 3)
    return formats.list_files(output, 'train')


def take(data: tf.data.Dataset, count: int) -> list[tuple[np.ndarray, ...]]:
    return [tuple(tensor.numpy() for tensor in batch) for batch in data.take(count)]


def train_batches(files, count, **overrides):
    arguments = dict(batch_size=TRAIN_BATCH, image_size=32, num_classes=TRAIN_EXAMPLES, seed=42)
    arguments.update(overrides)
    return take(pipelines.train(files, **arguments), count)


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for batch, other in zip(first, second):
        for tensor, other_tensor in zip(batch, other):
            np.testing.assert_array_equal(tensor, other_tensor)


def test_train_dataset_batches(train_files):
    """uint8 pixels leave the host (the step normalises them), with int32 labels."""
    images, labels = next(
        iter(
            pipelines.train(
                train_files,
                batch_size=TRAIN_BATCH,
                image_size=32,
                num_classes=TRAIN_EXAMPLES,
                seed=0,
            )
        )
    )
    assert images.shape == (TRAIN_BATCH, 32, 32, 3) and images.dtype == tf.uint8
    assert labels.shape == (TRAIN_BATCH,) and labels.dtype == tf.int32
    # Photos, not a constant: the pixels span most of the range.
    assert np.ptp(images.numpy()) > 128


@pytest.mark.slow
def test_train_dataset_is_reproducible_by_epoch(train_files):
    two_epochs = 2 * TRAIN_BATCHES_PER_EPOCH
    run = train_batches(train_files, two_epochs + 2)
    assert_same_batches(run, train_batches(train_files, two_epochs + 2))

    epochs = [run[:TRAIN_BATCHES_PER_EPOCH], run[TRAIN_BATCHES_PER_EPOCH:two_epochs]]
    orders = [np.concatenate([labels for _, labels in epoch]) for epoch in epochs]
    for order in orders:  # each epoch: 60 distinct examples, the 2 cut ones vary
        assert len(set(order)) == TRAIN_BATCH * TRAIN_BATCHES_PER_EPOCH
        assert set(order) <= set(range(TRAIN_EXAMPLES))
    assert not np.array_equal(orders[0], orders[1])
    assert not np.array_equal(epochs[0][0][0], epochs[1][0][0])

    # An epoch depends on (seed, epoch) only: starting at epoch 1 gives run's epoch 1.
    from_epoch_1 = train_batches(train_files, 17, start_epoch=1)
    assert_same_batches(from_epoch_1, run[TRAIN_BATCHES_PER_EPOCH:])
    other_seed = train_batches(train_files, 1, seed=43)
    assert not np.array_equal(other_seed[0][1], run[0][1])


def test_train_dataset_order_ignores_the_global_seed(train_files):
    # The order is the seed's alone: a global seed of 0 (which TensorFlow's seed helper
    # used to choke on in graph mode), another, or none give the same batches.
    try:
        tf.random.set_seed(0)
        at_zero = train_batches(train_files, 2)
        tf.random.set_seed(12345)
        assert_same_batches(train_batches(train_files, 2), at_zero)
    finally:
        tf.random.set_seed(None)
    assert_same_batches(train_batches(train_files, 2), at_zero)


def test_train_dataset_skip_batches_resumes_mid_epoch(train_files):
    run = train_batches(train_files, 2 * TRAIN_BATCHES_PER_EPOCH, start_epoch=3)
    resumed = train_batches(
        train_files, 2 * TRAIN_BATCHES_PER_EPOCH - 5, start_epoch=3, skip_batches=5
    )
    assert_same_batches(resumed, run[5:])


@pytest.mark.slow
def test_train_dataset_shards_over_input_pipelines(train_files):
    def first_epoch_labels(num_pipelines, num_replicas, batches):
        labels = []
        for pipeline in range(num_pipelines):
            context = tf.distribute.InputContext(
                num_input_pipelines=num_pipelines,
                input_pipeline_id=pipeline,
                num_replicas_in_sync=num_replicas,
            )
            batches_seen = train_batches(train_files, batches, input_context=context)
            labels.append(np.concatenate([batch[1] for batch in batches_seen]))
        return labels

    # 3 files over 2 pipelines: file sharding, disjoint examples.
    by_file = first_epoch_labels(2, 2, 3)
    assert not set(by_file[0]) & set(by_file[1])
    # 3 files over 4 pipelines: record sharding. Each epoch is cut to whole global
    # steps (62 -> 48 = 3 steps of 4 replicas x 4), dealt out 12 per pipeline.
    by_record = first_epoch_labels(4, 4, 3)
    assert len(set(np.concatenate(by_record))) == 48


@pytest.mark.slow
def test_train_dataset_batches_per_epoch_aligns_uneven_pipelines(train_files):
    # 3 files over 2 pipelines: each epoch one pipeline reads 2 files (~41 records),
    # the other 1 (~21). With the trainer's 62 // (4 x 2) = 7 steps per epoch both
    # yield exactly 7 batches per epoch: the short one re-reads, the long one stops.
    for pipeline in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline, num_replicas_in_sync=2
        )
        arguments = dict(input_context=context, batches_per_epoch=7)
        run = train_batches(train_files, 16, **arguments)
        assert_same_batches(train_batches(train_files, 9, start_epoch=1, **arguments), run[7:])
        assert_same_batches(train_batches(train_files, 11, skip_batches=5, **arguments), run[5:])
    with pytest.raises(ValueError, match='skip_batches=7'):
        pipelines.train(
            train_files,
            batch_size=4,
            image_size=32,
            num_classes=62,
            seed=0,
            skip_batches=7,
            batches_per_epoch=7,
        )


EVAL_EXAMPLES = 1001


@pytest.fixture(scope='module')
def eval_files(tmp_path_factory, photos) -> list[str]:
    """1,001 real 8x8 photo patches with labels 1..1001 in 3 shards."""
    astronaut = photos['astronaut']
    examples = []
    for index in range(EVAL_EXAMPLES):
        top, left = divmod(index, 60)
        patch = np.ascontiguousarray(astronaut[top * 8 : top * 8 + 8, left * 8 : left * 8 + 8])
        examples.append(writer.Example(encoded=encode(patch), label=index + 1))
    output = str(tmp_path_factory.mktemp('validation'))
    writer.write_tfrecords(examples, output, 'validation', 3)
    return formats.list_files(output, 'validation')


@pytest.mark.parametrize('num_pipelines, num_replicas', [(None, 1), (2, 2), (1, 2)])
def test_eval_dataset_sees_every_example_once(eval_files, num_pipelines, num_replicas):
    batch_size = 32
    steps = dataset.eval_steps(EVAL_EXAMPLES, batch_size * num_replicas)
    assert steps == -(-EVAL_EXAMPLES // (batch_size * num_replicas))
    contexts = (
        [None]
        if num_pipelines is None
        else [
            tf.distribute.InputContext(
                num_input_pipelines=num_pipelines,
                input_pipeline_id=pipeline,
                num_replicas_in_sync=num_replicas,
            )
            for pipeline in range(num_pipelines)
        ]
    )
    labels, weights, padding = [], [], []
    for context in contexts:
        batches = take(
            pipelines.evaluate(
                eval_files,
                batch_size=batch_size,
                image_size=8,
                num_classes=EVAL_EXAMPLES,
                num_examples=EVAL_EXAMPLES,
                input_context=context,
            ),
            1000,
        )
        # Every replica gets `steps` full batches.
        assert len(batches) == steps * num_replicas // len(contexts)
        for images, batch_labels, batch_weights in batches:
            assert images.shape == (batch_size, 8, 8, 3) and batch_weights.dtype == np.float32
            labels.append(batch_labels)
            weights.append(batch_weights)
            padding.append(images[batch_weights == 0])
    labels, weights = np.concatenate(labels), np.concatenate(weights)
    assert sorted(labels[weights == 1]) == list(range(EVAL_EXAMPLES))
    assert set(weights) == {0.0, 1.0}
    assert np.all(labels[weights == 0] == 0)
    assert len(weights) == steps * batch_size * num_replicas
    assert not np.any(np.concatenate(padding))


def test_eval_dataset_rejects_a_wrong_example_count(eval_files):
    data = pipelines.evaluate(
        eval_files, batch_size=32, image_size=8, num_classes=EVAL_EXAMPLES, num_examples=1000
    )
    with pytest.raises(tf.errors.OpError, match='1000'):
        take(data, 1000)


def test_list_files_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='missing'):
        formats.list_files(str(tmp_path / 'missing'), 'train')
    (tmp_path / 'validation-00000-of-00001').write_bytes(b'')
    with pytest.raises(FileNotFoundError, match=r'train-\*-of-\*'):
        formats.list_files(str(tmp_path), 'train')


def test_synthetic_dataset():
    data = dataset.synthetic_dataset(batch_size=2, image_size=32, num_classes=10)
    (images, labels), (images_again, _) = take(data, 2)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32 and np.all((labels >= 0) & (labels < 10))
    np.testing.assert_array_equal(images, images_again)


# --- the bundled digits demo ----------------------------------------------------------


def test_digits_dataset(tmp_path):
    dataset_dir = str(tmp_path / 'digits')
    assert digits.ensure_digits_dataset(dataset_dir) == {'train': 1497, 'validation': 300}
    assert sorted(os.listdir(tmp_path)) == ['digits']  # no staging folder left behind

    train_files = formats.list_files(dataset_dir, 'train')
    validation_files = formats.list_files(dataset_dir, 'validation')
    assert len(train_files) == 4 and len(validation_files) == 1
    stamps = [os.path.getmtime(name) for name in train_files + validation_files]
    assert digits.ensure_digits_dataset(dataset_dir) == {'train': 1497, 'validation': 300}
    assert stamps == [os.path.getmtime(name) for name in train_files + validation_files]

    for files, count in [(train_files, 1497), (validation_files, 300)]:
        parsed = read_records(files)
        labels = np.array([example['label'] for example in parsed])
        assert len(labels) == count and set(labels) == set(range(10))
        assert np.bincount(labels).min() >= count // 10 - 5  # stratified split
        image = decode_whole(parsed[0]['encoded'])
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert image.max() > 200 and image.min() < 50  # ink on paper, not a blank

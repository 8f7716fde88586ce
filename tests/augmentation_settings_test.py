"""Every augmentation setting takes effect through the trainer's own input path.

The kernels of `input_pipeline/augment.py`, `randaugment.py` and `mixing.py` have tests
of their own, but a setting tested only at its kernel could silently stop being
applied (a field not read from the config, a step dropped from the pipeline) and every
one of those tests would still pass. Here each setting goes from a `RunConfig`, through
`RunData`, to the batches the trainer would train or evaluate on, and each test fails
if its setting stops taking effect: where a reference is cheap, the batch is checked
against one computed here (PIL decoding, a NumPy crop and resize, the mirrored pairing
of mixing); otherwise a run with the setting is checked to differ from one without it,
in the direction the setting should move it. The export's JPEG and uint8 signatures
are checked at a non-default `eval_crop_fraction` too.

Batches are compared as pixel values 0..255 (`pixels`), within about one pixel value
(the pipelines round to uint8 after the resize).
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from skimage import data as skimage_data
from sklearn import datasets as sklearn_datasets

import densenet
from input_pipeline import augment
from input_pipeline import writer
from trainer.artifacts import export
from trainer import run_data as run_data_lib
from trainer.engine import step as step_lib
from trainer.config import RunConfig

IMAGE_SIZE = 32
BATCH = 8
NUM_TRAIN = 16
# One class per training example, so a training image can be traced back to its record.
NUM_CLASSES = NUM_TRAIN
# Rounding to uint8 moves a pixel value by up to 0.5 (and float32 arithmetic a little).
PIXEL_TOLERANCE = 1.0
_CONTEXT = tf.distribute.InputContext(
    num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=1
)


def pixels(images) -> np.ndarray:
    """A batch as float64 pixel values: the pipelines hand out uint8 pixels."""
    images = tf.convert_to_tensor(images)
    assert images.dtype == tf.uint8, images.dtype
    return images.numpy().astype(np.float64)


def model_input(images) -> tf.Tensor:
    """What the trainer's eval step feeds the model (`step.model_input`)."""
    return step_lib.model_input(tf.convert_to_tensor(images), tf.float32)


@functools.cache
def _photos() -> tuple[np.ndarray, ...]:
    china, flower = sklearn_datasets.load_sample_images().images
    return (
        skimage_data.chelsea(),
        skimage_data.astronaut(),
        skimage_data.coffee(),
        china,
        flower,
    )


def _jpeg(image: np.ndarray) -> bytes:
    return tf.io.encode_jpeg(np.ascontiguousarray(image), quality=95).numpy()


@functools.cache
def _train_examples() -> tuple[writer.Example, ...]:
    """Sixteen views of real photos, landscape and portrait, labels 1..16."""
    examples = []
    for index in range(NUM_TRAIN):
        photo = _photos()[index % 5]
        height, width = photo.shape[:2]
        # A different window of the photo each time, shrunk to a modest size.
        top, left = 8 * (index // 5), 12 * (index // 5)
        window = photo[top : top + height * 3 // 4, left : left + width * 3 // 4]
        size = (192, 144) if index % 2 else (144, 192)  # PIL's (width, height)
        small = np.asarray(Image.fromarray(window).resize(size, Image.BILINEAR))
        examples.append(writer.Example(encoded=_jpeg(small), label=index + 1))
    return tuple(examples)


@functools.cache
def _eval_photos() -> tuple[bytes, ...]:
    """Validation JPEGs: the whole chelsea photo (for the export) and two smaller ones."""
    astronaut = np.asarray(Image.fromarray(skimage_data.astronaut()).resize((120, 150)))
    coffee = np.asarray(Image.fromarray(skimage_data.coffee()).resize((200, 130)))
    return (_jpeg(skimage_data.chelsea()), _jpeg(astronaut), _jpeg(coffee))


@pytest.fixture(scope='module')
def dataset_dir(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp('augmentation_settings'))
    writer.write_tfrecords(_train_examples(), folder, 'train', 2)
    examples = [
        writer.Example(encoded=encoded, label=index + 1)
        for index, encoded in enumerate(_eval_photos())
    ]
    writer.write_tfrecords(examples, folder, 'validation', 1)
    return folder


def _config(dataset_dir: str, **settings) -> RunConfig:
    return RunConfig(
        dataset_dir=dataset_dir,
        num_classes=NUM_CLASSES,
        image_size=IMAGE_SIZE,
        batch_size=BATCH,
        shuffle_buffer=NUM_TRAIN,
        precision='float32',
        seed=3,
        **settings,
    )


def _run_data(dataset_dir: str, **settings) -> run_data_lib.RunData:
    return run_data_lib.RunData(_config(dataset_dir, **settings), tf.distribute.get_strategy())


def train_batches(dataset_dir: str, count: int = 2, **settings):
    """The first `count` training batches of the config: `[(pixels, labels)]`."""
    data = _run_data(dataset_dir, **settings)
    batches = data.train_dataset_fn(0)(_CONTEXT).take(count)
    return [(pixels(images), labels.numpy()) for images, labels in batches]


def _stacked(batches):
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def eval_images(dataset_dir: str, **settings):
    """The evaluation images of the config, real examples only, by 0-based label."""
    data = _run_data(dataset_dir, **settings)
    found = {}
    for images, labels, weights in data.eval_dataset():
        for image, label, weight in zip(images, labels.numpy(), weights.numpy()):
            if weight > 0:
                found[int(label)] = image
    return found


def _resize_matrix(size_in: int, size_out: int) -> np.ndarray:
    """Bilinear interpolation with half-pixel centres and no antialiasing, as a matrix."""
    scale = size_in / size_out
    matrix = np.zeros([size_out, size_in])
    for out in range(size_out):
        source = (out + 0.5) * scale - 0.5
        low = int(np.floor(source))
        fraction = source - low
        matrix[out, min(max(low, 0), size_in - 1)] += 1 - fraction
        matrix[out, min(max(low + 1, 0), size_in - 1)] += fraction
    return matrix


def _central_reference(encoded: bytes, crop_fraction: float) -> np.ndarray:
    """The central square crop of side `crop_fraction * shorter side`, resized bilinearly.

    Computed apart from the pipeline, which decodes only the window: the whole JPEG is
    decoded (by TensorFlow's libjpeg; PIL's rounds differently, by about 1.5 on average),
    NumPy crops and resizes. Offsets round up, as TPU ResNet's crop does.
    """
    image = tf.io.decode_jpeg(encoded, channels=3).numpy().astype(np.float64)
    height, width = image.shape[:2]
    side = max(int(np.float32(crop_fraction) * np.float32(min(height, width))), 1)
    top, left = (height - side + 1) // 2, (width - side + 1) // 2
    crop = image[top : top + side, left : left + side]
    rows = _resize_matrix(side, IMAGE_SIZE)
    return np.einsum('ikc,lk->ilc', np.einsum('ij,jkc->ikc', rows, crop), rows)


def _assert_close_to(image: np.ndarray, reference: np.ndarray, what: str) -> None:
    """Within rounding on average; a few pixel values at most at a crop's last row or
    column, where libjpeg's partial decode can differ a little from the whole decode."""
    difference = np.abs(image - reference)
    assert difference.mean() < PIXEL_TOLERANCE / 2 and difference.max() < 4, (
        what,
        difference.mean(),
        difference.max(),
    )


def _is_close(image: np.ndarray, reference: np.ndarray) -> bool:
    difference = np.abs(image - reference)
    return difference.mean() < PIXEL_TOLERANCE / 2 and difference.max() < 4


def _mean_difference(first, second) -> float:
    return float(np.abs(_stacked(first)[0] - _stacked(second)[0]).mean())


@pytest.fixture(scope='module')
def default_run(dataset_dir):
    """The training batches of the default augmentation (Inception crop and flip)."""
    return train_batches(dataset_dir)


@pytest.fixture(scope='module')
def unflipped_run(dataset_dir):
    """The default run without flips: the same crops (they have a seed stream of their own)."""
    return train_batches(dataset_dir, random_flip=False)


@pytest.fixture(scope='module')
def central_run(dataset_dir):
    """Crops of the whole image (which fall back to the central crop), without flips."""
    return train_batches(dataset_dir, crop_area_range=(1.0, 1.0), random_flip=False)


@pytest.fixture(scope='module')
def eval_runs(dataset_dir):
    """Crop fraction -> the evaluation images at that `eval_crop_fraction`, by label;
    under None, those of a config that leaves the setting out."""
    runs = {
        fraction: eval_images(dataset_dir, eval_crop_fraction=fraction) for fraction in (0.5, 0.6)
    }
    runs[None] = eval_images(dataset_dir)
    return runs


def test_default_run_is_reproducible_and_takes_the_defaults(dataset_dir, default_run):
    """Each test below compares a setting's run with these batches: they must be the
    default's, batch for batch, whether the defaults are left out or given."""
    given = train_batches(
        dataset_dir,
        crop_area_range=(0.08, 1.0),
        crop_aspect_range=(0.75, 1.3333333),
        random_flip=True,
        color_jitter=0.0,
        pca_lighting=0.0,
        randaugment_layers=0,
        randaugment_magnitude=9.0,
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
    )
    for (images, labels), (again, again_labels) in zip(default_run, given):
        np.testing.assert_array_equal(labels, again_labels)
        np.testing.assert_allclose(images, again, atol=1e-3)
        assert labels.dtype == np.int32 and labels.shape == (BATCH,)


def test_random_flip_mirrors_some_images_and_off_mirrors_none(default_run, unflipped_run):
    """With flips on, each image is its unflipped crop or that crop mirrored, both
    occurring; off, every image is the unflipped crop (checked against the central
    crop by `test_crop_area_one_gives_the_central_crop_unflipped`)."""
    flipped = []
    for (images, labels), (plain, plain_labels) in zip(default_run, unflipped_run):
        np.testing.assert_array_equal(labels, plain_labels)
        for image, original in zip(images, plain):
            same = np.abs(image - original).max() <= PIXEL_TOLERANCE
            mirrored = np.abs(image - original[:, ::-1]).max() <= PIXEL_TOLERANCE
            assert same != mirrored, 'neither the crop nor its mirror image (or both)'
            flipped.append(mirrored)
    assert 0 < sum(flipped) < len(flipped), flipped


def test_crop_area_one_gives_the_central_crop_unflipped(central_run, unflipped_run):
    """A crop of the whole image counts as a failed sample, which falls back to the
    evaluation's central 87.5% crop: with `crop_area_range=(1, 1)` every training image
    is that crop of its record, computed here independently. Ignoring the setting (the
    default range) gives random crops; ignoring `random_flip=False` mirrors some."""
    records = _train_examples()
    for images, labels in central_run:
        for image, label in zip(images, labels):
            reference = _central_reference(records[label].encoded, augment.CENTER_CROP_FRACTION)
            _assert_close_to(image, reference, f'record {label}')
    matching = [
        _is_close(image, _central_reference(records[label].encoded, 0.875))
        for images, labels in unflipped_run
        for image, label in zip(images, labels)
    ]
    assert sum(matching) < len(matching) // 2, matching


def _gradient(images: np.ndarray, axis: int) -> float:
    """Mean absolute difference of neighbouring pixels along `axis` (1: rows, 2: columns)."""
    return float(np.abs(np.diff(images, axis=axis)).mean())


def test_crop_area_range_small_zooms_in(dataset_dir, central_run, unflipped_run):
    """A small crop area is enlarged more, so the images are smoother than the central
    crops and differ from the default's (0.08..1) crops. (A range too narrow to sample,
    such as (0.1, 0.1), falls back to the central crop for every image.)"""
    whole, _ = _stacked(central_run)
    small, _ = _stacked(
        train_batches(
            dataset_dir,
            crop_area_range=(0.1, 0.15),
            crop_aspect_range=(0.8, 1.25),
            random_flip=False,
        )
    )
    default, _ = _stacked(unflipped_run)
    assert np.abs(small - default).mean() > 10 and np.abs(small - whole).mean() > 10
    small_detail = _gradient(small, 1) + _gradient(small, 2)
    whole_detail = _gradient(whole, 1) + _gradient(whole, 2)
    assert small_detail < 0.85 * whole_detail, (small_detail, whole_detail)


def test_crop_aspect_range_stretches_as_asked(dataset_dir, unflipped_run):
    """A wide window (width 3 x height) squeezed into a square crowds detail along the
    rows: horizontal neighbours differ more than vertical ones; a tall window does the
    opposite. Ignoring the setting would give both runs the same images."""
    area = (0.1, 0.2)
    wide, _ = _stacked(
        train_batches(dataset_dir, crop_area_range=area, crop_aspect_range=(3.0, 3.0))
    )
    tall, _ = _stacked(
        train_batches(dataset_dir, crop_area_range=area, crop_aspect_range=(1 / 3, 1 / 3))
    )
    wide_ratio = _gradient(wide, 2) / _gradient(wide, 1)
    tall_ratio = _gradient(tall, 2) / _gradient(tall, 1)
    assert wide_ratio > 1.5 and tall_ratio < 1 / 1.5, (wide_ratio, tall_ratio)
    default_ratio = _gradient(_stacked(unflipped_run)[0], 2) / _gradient(
        _stacked(unflipped_run)[0], 1
    )
    assert tall_ratio < default_ratio < wide_ratio, (tall_ratio, default_ratio, wide_ratio)


def _unclipped(*images: np.ndarray) -> np.ndarray:
    """Pixels where every image is well inside 0..255 (uint8 output would clip there)."""
    keep = np.ones(images[0].shape[:-1], bool)
    for image in images:
        keep &= np.all((image > 2) & (image < 253), axis=-1)
    return keep


def test_color_jitter_is_a_per_image_colour_transform(dataset_dir, default_run):
    """Brightness, contrast and saturation are each affine in RGB, so jittered pixels
    are one affine function (a 3x3 matrix and an offset per image) of the plain ones,
    not the identity; and a larger strength moves the images further."""
    jittered = train_batches(dataset_dir, color_jitter=0.4)
    changed = 0
    for (images, _), (plain, _) in zip(jittered, default_run):
        for image, original in zip(images, plain):
            keep = _unclipped(image, original)
            assert keep.sum() > 32, keep.sum()  # Enough pixels to fit 12 numbers.
            source = np.concatenate([original[keep], np.ones([keep.sum(), 1])], axis=1)
            fit, *_ = np.linalg.lstsq(source, image[keep], rcond=None)
            residual = np.abs(source @ fit - image[keep])
            assert residual.mean() < 0.5 and residual.max() < 3, residual.max()
            changed += not np.allclose(fit, np.eye(4, 3), atol=0.02)
    assert changed == NUM_TRAIN
    weak = train_batches(dataset_dir, color_jitter=0.1)
    assert 0 < _mean_difference(weak, default_run) < _mean_difference(jittered, default_run)


def test_pca_lighting_adds_a_constant_offset_per_image(dataset_dir, default_run):
    """Lighting noise adds one RGB offset to every pixel of an image, drawn per image
    and proportional to the setting (the same normal draws, scaled)."""
    offsets = {}
    for strength in (0.1, 0.2):
        found = []
        for (images, _), (plain, _) in zip(
            train_batches(dataset_dir, pca_lighting=strength), default_run
        ):
            for image, original in zip(images, plain):
                keep = _unclipped(image, original)
                difference = (image - original)[keep]
                offset = np.median(difference, axis=0)
                assert np.abs(difference - offset).max() <= 1.5, np.abs(difference - offset).max()
                found.append(offset)
        offsets[strength] = np.array(found)
    first = offsets[0.1]
    assert np.all(np.abs(first).max(axis=1) > 0.5)  # Every image is lit differently...
    assert np.ptp(first[:, 0]) > 2  # ...and not all alike.
    np.testing.assert_allclose(offsets[0.2], 2 * first, atol=1.5)


def test_randaugment_layers_and_magnitude_take_effect(dataset_dir, default_run):
    """Layers > 0 changes the images, and at the same seeds (the same operations)
    magnitude 9 moves them further than magnitude 0, where most operations are the
    identity."""
    strong = train_batches(dataset_dir, randaugment_layers=2, randaugment_magnitude=9)
    weak = train_batches(dataset_dir, randaugment_layers=2, randaugment_magnitude=0)
    assert _mean_difference(strong, default_run) > 5
    assert _mean_difference(weak, strong) > 5
    assert _mean_difference(weak, default_run) < 0.7 * _mean_difference(strong, default_run)
    unchanged = [
        np.abs(image - plain).max() <= PIXEL_TOLERANCE
        for (images, _), (plains, _) in zip(weak, default_run)
        for image, plain in zip(images, plains)
    ]
    assert any(unchanged), 'magnitude 0 changed every image: is the magnitude read?'


def _mixed_labels(labels: np.ndarray, plain_labels: np.ndarray) -> np.ndarray:
    """The weight of each example's own class: labels are `w * own + (1 - w) * mirrored`."""
    assert labels.shape == (BATCH, NUM_CLASSES) and labels.dtype == np.float32
    np.testing.assert_allclose(labels.sum(axis=1), 1, rtol=1e-5)
    own = labels[np.arange(BATCH), plain_labels]
    mirrored = labels[np.arange(BATCH), plain_labels[::-1]]
    np.testing.assert_allclose(own + mirrored, 1, rtol=1e-5)  # Distinct classes: no overlap.
    return own


def test_mixup_mixes_each_image_with_its_mirror(dataset_dir, default_run):
    """Mixup blends example i with example B-1-i by one weight per batch, and the soft
    labels carry the same weight; some labels are not one-hot."""
    mixed_any = False
    for (images, labels), (plain, plain_labels) in zip(
        train_batches(dataset_dir, mixup_alpha=0.4), default_run
    ):
        own = _mixed_labels(labels, plain_labels)
        np.testing.assert_allclose(own, own[0], atol=1e-6)  # One weight per batch.
        weight = own[0]
        expected = weight * plain + (1 - weight) * plain[::-1]
        np.testing.assert_allclose(images, expected, atol=PIXEL_TOLERANCE)
        mixed_any |= 0.01 < weight < 0.99
    assert mixed_any


def test_cutmix_pastes_a_box_of_the_mirror(dataset_dir, default_run):
    """CutMix replaces one box (the same for the whole batch) of example i by the same
    box of example B-1-i; the labels weight the mirror by the box's area."""
    pasted_any = False
    for (images, labels), (plain, plain_labels) in zip(
        train_batches(dataset_dir, cutmix_alpha=1.0), default_run
    ):
        own = _mixed_labels(labels, plain_labels)
        np.testing.assert_allclose(own, own[0], atol=1e-6)
        from_own = np.abs(images - plain).max(axis=-1) <= PIXEL_TOLERANCE
        from_mirror = np.abs(images - plain[::-1]).max(axis=-1) <= PIXEL_TOLERANCE
        assert np.all(from_own | from_mirror), 'pixels from neither image'
        box = ~from_own  # Pixels surely pasted; the box's edges may match both images.
        if box.any():
            rows, columns = np.nonzero(box.any(axis=0))
            inside = np.zeros(box.shape[1:], bool)
            inside[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1] = True
            assert np.all(from_mirror[:, inside]), 'the pasted region is not one box'
            area = inside.mean()
            assert area - 0.02 <= 1 - own[0] <= area + 4 / IMAGE_SIZE + 0.02, (area, own[0])
            pasted_any |= 0.05 < area < 0.95
        else:
            assert own[0] > 0.95, own[0]
    assert pasted_any


def test_eval_crop_fraction_gives_that_central_crop(eval_runs):
    """The evaluation images at non-default crop fractions are those central crops of
    each photo, computed here with NumPy, and differ from the default's; leaving the
    setting out gives the 0.875 crop."""
    encoded = _eval_photos()
    for fraction, found in eval_runs.items():
        assert sorted(found) == list(range(len(encoded)))
        for label, photo in enumerate(encoded):
            image = pixels(found[label][None])[0]
            reference = _central_reference(photo, fraction or augment.CENTER_CROP_FRACTION)
            _assert_close_to(image, reference, f'photo {label} at {fraction}')
            if fraction is not None:
                default_image = pixels(eval_runs[None][label][None])[0]
                assert np.abs(image - default_image).mean() > 5, (label, fraction)


def test_export_serves_the_evaluation_at_its_crop_fraction(dataset_dir, eval_runs, tmp_path):
    """An export made at `eval_crop_fraction=0.6` gives, through its JPEG and uint8
    signatures, the probabilities the model gives the evaluation pipeline's image of
    the same photo at 0.6, which differ from those at the default 0.875."""
    config = _config(dataset_dir, eval_crop_fraction=0.6, model='densenet_bc_10_4')
    keras.utils.set_random_seed(11)
    model = densenet.create_model(
        config.model, num_classes=config.num_classes, image_size=config.image_size
    )
    # A random classifier's probabilities hardly depend on the image; scaled up, they do.
    kernel = model.get_layer('predictions').kernel
    kernel.assign(kernel * 100.0)
    path = export.export_saved_model(
        model,
        str(tmp_path / 'saves' / 'epoch_001'),
        image_size=config.image_size,
        crop_fraction=config.eval_crop_fraction,
    )
    photo = _eval_photos()[0]

    def evaluated(fraction: float) -> np.ndarray:
        image = eval_runs[fraction][0]
        return tf.nn.softmax(model(model_input(image[None]), training=False)).numpy()[0]

    expected, default = evaluated(0.6), evaluated(None)
    assert np.abs(expected - default).max() > 5e-3, np.abs(expected - default).max()
    signatures = tf.saved_model.load(path).signatures
    served = {
        'jpeg': signatures[export.SIGNATURE_BYTES](image_bytes=tf.constant([photo])),
        'uint8': signatures[export.SIGNATURE_UINT8](
            images=tf.io.decode_jpeg(photo, channels=3)[None]
        ),
    }
    for name, outputs in served.items():
        probabilities = outputs['probabilities'].numpy()[0]
        np.testing.assert_allclose(probabilities, expected, atol=1e-4, err_msg=name)

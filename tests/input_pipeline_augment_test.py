"""Tests of the optional augmentation kernels against independent references.

Colour jitter and PCA lighting are checked against numpy transcriptions of
fb.resnet.torch's transforms, the RandAugment operations against PIL (the library the
reference implementations, TF's autoaugment.py and timm, are modelled on), and mixup
and CutMix against their definitions. Each kernel runs eagerly and inside `tf.data`.
"""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from PIL import Image
from PIL import ImageEnhance
from PIL import ImageOps

from input_pipeline import augment
from input_pipeline import formats
from input_pipeline import mixing
from input_pipeline import randaugment
from input_pipeline import writer
import pipelines


@pytest.fixture(params=['eager', 'tf.data'])
def run(request):
    """Calls a kernel eagerly, or as a `tf.data` map function (a traced graph)."""

    def in_tf_data(fn, *args):
        return tf.data.Dataset.from_tensors(args).map(fn).get_single_element()

    return (lambda fn, *args: fn(*args)) if request.param == 'eager' else in_tf_data


@pytest.fixture(scope='module')
def photo() -> np.ndarray:
    """A 40x48 RGB cut of a real photo: small enough to keep the kernels quick."""
    return np.ascontiguousarray(skimage.data.coffee()[100:300:5, 200:440:5])


LUMA = np.array([0.299, 0.587, 0.114])


def test_color_jitter_matches_fb_resnet_torch(run, photo):
    image = tf.constant(photo, tf.float32)
    seed = tf.constant([3, 4])
    result = run(lambda x, s: augment.color_jitter(x, s, 0.4), image, seed).numpy()
    # The same draws, then fb.resnet.torch's transforms in numpy.
    factor_seed, order_seed = tf.random.experimental.stateless_split(seed, 2)
    factors = 1 + tf.random.stateless_uniform([3], factor_seed, -0.4, 0.4).numpy()
    order = np.argsort(tf.random.stateless_uniform([3], order_seed).numpy())
    expected = photo.astype(np.float64)
    for which in order:
        gray = expected @ LUMA
        degenerate = {0: 0.0, 1: gray.mean(), 2: gray[..., None]}[which]
        expected = expected * factors[which] + degenerate * (1 - factors[which])
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-2)
    assert not np.allclose(result, photo)
    np.testing.assert_array_equal(
        result, run(lambda x, s: augment.color_jitter(x, s, 0.4), image, seed)
    )


def test_pca_lighting_adds_the_eigenvector_offset(run, photo):
    image = tf.constant(photo, tf.float32)
    seed = tf.constant([5, 6])
    result = run(lambda x, s: augment.pca_lighting(x, s, 0.1), image, seed).numpy()
    alpha = tf.random.stateless_normal([3], seed, stddev=0.1).numpy()
    offset = 255 * (np.array(augment.PCA_EIGVEC) * alpha * np.array(augment.PCA_EIGVAL)).sum(1)
    np.testing.assert_allclose(result - photo, np.broadcast_to(offset, photo.shape), atol=1e-3)
    assert np.abs(offset).max() > 0.1


def _pil_transform(image: np.ndarray, matrix) -> np.ndarray:
    picture = Image.fromarray(image)
    transformed = picture.transform(
        picture.size, Image.AFFINE, matrix[:6], Image.NEAREST, fillcolor=(128, 128, 128)
    )
    return np.asarray(transformed)


def _enhance(kind):
    return lambda image, level: np.asarray(kind(Image.fromarray(image)).enhance(1 + 0.9 * level))


# PIL's version of each operation at a signed level in [-1, 1].
PIL_REFERENCES = {
    'identity': lambda image, level: image,
    'auto_contrast': lambda image, level: np.asarray(ImageOps.autocontrast(Image.fromarray(image))),
    'equalize': lambda image, level: np.asarray(ImageOps.equalize(Image.fromarray(image))),
    'solarize': lambda image, level: np.asarray(
        ImageOps.solarize(Image.fromarray(image), 256 - abs(level) * 256)
    ),
    'posterize': lambda image, level: np.asarray(
        ImageOps.posterize(Image.fromarray(image), 8 - int(abs(level) * 4))
    ),
    'color': _enhance(ImageEnhance.Color),
    'contrast': _enhance(ImageEnhance.Contrast),
    'brightness': _enhance(ImageEnhance.Brightness),
    'sharpness': _enhance(ImageEnhance.Sharpness),
    'shear_x': lambda image, level: _pil_transform(image, (1, 0.3 * level, 0, 0, 1, 0)),
    'shear_y': lambda image, level: _pil_transform(image, (1, 0, 0, 0.3 * level, 1, 0)),
    'translate_x': lambda image, level: _pil_transform(
        image, (1, 0, -0.45 * level * image.shape[1], 0, 1, 0)
    ),
    'translate_y': lambda image, level: _pil_transform(
        image, (1, 0, 0, 0, 1, -0.45 * level * image.shape[0])
    ),
    'rotate': lambda image, level: np.asarray(
        Image.fromarray(image).rotate(30 * level, Image.NEAREST, fillcolor=(128, 128, 128))
    ),
}


GEOMETRIC = ('rotate', 'shear_x', 'shear_y', 'translate_x', 'translate_y')


@pytest.mark.parametrize('operation', randaugment.OPERATIONS, ids=lambda op: op.__name__)
def test_randaugment_operations_match_pil(photo, operation):
    name = operation.__name__
    for level in (-0.7, 0.5):
        result = operation(tf.constant(photo), tf.constant(level)).numpy()
        expected = PIL_REFERENCES[name](photo, level)
        assert result.dtype == np.uint8 and result.shape == photo.shape
        close = np.abs(result.astype(int) - expected) <= 2
        # Rounding differs by a level here and there; geometric operations sample
        # pixel centres a hair apart, which moves a few edge pixels by one.
        assert close.mean() > (0.9 if name in GEOMETRIC else 0.98), (name, level, close.mean())
        if name not in ('identity', 'posterize'):
            assert not np.array_equal(result, photo), name


def test_randaugment_is_seeded(run, photo):
    seeds = tf.constant([[1, 2], [1, 2]] + [[1, index] for index in range(3, 9)])

    def augment_all(seeds):
        return tf.map_fn(
            lambda seed: randaugment.randaugment(tf.constant(photo), seed, num_layers=2),
            seeds,
            fn_output_signature=tf.uint8,
        )

    results = run(augment_all, seeds).numpy()
    np.testing.assert_array_equal(results[0], results[1])
    assert len({result.tobytes() for result in results}) >= 6
    with pytest.raises(ValueError, match='magnitude 11'):
        randaugment.randaugment(tf.constant(photo), tf.constant([1, 2]), magnitude=11)


def test_mixup(run, photo):
    images = tf.constant(np.stack([photo, photo[::-1], photo[:, ::-1]]), tf.float32)
    labels = tf.constant([0, 2, 1])
    seed = tf.constant([7, 8])
    mixed, targets = run(
        lambda x, y, s: mixing.mix_batch(x, y, s, num_classes=4, mixup_alpha=0.4),
        images,
        labels,
        seed,
    )
    targets = targets.numpy()
    np.testing.assert_allclose(targets.sum(1), 1, rtol=1e-6)
    lam = targets[0, 0]
    assert 0 < lam < 1
    expected = lam * images.numpy() + (1 - lam) * images.numpy()[::-1]
    np.testing.assert_allclose(mixed, expected, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(targets[0], [lam, 1 - lam, 0, 0], rtol=1e-5)


def test_cutmix(run, photo):
    images = tf.constant(np.stack([photo, 255 - photo]), tf.float32)
    labels = tf.constant([3, 1])
    pasted, targets = run(
        lambda x, y, s: mixing.mix_batch(x, y, s, num_classes=4, cutmix_alpha=1.0),
        images,
        labels,
        tf.constant([2, 9]),
    )
    pasted, targets = pasted.numpy(), targets.numpy()
    from_other = np.all(pasted[0] == images.numpy()[1], axis=-1)
    kept = np.all(pasted[0] == images.numpy()[0], axis=-1)
    assert np.all(from_other | kept) and from_other.any() and kept.any()
    # The box is a rectangle, and the labels weigh by its exact area.
    rows, columns = np.nonzero(from_other)
    assert from_other.sum() == (np.ptp(rows) + 1) * (np.ptp(columns) + 1)
    np.testing.assert_allclose(targets[0, 3], kept.mean(), rtol=1e-5)
    np.testing.assert_allclose(targets[0, 1], from_other.mean(), rtol=1e-5)


def test_train_dataset_with_every_augmentation(tmp_path, photo):
    """Soft labels of the right shape, in the compute dtype, reproducible by seed."""
    examples = [
        writer.Example(
            encoded=tf.io.encode_jpeg(np.roll(photo, i, axis=1)).numpy(), label=1 + i % 3
        )
        for i in range(16)
    ]
    writer.write_tfrecords(examples, str(tmp_path), 'train', 2)
    files = formats.list_files(str(tmp_path), 'train')

    data = pipelines.train(
        files,
        batch_size=8,
        image_size=24,
        num_classes=3,
        seed=5,
        color_jitter=0.4,
        pca_lighting=0.1,
        randaugment_layers=2,
        randaugment_magnitude=9,
        mixup_alpha=0.2,
        cutmix_alpha=1.0,
    ).take(3)

    def batches():
        return [tuple(t.numpy() for t in batch) for batch in data]

    first = batches()
    for images, targets in first:
        assert images.shape == (8, 24, 24, 3) and images.dtype == np.uint8
        assert targets.shape == (8, 3) and targets.dtype == np.float32
        np.testing.assert_allclose(targets.sum(1), 1, rtol=1e-5)
    assert any(np.sort(targets, 1)[:, -2].max() > 0 for _, targets in first)  # mixed
    for batch, again in zip(first, batches()):
        np.testing.assert_array_equal(batch[0], again[0])
        np.testing.assert_array_equal(batch[1], again[1])

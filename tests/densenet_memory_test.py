"""The memory-efficient ImageNet stem and transition pooling (densenet/recompute.py).

The memory-efficient model recomputes, besides the dense layers and the transitions'
BN-ReLU-conv, the ImageNet stem (7x7/2 conv, BN, ReLU, 3x3/2 max pool) and each
transition's dropout and average pool, so that its forward pass keeps no 112x112
activations and no unpooled transition output. These tests hold that part to the
plain layers' outputs, gradients and moving statistics, on tiny sizes.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from recompute_checks import assert_recomputed_gradients_equal_stored
from densenet import all_layers
from densenet import blocks
from densenet import create_model
from densenet import recompute
from random_weights import randomise_batch_norm

_CHANNELS, _LAYERS, _GROWTH = 8, 2, 4


def _plain_stage(size):
    """Stem, dense block 'conv2' and transition 'pool2' from the plain model's layers."""
    padded = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(_CHANNELS, 7, strides=2, use_bias=False, name='conv1_conv')(padded)
    x = blocks.batch_norm(x, 'conv1_bn', None)
    x = keras.layers.Activation('relu')(x)
    x = keras.layers.ZeroPadding2D(((1, 1), (1, 1)))(x)
    x = keras.layers.MaxPooling2D(3, strides=2)(x)
    x = blocks.dense_block(x, _LAYERS, _GROWTH, 'conv2')
    x = blocks.transition_block(x, 0.5, 'pool2')
    return keras.Model(padded, x)


def _efficient_stage(size, **options):
    padded = keras.Input((size, size, 3))
    block = recompute.RecomputedDenseBlock(
        _CHANNELS,
        _LAYERS,
        _GROWTH,
        prefix='conv2',
        transition='pool2',
        pool=True,
        stem=True,
        **options,
    )
    return keras.Model(padded, block(padded)), block


@pytest.fixture()
def stages():
    plain = _plain_stage(22)
    efficient, block = _efficient_stage(22)
    randomise_batch_norm(plain, np.random.default_rng(0))
    efficient.set_weights(plain.get_weights())
    images = np.random.default_rng(1).normal(size=(4, 22, 22, 3)).astype(np.float32)
    projection = np.random.default_rng(2).normal(size=(4, 2, 2, 8)).astype(np.float32)
    return plain, efficient, block, images, projection


def _gradients(model, images, projection):
    @tf.function
    def step():
        with tf.GradientTape() as tape:
            # A mean, as the train step's loss is: the tolerances below are
            # densenet_test.py's for gradients of that size.
            loss = tf.reduce_mean(model(images, training=True) * projection)
        return loss, tape.gradient(loss, model.trainable_variables)

    return step()


def test_stem_block_holds_the_plain_weights_in_order(stages):
    plain, efficient, block, _, _ = stages
    assert [l.name for l in block.layers[:3]] == ['conv1_conv', 'conv1_bn', 'conv2_block1_0_bn']
    assert [tuple(w.shape) for w in efficient.weights] == [tuple(w.shape) for w in plain.weights]
    for got, want in zip(efficient.weights, plain.weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_stem_block_inference_equals_plain(stages):
    plain, efficient, _, images, _ = stages
    want = plain(images, training=False).numpy()
    assert want.shape == (4, 2, 2, 8)
    np.testing.assert_array_equal(efficient(images, training=False).numpy(), want)


def test_stem_block_gradients_and_moving_statistics_equal_plain(stages):
    plain, efficient, block, images, projection = stages
    stem_norm = block.layers[1]
    before = stem_norm.moving_mean.numpy().copy()
    plain_loss, plain_gradients = _gradients(plain, images, projection)
    loss, gradients = _gradients(efficient, images, projection)
    assert float(loss) == pytest.approx(float(plain_loss), rel=1e-5)
    assert len(gradients) == len(plain_gradients) == len(plain.trainable_variables)
    for got, want in zip(gradients, plain_gradients):
        assert float(tf.reduce_max(tf.abs(want))) > 0
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-6)
    # The stem's BN, whose moments are computed inside the recomputed segment, moved
    # once (forward and recomputation would be twice), as the plain model's did.
    assert not np.allclose(stem_norm.moving_mean.numpy(), before)
    for got, want in zip(efficient.weights, plain.weights):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_transition_dropout_inside_reuses_its_mask():
    _, block = _efficient_stage(22, dropout_rate=0.3)
    rng = np.random.default_rng(3)
    images = tf.constant(rng.normal(size=(2, 22, 22, 3)).astype(np.float32))
    projection = tf.constant(rng.normal(size=(2, 2, 2, 8)).astype(np.float32))
    # The transition's dropout now sits inside the block: training differs call to call.
    assert not np.allclose(block(images, training=True), block(images, training=True))

    # A mean, as in `_gradients`: the stem's hand-written backward pass and autodiff of
    # the stored one round differently, in the last bits.
    assert_recomputed_gradients_equal_stored(block, images, projection, reduce=tf.reduce_mean)


def test_efficient_densenet121_has_no_stored_stem_or_pool_layers():
    model = create_model('densenet121', num_classes=10, image_size=32, memory_efficient=True)
    kinds = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.Conv2D)
    # Stem conv and max pool, transitions' average pools: inside the recomputed blocks.
    assert not [l.name for l in model.layers if isinstance(l, kinds)]
    first = model.get_layer('conv2_recomputed')
    assert [l.name for l in first.layers[:2]] == ['conv1_conv', 'conv1_bn']


@pytest.mark.parametrize('size', [32, 45])
def test_efficient_densenet121_any_image_size(size):
    kwargs = dict(num_classes=10, image_size=None)
    plain = create_model('densenet121', **kwargs)
    efficient = create_model('densenet121', memory_efficient=True, **kwargs)
    randomise_batch_norm(plain, np.random.default_rng(0))
    efficient.set_weights(plain.get_weights())
    images = np.random.default_rng(1).normal(size=(2, size, size, 3)).astype(np.float32)
    np.testing.assert_allclose(
        efficient(images, training=False).numpy(),
        plain(images, training=False).numpy(),
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        efficient(images, training=True).numpy(),
        plain(images, training=True).numpy(),
        rtol=1e-4,
        atol=1e-4,
    )


def test_memory_efficient_run_resumes_bit_identical_moving_statistics_included(
    digits_dir, tmp_path
):
    """A --memory_efficient run stopped at step 2 and resumed equals the straight run.

    Under Keras 3 the recomputed blocks' layers sat in a list that TensorFlow's
    checkpoints do not follow: their moving statistics were never saved, and such a run
    could not resume at all (`recompute.RecomputedDenseBlock`).
    """
    from in_process import run_main_in_process  # noqa: PLC0415
    from main_runs import assert_identical, checkpoint_values, checkpoints  # noqa: PLC0415

    common = [
        '--model=densenet_bc_10_4',
        '--memory_efficient',
        '--image_size=16',
        '--num_classes=10',
        '--bfloat16=false',
        '--batch_size=32',
        '--deterministic',
        f'--dataset_dir={digits_dir}',
        '--steps_per_loop=1',
        '--checkpoint_every_steps=1',
        '--save_every_epoch=false',
        '--export_last_step=false',
    ]
    straight, stopped = str(tmp_path / 'straight'), str(tmp_path / 'stopped')
    run_main_in_process([*common, f'--model_dir={straight}', '--train_steps=3'], check=True)
    run_main_in_process([*common, f'--model_dir={stopped}', '--train_steps=2'], check=True)
    resumed = run_main_in_process(
        [*common, f'--model_dir={stopped}', '--train_steps=3'], check=True
    )
    assert 'Resumed from' in resumed.stderr
    saved = checkpoint_values(checkpoints(stopped)[3])
    model = create_model('densenet_bc_10_4', num_classes=10, image_size=16, memory_efficient=True)
    norms = [layer for layer in all_layers(model) if 'moving_mean' in str(layer.weights)]
    assert len(norms) > 3  # The recomputed blocks' batch norms, not only the last one.
    assert sum('moving_mean' in name for name in saved) == len(norms)
    assert_identical(checkpoints(straight)[3], checkpoints(stopped)[3])

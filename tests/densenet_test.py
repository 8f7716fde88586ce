"""Tests for densenet/: sizes, Keras Applications parity, mixed precision.

Parameter counts are checked against an independent hand count (below) as well
as against Keras Applications, because a wrong width or a missing BN layer shows
up there first; logits are checked against Keras on a real photograph, because
equal shapes do not prove equal wiring.
"""

import re
from typing import Sequence

import keras
import numpy as np
import pytest
import tensorflow as tf

from recompute_checks import assert_recomputed_gradients_equal_stored
import densenet
from densenet import create_model
from random_weights import randomise_batch_norm
from trainer.engine import step as step_lib

# Torch-style ImageNet normalisation, as the input pipeline applies it.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _hand_count(
    growth: int,
    block_sizes: Sequence[int],
    num_classes: int,
    imagenet_stem: bool,
    trainable_only: bool = False,
) -> int:
    """Parameters of a DenseNet-BC counted by hand from the paper's recipe.

    BN has gamma and beta (trainable) plus moving mean and variance (not); convs
    have no bias; the classifier has one.
    """

    def bn(c):
        return (2 if trainable_only else 4) * c

    k = growth
    c = 2 * k
    if imagenet_stem:
        total = 7 * 7 * 3 * c + bn(c)  # 7x7/2 conv + BN (+ ReLU, max pool).
    else:
        total = 3 * 3 * 3 * c  # 3x3 conv only.
    for i, n in enumerate(block_sizes):
        for _ in range(n):  # BN, 1x1 conv to 4k, BN, 3x3 conv to k.
            total += bn(c) + c * 4 * k + bn(4 * k) + 3 * 3 * 4 * k * k
            c += k
        if i < len(block_sizes) - 1:  # BN, 1x1 conv to floor(c / 2), avg pool.
            total += bn(c) + c * (c // 2)
            c //= 2
    return total + bn(c) + c * num_classes + num_classes


def _bc_blocks(depth: int):
    return [(depth - 4) // 6] * 3


def _num_params(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


@pytest.fixture(scope='module')
def ours121():
    return create_model('densenet121')


@pytest.fixture(scope='module')
def keras121():
    keras.utils.set_random_seed(1234)
    return keras.applications.DenseNet121(weights=None, classifier_activation=None)


@pytest.fixture(scope='module')
def photo():
    """skimage's astronaut, 224x224, normalised: a real image, not noise."""
    skimage_data = pytest.importorskip('skimage.data')
    from skimage.transform import resize

    image = resize(skimage_data.astronaut(), (224, 224), anti_aliasing=True)
    image = (image.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD
    return image[None].astype(np.float32)


# --- Parameter counts. -------------------------------------------------------


def test_hand_count_matches_published_numbers():
    # Keras Applications' and torchvision's documented counts (torchvision
    # counts trainable parameters only).
    assert _hand_count(32, (6, 12, 24, 16), 1000, True) == 8_062_504
    assert _hand_count(32, (6, 12, 24, 16), 1000, True, True) == 7_978_856
    assert _hand_count(32, (6, 12, 32, 32), 1000, True) == 14_307_880
    assert _hand_count(32, (6, 12, 48, 32), 1000, True) == 20_242_984
    assert _hand_count(48, (6, 12, 36, 24), 1000, True, True) == 28_681_000


def test_densenet121_counts(ours121, keras121):
    assert ours121.count_params() == keras121.count_params() == 8_062_504
    assert (
        _num_params(ours121.trainable_weights)
        == _num_params(keras121.trainable_weights)
        == 7_978_856
    )


@pytest.mark.parametrize(
    'name,app,expected',
    [
        ('densenet169', 'DenseNet169', 14_307_880),
        ('densenet201', 'DenseNet201', 20_242_984),
    ],
)
@pytest.mark.slow
def test_counts_match_keras_applications(name, app, expected):
    reference = getattr(keras.applications, app)(weights=None)
    assert create_model(name).count_params() == reference.count_params()
    assert reference.count_params() == expected


@pytest.mark.parametrize(
    'name,growth,blocks',
    [
        ('densenet161', 48, (6, 12, 36, 24)),
        ('densenet264', 32, (6, 12, 64, 48)),
    ],
)
@pytest.mark.slow
def test_counts_without_keras_reference(name, growth, blocks):
    model = create_model(name)
    assert model.count_params() == _hand_count(growth, blocks, 1000, True)
    assert _num_params(model.trainable_weights) == _hand_count(
        growth, blocks, 1000, True, trainable_only=True
    )
    if name == 'densenet161':  # torchvision's figure, trainable only.
        assert _num_params(model.trainable_weights) == 28_681_000


@pytest.mark.parametrize('depth,growth,num_classes', [(40, 12, 10), (100, 12, 100)])
def test_bc_count_exact(depth, growth, num_classes):
    model = create_model(f'densenet_bc_{depth}_{growth}', num_classes=num_classes, image_size=32)
    assert model.count_params() == _hand_count(growth, _bc_blocks(depth), num_classes, False)


@pytest.mark.parametrize(
    'depth,growth,millions', [(100, 12, 0.8), (250, 24, 15.3), (190, 40, 25.6)]
)
def test_bc_count_matches_paper_table2(depth, growth, millions):
    # Table 2 counts learnable parameters on CIFAR-10, to 0.1M.
    count = _hand_count(growth, _bc_blocks(depth), 10, False, trainable_only=True)
    assert round(count / 1e6, 1) == millions


def test_bc_100_12_model_is_0_8m():
    model = create_model('densenet_bc_100_12', num_classes=10, image_size=32)
    assert round(_num_params(model.trainable_weights) / 1e6, 1) == 0.8


# --- Keras Applications parity. ----------------------------------------------


def _normalise(name: str) -> str:
    # Keras auto-names the two paddings with a process-wide counter, and Keras 2
    # names the stem 'conv1/conv' etc. (Keras 3 forbids '/'; we follow Keras 3).
    name = name.replace('conv1/', 'conv1_')
    return re.sub(r'^zero_padding2d(_\d+)?$', 'zero_padding2d', name)


def test_layers_and_weights_in_keras_order(ours121, keras121):
    def layers(model):
        return [
            (_normalise(l.name), type(l).__name__)
            for l in model.layers
            if not isinstance(l, keras.layers.InputLayer)
        ]

    def weights(model):
        return [
            (_normalise(l.name), [tuple(w.shape) for w in l.weights])
            for l in model.layers
            if l.weights
        ]

    assert layers(ours121) == layers(keras121)
    assert weights(ours121) == weights(keras121)
    assert [tuple(w.shape) for w in ours121.weights] == [tuple(w.shape) for w in keras121.weights]
    for ours, theirs in zip(ours121.layers, keras121.layers):
        if isinstance(ours, keras.layers.BatchNormalization):
            assert ours.epsilon == theirs.epsilon == 1.001e-5
        if isinstance(ours, keras.layers.Conv2D):
            assert not ours.use_bias
            assert ours.padding == theirs.padding
            assert ours.strides == theirs.strides


@pytest.mark.stack
def test_logits_match_keras_applications(ours121, keras121, photo):
    rng = np.random.default_rng(0)
    # Random BN statistics and affine terms, so a mis-wired BN cannot pass by
    # being the identity it is at initialisation.
    for layer in keras121.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, c).astype(np.float32),  # gamma
                    rng.normal(0.0, 0.1, c).astype(np.float32),  # beta
                    rng.normal(0.0, 0.2, c).astype(np.float32),  # moving mean
                    rng.uniform(0.5, 2.0, c).astype(np.float32),  # moving var
                ]
            )
    expected = np.asarray(keras121(photo, training=False))
    # Our own random weights give other logits; the copy makes them agree.
    before = np.asarray(ours121(photo, training=False))
    assert np.max(np.abs(before - expected)) > 1e-2

    ours121.set_weights(keras121.get_weights())
    got = np.asarray(ours121(photo, training=False))
    diff = float(np.max(np.abs(got - expected)))
    print(
        f'DenseNet-121 max |logit difference| vs Keras Applications: '
        f'{diff:.3g} (logit std {expected.std():.3g})'
    )
    assert got.shape == (1, 1000) and got.dtype == np.float32
    assert expected.std() > 1e-2  # Not a degenerate all-equal output.
    assert diff < 1e-4


# --- Mixed precision, dropout, names. ----------------------------------------


@pytest.mark.parametrize('precision', ['bfloat16', 'float16'])
def test_mixed_precision(precision, photo):
    policy_before = keras.mixed_precision.global_policy().name
    kwargs = dict(num_classes=10, image_size=32)
    reference = create_model('densenet_bc_40_12', **kwargs)
    model = create_model('densenet_bc_40_12', precision=precision, **kwargs)
    assert keras.mixed_precision.global_policy().name == policy_before
    assert {tf.as_dtype(w.dtype) for w in model.weights} == {tf.float32}
    assert model.get_layer('conv1_conv').compute_dtype == precision
    assert model.get_layer('predictions').compute_dtype == 'float32'
    model.set_weights(reference.get_weights())

    images = tf.image.resize(photo, (32, 32))
    expected = np.asarray(reference(images, training=False))
    for x in (images, tf.cast(images, precision)):
        logits = model(x, training=False)
        assert logits.dtype == tf.float32 and logits.shape == (1, 10)
        # 16-bit activations: agree to a few percent of the logit scale.
        diff = np.max(np.abs(np.asarray(logits) - expected))
        assert diff < 0.02 * np.abs(expected).max() + 1e-3


def test_dropout_adds_layers_but_no_weights():
    kwargs = dict(num_classes=10, image_size=32)
    plain = create_model('densenet_bc_40_12', **kwargs)
    dropped = create_model('densenet_bc_40_12', dropout_rate=0.2, **kwargs)
    num_dropout = sum(isinstance(l, keras.layers.Dropout) for l in dropped.layers)
    # Two per dense layer (after the 1x1 and the 3x3 conv), one per transition.
    assert num_dropout == 2 * 3 * 6 + 2
    assert not any(isinstance(l, keras.layers.Dropout) for l in plain.layers)
    assert dropped.count_params() == plain.count_params()
    dropped.set_weights(plain.get_weights())  # Same order and shapes.

    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3))
    images = images.astype(np.float32)
    np.testing.assert_allclose(
        dropped(images, training=False), plain(images, training=False), atol=1e-5
    )
    assert not np.allclose(dropped(images, training=True), dropped(images, training=True))


def test_model_names():
    for name in (
        'densenet121',
        'densenet169',
        'densenet201',
        'densenet161',
        'densenet264',
        'densenet_bc_100_12',
    ):
        assert name in densenet.MODEL_NAMES
    # The names the error message of an unknown one offers.
    with pytest.raises(ValueError) as info:
        create_model('resnet50')
    assert all(name in str(info.value) for name in densenet.MODEL_NAMES)


@pytest.mark.parametrize(
    'name', ['resnet50', 'densenet_bc_41_12', 'densenet_bc_4_12', 'DenseNet121']
)
def test_unknown_name_raises(name):
    with pytest.raises(ValueError, match=re.escape(repr(name))) as info:
        create_model(name)
    message = str(info.value)
    assert '\n' not in message and 'densenet121' in message


def test_bad_precision_raises():
    with pytest.raises(ValueError, match='precision'):
        create_model('densenet_bc_40_12', image_size=32, precision='int8')


@pytest.mark.parametrize('momentum', [0.99, 0.9])
def test_batch_norm_momentum_sets_the_moving_average_decay(momentum):
    model = densenet.create_model(
        'densenet_bc_10_4', num_classes=10, image_size=8, batch_norm_momentum=momentum
    )
    images = np.random.RandomState(0).normal(2.0, 1.0, (4, 8, 8, 3)).astype('float32')
    model(images, training=True)
    # The first BN sees the first conv's output: its moving mean moves from 0 to
    # (1 - momentum) * the batch mean, the textbook exponential moving average.
    conv = model.get_layer('conv1_conv')
    first_bn = next(l for l in model.layers if isinstance(l, keras.layers.BatchNormalization))
    batch_mean = np.mean(conv(images).numpy(), axis=(0, 1, 2))
    np.testing.assert_allclose(
        first_bn.moving_mean.numpy(), (1 - momentum) * batch_mean, rtol=1e-4, atol=1e-6
    )


# --- The memory-efficient variant (densenet/recompute.py). -----------------------


def _weight_key(weight) -> str:
    """'layer/variable': Keras 3's path or Keras 2's name, without outer scopes."""
    name = (getattr(weight, 'path', None) or weight.name).split(':')[0]
    return '/'.join(name.split('/')[-2:])


@pytest.fixture()
def plain_and_efficient():
    """densenet_bc_16_4 (two dense layers a block), plain and memory-efficient, same weights."""
    kwargs = dict(num_classes=10, image_size=16)
    plain = create_model('densenet_bc_16_4', **kwargs)
    efficient = create_model('densenet_bc_16_4', memory_efficient=True, **kwargs)
    randomise_batch_norm(plain, np.random.default_rng(0))
    efficient.set_weights(plain.get_weights())
    images = np.random.default_rng(1).normal(size=(4, 16, 16, 3)).astype(np.float32)
    return plain, efficient, images


def test_memory_efficient_has_the_plain_weights(ours121):
    efficient = create_model('densenet121', memory_efficient=True)
    assert [_weight_key(w) for w in efficient.weights] == [_weight_key(w) for w in ours121.weights]
    assert [tuple(w.shape) for w in efficient.weights] == [tuple(w.shape) for w in ours121.weights]
    assert efficient.count_params() == 8_062_504
    assert _num_params(efficient.trainable_weights) == 7_978_856
    # The stem, dense blocks and transitions are recomputed (the stem inside conv2's
    # block); the classifier is not.
    recomputed = [l for l in efficient.layers if 'recomputed' in l.name]
    assert [l.name for l in recomputed] == [f'conv{i}_recomputed' for i in (2, 3, 4, 5)]


def test_memory_efficient_inference_equals_plain(plain_and_efficient):
    plain, efficient, images = plain_and_efficient
    np.testing.assert_array_equal(
        efficient(images, training=False).numpy(), plain(images, training=False).numpy()
    )


def _train_step(model, images):
    labels = tf.constant([0, 3, 7, 9])

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        return loss, tape.gradient(loss, model.trainable_variables)

    return step()


def test_memory_efficient_gradients_equal_plain(plain_and_efficient):
    plain, efficient, images = plain_and_efficient
    plain_loss, plain_gradients = _train_step(plain, images)
    loss, gradients = _train_step(efficient, images)
    assert float(loss) == pytest.approx(float(plain_loss), rel=1e-6)
    assert len(gradients) == len(plain_gradients) == len(plain.trainable_variables)
    for got, want in zip(gradients, plain_gradients):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-6)


def test_memory_efficient_updates_moving_statistics_once_per_step(plain_and_efficient):
    plain, efficient, images = plain_and_efficient
    first = efficient.layers[2].layers[0]  # conv2_block1_0_bn, inside the recomputed block.
    assert first.name == 'conv2_block1_0_bn'
    before = first.moving_mean.numpy().copy()
    _train_step(plain, images)
    _train_step(efficient, images)  # Forward and backward: the backward recomputes.
    # Once: the textbook moving average of the batch mean of its input (the stem conv's
    # output), and every statistic as the plain model's.
    batch_mean = np.mean(efficient.get_layer('conv1_conv')(images).numpy(), axis=(0, 1, 2))
    np.testing.assert_allclose(
        first.moving_mean.numpy(), 0.99 * before + 0.01 * batch_mean, rtol=1e-5, atol=1e-6
    )
    for got, want in zip(efficient.weights, plain.weights):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_memory_efficient_mixed_precision(photo):
    kwargs = dict(num_classes=10, image_size=32, precision='bfloat16', dropout_rate=0.2)
    plain = create_model('densenet_bc_16_4', **kwargs)
    efficient = create_model('densenet_bc_16_4', memory_efficient=True, **kwargs)
    efficient.set_weights(plain.get_weights())
    images = tf.image.resize(photo, (32, 32))
    logits = efficient(images, training=False)
    assert logits.dtype == tf.float32
    np.testing.assert_array_equal(logits.numpy(), plain(images, training=False).numpy())
    _, gradients = _train_step(efficient, tf.repeat(images, 4, axis=0))
    assert all(np.all(np.isfinite(g.numpy())) for g in gradients)


def test_recomputation_reuses_the_dropout_masks():
    from densenet import recompute

    block = recompute.RecomputedDenseBlock(
        8, 2, 4, prefix='conv2', transition='pool2', dropout_rate=0.3
    )
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(size=(2, 6, 6, 8)).astype(np.float32))
    projection = tf.constant(rng.normal(size=(2, 6, 6, 8)).astype(np.float32))
    # Training draws new masks on every call...
    assert not np.allclose(block(images, training=True), block(images, training=True))

    # ...and the backward pass's recomputation reuses the forward pass's: the gradients
    # equal those of the same block run without recomputation.
    assert_recomputed_gradients_equal_stored(block, images, projection)


@pytest.mark.slow
def test_memory_efficient_densenet121_decays_and_trains_as_plain():
    """L2 decay and the train step's gradients reach every kernel of the recomputed blocks.

    The memory-efficient model keeps its dense blocks' convolutions inside one layer per
    block; a variable collector that does not descend into it decays only the stem, the
    transitions and the classifier. So at DenseNet-121's own size: the decayed set must be
    every conv and dense kernel (120 convolutions and the classifier, counted by name) in
    both variants, and the whole train step with a weight decay large enough to dominate
    must give the plain model's L2 term and gradients.
    """
    kwargs = dict(num_classes=10, image_size=64)
    plain = create_model('densenet121', **kwargs)
    efficient = create_model('densenet121', memory_efficient=True, **kwargs)
    efficient.set_weights(plain.get_weights())
    keys = [_weight_key(w) for w in plain.trainable_weights]
    kernels = sorted(key for key in keys if key.endswith('/kernel'))
    assert len(kernels) == 121
    for model in (plain, efficient):
        decayed = sorted(_weight_key(v) for v in step_lib.decayed_variables_of(model))
        missing = sorted(set(kernels) - set(decayed))
        assert decayed == kernels, (
            f'{model.name}: {len(missing)} kernels not decayed: {missing[:3]}'
        )

    images = tf.constant(np.random.default_rng(2).normal(size=(2, 64, 64, 3)).astype(np.float32))
    labels = tf.constant([1, 7])

    def gradients(model):
        train_step = step_lib.TrainStep(
            model, keras.optimizers.SGD(0.1), global_batch_size=2, weight_decay=0.05
        )

        def with_norm(images, labels):
            gradients, metrics = train_step.gradients(images, labels)
            return gradients, {**metrics, 'grad_norm_sq': train_step.grad_norm_sq(gradients)}

        return tf.function(with_norm)(images, labels)

    plain_gradients, plain_metrics = gradients(plain)
    efficient_gradients, efficient_metrics = gradients(efficient)
    # The L2 term is about a third of the loss here: a missing kernel shows in it.
    assert float(plain_metrics['l2']) > 0.3 * float(plain_metrics['cross_entropy']) / 2
    for key in ('l2', 'cross_entropy', 'grad_norm_sq'):
        got, want = float(efficient_metrics[key]), float(plain_metrics[key])
        assert got == pytest.approx(want, rel=1e-5), key
    for variable, got, want in zip(plain.trainable_variables, efficient_gradients, plain_gradients):
        np.testing.assert_allclose(
            got.numpy(), want.numpy(), rtol=1e-3, atol=1e-5, err_msg=_weight_key(variable)
        )

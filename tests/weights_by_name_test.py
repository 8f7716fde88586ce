"""Tests of trainer/artifacts/weights_by_name.py: every source loads by layer name, in process.

The references are independent of the code under test: the source model's own
weights (read from its layers, not from the file), and Keras itself writing its
Applications' DenseNet-121 files (`weights=None`: nothing is downloaded).
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import densenet
from trainer.artifacts import checkpoint as checkpoint_lib
from trainer import artifacts
from trainer.artifacts import export
from trainer.artifacts import weights_by_name

KERAS_3 = keras.__version__.startswith('3')


def _model(num_classes=10, dropout_rate=0.0, seed=0, name='densenet_bc_10_4', size=32):
    keras.utils.set_random_seed(seed)
    return densenet.create_model(
        name, num_classes=num_classes, image_size=size, dropout_rate=dropout_rate
    )


def _by_name(model):
    """{layer/weight: array} from the model's layers."""
    return {
        f'{layer.name}/{weights_by_name._short_name(w.name)}': w.numpy()
        for layer in weights_by_name.weighted_layers(model)
        for w in weights_by_name.model_weights(layer)
    }


def _state(model, directory):
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    return checkpoint_lib.CheckpointState(
        model=model, optimizer=optimizer, directory=str(directory), keep=2
    )


def _train_one_step(state):
    model, optimizer = state._model, state._rest.optimizer
    images = tf.random.stateless_normal([4, 32, 32, 3], seed=[1, 2])
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model(images, training=True) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))


@pytest.mark.parametrize('written, read', [(0.2, 0.0), (0.0, 0.2)], ids=['drop-none', 'none-drop'])
def test_resume_and_init_across_a_dropout_rate_change(tmp_path, written, read):
    # Dropout layers own no weights but shift the object graph's layer numbers (Keras 3
    # refused this restore with a shape error); by name, every value comes back.
    source = _state(_model(dropout_rate=written, seed=0), tmp_path)
    _train_one_step(source)
    source.save(1)
    want = _by_name(source._model)
    slots = [v.numpy() for v in source._rest.optimizer.variables]

    resumed = _state(_model(dropout_rate=read, seed=1), tmp_path)
    assert resumed.restore_latest().endswith('ckpt-1')
    got = _by_name(resumed._model)
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    for ours, theirs in zip(resumed._rest.optimizer.variables, slots):
        np.testing.assert_array_equal(ours.numpy(), theirs)
    assert int(resumed.step_counter.numpy()) == 1

    fresh = _model(dropout_rate=read, seed=2)
    loaded = checkpoint_lib.load_initial_weights(fresh, str(tmp_path))
    assert loaded.fresh is None
    for key, value in _by_name(fresh).items():
        np.testing.assert_array_equal(value, want[key], err_msg=key)


def _check_fine_tuned(target, source_weights, before, loaded, *, has_top):
    """Every weight but the classifier's is the source's; the classifier is untouched."""
    got = _by_name(target)
    for key, value in got.items():
        if key.startswith('predictions/'):
            np.testing.assert_array_equal(value, before[key], err_msg=key)
        else:
            np.testing.assert_array_equal(value, source_weights[key], err_msg=key)
    assert loaded.layers == len(weights_by_name.weighted_layers(target)) - 1
    assert loaded.fresh == (
        "the file's has 5 classes, this run 10 (--num_classes)"
        if has_top
        else 'the file has no classifier (saved without top)'
    )
    assert loaded.describe().endswith(f'; predictions starts fresh: {loaded.fresh}')


@pytest.mark.parametrize('kind', ['checkpoint', 'export', 'keras h5', 'keras weights.h5'])
def test_another_class_count_loads_all_but_the_classifier(tmp_path, kind):
    source = _model(num_classes=5, dropout_rate=0.1, seed=0)
    path = str(tmp_path / kind.replace(' ', '_'))
    if kind == 'checkpoint':
        path = _state(source, tmp_path / 'ckpt').save(3)
    elif kind == 'export':
        export.export_saved_model(source, path, image_size=32)
    elif kind == 'keras h5':
        path += '.h5'
        source.save(path)  # The legacy layout, under model_weights, on Keras 2 and 3.
    else:
        path += '.weights.h5'
        source.save_weights(path)
    target = _model(num_classes=10, seed=1)
    before = _by_name(target)
    loaded = checkpoint_lib.load_initial_weights(target, path)
    _check_fine_tuned(target, _by_name(source), before, loaded, has_top=True)


def test_a_model_of_another_depth_is_refused_naming_the_layers(tmp_path):
    path = _state(_model(name='densenet_bc_16_4'), tmp_path).save(1)
    target = _model()
    before = _by_name(target)
    with pytest.raises(artifacts.CheckpointError) as error:
        checkpoint_lib.load_initial_weights(target, str(tmp_path))
    # DenseNet-BC-16 has one more dense layer per block than BC-10, in each of 3 blocks:
    # 3 x (BN, 1x1 conv, BN, 3x3 conv) weighted layers that BC-10 lacks.
    assert str(error.value) == (
        f'{path} does not fit --model=densenet_bc_10_4: 12 layers not in the model '
        '(conv2_block2_0_bn, conv2_block2_1_bn, conv2_block2_1_conv, ...)'
    )
    for key, value in _by_name(target).items():
        np.testing.assert_array_equal(value, before[key])
    with pytest.raises(artifacts.CheckpointError, match=r'^checkpoint .* does not fit this model'):
        _state(_model(), tmp_path).restore_latest()


@pytest.mark.parametrize('include_top', [True, False], ids=['top', 'no-top'])
@pytest.mark.stack
def test_keras_applications_densenet121_files_load_into_a_10_class_model(tmp_path, include_top):
    # The files Keras itself writes: `.weights.h5` on Keras 3 (by class rank, not name),
    # `save_weights('x.h5')` on Keras 2 (Applications' own names: conv1/conv, ...).
    keras.utils.set_random_seed(0)
    reference = keras.applications.DenseNet121(
        weights=None, include_top=include_top, input_shape=(32, 32, 3)
    )
    path = str(tmp_path / ('densenet121.weights.h5' if KERAS_3 else 'densenet121.h5'))
    reference.save_weights(path)
    want = {
        f'{weights_by_name._layer_key(layer.name)}/{weights_by_name._short_name(w.name)}': w.numpy()
        for layer in reference.layers
        for w in layer.weights
    }
    target = densenet.create_model('densenet121', num_classes=10, image_size=32)
    before = _by_name(target)
    loaded = checkpoint_lib.load_initial_weights(target, path)
    got = _by_name(target)
    assert len(got) == len(want) + (0 if include_top else 2)
    for key, value in got.items():
        if key.startswith('predictions/'):
            np.testing.assert_array_equal(value, before[key], err_msg=key)
        else:
            np.testing.assert_array_equal(value, want[key], err_msg=key)
    weighted = [
        layer for layer in reference.layers if layer.weights and layer.name != 'predictions'
    ]
    assert loaded.layers == len(weighted) == 241 and loaded.source == path
    assert loaded.fresh == (
        "the file's has 1000 classes, this run 10 (--num_classes)"
        if include_top
        else 'the file has no classifier (saved without top)'
    )
    print(f'Keras {keras.__version__}, {os.path.basename(path)}: {loaded.describe()}')

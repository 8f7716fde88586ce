"""Keras .h5 weight files (Keras 2 and 3, Keras Applications) loaded by layer name.

Pretrained DenseNets are usually published as Keras .h5 files, such as Keras
Applications' `densenet121_weights_tf_dim_ordering_tf_kernels.h5`. Their layout (the
one Keras 2's `model.save_weights('x.h5')` and every Keras's `model.save('x.h5')`
write) lists `layer_names` and, per layer, `weight_names`. We read it with h5py and
match layers by *name* rather than by position, for two reasons: Keras 3 cannot load
a Keras 2 file into a model whose layers are in another order, and a name match tells
exactly which layer does not fit when the file is for another model. Names are
compared with '/' read as '_' (Keras 2's Applications named the stem `conv1/conv`;
Keras 3's and ours name it `conv1_conv`).

Keras 3's own `.weights.h5` layout keys layers by their position in the model, not by
name; such files are handed to `model.load_weights`, which knows that layout.

`trainer/checkpoint.py` dispatches to this module (`load_initial_weights`); both raise
`errors.CheckpointError`.
"""

from typing import Dict, List

import numpy as np

import densenet
from trainer import errors


def _text(value) -> str:
    return value.decode('utf8') if isinstance(value, bytes) else str(value)


def _layer_key(name: str) -> str:
    return name.replace('/', '_')


def _short_name(name: str) -> str:
    """'conv1/conv/kernel:0' -> 'kernel'."""
    return name.split('/')[-1].split(':')[0]


def _file_layers(group) -> Dict[str, List]:
    """Layer key -> [(short weight name, array)] for the layers that have weights."""
    layers = {}
    for layer_name in (_text(name) for name in group.attrs['layer_names']):
        layer_group = group[layer_name]
        names = [_text(name) for name in layer_group.attrs.get('weight_names', [])]
        if names:
            layers[_layer_key(layer_name)] = [
                (_short_name(name), np.asarray(layer_group[name])) for name in names
            ]
    return layers


def _model_weights(layer) -> List:
    # Keras 3 keeps Dropout's random state as a variable; weight files never hold it.
    return [w for w in layer.weights if 'seed_generator' not in w.name]


def _match(path: str, layer, weights, stored) -> List:
    """Pairs a layer's variables with stored arrays, by weight name where the names agree."""
    ours = [_short_name(getattr(w, 'path', None) or w.name) for w in weights]
    theirs = [name for name, _ in stored]
    if sorted(ours) == sorted(theirs):
        by_name = dict(stored)
        pairs = [(w, by_name[name]) for w, name in zip(weights, ours)]
    elif len(ours) == len(theirs):
        pairs = [(w, array) for w, (_, array) in zip(weights, stored)]
    else:
        raise errors.CheckpointError(
            f'{path} does not fit the model: layer {layer.name} has weights {ours}, the file '
            f'{theirs}'
        )
    for weight, array in pairs:
        if tuple(weight.shape) != array.shape:
            raise errors.CheckpointError(
                f'{path} does not fit the model: {layer.name}/{_short_name(weight.name)} is '
                f'{tuple(weight.shape)} in the model but {array.shape} in the file (check '
                '--model and --num_classes)'
            )
    return pairs


def load_h5_weights(model, path: str) -> None:
    """Sets every weight of `model` from a Keras .h5 weights file, matching layers by name.

    Nothing is assigned unless every layer fits, so a failed load leaves the model as
    it was.

    Raises:
      FileNotFoundError: `path` does not exist.
      CheckpointError: the file is not a Keras weights file, or a layer is missing,
        extra or of another shape; the message names the file and the layer.
    """
    import h5py  # pylint: disable=g-import-not-at-top  # Comes with TensorFlow; only needed here.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    if not tf.io.gfile.exists(path):
        raise errors.MissingFileError(f'no weights file at {path}')
    try:
        handle = h5py.File(path, 'r')
    except OSError as error:
        raise errors.CheckpointError(f'{path} is not an HDF5 weights file ({error})') from None
    with handle:
        if 'layer_names' in handle.attrs:
            group = handle
        elif 'model_weights' in handle and 'layer_names' in handle['model_weights'].attrs:
            group = handle['model_weights']  # A whole model saved with model.save('x.h5').
        elif 'layers' in handle:
            group = None  # Keras 3 `.weights.h5`.
        else:
            raise errors.CheckpointError(f'{path} holds no Keras layer weights (no layer_names)')
        stored = _file_layers(group) if group is not None else None
    if stored is None:
        try:
            model.load_weights(path)
        except (ValueError, KeyError, OSError) as error:
            first = ' '.join(str(error).split('\n')[0].split())
            raise errors.CheckpointError(f'{path} does not fit the model: {first}') from None
        return

    layers = [layer for layer in densenet.all_layers(model) if _model_weights(layer)]
    missing = [layer.name for layer in layers if _layer_key(layer.name) not in stored]
    extra = sorted(set(stored) - {_layer_key(layer.name) for layer in layers})
    if missing or extra:
        parts = []
        if missing:
            parts.append(f'{len(missing)} layers missing from the file ({", ".join(missing[:3])}')
            parts[-1] += ', ...)' if len(missing) > 3 else ')'
        if extra:
            parts.append(f'{len(extra)} layers not in the model ({", ".join(extra[:3])}')
            parts[-1] += ', ...)' if len(extra) > 3 else ')'
        raise errors.CheckpointError(
            f'{path} does not fit --model={model.name}: {"; ".join(parts)}'
        )
    pairs = []
    for layer in layers:
        pairs.extend(_match(path, layer, _model_weights(layer), stored[_layer_key(layer.name)]))
    for weight, array in pairs:
        weight.assign(array)

"""A model's weights read from any source and matched to its layers by name.

A run's weights can come from four kinds of file: this trainer's checkpoints, its
exports (SavedModels), Keras 2 `.h5` files (Keras Applications' downloads, with and
without top, and `save_weights('x.h5')`), and Keras 3 `.weights.h5` files. Each is read
here into one form, `Stored` (layer name -> [(weight name, array)]), and assigned to the
model's layers by *name*, never by position:

- A checkpoint's object graph numbers a functional model's layers (`layer_with_weights-N`
  on Keras 2, `_operations/N` on Keras 3), so a model with Dropout layers, which own no
  weights, numbers its convolutions differently from one without, and a by-position
  restore failed (or, were the shapes alike, would load the wrong layers). Every
  variable in a checkpoint or an export also carries its full name, `conv1_conv/kernel`,
  which is what is matched. Resuming (`checkpoint.CheckpointState.restore_latest`),
  evaluating and `--init_checkpoint` all go through it, so `--dropout_rate` may differ
  between a checkpoint and the run that reads it.
- Keras 2's `.h5` layout lists `layer_names` and, per layer, `weight_names`. Names are
  compared with '/' read as '_' (Keras 2's Applications named the stem `conv1/conv`;
  Keras 3's and ours name it `conv1_conv`).
- Keras 3's `.weights.h5` keys each layer by its class and its rank among the layers of
  that class (`layers/conv2d_5/vars/0`), not by its name. Those keys are translated to
  our layer names by the same rule, over the model's layers in order, so a layer
  without weights (Dropout) shifts nothing here either.

Fine-tuning (`allow_new_classifier`): when the classifier (`predictions`) is missing
from the file (saved without top) or has another number of classes, every other weight
is loaded and the classifier keeps its fresh initialisation, said in one line. Any
other difference is a one-line refusal naming the layer, and a refused load assigns
nothing.
"""

import dataclasses
import os
import re
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

import densenet
from base import errors
from trainer import artifacts

# Layer name -> [(weight name, array)], in the order the source lists them.
Stored = Dict[str, List[Tuple[str, np.ndarray]]]

CLASSIFIER = 'predictions'  # Our models' and Keras Applications' last layer.

# Checkpoint keys under which a checkpoint or an export keeps the model's own weights:
# the model (Keras 2 and 3), the optimizer's list of the variables it trains (Keras 3
# reaches the model's trainable weights through it first) and an export's variable list.
# The optimizer's slots, the weight averages and the loss scale live under other keys.
_MODEL_KEYS = ('model/', 'optimizer/_trainable_variables/', 'model_variables/')
_OBJECT_GRAPH = '_CHECKPOINTABLE_OBJECT_GRAPH'


def _text(value) -> str:
    return value.decode('utf8') if isinstance(value, bytes) else str(value)


def _layer_key(name: str) -> str:
    return name.replace('/', '_')


def _short_name(name: str) -> str:
    """'conv1/conv/kernel:0' -> 'kernel'."""
    return name.split('/')[-1].split(':')[0]


def _snake_case(name: str) -> str:
    """A class name as Keras 3 keys it in `.weights.h5` (BatchNormalization -> batch_normalization)."""
    name = re.sub(r'\W+', '', name)
    name = re.sub('(.)([A-Z][a-z]+)', r'\1_\2', name)
    return re.sub('([a-z])([A-Z])', r'\1_\2', name).lower()


def model_weights(layer) -> List:
    """A layer's weights as files hold them (Keras 3 Dropout's seed state is none)."""
    return [w for w in layer.weights if 'seed_generator' not in w.name]


def weighted_layers(model) -> List:
    return [layer for layer in densenet.all_layers(model) if model_weights(layer)]


# Reading.


def read_checkpoint(prefix: str) -> Stored:
    """The model weights of a checkpoint (`.../ckpt-12`) or an export's `variables/variables`.

    Raises:
      tf.errors.OpError, IndexError: the files are damaged (`checkpoint._DAMAGED`).
      artifacts.CheckpointError: the checkpoint holds no model weights.
    """
    from tensorflow.core.protobuf import trackable_object_graph_pb2  # noqa: PLC0415

    reader = tf.train.load_checkpoint(prefix)
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(_OBJECT_GRAPH))
    stored: Stored = {}
    for node in graph.nodes:
        for attribute in node.attributes:
            key, full_name = attribute.checkpoint_key, attribute.full_name
            if not key.startswith(_MODEL_KEYS) or '/' not in full_name:
                continue
            scope, weight = full_name.rsplit('/', 1)
            stored.setdefault(scope.split('/')[-1], []).append(
                (_short_name(weight), reader.get_tensor(key))
            )
    if not stored:
        raise artifacts.CheckpointError(f'{prefix} holds no model weights')
    return stored


def _keras2_layers(group) -> Stored:
    stored = {}
    for layer_name in (_text(name) for name in group.attrs['layer_names']):
        layer_group = group[layer_name]
        names = [_text(name) for name in layer_group.attrs.get('weight_names', [])]
        if names:
            stored[_layer_key(layer_name)] = [
                (_short_name(name), np.asarray(layer_group[name])) for name in names
            ]
    return stored


def _keras3_layers(group, model, path: str) -> Stored:
    """`layers/<class>_<rank>/vars/<i>` translated to the model's layer names.

    The k-th layer of a class in the file is the k-th layer of that class in the model
    (both list layers in the order the functional model runs them). A file key with no
    such layer in the model keeps its own name, and so is reported as not in the model.
    """
    ranks: Dict[str, int] = {}
    ours = {}
    for layer in weighted_layers(model):
        kind = _snake_case(type(layer).__name__)
        rank = ranks.get(kind, 0)
        ranks[kind] = rank + 1
        ours[kind if rank == 0 else f'{kind}_{rank}'] = layer.name
    stored = {}
    for key in group:
        variables = group[key].get('vars')
        if variables is None or not len(variables):
            continue
        arrays = [np.asarray(variables[str(i)]) for i in range(len(variables))]
        stored[ours.get(key, key)] = [(str(i), array) for i, array in enumerate(arrays)]
    if not stored:
        raise artifacts.CheckpointError(f'{path} holds no layer weights under layers/')
    return stored


def read_h5(path: str, model) -> Stored:
    """The layers of a Keras `.h5` file: Keras 2 layouts by name, Keras 3's by class rank.

    Raises:
      errors.MissingFileError: nothing at `path`.
      artifacts.CheckpointError: not an HDF5 file of Keras weights.
    """
    import h5py  # noqa: PLC0415  (comes with TensorFlow; only needed here)

    if not tf.io.gfile.exists(path):
        raise errors.MissingFileError(f'no weights file at {path}')
    try:
        handle = h5py.File(path, 'r')
    except OSError as error:
        raise artifacts.CheckpointError(f'{path} is not an HDF5 weights file ({error})') from None
    with handle:
        if 'layer_names' in handle.attrs:
            return _keras2_layers(handle)
        if 'model_weights' in handle and 'layer_names' in handle['model_weights'].attrs:
            return _keras2_layers(handle['model_weights'])  # model.save('x.h5').
        if 'layers' in handle:
            return _keras3_layers(handle['layers'], model, path)
    raise artifacts.CheckpointError(f'{path} holds no Keras layer weights (no layer_names)')


# Matching and assigning.


@dataclasses.dataclass
class Loaded:
    """What a load assigned, for the one line that says so."""

    source: str
    layers: int
    weights: int
    fresh: Optional[str] = None  # Why the classifier starts fresh, if it does.

    def describe(self) -> str:
        text = f'{self.source}: {self.layers} layers ({self.weights} weights) loaded'
        if self.fresh:
            text += f'; {CLASSIFIER} starts fresh: {self.fresh}'
        return text


def _pairs(source: str, layer, stored) -> List:
    """A layer's variables paired with stored arrays, by weight name where the names agree."""
    weights = model_weights(layer)
    ours = [_short_name(getattr(w, 'path', None) or w.name) for w in weights]
    theirs = [name for name, _ in stored]
    if sorted(ours) == sorted(theirs):
        by_name = dict(stored)
        return [(w, by_name[name]) for w, name in zip(weights, ours)]
    if len(ours) == len(theirs):
        return [(w, array) for w, (_, array) in zip(weights, stored)]
    raise artifacts.CheckpointError(
        f'{source} does not fit the model: layer {layer.name} has weights {ours}, the file {theirs}'
    )


def _shape_problem(layer, pairs) -> Optional[str]:
    for weight, array in pairs:
        if tuple(weight.shape) != array.shape:
            return (
                f'{layer.name}/{_short_name(weight.name)} is {tuple(weight.shape)} in the model '
                f'but {array.shape} in the file'
            )
    return None


def _listed(names: List[str]) -> str:
    return ', '.join(names[:3]) + (', ...' if len(names) > 3 else '')


def assign(model, stored: Stored, source: str, *, allow_new_classifier: bool = False) -> Loaded:
    """Sets the model's weights from `stored`, layer by layer by name.

    Nothing is assigned unless every layer fits, so a refused load leaves the model as
    it was.

    Args:
      allow_new_classifier: fine-tuning: a classifier missing from `stored`, or of
        another number of classes, is left as initialised instead of refused.

    Raises:
      artifacts.CheckpointError: a layer is missing, extra or of another shape; the message
        names `source` and the layer.
    """
    layers = weighted_layers(model)
    names = {layer.name for layer in layers}
    fresh = None
    if allow_new_classifier and CLASSIFIER in names and CLASSIFIER not in stored:
        fresh = 'the file has no classifier (saved without top)'
    missing = [
        layer.name
        for layer in layers
        if layer.name not in stored and not (fresh and layer.name == CLASSIFIER)
    ]
    extra = sorted(set(stored) - names)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f'{len(missing)} layers missing from the file ({_listed(missing)})')
        if extra:
            parts.append(f'{len(extra)} layers not in the model ({_listed(extra)})')
        raise artifacts.CheckpointError(
            f'{source} does not fit --model={model.name}: {"; ".join(parts)}'
        )
    assignments, loaded_layers = [], 0
    for layer in layers:
        if layer.name not in stored:
            continue
        pairs = _pairs(source, layer, stored[layer.name])
        problem = _shape_problem(layer, pairs)
        if problem and allow_new_classifier and layer.name == CLASSIFIER:
            file_classes = pairs[0][1].shape[-1]
            fresh = (
                f'the file\'s has {file_classes} classes, this run {pairs[0][0].shape[-1]} '
                '(--num_classes)'
            )
            continue
        if problem:
            raise artifacts.CheckpointError(
                f'{source} does not fit the model: {problem} (check --model and --num_classes)'
            )
        assignments.extend(pairs)
        loaded_layers += 1
    for weight, array in assignments:
        weight.assign(array)
    return Loaded(source, loaded_layers, len(assignments), fresh)


def export_prefix(path: str) -> str:
    """The checkpoint inside a SavedModel folder."""
    return os.path.join(path, 'variables', 'variables')

"""Checkpoints of the training state; resuming from the newest usable one.

What a checkpoint holds, and why nothing else is needed for an exact resume:

- the model (weights and batch-norm statistics) and the optimizer (its slots and its
  step counter `iterations`, which *is* the global step);
- whatever else the caller passes as extra trackables (a loss scaler, EMA weights);
- nothing about the data or random numbers. The epoch and the position inside it are
  *derived* from the global step and the steps per epoch (`divmod`), so they can never
  disagree with the weights they belong to; the data order and the augmentations are
  functions of (seed, epoch, example index), so there is no generator state to store.
  Storing the epoch as well would only add a second truth to keep in step.

Writing is crash-safe because `tf.train.CheckpointManager` writes the data files
first (into a temporary folder, then renamed into place) and only afterwards updates
the `checkpoint` state file, atomically, to name the new checkpoint. A process killed
mid-write leaves at worst an unlisted checkpoint that nothing reads. Files damaged
afterwards (a truncated copy, a disk error) are caught when resuming: the damaged
checkpoint is moved to `unusable/` with a warning and the previous one is used.
"""

import os
import re
import shutil
import time
from typing import Callable, List, Optional, Sequence, Tuple

from absl import logging
import tensorflow as tf

from base import errors
from trainer import artifacts
from trainer.engine import nonfinite
from trainer.artifacts import model_dir as model_dir_lib
from trainer.artifacts import weights_by_name

# Errors that mean a checkpoint's files are damaged or missing, rather than that the
# checkpoint belongs to another model (a ValueError or AssertionError, which falling
# back would not cure). Measured on TF 2.15 and 2.21: a truncated index raises a bare
# OpError ("not an sstable"), a truncated data file an IndexError ("Read less bytes
# than requested") from the reader, a flipped byte DataLossError (the CRC check), a
# missing file NotFoundError or OpError.
_DAMAGED = (tf.errors.OpError, IndexError)

UNUSABLE_FOLDER = 'unusable'
_PREFIX = 'ckpt'


def _variables_of(trackable) -> List[tf.Variable]:
    if isinstance(trackable, tf.Variable):
        return [trackable]
    variables = getattr(trackable, 'variables', None)
    if callable(variables):  # Keras 2 optimizers: a method.
        variables = variables()
    return list(variables or [])


def step_of(prefix: str) -> Optional[int]:
    """The global step a checkpoint prefix (`.../ckpt-N`) names, or None."""
    match = re.search(r'-(\d+)$', prefix)
    return int(match.group(1)) if match else None


def _state_file_text(latest: str, paths: Sequence[str], timestamps: Sequence[float]) -> str:
    """A `checkpoint` state file in the text format `CheckpointManager` writes."""
    lines = [f'model_checkpoint_path: "{os.path.basename(latest)}"']
    lines += [f'all_model_checkpoint_paths: "{os.path.basename(path)}"' for path in paths]
    lines += [f'all_model_checkpoint_timestamps: {stamp!r}' for stamp in timestamps]
    # Older than every listed checkpoint, so the manager will sweep them as usual.
    lines.append(f'last_preserved_timestamp: {min(timestamps, default=time.time()) - 1.0!r}')
    return '\n'.join(lines) + '\n'


def list_checkpoints(directory: str) -> Tuple[List[str], List[float], bool]:
    """The checkpoints in `directory`, oldest first, with their timestamps.

    The `checkpoint` state file is the authority: a checkpoint it does not list may be
    one whose writing was cut short. When that file is missing or unreadable but
    checkpoint files are there, they are listed by their step numbers instead, so that
    losing the small state file never loses the run.

    Returns:
      (prefixes, timestamps, from_state_file).
    """
    try:
        state = tf.train.get_checkpoint_state(directory)
    except ValueError:  # A state file without a model_checkpoint_path.
        state = None
    if state is not None and state.model_checkpoint_path:
        paths = list(state.all_model_checkpoint_paths)
        stamps = list(state.all_model_checkpoint_timestamps)
        if len(stamps) != len(paths):
            stamps = [state.last_preserved_timestamp] * len(paths)
        if state.model_checkpoint_path not in paths:
            paths.append(state.model_checkpoint_path)
            stamps.append(time.time())
        # The newest (model_checkpoint_path) last, whatever order the list has.
        order = sorted(
            range(len(paths)), key=lambda i: (paths[i] == state.model_checkpoint_path, i)
        )
        return [paths[i] for i in order], [stamps[i] for i in order], True
    indexes = tf.io.gfile.glob(os.path.join(directory, f'{_PREFIX}-*.index'))
    prefixes = [index[: -len('.index')] for index in indexes]
    prefixes = sorted((p for p in prefixes if step_of(p) is not None), key=step_of)
    stamps = [tf.io.gfile.stat(p + '.index').mtime_nsec / 1e9 for p in prefixes]
    return prefixes, stamps, False


class CheckpointState:
    """The training state in a `tf.train.CheckpointManager`: save, and resume safely.

    Under MultiWorkerMirroredStrategy every worker must take part in a save, but only
    the chief's files are kept: the others write to a private folder that is removed.
    Every worker resumes from the chief's folder.

    Args:
      model: the Keras model.
      optimizer: its optimizer; `optimizer.iterations` is the global step.
      directory: the checkpoint folder (`model_dir/checkpoints`).
      keep: checkpoints kept; older ones are deleted.
      chief: whether this worker's files are kept.
      worker_id: names the private folder of a worker that is not the chief.
      before_save: called before each save; raises to stop the save (the model_dir's
        lock check, `trainer/artifacts/run_lock.py`).
      input_version: the version of the training input (`input_pipeline/preprocessing.py`)
        to record in every checkpoint; after `restore_latest`, `stored_input_version` is
        the restored checkpoint's (1 for checkpoints that predate the record).
      **extra: further trackables to save and restore with the model, such as a loss
        scaler or EMA weights (anything `tf.train.Checkpoint` accepts). Their float
        variables are checked for NaN and infinity before every save, like the model's.
    """

    def __init__(
        self,
        *,
        model,
        optimizer,
        directory: str,
        keep: int = 5,
        chief: bool = True,
        worker_id: int = 0,
        before_save: Optional[Callable[[], None]] = None,
        input_version: Optional[int] = None,
        **extra,
    ):
        # Saved with every checkpoint, read back apart from the object graph: checkpoints
        # written before it existed lack it (`stored_input_version`).
        recorded = {}
        if input_version is not None:
            recorded['input_version'] = tf.Variable(
                input_version, dtype=tf.int64, trainable=False, name='input_version'
            )
        self.stored_input_version: Optional[int] = None
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, **extra, **recorded)
        # Restoring reads the model's weights by name (`weights_by_name`) and the rest,
        # which holds no layers, through the object graph.
        self._model = model
        self._rest = tf.train.Checkpoint(optimizer=optimizer, **extra)
        self.step_counter = optimizer.iterations
        self._trackables = [model, optimizer, *extra.values()]
        self.chief = chief
        self.keep = keep
        self.root = directory
        self.directory = directory if chief else os.path.join(directory, f'.worker_{worker_id}')
        self._before_save = before_save
        self._make_managers()

    def _make_managers(self) -> None:
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self.directory, max_to_keep=self.keep, step_counter=self.step_counter
        )
        self._chief_manager = (
            self.manager
            if self.chief
            else tf.train.CheckpointManager(self.checkpoint, self.root, max_to_keep=self.keep)
        )

    @property
    def latest(self) -> Optional[str]:
        """The newest checkpoint's prefix (`.../ckpt-1000`), or None."""
        return self._chief_manager.latest_checkpoint

    def variables(self) -> List[tf.Variable]:
        """Every float variable that a checkpoint holds (model, optimizer, extras)."""
        found = []
        for trackable in self._trackables:
            found.extend(_variables_of(trackable))
        return nonfinite.floating_variables(found)

    def restore_latest(self) -> Optional[str]:
        """Restores the newest usable checkpoint, if there is any; returns its prefix.

        A checkpoint whose files are damaged or missing is skipped with a warning that
        names it, and the one before it is tried. On the chief the skipped ones are
        moved to `unusable/` (not deleted: they may hold something worth rescuing) and
        the state file is rewritten to list the remaining ones, so later starts, saves
        and retention see a consistent folder.

        Raises:
          artifacts.CheckpointError: there are checkpoints but none is usable, or the newest
            usable one does not fit the model (another --model or --num_classes).
        """
        if self.chief:
            self._remove_unfinished()
        prefixes, stamps, from_state = list_checkpoints(self.root)
        if prefixes and not from_state:
            logging.warning(
                'No readable checkpoint state file in %s; found %d checkpoints by name',
                self.root,
                len(prefixes),
            )
        damaged = []
        for prefix in reversed(prefixes):
            try:
                self._restore(prefix)
            except _DAMAGED as error:
                logging.warning(
                    'Checkpoint %s is unusable (%s); falling back to the previous one',
                    prefix,
                    errors.one_line(error),
                )
                damaged.append((prefix, errors.one_line(error)))
                continue
            except (AssertionError, ValueError, artifacts.CheckpointError) as error:
                raise artifacts.CheckpointError(
                    f'checkpoint {prefix} does not fit this model (check --model and '
                    f'--num_classes): {errors.one_line(error)}'
                ) from None
            if self.chief and (damaged or not from_state):
                kept = [(p, s) for p, s in zip(prefixes, stamps) if p not in dict(damaged)]
                self._set_aside([p for p, _ in damaged])
                self._rewrite_state(prefix, kept)
            logging.info('Resumed from %s', prefix)
            return prefix
        if damaged:
            reasons = '; '.join(f'{os.path.basename(p)}: {why}' for p, why in damaged)
            raise artifacts.CheckpointError(
                f'no usable checkpoint in {self.root} ({reasons}); move the folder away '
                'to start afresh'
            )
        return None

    def _restore(self, prefix: str) -> None:
        """Restores the optimizer and the extras by the object graph, the model by name.

        By name, so that layers without weights (--dropout_rate) may differ between the
        checkpoint and this run (`weights_by_name`). The weights are read before anything
        is assigned, so damaged files are found first.
        """
        stored = weights_by_name.read_checkpoint(prefix)
        self._rest.restore(prefix).expect_partial().assert_existing_objects_matched()
        weights_by_name.assign(self._model, stored, prefix)
        reader = tf.train.load_checkpoint(prefix)
        key = 'input_version/.ATTRIBUTES/VARIABLE_VALUE'
        self.stored_input_version = int(reader.get_tensor(key)) if reader.has_tensor(key) else 1

    def _remove_unfinished(self) -> None:
        """Removes the `ckpt-N_temp` folders of saves a kill or a full disk cut short.

        TensorFlow writes a checkpoint's files there and renames them into place, so a
        `_temp` folder holds only an unfinished write that nothing will read. Called
        once the run holds its folder (`trainer/artifacts/run_lock.py`), so no other process is
        writing one.
        """
        for path in tf.io.gfile.glob(os.path.join(self.root, f'{_PREFIX}-*_temp')):
            logging.info('Removing %s, the files of a checkpoint write that did not finish', path)
            tf.io.gfile.rmtree(path)

    def _set_aside(self, prefixes: Sequence[str]) -> None:
        folder = os.path.join(self.root, UNUSABLE_FOLDER)
        tf.io.gfile.makedirs(folder)
        for prefix in prefixes:
            for path in tf.io.gfile.glob(prefix + '.*'):
                target = os.path.join(folder, os.path.basename(path))
                tf.io.gfile.rename(path, target, overwrite=True)

    def _rewrite_state(self, latest: str, kept: Sequence[Tuple[str, float]]) -> None:
        text = _state_file_text(latest, [p for p, _ in kept], [s for _, s in kept])
        tmp = os.path.join(self.root, f'.checkpoint.{os.getpid()}')
        with tf.io.gfile.GFile(tmp, 'w') as stream:
            stream.write(text)
        tf.io.gfile.rename(tmp, os.path.join(self.root, 'checkpoint'), overwrite=True)
        self._make_managers()

    def save(self, step: int) -> str:
        """Writes a checkpoint numbered `step`; returns its prefix.

        Raises:
          nonfinite.NonFiniteError: a variable holds NaN or infinity. Nothing is written,
            so the newest checkpoint on disk stays one a run can resume from.
        """
        bad = nonfinite.first_nonfinite(self.variables())
        if bad:
            raise nonfinite.NonFiniteError(
                f'{bad} is not finite at step {step}; no checkpoint written (the newest, '
                f'{self.latest or "none"}, is unaffected)'
            )
        if self._before_save:
            self._before_save()
        path = self.manager.save(checkpoint_number=step)
        if not self.chief:
            shutil.rmtree(self.directory, ignore_errors=True)
        return path

    def has_checkpoint_at(self, step: int) -> bool:
        return bool(self.latest) and step_of(self.latest) == step


def _newest_weights(path: str) -> Tuple[str, weights_by_name.Stored]:
    """The model weights of the newest intact checkpoint at a prefix or in a folder.

    Accepts a checkpoint prefix (`.../ckpt-1000`), a checkpoints folder or a model_dir
    holding `checkpoints/`. A damaged checkpoint is skipped with a warning.

    Raises:
      errors.MissingFileError: no checkpoint is found at `path`.
      artifacts.CheckpointError: every checkpoint there is damaged.
    """
    candidates = [path]
    for folder in (path, os.path.join(path, 'checkpoints')):
        if tf.io.gfile.isdir(folder):
            found, _, _ = list_checkpoints(folder)
            if found:
                candidates = list(reversed(found))
                break
    if not tf.io.gfile.exists(candidates[0] + '.index'):
        raise errors.MissingFileError(f'no checkpoint found at {path}')
    problems = []
    for prefix in candidates:
        try:
            return prefix, weights_by_name.read_checkpoint(prefix)
        except _DAMAGED as error:
            logging.warning('Checkpoint %s is unusable (%s)', prefix, errors.one_line(error))
            problems.append(f'{os.path.basename(prefix)}: {errors.one_line(error)}')
    raise artifacts.CheckpointError(f'no usable checkpoint at {path} ({"; ".join(problems)})')


def restore_weights(model, path: str) -> str:
    """Loads only the model's weights from a checkpoint prefix or folder (`_newest_weights`).

    Layers are matched by name (`weights_by_name`). Returns the prefix that was read.

    Raises:
      errors.MissingFileError: no checkpoint is found at `path`.
      artifacts.CheckpointError: the checkpoints are damaged or do not fit the model.
    """
    prefix, stored = _newest_weights(path)
    try:
        weights_by_name.assign(model, stored, prefix)
    except artifacts.CheckpointError as error:
        raise artifacts.CheckpointError(
            f'checkpoint {prefix} does not fit this model (check --model and --num_classes): '
            f'{errors.one_line(error)}'
        ) from None
    return prefix


def load_initial_weights(model, path: str) -> weights_by_name.Loaded:
    """Loads pretrained weights for fine-tuning, from any source `weights_by_name` reads.

    `path` is this trainer's checkpoint (prefix, checkpoints folder or model_dir), its
    export (a SavedModel folder), or a Keras `.h5` / `.weights.h5` file. Only the
    model's weights are read; the optimizer and the step start afresh. A classifier
    missing from the source or of another class count starts fresh (`Loaded.fresh`).

    Raises:
      errors.MissingFileError: nothing at `path`.
      artifacts.CheckpointError: the weights do not fit the model, naming the file and layer.
    """
    if path.endswith(('.h5', '.hdf5')) or (
        tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)
    ):
        stored, source = weights_by_name.read_h5(path, model), path
    elif model_dir_lib.is_saved_model(path):
        stored, source = weights_by_name.read_checkpoint(weights_by_name.export_prefix(path)), path
    else:
        source, stored = _newest_weights(path)
    return weights_by_name.assign(model, stored, source, allow_new_classifier=True)

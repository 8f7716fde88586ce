"""Checkpoints of the training state, and resuming from the newest one.

The state is the model and the optimizer (its slots and its step counter, which is
the global step). The epoch and the position in the epoch's data are *derived* from
the global step and the steps per epoch, so they can never disagree with it; the data
order and the augmentations are functions of (seed, epoch, example index), so there is
no random-generator state to store.
"""

import os
import shutil
from typing import Optional

from absl import logging
import tensorflow as tf


class CheckpointState:
    """A `tf.train.CheckpointManager` over (model, optimizer), chief-aware.

    Under MultiWorkerMirroredStrategy every worker must take part in a save, but only
    the chief's files are kept: the others write to a private folder that is removed.
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
    ):
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
        self.chief = chief
        self.directory = directory if chief else os.path.join(directory, f'.worker_{worker_id}')
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self.directory, max_to_keep=keep, step_counter=optimizer.iterations
        )
        self._chief_manager = (
            self.manager
            if chief
            else tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=keep)
        )

    @property
    def latest(self) -> Optional[str]:
        return self._chief_manager.latest_checkpoint

    def restore_latest(self) -> Optional[str]:
        """Restores the newest checkpoint, if any; returns its path."""
        path = self.latest
        if path:
            self.checkpoint.restore(path).assert_existing_objects_matched()
            logging.info('Resumed from %s', path)
        return path

    def save(self, step: int) -> str:
        path = self.manager.save(checkpoint_number=step)
        if not self.chief:
            shutil.rmtree(self.directory, ignore_errors=True)
        return path


def restore_weights(model, path: str) -> str:
    """Loads only the model's weights from a checkpoint file prefix or directory.

    Accepts a checkpoint prefix (`.../ckpt-1000`), a checkpoints folder or a model_dir
    holding `checkpoints/`. Returns the prefix that was read.

    Raises:
      FileNotFoundError: no checkpoint is found at `path`.
    """
    prefix = path
    for folder in (path, os.path.join(path, 'checkpoints')):
        if tf.io.gfile.isdir(folder):
            found = tf.train.latest_checkpoint(folder)
            if found:
                prefix = found
                break
    if not tf.io.gfile.exists(prefix + '.index'):
        raise FileNotFoundError(f'no checkpoint found at {path}')
    tf.train.Checkpoint(model=model).restore(
        prefix
    ).expect_partial().assert_existing_objects_matched()
    return prefix

"""The model_dir (`--model_dir`): which one a path belongs to, and its `flags.cfg`.

A model_dir holds `flags.cfg` (the flags it was started with, reusable as
`--flagfile`), `checkpoints/`, `saves/epoch_NNN/` (exports), `logs/` and
`eval_results.jsonl`. TensorFlow is imported only for remote (`gs://...`) paths, so
that `main.py` can check a folder before loading it.
"""

import os
from typing import Mapping, Optional

from trainer import config as config_lib

FLAGFILE = 'flags.cfg'


def of(path: str) -> str:
    """The model_dir that a checkpoint (prefix or `checkpoints/`) or an export is in.

    Any other path is taken to be a model_dir itself.
    """
    path = path.rstrip('/')
    if config_lib.is_local(path):
        path = os.path.abspath(path)
    if os.path.basename(os.path.dirname(path)) == 'checkpoints' or (
        config_lib.is_local(path) and os.path.isfile(path + '.index')
    ):  # A checkpoint prefix: .../checkpoints/ckpt-23.
        path = os.path.dirname(path)
    parent = os.path.dirname(path)
    if os.path.basename(path) == 'checkpoints':
        return parent
    if os.path.basename(parent) == 'saves':  # An export: .../saves/epoch_001.
        return os.path.dirname(parent)
    return path


def is_saved_model(path: str) -> bool:
    return exists(os.path.join(path, 'saved_model.pb'))


def exists(path: str, prefix: bool = False) -> bool:
    """Whether a local or remote (`gs://...`) file or folder is there; with `prefix`, also
    a checkpoint prefix (its `.index` file). TensorFlow is loaded for remote paths only."""
    paths = [path, path + '.index'] if prefix else [path]
    if config_lib.is_local(path):
        return any(os.path.exists(each) for each in paths)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    return any(tf.io.gfile.exists(each) for each in paths)


def _read_text(path: str) -> Optional[str]:
    """The text of a local or remote (`gs://...`) file, or None when it is missing."""
    if not exists(path):
        return None
    if config_lib.is_local(path):
        with open(path) as stream:
            return stream.read()
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    return tf.io.gfile.GFile(path).read()


def checkpointed_flags(model_dir: str) -> Optional[list]:
    """The lines of `model_dir`'s flags.cfg when it holds checkpoints, else None."""
    if _read_text(os.path.join(model_dir, 'checkpoints', 'checkpoint')) is None:
        return None
    text = _read_text(os.path.join(model_dir, FLAGFILE)) or ''
    return [line.strip() for line in text.splitlines() if line.strip().startswith('--')]


def check_same_run(config, previous: Mapping[str, object], model_dir: str) -> None:
    """Refuses to mix this run with a run of another model or image size.

    `previous` holds the `config_lib.RUN_IDENTITY` values that `model_dir`'s flags.cfg
    gives. Resuming or evaluating its checkpoints as another model would fail deep
    inside the restore (or restore into the wrong shapes), and overwriting flags.cfg
    would lose the record of what they are; so this is checked before flags.cfg is
    rewritten.
    """
    differences = [
        (name, previous[name], getattr(config, name))
        for name in config_lib.RUN_IDENTITY
        if name in previous and previous[name] != getattr(config, name)
    ]
    if differences:
        theirs = ' '.join(f'--{name}={value}' for name, value, _ in differences)
        ours = ' '.join(f'--{name}={value}' for name, _, value in differences)
        raise config_lib.ConfigError(
            f'{model_dir} holds a run with {theirs} (its flags.cfg), not {ours}: '
            'use another --model_dir, or the flags of that run'
        )


def write_flagfile(model_dir: str, lines) -> None:
    """Writes `model_dir/flags.cfg` atomically: a kill leaves the old file or the new."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    tf.io.gfile.makedirs(model_dir)
    tmp = os.path.join(model_dir, f'.{FLAGFILE}.{os.getpid()}')
    with tf.io.gfile.GFile(tmp, 'w') as stream:
        stream.write('\n'.join(line for line in lines if line) + '\n')
    tf.io.gfile.rename(tmp, os.path.join(model_dir, FLAGFILE), overwrite=True)

"""Before anything runs: the folders, files, devices and services a run names exist.

Apart from `RunConfig`'s own value checks (trainer/config.py), so that a config can be
built (for a schedule, a model) without data, and so that the config, which every
layer reads, imports nothing of the devices or the network. `trainer/tools/train.py`
calls `check` before TensorFlow is loaded, and `trainer/run.py` again for configs
built in Python. Remote paths (`gs://...`) are checked when they are opened.
"""

import json
import os

from input_pipeline import DataError
from input_pipeline import data_service
from trainer.artifacts import model_dir as model_dir_lib
from trainer.config import ConfigError
from trainer.config import RunConfig
from trainer.config import is_local
from trainer.devices import gaudi


def check(config: RunConfig) -> None:
    """Raises ConfigError unless the folders, files and devices the run names exist."""
    if config.only_eval and config.train_steps:
        raise ConfigError(
            '--only_eval evaluates and exits; it cannot be combined with --train_steps'
        )
    if not config.synthetic_data and not config.dataset_dir:
        raise ConfigError('--dataset_dir is required (or --synthetic_data for speed runs)')
    if (
        config.dataset_dir
        and not config.prepare_digits_demo
        and is_local(config.dataset_dir)
        and not os.path.isdir(config.dataset_dir)
    ):
        if os.path.exists(config.dataset_dir):
            raise ConfigError(
                f'--dataset_dir={config.dataset_dir} is a file, not a folder: give the '
                'folder that holds the TFRecord shards'
            )
        raise ConfigError(f'--dataset_dir={config.dataset_dir} does not exist')
    if config.dataset_dir and is_local(config.dataset_dir):
        _check_class_list(config.dataset_dir, config.num_classes)
    if not config.model_dir and not config.only_eval:
        raise ConfigError('--model_dir is required for training')
    if config.only_eval and not _remote_or_exists(config.only_eval):
        raise ConfigError(f'--only_eval={config.only_eval}: no such checkpoint or SavedModel')
    _check_environment(config)
    if config.data_service_address and not config.only_eval:
        try:
            data_service.check_reachable(config.data_service_address)
        except DataError as error:
            raise ConfigError(str(error)) from None
    if config.init_checkpoint and not _remote_or_exists(config.init_checkpoint):
        raise ConfigError(
            f'--init_checkpoint={config.init_checkpoint}: no such checkpoint or weights file'
        )


def _check_class_list(dataset_dir: str, num_classes: int) -> None:
    """A dataset built from class folders lists its classes: --num_classes must agree.

    Too small a --num_classes stops the input at the first larger label; too large a one
    trains logits that no example has, silently. The list is the builder's
    (`input_pipeline/build_folders.py`), one class per line.
    """
    from input_pipeline import build_folders  # noqa: PLC0415  (no TensorFlow)

    path = os.path.join(dataset_dir, build_folders.CLASS_LIST)
    if not os.path.isfile(path):
        return
    with open(path, encoding='utf8') as stream:
        count = sum(1 for line in stream if line.strip())
    if count != num_classes:
        raise ConfigError(
            f'--num_classes={num_classes}, but {path} lists {count} classes: give '
            f'--num_classes={count}'
        )


def _check_environment(config: RunConfig) -> None:
    """The Gaudi software for --device=hpu, and a multi-worker cluster's TF_CONFIG."""
    # Checked here as well as where the module is loaded: it saves importing TensorFlow.
    if 'hpu' in (config.device, config.distribution_strategy):
        gaudi.check_present()
    tf_config = os.environ.get('TF_CONFIG')
    if tf_config:
        try:
            json.loads(tf_config)
        except ValueError as error:
            raise ConfigError(
                f'the TF_CONFIG environment variable is not valid JSON: {error}'
            ) from None


def _remote_or_exists(path: str) -> bool:
    """A remote path (checked when opened, without TensorFlow now), or a local file,
    folder or checkpoint prefix that is there."""
    return not is_local(path) or model_dir_lib.exists(path, prefix=True)

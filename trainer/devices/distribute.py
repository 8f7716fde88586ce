"""Choosing the `tf.distribute` strategy, once, from the configuration.

Everything below the strategy (the step, the loop, the input pipeline) is the same on
every device kind; only this module knows about GPUs, TPUs and Gaudi.
"""

import hashlib
import json
import os
from typing import Iterable

import numpy as np
import tensorflow as tf
from trainer import config as config_lib
from base import errors
from trainer.devices import gaudi

# The flags' choices, defined with them (trainer/config.py).
STRATEGIES = config_lib.STRATEGIES
DEVICES = config_lib.DEVICES


class StrategyError(errors.UserError):
    """A strategy or device that cannot be had on this machine."""


def load_habana_module() -> None:
    """Loads habana-tensorflow, which registers the HPU device with TensorFlow."""
    gaudi.check_present()
    from habana_frameworks.tensorflow import load_habana_module as load  # pylint: disable=g-import-not-at-top

    load()


def _gpus(num_gpus: int):
    gpus = tf.config.list_logical_devices('GPU')
    if num_gpus >= 0:
        gpus = gpus[:num_gpus]
    return [gpu.name for gpu in gpus]


def create_strategy(
    name: str = 'auto', *, device: str = 'auto', num_gpus: int = -1, tpu: str = ''
) -> tf.distribute.Strategy:
    """Returns the strategy for `--distribution_strategy` and `--device`.

    Args:
      name: one of STRATEGIES. `auto` picks TPU when a TPU address is given or
        `--device=tpu`, HPU for `--device=hpu`, multi-worker when TF_CONFIG names more
        than one worker, mirrored over several GPUs, and one device otherwise.
      device: one of DEVICES.
      num_gpus: how many GPUs to use (-1: all visible ones).
      tpu: the TPU address or name for TPUClusterResolver ('' for a local TPU VM).

    Raises:
      StrategyError: the strategy or device is unknown or not available.
    """
    if name not in STRATEGIES:
        raise StrategyError(
            f'--distribution_strategy={name!r} is not one of {", ".join(STRATEGIES)}'
        )
    if device not in DEVICES:
        raise StrategyError(f'--device={device!r} is not one of {", ".join(DEVICES)}')
    if name == 'auto':
        if device == 'tpu' or tpu:
            name = 'tpu'
        elif device == 'hpu':
            name = 'hpu'
        elif (
            len(json.loads(os.environ.get('TF_CONFIG', '{}')).get('cluster', {}).get('worker', []))
            > 1
        ):
            name = 'multi_worker_mirrored'
        elif device != 'cpu' and len(_gpus(num_gpus)) > 1:
            name = 'mirrored'
        else:
            name = 'one_device'

    if name == 'hpu' or device == 'hpu':
        load_habana_module()
        if name == 'hpu':
            from habana_frameworks.tensorflow.distribute import HPUStrategy  # pylint: disable=g-import-not-at-top

            return HPUStrategy()
        return tf.distribute.OneDeviceStrategy('/device:HPU:0')
    if name == 'tpu':
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if name == 'multi_worker_mirrored':
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = [] if device == 'cpu' else _gpus(num_gpus)
    if device == 'gpu' and not gpus:
        raise StrategyError('--device=gpu but TensorFlow sees no GPU on this machine')
    if name == 'mirrored':
        # Without GPUs, over the logical CPUs: one, unless the program split the CPU
        # (tf.config.set_logical_device_configuration), as tests do to run replicas.
        cpus = [device.name for device in tf.config.list_logical_devices('CPU')]
        return tf.distribute.MirroredStrategy(gpus or cpus)
    if not gpus:
        # On a CPU, OneDeviceStrategy('/cpu:0') ran the same DenseNet step markedly slower
        # than the default strategy, which is the same single replica without that cost.
        return tf.distribute.get_strategy()
    return tf.distribute.OneDeviceStrategy(gpus[0])


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the one worker that writes checkpoints, summaries and exports."""
    resolver = getattr(strategy, 'cluster_resolver', None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    return config_lib.chief_rule(
        resolver.task_type, resolver.task_id, 'chief' in resolver.cluster_spec().as_dict()
    )


def xla_compiles_updates(strategy: tf.distribute.Strategy) -> bool:
    """Whether an XLA-compiled replica function may update variables under `strategy`.

    The optimizer sums gradients over replicas inside its update. MirroredStrategy and
    MultiWorkerMirroredStrategy do that without a `merge_call` only under XLA on GPUs;
    on CPUs they need a `merge_call`, which XLA-compiled (nested) functions cannot make.
    One replica (the default strategy, OneDevice) and TPUs have no such limit.
    """
    if not isinstance(
        strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)
    ):
        return True
    return all('GPU' in device.upper() for device in strategy.extended.worker_devices)


def weights_fingerprint(variables: Iterable[tf.Variable]) -> str:
    """A SHA-256 of the variables' values: equal on workers whose weights are equal.

    Logged at the end of training, it shows in one line per worker that the replicas of
    a multi-worker run stayed bit-identical, without writing the weights anywhere.
    """
    digest = hashlib.sha256()
    for variable in variables:
        digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
    return digest.hexdigest()[:16]


def worker_id(strategy: tf.distribute.Strategy) -> int:
    resolver = getattr(strategy, 'cluster_resolver', None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 0
    return resolver.task_id or 0

"""The start-up banner: what this run is about to do, on which software and hardware.

A few lines at the top of the log answer the first questions asked of any run (which
TensorFlow, which devices, how many replicas, which data, how long an epoch is) before
anything slow happens, and stay in the log for whoever reads it later.
"""

import collections
from typing import List

import keras
import tensorflow as tf


def device_summary() -> str:
    """The logical devices TensorFlow sees, e.g. `1 CPU, 8 GPU (NVIDIA H100 80GB HBM3)`."""
    counts = collections.Counter(device.device_type for device in tf.config.list_logical_devices())
    names = []
    for gpu in tf.config.list_physical_devices('GPU'):
        try:
            name = tf.config.experimental.get_device_details(gpu).get('device_name')
        except (ValueError, tf.errors.OpError):
            name = None
        if name and name not in names:
            names.append(name)
    parts = []
    for kind, count in sorted(counts.items()):
        detail = f' ({", ".join(names)})' if kind == 'GPU' and names else ''
        parts.append(f'{count} {kind}{detail}')
    return ', '.join(parts) or 'none'


def banner_lines(
    *,
    model: str,
    num_classes: int,
    image_sizes: str,
    precision: str,
    strategy: tf.distribute.Strategy,
    global_batch_size: int,
    data_description: str,
    steps_per_epoch: int,
    total_steps: int,
    start_step: int,
    model_dir: str,
) -> List[str]:
    """The banner's lines, without a log prefix.

    Args:
      model: the model's name.
      num_classes: width of the classifier.
      image_sizes: the training and evaluation image sizes in words
        (`image_sizes.ImageSizes.describe`).
      precision: the compute dtype, e.g. 'bfloat16'.
      strategy: the run's strategy.
      global_batch_size: examples per step over all replicas.
      data_description: the data found: folder, layout, files and examples.
      steps_per_epoch: global steps in one epoch.
      total_steps: the global step the run ends at.
      start_step: the global step it starts (or resumes) at.
      model_dir: where the run writes.
    """
    replicas = strategy.num_replicas_in_sync
    # Outside any scope, get_strategy() is the default strategy: no distribution at all.
    name = 'default' if strategy is tf.distribute.get_strategy() else type(strategy).__name__
    return [
        f'Model: {model}, {num_classes} classes, {precision} compute',
        f'Images: {image_sizes}',
        f'TensorFlow {tf.__version__}, Keras {keras.__version__}',
        f'Devices: {device_summary()}',
        f'Strategy: {name}, {replicas} replica{"s" * (replicas != 1)}, '
        f'global batch {global_batch_size} ({global_batch_size // replicas} per replica)',
        f'Data: {data_description}',
        f'Steps: {steps_per_epoch} per epoch, {total_steps} in all '
        f'({total_steps / steps_per_epoch:.4g} epochs), starting at step {start_step}',
        f'Model dir: {model_dir}',
    ]

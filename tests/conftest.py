"""Shared test set-up: quiet TensorFlow, the repository root importable."""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _split_the_cpu_in_two():
    """Two logical CPU devices, so that MirroredStrategy can run two replicas here.

    It must happen before TensorFlow initialises its devices, hence at import of this
    file. Ops placed without a device still run on /cpu:0, so other tests see no change.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    cpu = tf.config.list_physical_devices('CPU')[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
    except RuntimeError:  # Devices already initialised (e.g. conftest imported late).
        pass


_split_the_cpu_in_two()

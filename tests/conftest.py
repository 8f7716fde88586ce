"""Shared test set-up: quiet TensorFlow, the repository root importable."""

import os
import sys

import pytest
from absl import logging as absl_logging

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


@pytest.fixture
def absl_info_logs():
    """absl's INFO lines reach pytest's `caplog`, whatever ran before.

    Until something sets it, absl's logger follows the root logger's level, which
    `caplog.at_level` raises to INFO. But `tf.saved_model.save` reads absl's verbosity
    and writes it back (`AutoTrackable._trackable_children`), which pins absl's logger
    at WARNING for the rest of the process once any test has exported a model.
    """
    before = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
    yield
    absl_logging.set_verbosity(before)


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory):
    """The bundled digits as Inception-format TFRecords, written once for every test.

    Tests only read it; a test that damages data makes its own copy.
    """
    path = str(tmp_path_factory.mktemp('digits') / 'data')
    from input_pipeline import digits  # pylint: disable=g-import-not-at-top

    digits.ensure_digits_dataset(path)
    return path

"""Shared test set-up: quiet TensorFlow, the repository root importable."""

import os
import sys

import pytest
from absl import logging as absl_logging

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _split_the_cpu_in_two(parts=2):
    """Two logical CPU devices, so that MirroredStrategy can run two replicas here.

    It must happen before TensorFlow initialises its devices, hence at import of this
    file. Ops placed without a device still run on /cpu:0, so other tests see no change.

    Returns None, or why the CPU could not be split: the mirrored tests skip with that
    reason (see `two_cpus`) rather than a guess. `parts` is the number of logical CPUs;
    a test asks for another number once TensorFlow has started, to see that failure.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    cpus = tf.config.list_physical_devices('CPU')
    if not cpus:
        return 'TensorFlow lists no physical CPU to split'
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * parts
        )
    except RuntimeError as error:
        # TensorFlow refuses once its devices are initialised: something ran TensorFlow
        # before pytest imported this file (a plugin, or a script calling pytest.main).
        return (
            'TensorFlow had already initialised its devices when tests/conftest.py tried '
            f'to split the CPU (RuntimeError: {error})'
        )
    except ValueError as error:
        return f'TensorFlow refused to split the CPU (ValueError: {error})'
    return None


# None, or why conftest.py could not make two logical CPUs.
_TWO_CPUS_MISSING = _split_the_cpu_in_two()


@pytest.fixture
def two_cpus():
    """A MirroredStrategy over the two logical CPUs, or a skip that says why there are none.

    The shared check of every mirrored test: a test that needs two replicas skips with
    the reason recorded at import (or the devices TensorFlow actually lists), never
    silently and never with a fixed message that hides the cause.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    if _TWO_CPUS_MISSING:
        pytest.skip(f'needs two logical CPUs: {_TWO_CPUS_MISSING}')
    cpus = [device.name for device in tf.config.list_logical_devices('CPU')]
    if len(cpus) < 2:
        pytest.skip(
            'needs two logical CPUs: tests/conftest.py split the CPU, yet TensorFlow '
            f'lists only {cpus}'
        )
    return tf.distribute.MirroredStrategy(cpus[:2])


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


# The test files that take longest, longest first. pytest-xdist (setup.cfg: two
# workers, whole files each) deals files out in collection order, so starting with
# these lets the short ones fill in around them; in alphabetical order the longest
# came last, and one worker ran them alone for minutes while the other sat idle.
_LONGEST_FIRST = (
    'determinism_test.py',
    'resume_kill_test.py',
    'trainer_test.py',
    'data_service_test.py',
    'densenet_test.py',
    'trainer_mixing_test.py',
    'features_test.py',
    'errors_test.py',
)


def pytest_collection_modifyitems(items):
    def rank(item):
        name = os.path.basename(str(item.path))
        return _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST)

    items.sort(key=rank)  # Stable: the order within a file, and of the rest, is kept.

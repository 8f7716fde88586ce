"""Whether this machine can run on Intel Gaudi, checked before habana-tensorflow loads.

No TensorFlow here: main.py checks before importing it.
"""

import glob
import importlib.util
import os

from base import errors

# Where a Gaudi machine shows its kernel driver and its devices (older drivers name the
# devices /dev/hlN, newer ones /dev/accel/accelN).
HABANA_DRIVER = '/sys/module/habanalabs'
HABANA_DEVICES = ('/dev/accel/accel[0-9]*', '/dev/hl[0-9]*')


def check_present() -> None:
    """Stops with one line unless habana-tensorflow, the Gaudi driver and a device are here.

    Checked before habana-tensorflow is loaded: on a machine without the driver its
    `load_habana_module()` prints "Unable to read habanalabs driver file", raises an
    AttributeError and then aborts the process ("terminate called without an active
    exception"), which no error handling can turn into a readable message.
    """
    if importlib.util.find_spec('habana_frameworks') is None:
        raise errors.UserError(
            '--device=hpu needs habana-tensorflow (module habana_frameworks.tensorflow), '
            'which is not installed here; run inside a Gaudi container (README.md, "Intel '
            'Gaudi")'
        )
    if not os.path.exists(HABANA_DRIVER):
        raise errors.UserError(
            f'--device=hpu: no Gaudi driver on this machine ({HABANA_DRIVER} is missing: '
            'the habanalabs kernel module is not loaded); run on a Gaudi machine, or '
            'without --device=hpu'
        )
    if not any(glob.glob(pattern) for pattern in HABANA_DEVICES):
        raise errors.UserError(
            '--device=hpu: the Gaudi driver is loaded but no Gaudi device is visible '
            f'(none of {", ".join(HABANA_DEVICES)}); check the container\'s device mounts'
        )

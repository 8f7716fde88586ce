"""Packaging. setup.cfg holds the metadata; this file names the TensorFlow distribution.

TensorFlow comes as several distributions of one module: `tensorflow`, and
`tensorflow-cpu`, which Habana's Gaudi container ships with habana-tensorflow. pip
knows them only by name, so requiring `tensorflow` makes `pip install .` inside that
container add the `tensorflow` wheel next to `tensorflow-cpu`, two distributions
writing one module (habana-tensorflow then aborts the process). There, README.md's
Gaudi command names the container's distribution instead:

    DENSENET_TENSORFLOW=tensorflow-cpu pip install .
"""

import os

from setuptools import setup

TENSORFLOW = os.environ.get('DENSENET_TENSORFLOW', 'tensorflow').strip() or 'tensorflow'

setup(
    install_requires=[
        f'{TENSORFLOW}>=2.15',
        'absl-py',
        'tensorboard',
        'numpy',
        'scikit-learn',
        'matplotlib',
    ]
)

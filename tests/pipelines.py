"""The train and eval pipelines built from flat keyword arguments, for tests.

`dataset.train_dataset` and `dataset.eval_dataset` take a preprocessing object; tests
name a few of its settings at a time, so this sorts keyword arguments into the
`Records`, `Augmentation` and preprocessing fields and the dataset's own arguments.
"""

from __future__ import annotations

import dataclasses

from input_pipeline import dataset
from input_pipeline import preprocessing


def _take(arguments: dict, cls) -> dict:
    names = {field.name for field in dataclasses.fields(cls)}
    return {name: arguments.pop(name) for name in list(arguments) if name in names}


def records(arguments: dict) -> preprocessing.Records:
    return preprocessing.Records(**_take(arguments, preprocessing.Records))


def train_preprocessing(**arguments) -> preprocessing.TrainPreprocessing:
    built = records(arguments)
    augmentation = preprocessing.Augmentation(**_take(arguments, preprocessing.Augmentation))
    return preprocessing.TrainPreprocessing(built, augmentation=augmentation, **arguments)


def train(files, **arguments):
    """`dataset.train_dataset(files, TrainPreprocessing(...), ...)` from flat arguments."""
    own = {
        name: arguments.pop(name)
        for name in (
            'image_size',
            'dtype',
            'num_classes',
            'label_offset',
            'schema',
            'skip_bad_records',
        )
        if name in arguments
    }
    own.update(_take(arguments, preprocessing.Augmentation))
    return dataset.train_dataset(files, train_preprocessing(**own), **arguments)


def evaluate(files, **arguments):
    """`dataset.eval_dataset(files, EvalPreprocessing(...), ...)` from flat arguments."""
    built = records(arguments)
    own = _take(arguments, preprocessing.EvalPreprocessing)
    own.pop('records', None)
    return dataset.eval_dataset(files, preprocessing.EvalPreprocessing(built, **own), **arguments)

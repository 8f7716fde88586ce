"""Weights for tests that compare two models: values that make every weight matter."""

import keras
import numpy as np


def randomise_batch_norm(model, rng):
    """Random scale, offset and moving statistics for every batch norm of `model`.

    Fresh batch norm (scale 1, offset 0, mean 0, variance 1) is nearly the identity in
    inference mode, so a copy that mixed up two layers' statistics would still agree.
    """
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, c).astype(np.float32),
                    rng.normal(0.0, 0.1, c).astype(np.float32),
                    rng.normal(0.0, 0.2, c).astype(np.float32),
                    rng.uniform(0.5, 2.0, c).astype(np.float32),
                ]
            )

"""SavedModel export, and loading an export back as an images -> logits function.

An export is a plain `tf.Module` with a serving signature, not a Keras archive: it
loads with `tf.saved_model.load` alone, in any TensorFlow 2 program, without this
project or Keras installed.
"""

import os
import shutil

import tensorflow as tf


class _Serving(tf.Module):
    """Holds the model and its serving function."""

    def __init__(self, model, image_size: int):
        super().__init__()
        self.model = model
        spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name='images')

        @tf.function(input_signature=[spec])
        def serve(images):
            """Normalised float images (the eval preprocessing's output) -> predictions."""
            logits = tf.cast(self.model(images, training=False), tf.float32)
            top5 = tf.math.top_k(logits, k=min(5, logits.shape[-1]))
            return {
                'logits': logits,
                'probabilities': tf.nn.softmax(logits),
                'top5_classes': top5.indices,
            }

        self.serve = serve


def export_saved_model(model, path: str, *, image_size: int, chief: bool = True) -> str:
    """Writes a SavedModel with a `serving_default` signature to `path`.

    Writing goes to a sibling temporary folder first and is renamed at the end, so a
    crash never leaves a half export under the final name. Non-chief workers (which
    must take part under MultiWorkerMirroredStrategy) write to a folder that is removed.
    """
    module = _Serving(model, image_size)
    target = path if chief else path + f'.tmp_worker_{os.getpid()}'
    tmp = target + '.partial'
    shutil.rmtree(tmp, ignore_errors=True)
    tf.saved_model.save(module, tmp, signatures={'serving_default': module.serve})
    if chief:
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def is_saved_model(path: str) -> bool:
    return tf.io.gfile.exists(os.path.join(path, 'saved_model.pb'))


def load_predict_fn(path: str):
    """Returns (images -> logits, image_size) for a SavedModel written by `export_saved_model`."""
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures['serving_default']
    spec = signature.structured_input_signature[1]['images']
    image_size = spec.shape[1]

    def predict(images):
        return signature(images=tf.cast(images, tf.float32))['logits']

    predict.loaded = loaded  # Keeps the restored variables alive.
    return predict, image_size

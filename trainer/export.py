"""SavedModel export with serving signatures, and loading an export back for evaluation.

An export is a plain `tf.Module`, not a Keras archive: it loads with
`tf.saved_model.load` alone, in any TensorFlow 2 program, without this project or
Keras installed. It has two signatures with the same outputs:

- `serving_default(images)`: float32 `[batch, size, size, 3]` images, already
  preprocessed as the evaluation pipeline does (central crop, resize, normalise);
- `serving_bytes(image_bytes)`: a batch of encoded images (JPEG, or PNG), with the
  evaluation preprocessing *inside* the graph, using the run's image size and crop
  fraction, so a client sends files and gets the trainer's own evaluation result.

Both return `logits`, `probabilities`, `top5_classes`, `top5_probabilities` and
`top5_names` (the class names the TFRecords carried; '' where unknown). The full name
list is the export's `class_names` variable.
"""

import os
import shutil
from typing import Optional, Sequence

import tensorflow as tf

from input_pipeline import augment
from trainer import nonfinite

SIGNATURE_IMAGES = 'serving_default'
SIGNATURE_BYTES = 'serving_bytes'


class _Serving(tf.Module):
    """Holds the model, the class names and the two serving functions."""

    def __init__(
        self,
        model,
        *,
        image_size: int,
        crop_fraction: float,
        class_names: Optional[Sequence[str]],
    ):
        super().__init__()
        self.model = model
        num_classes = int(model.outputs[0].shape[-1])
        names = list(class_names or [])[:num_classes]
        names += [''] * (num_classes - len(names))
        self.class_names = tf.Variable(names, dtype=tf.string, trainable=False, name='class_names')
        self.image_size = tf.Variable(image_size, trainable=False, name='image_size')
        self.crop_fraction = tf.Variable(crop_fraction, trainable=False, name='crop_fraction')
        k = min(5, num_classes)

        def predictions(images):
            logits = tf.cast(self.model(images, training=False), tf.float32)
            top = tf.math.top_k(logits, k=k)
            probabilities = tf.nn.softmax(logits)
            return {
                'logits': logits,
                'probabilities': probabilities,
                'top5_classes': top.indices,
                'top5_probabilities': tf.gather(probabilities, top.indices, batch_dims=1),
                'top5_names': tf.gather(self.class_names, top.indices),
            }

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name='images')
            ]
        )
        def serve(images):
            """Normalised float images (the eval preprocessing's output) -> predictions."""
            return predictions(images)

        def preprocess(encoded):
            # Exactly the evaluation pipeline's ops (input_pipeline.dataset.eval_dataset).
            image = augment.decode_and_center_crop(
                encoded, image_size=image_size, crop_fraction=crop_fraction
            )
            return augment.normalize(image, tf.float32)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='image_bytes')])
        def serve_bytes(image_bytes):
            """Encoded JPEG or PNG images -> predictions, preprocessed as in evaluation."""
            images = tf.map_fn(
                preprocess,
                image_bytes,
                fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
            )
            return predictions(images)

        self.serve = serve
        self.serve_bytes = serve_bytes


def export_saved_model(
    model,
    path: str,
    *,
    image_size: int,
    crop_fraction: float = augment.CENTER_CROP_FRACTION,
    class_names: Optional[Sequence[str]] = None,
    chief: bool = True,
) -> str:
    """Writes a SavedModel with the two serving signatures to `path`.

    Writing goes to a sibling temporary folder first and is renamed at the end, so a
    crash never leaves a half export under the final name. Non-chief workers (which
    must take part under MultiWorkerMirroredStrategy) write to a folder that is removed.

    Args:
      model: Keras model from normalised images to logits.
      path: the export folder (`model_dir/saves/epoch_NNN`).
      image_size: the side of the model's input images.
      crop_fraction: the evaluation's central crop, built into `serving_bytes`.
      class_names: the name of each class, stored in the export.
      chief: whether this worker's export is kept.

    Raises:
      nonfinite.NonFiniteError: a weight is NaN or infinite; nothing is exported.
    """
    bad = nonfinite.first_nonfinite(model.variables)
    if bad:
        raise nonfinite.NonFiniteError(f'{bad} is not finite: not exported to {path}')
    module = _Serving(
        model, image_size=image_size, crop_fraction=crop_fraction, class_names=class_names
    )
    target = path if chief else path + f'.tmp_worker_{os.getpid()}'
    tmp = target + '.partial'
    shutil.rmtree(tmp, ignore_errors=True)
    tf.saved_model.save(
        module,
        tmp,
        signatures={SIGNATURE_IMAGES: module.serve, SIGNATURE_BYTES: module.serve_bytes},
    )
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
    signature = loaded.signatures[SIGNATURE_IMAGES]
    spec = signature.structured_input_signature[1]['images']
    image_size = spec.shape[1]

    def predict(images):
        return signature(images=tf.cast(images, tf.float32))['logits']

    predict.loaded = loaded  # Keeps the restored variables alive.
    return predict, image_size

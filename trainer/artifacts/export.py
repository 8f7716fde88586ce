"""SavedModel export with serving signatures, and loading an export back for evaluation.

An export is a plain `tf.Module`, not a Keras archive: it loads with
`tf.saved_model.load` alone, in any TensorFlow 2 program, without this project or
Keras installed, and TensorFlow Serving and `saved_model_cli` serve it as it is. Its
signatures differ only in what they take:

- `serving_default(image_bytes)`: a batch of encoded images (JPEG or PNG; string
  `[batch]`), with the evaluation preprocessing *inside* the graph (central crop,
  resize, normalise; the run's image size and crop fraction), so a client sends files
  and gets the trainer's own evaluation result. It is the default because files are
  what a deployed classifier is sent: TensorFlow Serving answers a request that names
  no signature with `serving_default`, its REST API carries bytes as `{"b64": ...}`,
  and its convention names a bytes input `..._bytes`.
- `serving_uint8(images)`: uint8 `[batch, height, width, 3]` RGB pixels of any size
  (one size per batch), with the same crop, resize and normalisation inside, for
  clients that hold decoded pixels;
- `serving_images(images)`: float32 `[batch, size, size, 3]` images already
  preprocessed as the evaluation pipeline does: the trainer's own contract, which
  `load_predict_fn` (`main.py --only_eval`) feeds from the eval pipeline.

All return the same outputs: `logits`, `probabilities`, `top5_classes`,
`top5_probabilities` and `top5_names` (the class names the TFRecords carried; '' where
unknown). The full name list is the export's `class_names` variable.

Exports written before `serving_images` existed took the float images in
`serving_default` and the bytes in `serving_bytes`; `load_predict_fn` (and
`trainer/tools/predict.py`) recognise a signature by its input, so they still read them.

Names and unfinished exports. `saves/epoch_NNN` is the export at the end of epoch NNN;
a run whose last step ends inside an epoch (`--train_steps`) exports that step too, as
`saves/epoch_NNN.FFFF`: the epochs it had trained, to four decimals, cut off rather
than rounded (`export_name`). That name sorts between the two epoch ends around it, so
the newest export is the last in epoch order whatever its kind; it says that epoch
NNN + 1 is unfinished, never claims an epoch that was not trained, and overwrites no
epoch's export. An export is written to `NAME.partial` and renamed once complete; an
export it replaces is first renamed to `NAME.old` and removed after. A kill leaves at
most those two, which nothing reads (`trainer/tools/predict.py` takes only complete names;
`--only_eval` refuses them, `refuse_unfinished`) and a run's start removes
(`remove_unfinished`).
"""

import os
import re
import shutil
from typing import List, Optional, Sequence

import tensorflow as tf

from input_pipeline import augment
from base import errors
from trainer.engine import nonfinite

SIGNATURE_BYTES = 'serving_default'  # tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
SIGNATURE_UINT8 = 'serving_uint8'
SIGNATURE_IMAGES = 'serving_images'
INPUT_BYTES = 'image_bytes'
INPUT_IMAGES = 'images'  # The input of both SIGNATURE_UINT8 and SIGNATURE_IMAGES.
# What every signature returns.
OUTPUTS = ('logits', 'probabilities', 'top5_classes', 'top5_probabilities', 'top5_names')

# Where older exports kept the float-image signature (their `serving_default`), and the
# encoded-image one (their `serving_bytes`).
_OLDER_SIGNATURES_IMAGES = ('serving_default',)
OLDER_SIGNATURES_BYTES = ('serving_bytes',)

# An export being written, and one being replaced: never read, removed at a run's start.
PARTIAL_SUFFIX = '.partial'
OLD_SUFFIX = '.old'
# A complete export's name (`export_name`).
COMPLETE_NAME = re.compile(r'epoch_(\d{3,})(?:\.(\d{4}))?')


def export_name(step: int, steps_per_epoch: int) -> str:
    """`epoch_NNN` at the end of epoch NNN, else `epoch_NNN.FFFF` (epochs trained, cut off).

    Cut off, not rounded: step 45 of 23-step epochs is `epoch_001.9565`, and no step
    of epoch 3 can be named `epoch_003.0000`, which would sort after `epoch_003`.
    """
    epochs, rest = divmod(step, steps_per_epoch)
    if not rest:
        return f'epoch_{epochs:03d}'
    return f'epoch_{epochs:03d}.{rest * 10000 // steps_per_epoch:04d}'


def is_unfinished(path: str) -> bool:
    """Whether `path` names an export still being written or replaced (see the docstring)."""
    return os.path.basename(path.rstrip('/')).endswith((PARTIAL_SUFFIX, OLD_SUFFIX))


def refuse_unfinished(path: str, flag: str) -> None:
    """Raises a one-line `errors.UserError` when `flag`'s `path` is an unfinished export."""
    if is_unfinished(path):
        raise errors.UserError(
            f'{flag}={path} is an unfinished export (a run stopped while writing or '
            'replacing it; the next training start removes it): give a complete '
            'saves/epoch_NNN'
        )


def _epoch_order(name: str):
    """The sort key of a complete export's name: epoch NNN's end before NNN.FFFF."""
    whole, fraction = COMPLETE_NAME.fullmatch(name).groups()
    return int(whole), -1 if fraction is None else int(fraction)


def find_export(path: str) -> str:
    """`path` if it is a SavedModel, else the newest complete export below a model_dir.

    Raises:
      errors.UserError: `path` is an unfinished export, or neither a SavedModel nor a
        model_dir with a complete export.
    """
    if is_unfinished(path):
        raise errors.UserError(
            f'--model={path} is an unfinished export (a run stopped while writing or '
            'replacing it); give a complete saves/epoch_NNN, or the model_dir'
        )
    if os.path.exists(os.path.join(path, 'saved_model.pb')):
        return path
    saves = os.path.join(path, 'saves')
    names = sorted(os.listdir(saves)) if os.path.isdir(saves) else []
    complete = [
        name
        for name in names
        if COMPLETE_NAME.fullmatch(name)
        and os.path.exists(os.path.join(saves, name, 'saved_model.pb'))
    ]
    if not complete:
        unfinished = [name for name in names if is_unfinished(name)]
        only = f' (only unfinished ones: {", ".join(unfinished)})' if unfinished else ''
        raise errors.UserError(
            f'--model={path} is neither a SavedModel nor a model_dir with a complete '
            f'export in saves/{only}'
        )
    return os.path.join(saves, max(complete, key=_epoch_order))


def remove_unfinished(saves_dir: str) -> List[str]:
    """Removes the unfinished exports a killed run left in `saves_dir`; returns their paths.

    Call it only where no export is being written: at the start of a run, on the chief.
    """
    if not tf.io.gfile.isdir(saves_dir):
        return []
    removed = []
    for name in sorted(tf.io.gfile.listdir(saves_dir)):
        path = os.path.join(saves_dir, name.rstrip('/'))
        if is_unfinished(path):
            tf.io.gfile.rmtree(path)
            removed.append(path)
    return removed


class _Serving(tf.Module):
    """Holds the model's variables, the class names and the three serving functions."""

    def __init__(
        self,
        model,
        *,
        image_size: int,
        crop_fraction: float,
        class_names: Optional[Sequence[str]],
    ):
        super().__init__()
        num_classes = int(model.outputs[0].shape[-1])
        names = list(class_names or [])[:num_classes]
        names += [''] * (num_classes - len(names))
        self.class_names = tf.Variable(names, dtype=tf.string, trainable=False, name='class_names')
        self.image_size = tf.Variable(image_size, trainable=False, name='image_size')
        self.crop_fraction = tf.Variable(crop_fraction, trainable=False, name='crop_fraction')
        k = min(5, num_classes)

        def predictions(images):
            logits = tf.cast(model(images, training=False), tf.float32)
            top = tf.math.top_k(logits, k=k)
            probabilities = tf.nn.softmax(logits)
            return {
                'logits': logits,
                'probabilities': probabilities,
                'top5_classes': top.indices,
                'top5_probabilities': tf.gather(probabilities, top.indices, batch_dims=1),
                'top5_names': tf.gather(self.class_names, top.indices),
            }

        def preprocess_encoded(encoded):
            # Exactly the evaluation pipeline's ops (input_pipeline.dataset.eval_dataset).
            image = augment.decode_and_center_crop(
                encoded, image_size=image_size, crop_fraction=crop_fraction
            )
            return augment.normalize(image, tf.float32)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_BYTES)])
        def serve_bytes(image_bytes):
            """Encoded JPEG or PNG images -> predictions, preprocessed as in evaluation."""
            images = tf.map_fn(
                preprocess_encoded,
                image_bytes,
                fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
            )
            return predictions(images)

        @tf.function(
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_IMAGES)]
        )
        def serve_uint8(images):
            """Decoded RGB pixels of any size -> predictions, preprocessed as in evaluation.

            The same window (`augment.central_crop_window`), the same bilinear resize of
            uint8 pixels, rounded to uint8, and the same normalisation as the evaluation
            (`augment.decode_window`, then the eval step's `augment.normalize`), which
            decodes only the window of a JPEG. Sliced from a whole decoded JPEG, the
            window's pixels equal that partial decode's except, at times, in its first
            and last columns (libjpeg's chroma upsampling at a crop edge), which a
            resize to a much smaller side seldom reads: this matches `serving_default`
            on the same file closely, not always bit for bit. One window serves the
            whole batch, whose images share one size.
            """
            window = augment.central_crop_window(tf.shape(images)[1:3], crop_fraction)
            cropped = images[
                :, window[0] : window[0] + window[2], window[1] : window[1] + window[3], :
            ]
            resized = tf.image.resize(cropped, [image_size, image_size], method='bilinear')
            return predictions(augment.normalize(augment.to_uint8(resized), tf.float32))

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=INPUT_IMAGES)
            ]
        )
        def serve_images(images):
            """Normalised float images (the eval preprocessing's output) -> predictions."""
            return predictions(images)

        self.serve_bytes = serve_bytes
        self.serve_uint8 = serve_uint8
        self.serve_images = serve_images
        # The model is reached only through the functions' closure; the tf.Variables
        # they read are tracked themselves. Were the Keras model tracked instead, each
        # Keras 3 variable would be exported as a new copy of the tf.Variable it wraps:
        # the checkpoint restores the copy while the functions read the original, a
        # link that only `tf.saved_model.load` makes. TensorFlow Serving and
        # `saved_model_cli run` load the graph as it is, and stopped with "Could not
        # find variable conv3_block1_0_bn/moving_mean" (tests/export_test.py runs
        # `saved_model_cli` on an export).
        own = (self.class_names, self.image_size, self.crop_fraction)
        used = {}
        for function in (serve_bytes, serve_uint8, serve_images):
            for variable in function.get_concrete_function().variables:
                if not any(variable is mine for mine in own):
                    used.setdefault(id(variable), variable)
        self.model_variables = list(used.values())

    def signature_functions(self) -> dict:
        return {
            SIGNATURE_BYTES: self.serve_bytes,
            SIGNATURE_UINT8: self.serve_uint8,
            SIGNATURE_IMAGES: self.serve_images,
        }


def export_saved_model(
    model,
    path: str,
    *,
    image_size: int,
    crop_fraction: float = augment.CENTER_CROP_FRACTION,
    class_names: Optional[Sequence[str]] = None,
    chief: bool = True,
) -> str:
    """Writes a SavedModel with the three serving signatures to `path`.

    Writing goes to `path.partial` first and is renamed at the end, so a crash never
    leaves a half export under the final name. An export already at `path` (the same
    step exported again by a resumed run) is renamed to `path.old` before and removed
    after: `path` is always either the old export or the new, whole. Non-chief workers
    (which must take part under MultiWorkerMirroredStrategy) write to a folder that is
    removed.

    Args:
      model: Keras model from normalised images to logits.
      path: the export folder (`model_dir/saves/` and an `export_name`).
      image_size: the side of the model's input images.
      crop_fraction: the evaluation's central crop, built into `serving_default` and
        `serving_uint8`.
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
    tmp = target + PARTIAL_SUFFIX
    shutil.rmtree(tmp, ignore_errors=True)
    tf.saved_model.save(module, tmp, signatures=module.signature_functions())
    if chief:
        old = path + OLD_SUFFIX
        shutil.rmtree(old, ignore_errors=True)
        if os.path.exists(path):
            # Deleting it in place would leave, if killed, a folder with a complete
            # name and half its files.
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _takes_float_images(signature) -> bool:
    """Whether `signature` takes one float32 `[batch, size, size, 3]` `images` input."""
    inputs = signature.structured_input_signature[1]
    spec = inputs.get(INPUT_IMAGES)
    return (
        len(inputs) == 1
        and spec is not None
        and spec.dtype == tf.float32
        and spec.shape.rank == 4
        and 'logits' in signature.structured_outputs
    )


def load_predict_fn(path: str):
    """Returns (images -> logits, image_size) for a SavedModel written by `export_saved_model`.

    The images are the eval pipeline's normalised floats, so the signature taking those
    is looked up by its input, not by a fixed name: it is `serving_images` in exports of
    this version and `serving_default` in older ones, whose `--only_eval` keeps working.

    Raises:
      errors.UserError: no signature of the export takes normalised float images.
    """
    loaded = tf.saved_model.load(path)
    for name in (SIGNATURE_IMAGES, *_OLDER_SIGNATURES_IMAGES):
        signature = loaded.signatures.get(name)
        if signature is not None and _takes_float_images(signature):
            break
    else:
        raise errors.UserError(
            f'{path} has no signature that takes float32 images '
            f'({SIGNATURE_IMAGES}({INPUT_IMAGES}) or an older serving_default({INPUT_IMAGES})); '
            f'its signatures: {", ".join(sorted(loaded.signatures)) or "none"}'
        )
    image_size = signature.structured_input_signature[1][INPUT_IMAGES].shape[1]

    def predict(images):
        return signature(**{INPUT_IMAGES: tf.cast(images, tf.float32)})['logits']

    predict.loaded = loaded  # Keeps the restored variables alive.
    return predict, image_size

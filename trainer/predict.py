"""Classifies image files with an exported model and prints the top-5 classes.

  python -m trainer.predict --model=/runs/d121/saves/epoch_090 cat.jpg dog.jpg
  python -m trainer.predict --model=/runs/d121 cat.jpg        # the run's newest export

A run folder's newest export is the last of its complete ones in epoch order:
`saves/epoch_NNN`, and `saves/epoch_NNN.FFFF` for a run that ended inside an epoch
(`trainer/export.py` says why that name). Unfinished ones (`.partial`, `.old`: a run
stopped while writing them) are never read, and one given by name is refused.

The export's signature for encoded images (`serving_default`; `serving_bytes` in
exports of older versions) does the evaluation preprocessing itself, so this reads the
files' bytes and nothing else; it needs neither Keras nor the dataset.
Names are printed where the export carries them (from the TFRecords' class text or
synset), else class indices only.

Its few options are parsed with argparse rather than absl flags: absl flags are
global to a process and belong to `main.py` alone, and this small separate entry
point should not share or clash with them.
"""

import argparse
import os
import re
import sys
from typing import List, Sequence

# trainer.export's names, without importing it (it imports the input pipeline).
SIGNATURE_BYTES = 'serving_default'
INPUT_BYTES = 'image_bytes'
# Where older exports kept the encoded-image signature (their `serving_default` took
# float images).
_OLDER_SIGNATURES_BYTES = ('serving_bytes',)
# trainer.export's names of a complete export and of unfinished ones.
COMPLETE_NAME = re.compile(r'epoch_(\d{3,})(?:\.(\d{4}))?')
UNFINISHED_SUFFIXES = ('.partial', '.old')


class PredictError(Exception):
    """A problem the user can fix (a path, a file); printed as one line."""


def _epoch_order(name: str):
    """The sort key of a complete export's name: epoch NNN's end before NNN.FFFF."""
    whole, fraction = COMPLETE_NAME.fullmatch(name).groups()
    return int(whole), -1 if fraction is None else int(fraction)


def find_export(path: str) -> str:
    """`path` if it is a SavedModel, else the newest complete export below a model_dir.

    Raises:
      PredictError: `path` is an unfinished export, or neither a SavedModel nor a
        model_dir with a complete export.
    """
    if os.path.basename(path.rstrip('/')).endswith(UNFINISHED_SUFFIXES):
        raise PredictError(
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
        unfinished = [name for name in names if name.endswith(UNFINISHED_SUFFIXES)]
        only = f' (only unfinished ones: {", ".join(unfinished)})' if unfinished else ''
        raise PredictError(
            f'--model={path} is neither a SavedModel nor a model_dir with a complete '
            f'export in saves/{only}'
        )
    return os.path.join(saves, max(complete, key=_epoch_order))


def format_predictions(name: str, classes, probabilities, names) -> List[str]:
    """The lines printed for one image: its name, then rank, probability, class and name."""
    lines = [name]
    for rank, (index, probability, label) in enumerate(zip(classes, probabilities, names), 1):
        label = label.decode('utf8', 'replace') if isinstance(label, bytes) else label
        lines.append(f'  {rank}. {probability:7.4f}  {int(index):4d}  {label}'.rstrip())
    return lines


def _bytes_signature(loaded, export: str):
    """The signature of `loaded` that takes a batch of encoded images as `image_bytes`.

    Recognised by its input rather than its name, so that exports of older versions,
    which had it under `serving_bytes`, still classify.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    for name in (SIGNATURE_BYTES, *_OLDER_SIGNATURES_BYTES):
        signature = loaded.signatures.get(name)
        if signature is None:
            continue
        inputs = signature.structured_input_signature[1]
        if list(inputs) == [INPUT_BYTES] and inputs[INPUT_BYTES].dtype == tf.string:
            return signature
    raise PredictError(
        f'{export} has no signature that takes encoded images as {INPUT_BYTES} (exported '
        'by an early version, or not by this trainer); evaluate it with main.py --only_eval'
    )


def predict(model_path: str, image_paths: Sequence[str]) -> List[str]:
    """Returns the printed lines for `image_paths` classified by the export at `model_path`."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  # After argument errors.

    export = find_export(model_path)
    loaded = tf.saved_model.load(export)
    classify = _bytes_signature(loaded, export)
    lines = []
    for path in image_paths:
        try:
            with open(path, 'rb') as stream:
                encoded = stream.read()
        except OSError as error:
            raise PredictError(f'cannot read {path}: {error.strerror}') from None
        try:
            outputs = classify(**{INPUT_BYTES: tf.constant([encoded])})
        except tf.errors.InvalidArgumentError:
            raise PredictError(f'{path} is not a JPEG or PNG image') from None
        lines += format_predictions(
            path,
            outputs['top5_classes'][0].numpy(),
            outputs['top5_probabilities'][0].numpy(),
            outputs['top5_names'][0].numpy(),
        )
    return lines


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m trainer.predict',
        description='Print the top-5 classes of images, using an exported model.',
    )
    parser.add_argument(
        '--model',
        required=True,
        help='a SavedModel (saves/epoch_NNN), or a model_dir: its newest complete export',
    )
    parser.add_argument('images', nargs='+', help='JPEG or PNG files')
    args = parser.parse_args(argv)
    try:
        lines = predict(args.model, args.images)
    except PredictError as error:
        print(f'predict: error: {error}', file=sys.stderr)
        return 1
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())

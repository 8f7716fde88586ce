"""Classifies image files with an exported model and prints the top-5 classes.

  python -m trainer.tools.predict --model=/runs/d121/saves/epoch_090 cat.jpg dog.jpg
  python -m trainer.tools.predict --model=/runs/d121 cat.jpg        # the run's newest export

A model_dir's newest export is the last of its complete ones in epoch order:
`saves/epoch_NNN`, and `saves/epoch_NNN.FFFF` for a run that ended inside an epoch
(`trainer/artifacts/export.py` says why that name). Unfinished ones (`.partial`, `.old`: a run
stopped while writing them) are never read, and one given by name is refused.

The export's signature for encoded images (`serving_default`; `serving_bytes` in
exports of older versions) does the evaluation preprocessing itself, so this reads the
files' bytes and nothing else; it needs neither Keras nor the dataset.
Names are printed where the export carries them (from the TFRecords' class text or
synset), else class indices only.

Its few options are parsed with argparse rather than absl flags: absl flags are
global to a process and belong to the training command alone, and this small
separate entry point (`densenet-predict` once installed) should not share or clash
with them. The export's names and the rule for its newest one are
`trainer/artifacts/export.py`'s.
"""

import argparse
import sys
from typing import List, Sequence

from base import errors


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

    from trainer.artifacts import export as export_lib  # pylint: disable=g-import-not-at-top

    names, wanted = (
        (export_lib.SIGNATURE_BYTES, *export_lib.OLDER_SIGNATURES_BYTES),
        export_lib.INPUT_BYTES,
    )
    for name in names:
        signature = loaded.signatures.get(name)
        if signature is None:
            continue
        inputs = signature.structured_input_signature[1]
        if list(inputs) == [wanted] and inputs[wanted].dtype == tf.string:
            return signature
    raise errors.UserError(
        f'{export} has no signature that takes encoded images as {wanted} (exported '
        'by an early version, or not by this trainer); evaluate it with main.py --only_eval'
    )


def predict(model_path: str, image_paths: Sequence[str]) -> List[str]:
    """Returns the printed lines for `image_paths` classified by the export at `model_path`."""
    # After argument errors: TensorFlow, and the export's names and rules.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    from trainer.artifacts import export as export_lib  # pylint: disable=g-import-not-at-top

    export = export_lib.find_export(model_path)
    loaded = tf.saved_model.load(export)
    classify = _bytes_signature(loaded, export)
    lines = []
    for path in image_paths:
        try:
            with open(path, 'rb') as stream:
                encoded = stream.read()
        except OSError as error:
            raise errors.UserError(f'cannot read {path}: {error.strerror}') from None
        try:
            outputs = classify(**{export_lib.INPUT_BYTES: tf.constant([encoded])})
        except tf.errors.InvalidArgumentError:
            raise errors.UserError(f'{path} is not a JPEG or PNG image') from None
        lines += format_predictions(
            path,
            outputs['top5_classes'][0].numpy(),
            outputs['top5_probabilities'][0].numpy(),
            outputs['top5_names'][0].numpy(),
        )
    return lines


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m trainer.tools.predict',
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
    except errors.UserError as error:
        print(f'predict: error: {error}', file=sys.stderr)
        return 1
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())

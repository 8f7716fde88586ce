"""ImageNet-layout TFRecords in, augmented batches out; knows nothing of the model.

formats.py         the three on-disk layouts (TF-slim, Cloud TPU, TFDS): files, keys, labels
records.py         reads TFRecord shards, naming a truncated or corrupt file
decode.py          record parsing with its checks (labels, image bytes); RGB decode
augment.py         stateless kernels: Inception crop fused with decode, flip, colour, normalise
randaugment.py     RandAugment's 14 operations, stateless
mixing.py          batch-level mixup and CutMix (soft labels)
seeds.py           the seed contract: every random choice from (seed, epoch, pipeline, position)
preprocessing.py   Augmentation settings; what a record becomes in training and evaluation
dataset.py         the tf.data graphs: which records, in which order (train), each once (eval)
writer.py          images (or a folder per class) -> TFRecord shards in the slim layout
build_imagenet.py  the ILSVRC2012 downloads (tars or folders) -> verified slim shards
digits.py          the bundled demo dataset, built from scikit-learn's digits scans
"""

# The on-disk layouts a dataset folder may have (formats.py); --data_layout's choices.
LAYOUTS = ('slim', 'tpu', 'tfds')


class DataError(ValueError):
    """The data, or where it is said to be, is not what the pipeline can read: a bad label,
    image, record, layout or address, described in one line naming the file or flag."""


class MissingDataError(DataError, FileNotFoundError):
    """A dataset folder or file that is named is not there."""

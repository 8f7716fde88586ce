"""Class names for labels, read from the TFRecords that carry them.

The TF-slim and TPU ImageNet records carry each example's class as text
(`image/class/text`, "tench, Tinca tinca") and WordNet id (`image/class/synset`,
"n01440764"). Exports embed the names so that `trainer.tools.predict` can print them
without the dataset. Reading them costs a pass over some validation records, so it
is done once per process, when the first export needs them, and bounded: with the
validation records in random class order (as `build_imagenet_data.py` writes them)
about 7,500 records name all 1,000 classes.
"""

from typing import List, Optional, Sequence

import tensorflow as tf

# Enough for ImageNet's validation set to name every class with near certainty, while
# reading ~1.3 GB at most.
MAX_RECORDS = 10000

_FEATURES = {
    'image/class/label': tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    'image/class/text': tf.io.FixedLenFeature([], tf.string, default_value=''),
    'image/class/synset': tf.io.FixedLenFeature([], tf.string, default_value=''),
}


def read_class_names(
    files: Sequence[str],
    *,
    num_classes: int,
    label_offset: int = 1,
    max_records: int = MAX_RECORDS,
) -> Optional[List[str]]:
    """Returns the name of each label 0..num_classes-1 ('' where none was seen), or None.

    A label's name is its text, or its synset where the records have no text.

    Args:
      files: TFRecord files (the validation split).
      num_classes: number of labels.
      label_offset: subtracted from stored labels, as in the input pipeline.
      max_records: stop after reading this many records.

    Returns:
      None when the records carry no names at all (the TFDS layout, or bare labels).
    """
    if not files:
        return None
    names = [''] * num_classes
    missing = num_classes
    records = tf.data.TFRecordDataset(list(files)).take(max_records).batch(256)
    for batch in records:
        parsed = tf.io.parse_example(batch, _FEATURES)
        labels = (parsed['image/class/label'] - label_offset).numpy()
        texts = parsed['image/class/text'].numpy()
        synsets = parsed['image/class/synset'].numpy()
        for label, text, synset in zip(labels, texts, synsets):
            if 0 <= label < num_classes and not names[label] and (text or synset):
                names[label] = (text or synset).decode('utf8', 'replace')
                missing -= 1
        if not missing:
            break
    return names if missing < num_classes else None


class LazyClassNames:
    """`read_class_names` on first use only, then remembered (exports call it every epoch)."""

    def __init__(self, files: Sequence[str], *, num_classes: int, label_offset: int = 1):
        self._args = (list(files), num_classes, label_offset)
        self._names: Optional[List[str]] = None
        self._done = False

    def get(self) -> Optional[List[str]]:
        if not self._done:
            files, num_classes, label_offset = self._args
            self._names = read_class_names(
                files, num_classes=num_classes, label_offset=label_offset
            )
            self._done = True
        return self._names

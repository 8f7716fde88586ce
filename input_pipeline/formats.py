"""The on-disk layouts of ImageNet TFRecords, and how to tell them apart.

Three tools write most of the ImageNet TFRecords in use, each its own way:

- `slim`: Inception / TF-slim `build_imagenet_data.py`. Shards `train-00000-of-01024`
  and `validation-00000-of-00128` side by side in one folder; the image under
  `image/encoded`, the label under `image/class/label`, 1..1000 (0 was "background"),
  plus synset, text and, on some train images, bounding boxes.
- `tpu`: Cloud TPU `imagenet_to_gcs.py`. The same keys and 1-based labels, with the
  shards in `train/` and `validation/` sub-folders.
- `tfds`: TensorFlow Datasets `imagenet2012`. Shards
  `imagenet2012-train.tfrecord-00000-of-01024` (and `...-validation.tfrecord-...`), the
  image under `image`, the label under `label`, 0..999.

`find_dataset` recognises the layout from the file names, the keys from the first
record and the label offset from the keys (and from that record's label), and says
what it found; a layout or an offset given by the user overrides what it would guess.
The layout and the keys are independent on purpose: records with slim keys written
flat or into sub-folders are both common, and both read the same.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Optional, Sequence

import tensorflow as tf
from absl import logging
from google.protobuf import message
from input_pipeline import records
from input_pipeline import LAYOUTS, DataError, MissingDataError

SPLITS = ('train', 'validation')


@dataclasses.dataclass(frozen=True)
class RecordSchema:
    """Where a record keeps its image and label, and which label convention it follows.

    Attributes:
      name: `slim` (the Inception / TF-slim keys, also used by the TPU script) or `tfds`.
      image_key: feature holding the encoded image.
      label_key: int64 feature holding the class.
      label_offset: subtracted from stored labels to make them 0-based (1 for the
        slim keys, whose labels run 1..1000; 0 for TFDS).
      has_boxes: whether records may carry `image/object/bbox/*` boxes.
    """

    name: str
    image_key: str
    label_key: str
    label_offset: int
    has_boxes: bool


SLIM_SCHEMA = RecordSchema(
    name='slim',
    image_key='image/encoded',
    label_key='image/class/label',
    label_offset=1,
    has_boxes=True,
)
TFDS_SCHEMA = RecordSchema(
    name='tfds', image_key='image', label_key='label', label_offset=0, has_boxes=False
)
SCHEMAS = (SLIM_SCHEMA, TFDS_SCHEMA)


@dataclasses.dataclass(frozen=True)
class DatasetFiles:
    """A dataset on disk as `find_dataset` found it.

    Attributes:
      dataset_dir: the folder that was searched.
      layout: one of `LAYOUTS`.
      train_files: sorted train shards (may be empty when only validation is needed).
      validation_files: sorted validation shards.
      schema: the record keys.
      label_offset: subtracted from stored labels.
      how: how the layout, keys and offset were decided, for the log.
    """

    dataset_dir: str
    layout: str
    train_files: tuple[str, ...]
    validation_files: tuple[str, ...]
    schema: RecordSchema
    label_offset: int
    how: str

    def files(self, split: str) -> tuple[str, ...]:
        return self.train_files if split == 'train' else self.validation_files

    def describe(self) -> str:
        """One line for the log and the start-up banner."""
        return (
            f'{self.dataset_dir}: {self.layout} layout, {len(self.train_files)} train and '
            f'{len(self.validation_files)} validation files, keys '
            f'{self.schema.image_key!r}/{self.schema.label_key!r}, label offset '
            f'{self.label_offset} ({self.how})'
        )


def split_pattern(dataset_dir: str, layout: str, split: str) -> str:
    """The glob that matches one split's shards in one layout."""
    if layout == 'slim':
        return os.path.join(dataset_dir, f'{split}-*-of-*')
    if layout == 'tpu':
        return os.path.join(dataset_dir, split, f'{split}-*-of-*')
    if layout == 'tfds':
        # `{name}-{split}.tfrecord-00000-of-01024`, the name being `imagenet2012` for
        # ImageNet (and, for a TFDS data_dir, in `imagenet2012/5.1.0/` below it).
        return os.path.join(dataset_dir, f'*-{split}.tfrecord-*-of-*')
    raise DataError(f'unknown data layout {layout!r}: expected one of {", ".join(LAYOUTS)}')


# The numbering every layout gives its shards: `...-00003-of-01024`.
_SHARD_NUMBER = re.compile(r'-(\d+)-of-(\d+)$')


def check_folder(dataset_dir: str) -> None:
    """Fails unless `dataset_dir` is a folder, saying whether it is missing or a file."""
    if tf.io.gfile.isdir(dataset_dir):
        return
    if tf.io.gfile.exists(dataset_dir):
        raise DataError(
            f'dataset directory {dataset_dir} is a file, not a folder: give the folder '
            'that holds the TFRecord shards'
        )
    raise MissingDataError(f'dataset directory {dataset_dir} does not exist')


def check_shards(files: Sequence[str]) -> None:
    """Checks that one split's shards add up, from their names and sizes.

    `name-00003-of-01024` says which shard of how many a file is, so a set of them
    tells what it lacks or mixes. Shards of two builds (two counts, or a number at or
    past its count: `train-00004-of-00004`) would be read together as one split, so
    they are refused. Missing numbers (an interrupted copy, or a subset chosen on
    purpose) and empty files (a failed copy, or a split written into more shards
    than it has examples) are read as they are, with a warning naming them.

    Raises:
      DataError: naming a file of another build.
    """
    numbered = {}
    for path in files:
        match = _SHARD_NUMBER.search(path)
        if match:
            numbered[path] = int(match.group(1)), int(match.group(2))
    counts = sorted({count for _, count in numbered.values()})
    if len(counts) > 1:
        examples = [next(p for p, (_, n) in numbered.items() if n == count) for count in counts]
        raise DataError(
            f'shards of {len(counts)} builds side by side: {examples[0]} is one of '
            f'{counts[0]}, {examples[1]} one of {counts[1]}: keep one set of files'
        )
    for path, (index, count) in numbered.items():
        if index >= count:
            raise DataError(
                f'{path} is numbered past its count (shards of {count} run from 0 to '
                f'{count - 1}): a file of another build, or renamed; remove it'
            )
    if numbered:
        count = counts[0]
        present = {index for index, _ in numbered.values()}
        missing = [index for index in range(count) if index not in present]
        if missing:
            some = next(iter(numbered))
            first = _SHARD_NUMBER.sub(f'-{missing[0]:05d}-of-{count:05d}', some)
            logging.warning(
                'input_pipeline: %d of the %d shards %s are missing (%s first); reading '
                'the %d that are there',
                len(missing),
                count,
                _SHARD_NUMBER.sub(f'-*-of-{count:05d}', some),
                first,
                len(present),
            )
    empty = [path for path, size in zip(files, records.file_sizes(files)) if size == 0]
    if empty:
        logging.warning(
            'input_pipeline: %d shard%s empty (0 bytes, no records): %s',
            len(empty),
            ' is' if len(empty) == 1 else 's are',
            ', '.join(empty[:3]) + (' ...' if len(empty) > 3 else ''),
        )


def _tfds_version_dirs(dataset_dir: str) -> list[str]:
    """`dataset_dir/<name>/<version>/` folders of a TFDS data_dir, newest version last."""
    found = tf.io.gfile.glob(os.path.join(dataset_dir, '*', '*', '*.tfrecord-*-of-*'))

    def version(folder: str) -> tuple:
        return tuple(int(part) if part.isdigit() else -1 for part in re.split(r'\.', folder))

    folders = {os.path.dirname(path) for path in found}
    return sorted(folders, key=lambda folder: version(os.path.basename(folder)))


def _glob(dataset_dir: str, layout: str, split: str) -> list[str]:
    return sorted(tf.io.gfile.glob(split_pattern(dataset_dir, layout, split)))


def _first_record(files: Sequence[str]) -> tuple[Optional[tf.train.Example], str]:
    """The first record of the first non-empty, readable file, parsed, and that file's name.

    A damaged file is passed over: the pipeline reports it (or, with
    `--skip_bad_records`, skips it) when it reads it. Only when no file gives a record
    and one was damaged is that an error here, naming the file.
    """
    damaged = None
    for filename in files:
        try:
            for record in tf.data.TFRecordDataset(filename).take(1):
                return tf.train.Example.FromString(record.numpy()), filename
        except (tf.errors.OpError, message.DecodeError) as error:
            reason = getattr(error, 'message', None) or str(error) or type(error).__name__
            damaged = damaged or f'TFRecord file {filename} is truncated or corrupt: {reason}'
    if damaged:
        raise DataError(damaged)
    return None, ''


def schema_of(example: tf.train.Example, filename: str = '') -> RecordSchema:
    """The schema whose image and label keys `example` holds.

    Raises:
      ValueError: when the record has neither set of keys (the message names the file
        and lists the keys it does have).
    """
    keys = example.features.feature
    for schema in SCHEMAS:
        if schema.image_key in keys and schema.label_key in keys:
            return schema
    raise DataError(
        f'{filename}: records hold neither the TF-slim keys (image/encoded, '
        f'image/class/label) nor the TFDS keys (image, label), but {sorted(keys)}'
    )


def list_files(dataset_dir: str, split: str, *, layout: str = 'slim') -> list[str]:
    """One split's sorted shards in one layout (the slim layout's `train-00000-of-01024`).

    `find_dataset` for that split alone, with its checks: the one place shards are found.

    Raises:
      MissingDataError: when the folder is missing or no file matches.
    """
    return list(find_dataset(dataset_dir, layout=layout, splits=(split,)).files(split))


def find_dataset(
    dataset_dir: str,
    *,
    layout: str = 'auto',
    label_offset: Optional[int] = None,
    splits: Sequence[str] = SPLITS,
) -> DatasetFiles:
    """Finds the shards of `dataset_dir` and how to read them.

    The layout is the one whose file names match (`layout` names it instead). The keys
    come from the first record. The label offset follows the keys (1 for the slim keys,
    0 for TFDS) unless `label_offset` is given, with one correction: a first record
    with slim keys and label 0 means 0-based labels (0 is never a class in the 1-based
    convention), so the offset becomes 0. A wrong guess cannot pass silently: the
    other convention's extreme label (1000 read as 0-based, or 0 read as 1-based) stops
    the run as out of range, naming the file.

    Args:
      dataset_dir: folder of the shards; for TFDS also a data_dir holding
        `imagenet2012/<version>/` (the newest version is used).
      layout: `auto` or one of `LAYOUTS`.
      label_offset: None to decide from the records, or the offset to use.
      splits: the splits that must have files.

    Returns:
      The files, schema and offset.

    Raises:
      FileNotFoundError: when the folder is missing or a split has no files.
      ValueError: for an unknown layout, two layouts at once, or unknown record keys.
    """
    check_folder(dataset_dir)
    if layout not in ('auto',) + LAYOUTS:
        raise DataError(f'--data_layout={layout}: expected auto or one of {", ".join(LAYOUTS)}')
    candidates = LAYOUTS if layout == 'auto' else (layout,)
    found = {}
    for name in candidates:
        folders = [dataset_dir]
        if name == 'tfds' and not _glob(dataset_dir, name, splits[0]):
            folders += _tfds_version_dirs(dataset_dir)[-1:]
        for folder in folders:
            files = {split: _glob(folder, name, split) for split in splits}
            if any(files.values()):
                found[name] = (folder, files)
                break
    if len(found) > 1:
        raise DataError(
            f'{dataset_dir} holds shards of several layouts ({", ".join(found)}): '
            'choose one with --data_layout'
        )
    if not found:
        patterns = ', '.join(split_pattern(dataset_dir, name, splits[0]) for name in candidates)
        raise MissingDataError(f'no TFRecords in {dataset_dir}: nothing matches {patterns}')
    ((name, (folder, files)),) = found.items()
    for split in splits:
        if not files[split]:
            raise MissingDataError(
                f'no {split} TFRecords in {folder}: nothing matches '
                f'{split_pattern(folder, name, split)}'
            )

    for split in splits:
        check_shards(files[split])
    example, first_file = _first_record([path for split in splits for path in files[split]])
    if example is None:
        # Only empty shards: nothing to read, so nothing to decide; the slim keys are
        # as good as any.
        schema, stored = SLIM_SCHEMA, None
    else:
        schema = schema_of(example, first_file)
        stored = example.features.feature[schema.label_key].int64_list.value
        stored = stored[0] if stored else None
    how = [f'{"layout from file names" if layout == "auto" else "--data_layout"}']
    if label_offset is not None:
        offset = label_offset
        how.append('--label_offset')
    elif schema.label_offset == 1 and stored == 0:
        offset = 0
        how.append(f'0-based: the first record of {first_file} has label 0')
    else:
        offset = schema.label_offset
        how.append(f'{schema.name} keys label from {schema.label_offset}')
    found_files = DatasetFiles(
        dataset_dir=folder,
        layout=name,
        train_files=tuple(files.get('train', ())),
        validation_files=tuple(files.get('validation', ())),
        schema=schema,
        label_offset=offset,
        how='; '.join(how),
    )
    logging.info('Dataset layout found: %s', found_files.describe())
    return found_files

"""Writes images into TFRecord shards in the Inception / TF-slim ImageNet layout.

The layout is the one `build_imagenet_data.py` writes (and the TPU scripts read), so
shards written here can be read by other tools and vice versa: files
`{split}-00000-of-00004` ..., one `tf.train.Example` per image with the JPEG bytes, the
1-based label, the class synset and text, and optional boxes.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Iterable, Mapping, Sized
from typing import Any, Sequence

import tensorflow as tf

from input_pipeline import image_files

# Seed of the fixed example order of `write_from_folders`: classes mixed in every shard,
# and the same shards from the same folders.
_FOLDER_SHUFFLE_SEED = 0


@dataclasses.dataclass(frozen=True)
class Example:
    """One image and its annotations, as written to a record.

    Attributes:
      encoded: JPEG bytes.
      label: 1-based class label (0 is unused in the slim layout).
      synset: WordNet id of the class, such as `n01440764`, or a folder name.
      text: human-readable class name.
      height: image height in pixels.
      width: image width in pixels.
      filename: original file name, kept for tracing an image back to its source.
      bboxes: boxes `(ymin, xmin, ymax, xmax)` as fractions of the image.
    """

    encoded: bytes
    label: int
    synset: str = ''
    text: str = ''
    height: int = 0
    width: int = 0
    filename: str = ''
    bboxes: Sequence[tuple[float, float, float, float]] = ()


def _field(example: Example | Mapping[str, Any], name: str, default: Any = None) -> Any:
    if isinstance(example, Mapping):
        value = example.get(name, default)
    else:
        value = getattr(example, name, default)
    if value is None:
        raise ValueError(f'example has no {name!r}')
    return value


def _bytes(value: bytes | str) -> tf.train.Feature:
    if isinstance(value, str):
        value = value.encode('utf-8')
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _ints(values: Sequence[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _floats(values: Sequence[float]) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def serialize_example(example: Example | Mapping[str, Any]) -> bytes:
    """Serialises one example with the slim layout's keys (`image/encoded`, ...).

    Args:
      example: an `Example` or a mapping with the same field names; `encoded` and
        `label` are required.

    Returns:
      The serialised `tf.train.Example`.
    """
    label = int(_field(example, 'label'))
    bboxes = list(_field(example, 'bboxes', ()))
    features = {
        'image/encoded': _bytes(_field(example, 'encoded')),
        'image/format': _bytes('JPEG'),
        'image/colorspace': _bytes('RGB'),
        'image/channels': _ints([3]),
        'image/height': _ints([int(_field(example, 'height', 0))]),
        'image/width': _ints([int(_field(example, 'width', 0))]),
        'image/filename': _bytes(_field(example, 'filename', '')),
        'image/class/label': _ints([label]),
        'image/class/synset': _bytes(_field(example, 'synset', '')),
        'image/class/text': _bytes(_field(example, 'text', '')),
        'image/object/bbox/ymin': _floats([box[0] for box in bboxes]),
        'image/object/bbox/xmin': _floats([box[1] for box in bboxes]),
        'image/object/bbox/ymax': _floats([box[2] for box in bboxes]),
        'image/object/bbox/xmax': _floats([box[3] for box in bboxes]),
        'image/object/bbox/label': _ints([label] * len(bboxes)),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def shard_names(split: str, num_shards: int) -> list[str]:
    """Returns the shard file names `{split}-00000-of-0000N` of a split."""
    return [f'{split}-{index:05d}-of-{num_shards:05d}' for index in range(num_shards)]


def write_tfrecords(
    examples: Iterable[Example | Mapping[str, Any]],
    output_dir: str,
    split: str,
    num_shards: int,
    *,
    num_examples: int | None = None,
) -> int:
    """Writes examples, in order, into `num_shards` shards of nearly equal size.

    Shard `k` holds examples `[k * n // num_shards, (k + 1) * n // num_shards)`. All
    shards are written under hidden temporary names and renamed only once every shard
    is complete, so a crash never leaves a partial shard (or a partial set of shards)
    under the names readers look for.

    Args:
      examples: `Example`s or mappings with the same fields.
      output_dir: folder for the shards; created when missing.
      split: file name prefix, `train` or `validation`.
      num_shards: number of files.
      num_examples: how many `examples` yields. Pass it with a generator to stream
        data larger than memory; when None, `examples` is counted (and held in memory
        if it is not a sized collection).

    Returns:
      The number of examples written.

    Raises:
      ValueError: when `num_shards` < 1 or `examples` does not yield `num_examples`.
      FileExistsError: when `output_dir` holds shards of `split` with another count,
        which readers would mix with the new ones.
    """
    if num_shards < 1:
        raise ValueError(f'num_shards must be at least 1, got {num_shards}')
    if num_examples is None:
        if not isinstance(examples, Sized):
            examples = list(examples)
        num_examples = len(examples)

    tf.io.gfile.makedirs(output_dir)
    names = shard_names(split, num_shards)
    strangers = set(tf.io.gfile.glob(os.path.join(output_dir, f'{split}-*-of-*')))
    strangers -= {os.path.join(output_dir, name) for name in names}
    if strangers:
        raise FileExistsError(
            f'{output_dir} already holds other {split} shards ({sorted(strangers)[0]} ...): '
            'remove them or write elsewhere'
        )

    temporary = [os.path.join(output_dir, f'.{name}.incomplete') for name in names]
    missing = object()
    iterator = iter(examples)
    written = 0
    try:
        for shard, path in enumerate(temporary):
            end = (shard + 1) * num_examples // num_shards
            with tf.io.TFRecordWriter(path) as writer:
                while written < end:
                    example = next(iterator, missing)
                    if example is missing:
                        raise ValueError(f'examples ended after {written} of {num_examples}')
                    writer.write(serialize_example(example))
                    written += 1
        if next(iterator, missing) is not missing:
            raise ValueError(f'examples holds more than num_examples={num_examples}')
    except BaseException:
        for path in temporary:
            if tf.io.gfile.exists(path):
                tf.io.gfile.remove(path)
        raise
    for path, name in zip(temporary, names):
        tf.io.gfile.rename(path, os.path.join(output_dir, name), overwrite=True)
    return written


def write_shard(examples: Iterable[Example | Mapping[str, Any]], path: str) -> int:
    """Writes one shard file, under a hidden temporary name until it is complete.

    A crash leaves no file under `path`, so a builder that skips existing shards on a
    rerun never keeps a partial one.

    Args:
      examples: `Example`s or mappings with the same fields.
      path: the shard's final path.

    Returns:
      The number of examples written.
    """
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, f'.{name}.incomplete')
    count = 0
    try:
        with tf.io.TFRecordWriter(temporary) as records:
            for example in examples:
                records.write(serialize_example(example))
                count += 1
    except BaseException:
        if tf.io.gfile.exists(temporary):
            tf.io.gfile.remove(temporary)
        raise
    tf.io.gfile.rename(temporary, path, overwrite=True)
    return count


def write_from_folders(
    root_dir: str,
    output_dir: str,
    *,
    split: str,
    num_shards: int,
    class_names: Mapping[str, str] | None = None,
) -> int:
    """Writes a folder of class folders (`root_dir/<class>/<image>`) as TFRecord shards.

    Class folders sorted by name get labels 1..N (the slim convention, read back with
    `label_offset=1`); each folder name is the synset. Examples are shuffled with a
    fixed seed so every shard mixes classes and the same folders give the same shards.

    Args:
      root_dir: folder of class folders holding images (`image_files.IMAGE_EXTENSIONS`),
        kept or re-encoded by the builders' one rule (`image_files.encoded_jpeg`).
      output_dir: folder for the shards.
      split: file name prefix, `train` or `validation`.
      num_shards: number of files.
      class_names: optional text per folder name, such as "tench" for `n01440764`;
        the folder name is used where one is missing.

    Returns:
      The number of examples written.

    Raises:
      FileNotFoundError: when `root_dir` is missing or holds no class folders.
      ValueError: when an image is refused (the message names the file).
    """
    if not os.path.isdir(root_dir):
        raise FileNotFoundError(f'image folder {root_dir} does not exist')
    classes = image_files.class_folders(root_dir)
    if not classes:
        raise FileNotFoundError(
            f'{root_dir} holds no class folders (expected {root_dir}/<class>/<image>)'
        )
    class_names = class_names or {}
    labels = {synset: label for label, synset in enumerate(classes, start=1)}
    entries = image_files.class_folder_sources(root_dir)
    random.Random(_FOLDER_SHUFFLE_SEED).shuffle(entries)

    def examples() -> Iterable[Example]:
        for source in entries:
            encoded, height, width = image_files.encoded_jpeg(source.read(), source.path)
            yield Example(
                encoded=encoded,
                label=labels[source.synset],
                synset=source.synset,
                text=class_names.get(source.synset, source.synset),
                height=height,
                width=width,
                filename=source.name,
            )

    return write_tfrecords(examples(), output_dir, split, num_shards, num_examples=len(entries))

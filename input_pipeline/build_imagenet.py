"""Builds Inception-format ImageNet TFRecords from the official ILSVRC2012 downloads.

  python -m input_pipeline.build_imagenet \\
      --train_tar=ILSVRC2012_img_train.tar --val_tar=ILSVRC2012_img_val.tar \\
      --val_labels=imagenet_2012_validation_synset_labels.txt --output_dir=/data/imagenet

  python -m input_pipeline.build_imagenet --train_dir=train/ --val_dir=val/ \\
      --val_labels=imagenet_2012_validation_synset_labels.txt --output_dir=/data/imagenet

Inputs, as image-net.org distributes them:

- `ILSVRC2012_img_train.tar`: one tar per class (`n01440764.tar`, ...), each holding
  that class's JPEGs (`n01440764_10026.JPEG`, ...). Or, with `--train_dir`, those
  tars extracted into a folder per class (`train/n01440764/n01440764_10026.JPEG`).
- `ILSVRC2012_img_val.tar`: the 50,000 validation JPEGs, flat
  (`ILSVRC2012_val_00000001.JPEG`, ...), or `--val_dir` holding them extracted (or
  already sorted into a folder per class, which then gives the labels).
- `--val_labels`: the validation labels, one synset per line in the order of the image
  numbers, as TF-slim and the TPU scripts use (`imagenet_2012_validation_synset_labels.txt`
  in tensorflow/models). The devkit's `ILSVRC2012_validation_ground_truth.txt` holds
  ILSVRC2012_IDs instead; its `meta.mat` maps them to synsets (`synsets[id-1].WNID`),
  which is how that file was made.
- `--synsets` (optional): the class list, one synset per line; label `k` (1-based, 0 is
  unused as in TF-slim) is its `k`-th line. Default: the sorted synsets of the train
  data (ILSVRC2012's 1,000 sorted synsets are the standard order).
- `--synset_text` (optional): `synset<TAB>words` lines (TF-slim's `imagenet_metadata.txt`)
  for `image/class/text`.
- `--bounding_boxes` (optional): `name.JPEG,xmin,ymin,xmax,ymax` lines in 0..1 (TF-slim's
  `process_bounding_boxes.py` output); they feed the training crop sampler.

Output: `train-00000-of-01024` ... and `validation-00000-of-00128` in `--output_dir`,
the keys and labels of TF-slim's `build_imagenet_data.py`. Train examples are shuffled
with a fixed seed so that every shard mixes classes; validation keeps the image order.
Shards are written by `--num_workers` processes, each under a hidden temporary name
renamed when complete, so a rerun keeps finished shards and writes only the rest. Like
TF-slim we decode every image once: grayscale and colour JPEGs are kept byte for byte,
CMYK JPEGs and anything else (one train "JPEG" is a PNG) are re-encoded as RGB JPEGs,
and an image that does not decode stops the build with its name. At the end the
records of every shard are counted and checked against the sources.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import multiprocessing
import os
import random
import re
import struct
import sys
import tarfile
import time
from collections.abc import Iterable, Sequence

# TF-slim's shard counts: ~1,250 train and ~390 validation images (~140 MB) per shard.
TRAIN_SHARDS = 1024
VALIDATION_SHARDS = 128
# TF-slim shuffles the train images with a fixed seed; any fixed seed does.
_SHUFFLE_SEED = 12345
_REENCODE_QUALITY = 95
_SYNSET = re.compile(r'^n\d{8}$')
# Progress lines when stderr is not a terminal: at most one per this many seconds.
_LOG_INTERVAL_S = 30.0


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one image's bytes are: a file, or a byte range of a tar file.

    Attributes:
      path: the image file, or the tar file holding it.
      offset: start of the image's bytes in `path` (0 for a plain file).
      size: number of bytes (-1: the whole file).
      name: the image's file name, such as `n01440764_10026.JPEG`.
      synset: its class.
    """

    path: str
    offset: int
    size: int
    name: str
    synset: str

    def read(self) -> bytes:
        with open(self.path, 'rb') as stream:
            stream.seek(self.offset)
            return stream.read(self.size)


def _tar_members(path: str, base: int = 0, fileobj=None) -> Iterable[tuple[str, int, int]]:
    """(name, absolute data offset, size) of a tar's regular files, reading headers only."""
    with tarfile.open(path if fileobj is None else None, mode='r:', fileobj=fileobj) as archive:
        for member in archive:
            if member.isfile():
                yield os.path.basename(member.name), base + member.offset_data, member.size


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(('.jpeg', '.jpg', '.png')) and not name.startswith('.')


def train_sources_from_tar(path: str) -> list[Source]:
    """Indexes ILSVRC2012_img_train.tar: the images of its per-class tars, by offset.

    Only tar headers are read (the outer tar's and each class tar's), so indexing the
    138 GB archive takes seconds; workers then read each image at its offset.
    """
    sources = []
    with open(path, 'rb') as stream:
        for class_tar, offset, size in list(_tar_members(path)):
            synset = class_tar.split('.')[0]
            if not class_tar.endswith('.tar') or not _SYNSET.match(synset):
                continue
            stream.seek(offset)
            window = _Window(stream, offset, size)
            for name, data_offset, data_size in _tar_members(None, offset, fileobj=window):
                if _is_image_name(name):
                    sources.append(Source(path, data_offset, data_size, name, synset))
    return sources


class _Window:
    """A read-only, seekable view of `size` bytes at `offset` of an open file."""

    def __init__(self, stream, offset: int, size: int):
        self._stream, self._offset, self._size, self._position = stream, offset, size, 0

    def read(self, count: int = -1) -> bytes:
        remaining = self._size - self._position
        count = remaining if count is None or count < 0 else min(count, remaining)
        self._stream.seek(self._offset + self._position)
        data = self._stream.read(count)
        self._position += len(data)
        return data

    def seek(self, position: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._position, 2: self._size}[whence]
        self._position = max(0, min(self._size, base + position))
        return self._position

    def tell(self) -> int:
        return self._position


def train_sources_from_dir(path: str) -> list[Source]:
    """The images of `path/<synset>/`, one folder per class."""
    sources = []
    for synset in sorted(os.listdir(path)):
        folder = os.path.join(path, synset)
        if not os.path.isdir(folder) or synset.startswith('.'):
            continue
        for name in sorted(os.listdir(folder)):
            if _is_image_name(name):
                sources.append(Source(os.path.join(folder, name), 0, -1, name, synset))
    return sources


def read_lines(path: str) -> list[str]:
    with open(path) as stream:
        return [line.strip() for line in stream if line.strip()]


def val_sources(
    *, val_tar: str | None, val_dir: str | None, val_labels: str | None
) -> list[Source]:
    """The validation images in image-number order, with their synsets.

    Raises:
      ValueError: when the labels are missing or do not match the images in number.
    """
    if val_tar:
        found = [(name, (val_tar, offset, size)) for name, offset, size in _tar_members(val_tar)]
    else:
        found = []
        for entry in sorted(os.listdir(val_dir)):
            folder = os.path.join(val_dir, entry)
            if os.path.isdir(folder) and _SYNSET.match(entry):
                # Already sorted into class folders: the folder is the label.
                for name in sorted(os.listdir(folder)):
                    if _is_image_name(name):
                        found.append((name, (os.path.join(folder, name), 0, -1, entry)))
            elif _is_image_name(entry):
                found.append((entry, (folder, 0, -1)))
    found = sorted((item for item in found if _is_image_name(item[0])), key=lambda item: item[0])
    if all(len(location) == 4 for _, location in found) and found:
        return [Source(*location[:3], name, location[3]) for name, location in found]
    if not val_labels:
        raise ValueError(
            'validation images need --val_labels (one synset per line, in image order)'
        )
    labels = read_lines(val_labels)
    if len(labels) != len(found):
        raise ValueError(
            f'--val_labels={val_labels} has {len(labels)} lines for {len(found)} validation images'
        )
    bad = [label for label in labels if not _SYNSET.match(label)]
    if bad:
        raise ValueError(
            f'--val_labels={val_labels}: {bad[0]!r} is not a synset (nXXXXXXXX); the devkit '
            'ground truth holds ILSVRC2012_IDs, which its meta.mat maps to synsets'
        )
    return [Source(*location[:3], name, label) for (name, location), label in zip(found, labels)]


def read_boxes(path: str | None) -> dict[str, list[tuple[float, float, float, float]]]:
    """`name -> [(ymin, xmin, ymax, xmax), ...]` from TF-slim's bounding-box CSV."""
    boxes = collections.defaultdict(list)
    if path:
        for line in read_lines(path):
            name, xmin, ymin, xmax, ymax = line.split(',')
            boxes[name].append((float(ymin), float(xmin), float(ymax), float(xmax)))
    return boxes


def shard_ranges(count: int, num_shards: int) -> list[tuple[int, int]]:
    """Shard `k` holds examples `[k * count // num_shards, (k + 1) * count // num_shards)`."""
    return [(k * count // num_shards, (k + 1) * count // num_shards) for k in range(num_shards)]


@dataclasses.dataclass(frozen=True)
class _ShardJob:
    output_dir: str
    split: str
    index: int
    num_shards: int
    sources: tuple[Source, ...]
    labels: dict
    texts: dict
    boxes: dict


def _encoded_jpeg(data: bytes, name: str) -> tuple[bytes, int, int]:
    """JPEG bytes of an image and its size; CMYK and non-JPEG images are re-encoded."""
    import tensorflow as tf  # Imported in the worker processes only.

    try:
        # Decoding verifies the whole image, as TF-slim's builder does.
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        if (
            tf.io.is_jpeg(data)
            and int(tf.io.extract_jpeg_shape(data, output_type=tf.int32)[2]) != 4
        ):
            return data, int(image.shape[0]), int(image.shape[1])
    except tf.errors.OpError as error:
        raise ValueError(f'{name} does not decode: {error.message.splitlines()[0]}') from error
    height, width = int(image.shape[0]), int(image.shape[1])
    return tf.io.encode_jpeg(image, quality=_REENCODE_QUALITY).numpy(), height, width


def _write_shard(job: _ShardJob) -> tuple[str, int, int]:
    """Writes one shard (unless a finished one is there); returns (split, index, count)."""
    from input_pipeline import writer  # noqa: PLC0415  (TensorFlow: in workers only)

    examples = []
    for source in job.sources:
        encoded, height, width = _encoded_jpeg(source.read(), f'{source.path}:{source.name}')
        examples.append(
            writer.Example(
                encoded=encoded,
                label=job.labels[source.synset],
                synset=source.synset,
                text=job.texts.get(source.synset, ''),
                height=height,
                width=width,
                filename=source.name,
                bboxes=job.boxes.get(source.name, ()),
            )
        )
    writer.write_shard(examples, _shard_path(job))
    return job.split, job.index, len(examples)


def _shard_path(job: _ShardJob) -> str:
    return os.path.join(job.output_dir, f'{job.split}-{job.index:05d}-of-{job.num_shards:05d}')


def count_records(path: str) -> int:
    """Counts a TFRecord file's records from their length headers, without reading data.

    Raises:
      ValueError: when the last record runs past the end of the file.
    """
    size, count, offset = os.path.getsize(path), 0, 0
    with open(path, 'rb') as stream:
        while offset < size:
            stream.seek(offset)
            header = stream.read(8)
            if len(header) < 8:
                raise ValueError(f'{path} is truncated at byte {offset}')
            (length,) = struct.unpack('<Q', header)
            offset += 8 + 4 + length + 4
            count += 1
    if offset != size:
        raise ValueError(f'{path} is truncated: its last record ends at byte {offset} of {size}')
    return count


class Progress:
    """A progress bar on a terminal; plain periodic lines in a log."""

    def __init__(self, total: int, stream=None):
        self.total, self.done, self.images, self.kept = total, 0, 0, 0
        self.stream = stream or sys.stderr
        self.start = self.last_line = time.time()
        self.tty = hasattr(self.stream, 'isatty') and self.stream.isatty()

    def advance(self, images: int, kept: bool = False) -> None:
        """Counts a finished shard: `images` written now, or `kept` from an earlier run."""
        self.done += 1
        self.images += images
        self.kept += kept
        now = time.time()
        rate = self.images / max(now - self.start, 1e-9)
        remaining = (self.total - self.done) * (now - self.start) / max(self.done - self.kept, 1)
        text = (
            f'{self.done}/{self.total} shards'
            + (f' ({self.kept} kept from an earlier run)' if self.kept else '')
            + f', {self.images:,} images written ({rate:.0f}/s), about {remaining / 60:.0f} min left'
        )
        if self.tty:
            filled = int(30 * self.done / max(self.total, 1))
            self.stream.write(f'\r[{"#" * filled}{"." * (30 - filled)}] {text}\x1b[K')
            if self.done == self.total:
                self.stream.write('\n')
        elif self.done == self.total or now - self.last_line >= _LOG_INTERVAL_S:
            self.stream.write(text + '\n')
            self.last_line = now
        self.stream.flush()


def build(
    *,
    output_dir: str,
    train: Sequence[Source] = (),
    validation: Sequence[Source] = (),
    synsets: Sequence[str] | None = None,
    texts: dict | None = None,
    boxes: dict | None = None,
    train_shards: int = TRAIN_SHARDS,
    validation_shards: int = VALIDATION_SHARDS,
    num_workers: int | None = None,
    progress_stream=None,
) -> dict[str, int]:
    """Writes and verifies the shards of both splits; returns the examples per split.

    Raises:
      ValueError: for a validation synset outside the class list, an image that does
        not decode (named), or a shard whose record count is not the expected one.
    """
    synsets = list(synsets) if synsets else sorted({source.synset for source in train})
    if not synsets:
        synsets = sorted({source.synset for source in validation})
    labels = {synset: index for index, synset in enumerate(synsets, start=1)}
    strangers = {source.synset for source in list(train) + list(validation)} - set(labels)
    if strangers:
        raise ValueError(f'synsets outside the class list: {sorted(strangers)[:5]}')
    train = list(train)
    random.Random(_SHUFFLE_SEED).shuffle(train)
    os.makedirs(output_dir, exist_ok=True)
    jobs = []
    for split, sources, num_shards in (
        ('train', train, train_shards),
        ('validation', list(validation), validation_shards),
    ):
        if not sources:
            continue
        for index, (start, end) in enumerate(shard_ranges(len(sources), num_shards)):
            jobs.append(
                _ShardJob(
                    output_dir,
                    split,
                    index,
                    num_shards,
                    tuple(sources[start:end]),
                    labels,
                    dict(texts or {}),
                    {source.name: boxes[source.name] for source in sources[start:end]}
                    if boxes
                    else {},
                )
            )
    progress = Progress(len(jobs), progress_stream)
    # A shard under its final name is finished (they are renamed when complete).
    todo = [job for job in jobs if not os.path.exists(_shard_path(job))]
    for _ in range(len(jobs) - len(todo)):
        progress.advance(0, kept=True)
    num_workers = min(num_workers or os.cpu_count() or 1, len(todo))
    if num_workers <= 1:
        for job in todo:
            progress.advance(_write_shard(job)[2])
    else:
        # Spawned workers each import TensorFlow afresh; forking a process that has
        # already started TensorFlow's threads is unsafe.
        context = multiprocessing.get_context('spawn')
        with context.Pool(num_workers) as pool:
            for _, _, count in pool.imap_unordered(_write_shard, todo):
                progress.advance(count)
    return verify(output_dir, jobs)


def verify(output_dir: str, jobs: Sequence[_ShardJob]) -> dict[str, int]:
    """Counts every shard's records and checks them against the sources.

    Raises:
      ValueError: naming the first shard with a wrong count.
    """
    totals = collections.Counter()
    for job in jobs:
        path = _shard_path(job)
        found = count_records(path)
        if found != len(job.sources):
            raise ValueError(
                f'{path} holds {found} records, not {len(job.sources)}: delete it and rerun'
            )
        totals[job.split] += found
    return dict(totals)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m input_pipeline.build_imagenet',
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('--train_tar', help='ILSVRC2012_img_train.tar (a tar per class).')
    parser.add_argument('--train_dir', help='Or: a folder per class of train images.')
    parser.add_argument('--val_tar', help='ILSVRC2012_img_val.tar (flat validation JPEGs).')
    parser.add_argument('--val_dir', help='Or: the validation JPEGs (flat, or a folder per class).')
    parser.add_argument('--val_labels', help='One synset per line, in validation image order.')
    parser.add_argument('--synsets', help='Class list, one synset per line (label = line number).')
    parser.add_argument('--synset_text', help='synset<TAB>words lines for image/class/text.')
    parser.add_argument('--bounding_boxes', help='name.JPEG,xmin,ymin,xmax,ymax lines (0..1).')
    parser.add_argument('--output_dir', required=True, help='Folder for the TFRecord shards.')
    parser.add_argument('--train_shards', type=int, default=TRAIN_SHARDS)
    parser.add_argument('--validation_shards', type=int, default=VALIDATION_SHARDS)
    parser.add_argument('--num_workers', type=int, default=os.cpu_count(), help='Processes.')
    args = parser.parse_args(argv)
    if args.train_tar and args.train_dir or args.val_tar and args.val_dir:
        parser.error('give a tar or a folder for each split, not both')
    if not (args.train_tar or args.train_dir or args.val_tar or args.val_dir):
        parser.error('nothing to build: give --train_tar/--train_dir and/or --val_tar/--val_dir')
    if args.train_shards < 1 or args.validation_shards < 1 or args.num_workers < 1:
        parser.error('--train_shards, --validation_shards and --num_workers must be positive')
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, int]:
    args = _parse_args(argv)
    started = time.time()
    train = []
    if args.train_tar:
        train = train_sources_from_tar(args.train_tar)
    elif args.train_dir:
        train = train_sources_from_dir(args.train_dir)
    validation = []
    if args.val_tar or args.val_dir:
        validation = val_sources(
            val_tar=args.val_tar, val_dir=args.val_dir, val_labels=args.val_labels
        )
    texts = {}
    if args.synset_text:
        texts = dict(line.split('\t', 1) for line in read_lines(args.synset_text))
    synsets = read_lines(args.synsets) if args.synsets else None
    print(
        f'{len(train):,} train and {len(validation):,} validation images, '
        f'{len(synsets or {s.synset for s in train + validation})} classes',
        file=sys.stderr,
    )
    counts = build(
        output_dir=args.output_dir,
        train=train,
        validation=validation,
        synsets=synsets,
        texts=texts,
        boxes=read_boxes(args.bounding_boxes),
        train_shards=args.train_shards,
        validation_shards=args.validation_shards,
        num_workers=args.num_workers,
    )
    print(
        f'Verified {", ".join(f"{n:,} {split}" for split, n in counts.items())} examples in '
        f'{args.output_dir} ({(time.time() - started) / 60:.1f} min)',
        file=sys.stderr,
    )
    return counts


if __name__ == '__main__':
    try:
        main()
    except (ValueError, FileNotFoundError, tarfile.TarError) as error:
        print(f'build_imagenet: error: {error}', file=sys.stderr)
        sys.exit(1)

"""Builds Inception-format ImageNet TFRecords from the official ILSVRC2012 downloads.

  python -m input_pipeline.build_imagenet \\
      --train_tar=ILSVRC2012_img_train.tar --val_tar=ILSVRC2012_img_val.tar \\
      --devkit=ILSVRC2012_devkit_t12.tar.gz --output_dir=/data/imagenet

  python -m input_pipeline.build_imagenet --train_dir=train/ --val_dir=val/ \\
      --val_labels=imagenet_2012_validation_synset_labels.txt --output_dir=/data/imagenet

Inputs, as image-net.org distributes them:

- `ILSVRC2012_img_train.tar`: one tar per class (`n01440764.tar`, ...), each holding
  that class's JPEGs (`n01440764_10026.JPEG`, ...). Or, with `--train_dir`, those
  tars extracted into a folder per class (`train/n01440764/n01440764_10026.JPEG`).
- `ILSVRC2012_img_val.tar`: the 50,000 validation JPEGs, flat
  (`ILSVRC2012_val_00000001.JPEG`, ...), or `--val_dir` holding them extracted (or
  already sorted into a folder per class, which then gives the labels). Any subset of
  them will do: each image is labelled by the number in its name
  (`ILSVRC2012_val_00000236.JPEG` by line 236 of the validation labels).
- `--devkit`: `ILSVRC2012_devkit_t12.tar.gz` as downloaded, or the folder it extracts
  to. Its `data/ILSVRC2012_validation_ground_truth.txt` holds one ILSVRC2012_ID per
  validation image, and its `data/meta.mat` maps those IDs to synsets (the IDs are not
  the label order: ID -> synset -> position in the class list).
- `--val_labels` (instead of `--devkit`): TF-slim's one-synset-per-line file
  (`imagenet_2012_validation_synset_labels.txt`, as the TPU scripts use), or the
  devkit's ground truth file, whose IDs are mapped by the `meta.mat` of `--devkit` or,
  without it, the `meta.mat` beside the file (as in the extracted devkit).
- `--synsets` (optional): the class list, one synset per line; label `k` (1-based, 0 is
  unused as in TF-slim) is its `k`-th line. Default: `imagenet_synsets.txt` beside this
  module, the 1,000 ILSVRC2012 synsets in the standard (sorted) order, so that a subset
  of the classes keeps the labels the full set gives them.
- `--synset_text` (optional): `synset<TAB>words` lines (TF-slim's `imagenet_metadata.txt`)
  for `image/class/text`. Default: `imagenet_class_names.txt` beside this module.
- `--bounding_boxes` (optional): `name.JPEG,xmin,ymin,xmax,ymax` lines in 0..1 (TF-slim's
  `process_bounding_boxes.py` output); they feed the training crop sampler.

Output: `train-00000-of-01024` ... and `validation-00000-of-00128` in `--output_dir`,
the keys and labels of TF-slim's `build_imagenet_data.py`. Train examples are shuffled
with a fixed seed so that every shard mixes classes; validation keeps the image order.
Shards are written by `--num_workers` processes (one per CPU, fewer for a small build),
each under a hidden temporary name renamed when complete, so a rerun keeps finished
shards and writes only the rest. Every image is decoded once and kept or re-encoded by
the rule all builders share (`image_files.encoded_jpeg`: greyscale and colour JPEGs byte
for byte, CMYK and other formats as RGB JPEGs); an image that does not decode, decodes
only with libjpeg's warning that data is missing, or that the trainer would refuse
stops the build with its name. At the end the records of every shard are counted and
checked against the sources.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import importlib.resources
import io
import multiprocessing
import os
import random
import re
import struct
import sys
import tarfile
import time
from collections.abc import Iterable, Sequence

from input_pipeline import image_files

# TF-slim's shard counts: ~1,250 train and ~390 validation images (~140 MB) per shard.
TRAIN_SHARDS = 1024
VALIDATION_SHARDS = 128
# TF-slim shuffles the train images with a fixed seed; any fixed seed does.
_SHUFFLE_SEED = 12345
_SYNSET = re.compile(r'^n\d{8}$')
_ILSVRC2012_ID = re.compile(r'^\d+$')
# The image number of a validation file: ILSVRC2012_val_00000236.JPEG -> 236.
_VAL_NUMBER = re.compile(r'_(\d{8})\.[^.]+$')
# Shipped beside this module (setup.cfg's package_data).
STANDARD_SYNSETS = 'imagenet_synsets.txt'
STANDARD_CLASS_NAMES = 'imagenet_class_names.txt'
# The devkit's files: ILSVRC2012_devkit_t12/data/... in its tar.gz.
_DEVKIT_DATA = 'data'
_DEVKIT = 'ILSVRC2012_devkit_t12'
_GROUND_TRUTH = 'ILSVRC2012_validation_ground_truth.txt'
_META = 'meta.mat'
# The least images worth a worker process of their own (see `_default_workers`).
_IMAGES_PER_WORKER = 1000
# Progress lines when stderr is not a terminal: at most one per this many seconds.
_LOG_INTERVAL_S = 30.0


def _tar_members(
    path: str, base: int = 0, fileobj=None, where: str = ''
) -> Iterable[tuple[str, int, int]]:
    """(name, absolute data offset, size) of a tar's regular files, reading headers only.

    A damaged tar is named, with the member after which it stops being readable:
    Python's `tarfile` says "invalid header" naming neither, and a bad header or a cut
    after the first member just ends its listing, as if the tar ended there. So the
    block where the listing ends must be the end-of-archive marker (zeros). A link
    whose name is an image's or a tar's is refused too: it holds no bytes of its own,
    and skipping it would drop an image silently.

    Args:
      where: how messages name the tar (`path` by default; a member of another tar).

    Raises:
      ValueError: naming the tar, and the last member read.
    """
    where = where or path
    last = None
    try:
        with tarfile.open(path if fileobj is None else None, mode='r:', fileobj=fileobj) as archive:
            for member in archive:
                name = os.path.basename(member.name)
                if member.islnk() or member.issym():
                    if image_files.is_image_name(name) or name.endswith('.tar'):
                        raise ValueError(
                            f'{where}: member {member.name} is a link to {member.linkname}, '
                            'not a file: build from a tar of the files themselves'
                        )
                elif member.isfile():
                    yield name, base + member.offset_data, member.size
                last = member.name
            archive.fileobj.seek(archive.offset)
            end = archive.fileobj.read(tarfile.BLOCKSIZE)
    except tarfile.TarError as error:
        reason = str(error).splitlines()[0].rstrip(':')
        after = f'after member {last}' if last else 'at its first member'
        raise ValueError(f'{where} is not a readable tar {after} ({reason})') from error
    if len(end) < tarfile.BLOCKSIZE:
        raise ValueError(
            f'{where} is cut short after member {last}: it ends before its end-of-archive '
            'marker (download it again)'
        )
    if end.strip(tarfile.NUL):
        raise ValueError(
            f'{where} is damaged after member {last}: an unreadable header at byte '
            f'{archive.offset} (download it again)'
        )


def train_sources_from_tar(path: str) -> list[image_files.Source]:
    """Indexes ILSVRC2012_img_train.tar: the images of its per-class tars, by offset.

    Only tar headers are read (the outer tar's and each class tar's), not the images;
    workers then read each image at its offset.
    """
    sources = []
    with open(path, 'rb') as stream:
        for class_tar, offset, size in list(_tar_members(path)):
            synset = class_tar.split('.')[0]
            if not class_tar.endswith('.tar') or not _SYNSET.match(synset):
                continue
            stream.seek(offset)
            window = _Window(stream, offset, size)
            members = _tar_members(None, offset, fileobj=window, where=f'{path}:{class_tar}')
            for name, data_offset, data_size in members:
                if image_files.is_image_name(name):
                    sources.append(image_files.Source(path, data_offset, data_size, name, synset))
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


def read_lines(path: str) -> list[str]:
    with open(path) as stream:
        return [line.strip() for line in stream if line.strip()]


def _package_lines(name: str) -> list[str]:
    """The non-empty lines of a data file shipped in this package."""
    text = importlib.resources.files('input_pipeline').joinpath(name).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def standard_synsets() -> list[str]:
    """ILSVRC2012's 1,000 synsets in the standard label order (label `k` = line `k`).

    The order is the sorted one that TF-slim, the TPU scripts and TFDS use; it ships
    with the package so that labels never depend on which classes a build is given.
    """
    return _package_lines(STANDARD_SYNSETS)


def standard_class_names() -> dict[str, str]:
    """`synset -> words` of the 1,000 classes, as TF-slim's `imagenet_metadata.txt`."""
    return dict(line.split('\t', 1) for line in _package_lines(STANDARD_CLASS_NAMES))


def read_synset_text(path: str) -> dict[str, str]:
    """`synset -> words` from `synset<TAB>words` lines (TF-slim's imagenet_metadata.txt)."""
    texts = {}
    for number, line in enumerate(read_lines(path), start=1):
        synset, tab, words = line.partition('\t')
        if not tab:
            raise ValueError(
                f'--synset_text={path} line {number}: {line!r} is not synset<TAB>words'
            )
        texts[synset] = words.strip()
    return texts


def _label_lines(path: str) -> list[str]:
    """A label file's lines, stripped; only trailing blank lines are dropped.

    Line `i` labels image number `i`, so a blank line inside the file must not shift
    the lines after it: it stays, and fails the check of its content.
    """
    try:
        with open(path) as stream:
            lines = [line.strip() for line in stream]
    except UnicodeDecodeError as error:
        raise ValueError(f'{path} is not a text file of labels ({error.reason})') from error
    while lines and not lines[-1]:
        lines.pop()
    return lines


def read_meta(source, name: str) -> dict[int, str]:
    """`ILSVRC2012_ID -> synset` from the devkit's meta.mat (a path or a binary stream).

    Its `synsets` struct array lists 1,860 synsets (the 1,000 leaf classes have IDs
    1..1000); only the ID and WNID fields matter here.
    """
    import numpy as np  # noqa: PLC0415  (the main process needs them for the devkit only)
    import scipy.io  # noqa: PLC0415  (scikit-learn, a requirement, requires SciPy)

    try:
        synsets = scipy.io.loadmat(source, squeeze_me=True).get('synsets')
    except (scipy.io.matlab.MatReadError, ValueError, TypeError, NotImplementedError) as error:
        raise ValueError(f'{name} is not the devkit\'s meta.mat: {error}') from error
    fields = getattr(getattr(synsets, 'dtype', None), 'names', None) or ()
    if 'ILSVRC2012_ID' not in fields or 'WNID' not in fields:
        raise ValueError(f'{name} has no synsets struct array with ILSVRC2012_ID and WNID')
    return {
        int(identifier): str(wnid)
        for identifier, wnid in zip(np.ravel(synsets['ILSVRC2012_ID']), np.ravel(synsets['WNID']))
    }


def read_devkit(path: str) -> tuple[list[str], dict[int, str]]:
    """(ground truth lines, ID -> synset) of ILSVRC2012_devkit_t12.tar.gz or its folder.

    The folder may be the extracted `ILSVRC2012_devkit_t12/`, the folder holding it, or
    its `data/`. In the tar, members are found by their `data/...` suffix, so the name
    of the top folder does not matter.
    """
    if os.path.isdir(path):
        for folder in (
            os.path.join(path, _DEVKIT_DATA),
            path,
            os.path.join(path, _DEVKIT, _DEVKIT_DATA),
        ):
            if os.path.exists(os.path.join(folder, _META)):
                return (
                    _label_lines(os.path.join(folder, _GROUND_TRUTH)),
                    read_meta(os.path.join(folder, _META), os.path.join(folder, _META)),
                )
        raise ValueError(f'--devkit={path} holds no {_DEVKIT_DATA}/{_META}')
    try:
        with tarfile.open(path) as archive:
            files = {}
            for member in archive:
                for wanted in (_GROUND_TRUTH, _META):
                    if member.isfile() and member.name.endswith(f'{_DEVKIT_DATA}/{wanted}'):
                        files[wanted] = archive.extractfile(member).read()
    except tarfile.TarError as error:
        reason = str(error).splitlines()[0].rstrip(':')  # one line, not one per method
        raise ValueError(
            f'--devkit={path} is not ILSVRC2012_devkit_t12.tar.gz or its folder ({reason})'
        ) from error
    missing = [wanted for wanted in (_GROUND_TRUTH, _META) if wanted not in files]
    if missing:
        raise ValueError(f'--devkit={path} holds no {_DEVKIT_DATA}/{missing[0]}')
    try:
        ground_truth = files[_GROUND_TRUTH].decode()
    except UnicodeDecodeError as error:
        raise ValueError(f'{path}: {_GROUND_TRUTH} is not text ({error.reason})') from error
    lines = [line.strip() for line in ground_truth.rstrip().splitlines()]
    return lines, read_meta(io.BytesIO(files[_META]), f'{path}:{_META}')


def read_val_labels(*, val_labels: str | None, devkit: str | None) -> tuple[list[str] | None, str]:
    """The synset of each validation image number (item `i - 1` for image `i`).

    From `--val_labels` when given (synsets, or IDs mapped by a meta.mat), else from the
    devkit's ground truth. Returns them with the name of their file, for messages; None
    without either (enough for validation images sorted into class folders).

    Raises:
      ValueError: for a line that is neither a synset nor a known ILSVRC2012_ID (named
        with its line number), or IDs with no meta.mat to map them.
    """
    if val_labels:
        lines, name = _label_lines(val_labels), f'--val_labels={val_labels}'
        if lines and _ILSVRC2012_ID.match(lines[0]):
            return _ids_to_synsets(lines, _meta_for_ids(val_labels, devkit), name), name
        return _checked_synsets(lines, name), name
    if devkit:
        lines, id_to_synset = read_devkit(devkit)
        name = f'--devkit={devkit}:{_GROUND_TRUTH}'
        return _ids_to_synsets(lines, id_to_synset, name), name
    return None, ''


def _checked_synsets(lines: list[str], name: str) -> list[str]:
    """TF-slim's labels: one synset per line."""
    if not lines:
        raise ValueError(f'{name} is empty')
    for number, line in enumerate(lines, start=1):
        if not _SYNSET.match(line):
            raise ValueError(
                f'{name} line {number}: {line!r} is neither a synset (nXXXXXXXX) nor an '
                'ILSVRC2012_ID'
            )
    return lines


def _ids_to_synsets(lines: list[str], id_to_synset: dict[int, str], name: str) -> list[str]:
    """The devkit's labels: one ILSVRC2012_ID per line, mapped to synsets by meta.mat."""
    if not lines:
        raise ValueError(f'{name} is empty')
    synsets = []
    for number, line in enumerate(lines, start=1):
        if not _ILSVRC2012_ID.match(line) or int(line) not in id_to_synset:
            raise ValueError(f'{name} line {number}: {line!r} is not an ILSVRC2012_ID of meta.mat')
        synsets.append(id_to_synset[int(line)])
    return synsets


def _meta_for_ids(val_labels: str, devkit: str | None) -> dict[int, str]:
    """The ID -> synset map for a ground truth file: the devkit's, or meta.mat beside it."""
    if devkit:
        return read_devkit(devkit)[1]
    beside = os.path.join(os.path.dirname(os.path.abspath(val_labels)), _META)
    if not os.path.exists(beside):
        raise ValueError(
            f'--val_labels={val_labels} holds ILSVRC2012_IDs: give --devkit (or put the '
            f'devkit\'s {_META} beside it) to map them to synsets'
        )
    return read_meta(beside, beside)


def val_sources(
    *,
    val_tar: str | None,
    val_dir: str | None,
    labels: Sequence[str] | None,
    labels_name: str = '--val_labels',
) -> list[image_files.Source]:
    """The validation images in image-number order, with their synsets.

    An image sorted into a class folder has that folder's synset; any other is labelled
    by the number in its name (`labels[number - 1]`), so any subset of the 50,000 images
    can be built.

    Raises:
      ValueError: naming an image that has no label (no number, or no such line).
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
                    if image_files.is_image_name(name):
                        found.append((name, (os.path.join(folder, name), 0, -1, entry)))
            elif image_files.is_image_name(entry):
                found.append((entry, (folder, 0, -1)))
    sources, numbers = [], {}
    for name, location in sorted(found, key=lambda item: item[0]):
        if not image_files.is_image_name(name):
            continue
        # Two files of one image number (a copy with another extension, a tar member
        # added twice, a flat file beside a sorted one) would both be built.
        match = _VAL_NUMBER.search(name)
        if match:
            number = int(match.group(1))
            where = f'{location[0]}:{name}' if val_tar else location[0]
            if number in numbers:
                raise ValueError(
                    f'validation images {numbers[number]} and {where} have the same image '
                    f'number {number}: keep one'
                )
            numbers[number] = where
        synset = location[3] if len(location) == 4 else _val_synset(name, labels, labels_name)
        sources.append(image_files.Source(*location[:3], name, synset))
    return sources


def _val_synset(name: str, labels: Sequence[str] | None, labels_name: str) -> str:
    """The synset of a flat validation image: the label line of its image number."""
    if labels is None:
        raise ValueError(
            f'validation image {name} needs labels: give --devkit '
            '(ILSVRC2012_devkit_t12.tar.gz) or --val_labels'
        )
    match = _VAL_NUMBER.search(name)
    if not match:
        raise ValueError(
            f'validation image {name} has no image number (ILSVRC2012_val_NNNNNNNN.JPEG) '
            'to look its label up by'
        )
    number = int(match.group(1))
    if not 1 <= number <= len(labels):
        raise ValueError(
            f'validation image {name} has no label: {labels_name} has {len(labels):,} lines'
        )
    return labels[number - 1]


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
    sources: tuple[image_files.Source, ...]
    labels: dict
    texts: dict
    boxes: dict


def _write_shard(job: _ShardJob) -> tuple[str, int, int]:
    """Writes one shard (unless a finished one is there); returns (split, index, count)."""
    from input_pipeline import writer  # noqa: PLC0415  (TensorFlow: in workers only)

    examples = []
    for source in job.sources:
        encoded, height, width = image_files.encoded_jpeg(source.read(), source.where)
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

    The builder's check of the shards it has just written: 16 bytes read per record,
    so that checking ImageNet's 1,152 shards does not read them again. Training counts
    with `dataset.count_examples`, which reads every record with its checksums (a
    damaged file is found, or skipped with --skip_bad_records).

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


def class_labels(synsets: Sequence[str] | None = None) -> dict[str, int]:
    """`synset -> label` (1-based, TF-slim's): the standard 1,000 or the given order."""
    synsets = list(synsets) if synsets else standard_synsets()
    labels = {}
    for index, synset in enumerate(synsets, start=1):
        if synset in labels:
            raise ValueError(f'--synsets lists {synset} twice (lines {labels[synset]}, {index})')
        labels[synset] = index
    return labels


def _check_classes(
    train: Sequence[image_files.Source],
    validation: Sequence[image_files.Source],
    labels: dict,
    where: str,
) -> None:
    """Every image's synset must have a label: a stranger would otherwise get none.

    Raises:
      ValueError: naming the first image outside the class list, and its synset.
    """
    for split, sources in (('train', train), ('validation', validation)):
        for source in sources:
            if source.synset not in labels:
                raise ValueError(
                    f'{split} image {source.name} is of {source.synset}, which is not among '
                    f'the {len(labels):,} classes of {where}: give --synsets listing every class'
                )


def build(
    *,
    output_dir: str,
    train: Sequence[image_files.Source] = (),
    validation: Sequence[image_files.Source] = (),
    synsets: Sequence[str] | None = None,
    texts: dict | None = None,
    boxes: dict | None = None,
    train_shards: int = TRAIN_SHARDS,
    validation_shards: int = VALIDATION_SHARDS,
    num_workers: int | None = None,
    progress_stream=None,
    classes_from: str | None = None,
) -> dict[str, int]:
    """Writes and verifies the shards of both splits; returns the examples per split.

    Args:
      synsets: the class list, label `k` = item `k` (1-based). Default: the standard
        1,000 (`standard_synsets()`), whatever classes `train` and `validation` hold.
      texts: `synset -> words` for `image/class/text`. Default: `standard_class_names()`.
      classes_from: how messages name where `synsets` came from (default `--synsets`),
        for a builder whose class list is not a flag (`build_folders.py`: the folders).

    Raises:
      ValueError: naming an image whose synset is outside the class list, an image that
        does not decode, or a shard whose record count is not the expected one.
    """
    labels = class_labels(synsets)
    where = classes_from or ('--synsets' if synsets else STANDARD_SYNSETS)
    _check_classes(train, validation, labels, where)
    if texts is None:
        texts = standard_class_names()
    (progress_stream or sys.stderr).write(
        f'{len(train):,} train and {len(validation):,} validation images of '
        f'{len({s.synset for s in list(train) + list(validation)})} classes; labels 1..'
        f'{len(labels)} from {where}\n'
    )
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
    num_workers = min(num_workers or _default_workers(todo), len(todo))
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


def _default_workers(todo: Sequence[_ShardJob]) -> int:
    """One process per CPU, but none that would have fewer than ~1,000 images to write.

    Each worker imports TensorFlow, which is slow, before its first image: for a small
    build (a smoke test, a subset) one process, TensorFlow imported once, finishes first.
    """
    images = sum(len(job.sources) for job in todo)
    return max(1, min(os.cpu_count() or 1, images // _IMAGES_PER_WORKER))


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
    parser.add_argument(
        '--devkit', help='ILSVRC2012_devkit_t12.tar.gz, or its folder: the validation labels.'
    )
    parser.add_argument(
        '--val_labels',
        help='Or: one synset per line (TF-slim), or the devkit\'s ILSVRC2012_IDs per line '
        '(ILSVRC2012_validation_ground_truth.txt, mapped by the meta.mat of --devkit or '
        'beside it); line i labels image number i.',
    )
    parser.add_argument(
        '--synsets',
        help=f'Class list, one synset per line (label = line number). Default: the 1,000 '
        f'ILSVRC2012 synsets in the standard order ({STANDARD_SYNSETS}).',
    )
    parser.add_argument(
        '--synset_text',
        help=f'synset<TAB>words lines for image/class/text. Default: {STANDARD_CLASS_NAMES}.',
    )
    parser.add_argument('--bounding_boxes', help='name.JPEG,xmin,ymin,xmax,ymax lines (0..1).')
    parser.add_argument('--output_dir', required=True, help='Folder for the TFRecord shards.')
    parser.add_argument('--train_shards', type=int, default=TRAIN_SHARDS)
    parser.add_argument('--validation_shards', type=int, default=VALIDATION_SHARDS)
    parser.add_argument(
        '--num_workers',
        type=int,
        help='Processes. Default: one per CPU, fewer for a build of a few thousand images.',
    )
    args = parser.parse_args(argv)
    if args.train_tar and args.train_dir or args.val_tar and args.val_dir:
        parser.error('give a tar or a folder for each split, not both')
    if not (args.train_tar or args.train_dir or args.val_tar or args.val_dir):
        parser.error('nothing to build: give --train_tar/--train_dir and/or --val_tar/--val_dir')
    workers = 1 if args.num_workers is None else args.num_workers
    if min(args.train_shards, args.validation_shards, workers) < 1:
        parser.error('--train_shards, --validation_shards and --num_workers must be positive')
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, int]:
    args = _parse_args(argv)
    started = time.time()
    train = []
    if args.train_tar:
        train = train_sources_from_tar(args.train_tar)
    elif args.train_dir:
        train = image_files.class_folder_sources(args.train_dir)
    validation = []
    if args.val_tar or args.val_dir:
        labels, labels_name = read_val_labels(val_labels=args.val_labels, devkit=args.devkit)
        validation = val_sources(
            val_tar=args.val_tar, val_dir=args.val_dir, labels=labels, labels_name=labels_name
        )
    texts = read_synset_text(args.synset_text) if args.synset_text else None
    synsets = read_lines(args.synsets) if args.synsets else None
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


def run(argv: Sequence[str] | None = None) -> int:
    """The command: `main`, with a refusal printed as one line and exit status 1."""
    try:
        main(argv)
    except (ValueError, FileNotFoundError, tarfile.TarError) as error:
        print(f'build_imagenet: error: {error}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(run())

"""Checks a dataset before (or after) it is built: classes, labels, images, duplicates.

  python -m input_pipeline.validate --dataset_dir=DIR [--json=OUT.json] [--num_workers=N]

DIR is a TFRecord dataset in any layout `formats.find_dataset` recognises (its train
and validation splits, labels read with the offset it finds), or a tree of class
folders before it is built: `DIR/train/<class>/*` with an optional `DIR/val/<class>/*`
(or `DIR/validation/`), or `DIR/<class>/*`, all train. What is an image, a damaged
image or one a build re-encodes is decided by the builders' own rule
(`image_files.py`), so that the validator passes what a build accepts and the trainer
reads, and names what either would refuse.

It reports, as a table on stdout and with `--json` as JSON:

- examples per class and split, and the imbalance (largest over smallest class);
- errors, each named (a file, or a shard and record index): images that do not
  decode, that decode only with libjpeg's warning that data was lost, or that the
  trainer refuses (`decode.image_problem`, `decode.jpeg_problem`: no end marker, too
  few bytes, more than `decode.MAX_IMAGE_PIXELS`); labels outside the class list or
  one label stored with two class names (or one name with two labels); validation
  images that are byte-for-byte copies of train images (the classic leak); validation
  classes that train lacks; damaged TFRecord files;
- warnings: a class with fewer than `FEW_IMAGES` images in a split, exact duplicates
  inside a split, train classes that validation lacks, labels that cannot be checked;
- counts of greyscale, CMYK, PNG (and other non-JPEG) images, and of images a build
  re-encodes, and the distribution of image sizes.

Exit status: 0 without errors (warnings allowed), 1 with errors, 2 when there is nothing
to check (DIR missing, a file, or holding neither TFRecords nor class folders of
images) or the command line is wrong; those print one line naming the folder or flag.

Speed: ImageNet's 1.28 M images are checked by `--num_workers` processes (spawned, as
the builder's, `build_imagenet.py`), over chunks of a class folder or whole shards.
JPEGs are decoded at 1/8 scale (`tf.io.decode_jpeg(ratio=8)`): libjpeg still decodes
every coefficient, so damaged data gives the same warnings and errors as a full decode
(checked on truncated and byte-damaged baseline, progressive and greyscale JPEGs), at
about 60% of its cost. Sizes and colour spaces come from the headers. libjpeg's
warnings are collected once per batch of images; only a batch that printed one is
decoded again image by image, to name the image.

Memory: per image only a 16-byte BLAKE2b digest, its height and width and where it is
(split, class or shard, index) are kept, in arrays (about 30 bytes an image: 40 MB for
ImageNet); names are looked up again only for the duplicates listed.
"""

from __future__ import annotations

import argparse
import array
import collections
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from input_pipeline import DataError, MissingDataError, build_folders, image_files

# A class with fewer images than this in a split is a warning: too few to learn from
# (train) or to measure (validation); 5 is a floor, not a recommendation.
FEW_IMAGES = 5
# Problems of one kind listed in the table, and kept (for the JSON) in memory; all counted.
LISTED_IN_TABLE = 10
LISTED_IN_JSON = 1000
# Images per batch: one libjpeg-warning capture and one header check per batch.
BATCH = 64
# Images of one class folder per task of a worker process.
FOLDER_CHUNK = 512
# JPEGs are decoded at this scale (libjpeg's 1/8: DC-only inverse DCT); see the docstring.
DECODE_RATIO = 8
# The least images worth a worker process of its own (each imports TensorFlow).
IMAGES_PER_WORKER = 1000
# Progress lines on stderr start after this many seconds, then at most one per interval.
PROGRESS_AFTER_S = 10.0
PROGRESS_INTERVAL_S = 30.0
DIGEST_BYTES = 16
SPLITS = ('train', 'validation')
_SYNSET_KEY = 'image/class/synset'
_TEXT_KEY = 'image/class/text'
# Leading bytes of the formats TensorFlow decodes besides JPEG (as `decode.py` lists them).
_FORMATS = ((b'\xff\xd8\xff', 'jpeg'), (b'\x89PNG', 'png'), (b'GIF8', 'gif'), (b'BM', 'bmp'))


class DatasetError(Exception):
    """Nothing to validate: the folder is missing or holds no dataset (exit status 2)."""


# --- what one image is ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageFacts:
    """What the validator learns about one image.

    Attributes:
      kind: `jpeg`, `png`, `gif`, `bmp` or `other` (from its leading bytes).
      height, width: from its header (JPEG) or its decoding; 0 when unknown.
      channels: 1 greyscale, 3 colour, 4 CMYK (JPEG), 2/4 with alpha (PNG); 0 unknown.
      problem: why a build or the trainer would refuse it, or ''.
      reencoded: whether a build re-encodes it (CMYK, not a JPEG, data after its end).
    """

    kind: str
    height: int = 0
    width: int = 0
    channels: int = 0
    problem: str = ''
    reencoded: bool = False


def image_kind(data: bytes) -> str:
    """The format of an image's bytes, from their start."""
    for signature, kind in _FORMATS:
        if data.startswith(signature):
            return kind
    return 'other'


@functools.cache
def _checks():
    """The TensorFlow functions of the checks, traced once per process.

    TensorFlow is imported here, not at the top: the main process lists folders and
    starts workers without it.
    """
    import tensorflow as tf

    from input_pipeline import decode

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def header_problems(batch):
        return decode.image_problem(batch)

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def jpeg(data):
        # A scaled decode still entropy-decodes every block (see the module's docstring).
        shape = tf.io.extract_jpeg_shape(data, output_type=tf.int32)
        problem = decode.jpeg_problem(data)
        decoded = tf.cond(
            tf.equal(problem, ''),
            lambda: tf.size(tf.io.decode_jpeg(data, channels=3, ratio=DECODE_RATIO)),
            lambda: tf.constant(0),
        )
        return shape, problem, decoded

    return tf, header_problems, jpeg


def _op_error(error: Exception) -> str:
    """TensorFlow's error as one line, without its function and op names."""
    from base import errors

    return errors.one_line(error)


def _check_jpeg(data: bytes, header_problem: str, appended: bool) -> ImageFacts:
    tf, _, jpeg = _checks()
    try:
        shape, problem, _ = jpeg(data)
    except tf.errors.OpError as error:
        return ImageFacts('jpeg', problem=header_problem or f'does not decode: {_op_error(error)}')
    height, width, channels = (int(value) for value in shape.numpy())
    problem = problem.numpy().decode()
    return ImageFacts('jpeg', height, width, channels, problem, reencoded=appended or channels == 4)


def _check_other(data: bytes, kind: str) -> ImageFacts:
    """A PNG, GIF or BMP: decoded whole (rare, and no scaled decoder exists)."""
    tf, _, _ = _checks()
    try:
        image = tf.io.decode_image(data, channels=0, expand_animations=False)
    except tf.errors.OpError as error:
        return ImageFacts(kind, problem=f'does not decode: {_op_error(error)}')
    height, width, channels = image.shape
    return ImageFacts(kind, height, width, channels, reencoded=True)


def check_image(data: bytes, header_problem: str, *, built: bool) -> ImageFacts:
    """One image's facts, given `decode.image_problem`'s verdict on its bytes.

    Args:
      built: whether the image is in a TFRecord (read by the trainer as it is) or a
        file a build will read: a JPEG with data after its end marker is re-encoded
        by a build (`image_files.encoded_jpeg`) but refused by the trainer.
    """
    kind = image_kind(data)
    appended = not built and kind == 'jpeg' and 'end marker' in header_problem
    if header_problem and not appended:
        return ImageFacts(kind, problem=header_problem)
    if kind == 'jpeg':
        return _check_jpeg(data, header_problem if appended else '', appended)
    return _check_other(data, kind)


def check_images(images: Sequence[bytes], *, built: bool) -> list[ImageFacts]:
    """The facts of a batch of images, libjpeg's warnings read once for the batch.

    Only when the batch printed a warning of lost data is each JPEG decoded again
    alone, to tell which one: damaged images are rare, and the capture costs a
    temporary file and two `dup2` calls.
    """
    if not images:
        return []
    tf, header_problems, _ = _checks()
    problems = [p.decode() for p in header_problems(tf.constant(list(images))).numpy()]
    with image_files.libjpeg_warnings() as warned:
        facts = [check_image(d, p, built=built) for d, p in zip(images, problems)]
    if warned:
        facts = [_recheck(d, p, f, built) for d, p, f in zip(images, problems, facts)]
    return facts


def _recheck(data: bytes, header_problem: str, facts: ImageFacts, built: bool) -> ImageFacts:
    if facts.kind != 'jpeg' or facts.problem:
        return facts
    with image_files.libjpeg_warnings() as warned:
        check_image(data, header_problem, built=built)
    if not warned:
        return facts
    problem = f'libjpeg says {warned[0]!r} (damaged data)'
    return dataclasses.replace(facts, problem=problem)


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()


# --- tasks for the worker processes ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FolderTask:
    """Images `[start, end)` of one class folder, in `class_images` order."""

    split: str
    group: int  # the class's index in the split's sorted class list
    folder: str
    start: int
    end: int


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """Every record of one TFRecord shard."""

    split: str
    group: int  # the shard's index in the split
    path: str
    image_key: str
    label_key: str
    label_offset: int


@dataclasses.dataclass
class TaskResult:
    """What a task found; per image only digests, sizes and counts come back.

    `labels` (shards only): `(label, synset, text) -> [count, first record's name]`.
    `problems`: `(kind, name, message)`, at most `LISTED_IN_JSON` per kind.
    """

    split: str
    group: int
    start: int
    count: int = 0
    digests: bytearray = dataclasses.field(default_factory=bytearray)
    heights: array.array = dataclasses.field(default_factory=lambda: array.array('i'))
    widths: array.array = dataclasses.field(default_factory=lambda: array.array('i'))
    kinds: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    problems: list = dataclasses.field(default_factory=list)
    labels: dict = dataclasses.field(default_factory=dict)

    def add(self, name: str, data: bytes, facts: ImageFacts) -> None:
        self.count += 1
        self.digests += digest(data)
        # Sizes of refused images are left out of the distribution (0: unknown).
        self.heights.append(0 if facts.problem else facts.height)
        self.widths.append(0 if facts.problem else facts.width)
        self.kinds[facts.kind] += 1
        self.kinds['greyscale'] += facts.channels in (1, 2)
        self.kinds['cmyk'] += facts.kind == 'jpeg' and facts.channels == 4
        self.kinds['reencoded'] += facts.reencoded and not facts.problem
        if facts.problem:
            self.problems.append(('image', name, facts.problem))


def class_images(folder: str) -> list[str]:
    """The image files of one class folder, sorted: the order tasks and names share."""
    return sorted(name for name in os.listdir(folder) if image_files.is_image_name(name))


def _batches(items: Iterator[Any], size: int = BATCH) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_folder_task(task: FolderTask) -> TaskResult:
    """Checks a chunk of one class folder's images."""
    result = TaskResult(task.split, task.group, task.start)
    names = class_images(task.folder)[task.start : task.end]
    for batch in _batches(iter(names)):
        paths = [os.path.join(task.folder, name) for name in batch]
        images = [_read(path) for path in paths]
        readable = [data for data in images if isinstance(data, bytes)]
        facts = iter(check_images(readable, built=False))
        for path, data in zip(paths, images):
            if isinstance(data, bytes):
                result.add(path, data, next(facts))
            else:  # kept in its place, so that indices still name files; no digest shared
                unreadable = ImageFacts('other', problem=f'cannot be read: {data}')
                result.add(path, path.encode(), unreadable)
    return result


def _read(path: str) -> bytes | str:
    """The file's bytes, or why it cannot be read."""
    try:
        with open(path, 'rb') as stream:
            return stream.read()
    except OSError as error:
        return error.strerror or str(error)


def record_name(path: str, index: int) -> str:
    return f'{path}:record {index}'


def run_shard_task(task: ShardTask) -> TaskResult:
    """Checks every record of one shard: its image, label and class names."""
    result = TaskResult(task.split, task.group, 0)
    for start, records in _shard_batches(task, result):
        # Unparsable records (no label: None) are named by `_parse_one` and left out.
        parsed = [(i, *r) for i, r in enumerate(_parse(task, records, start, result), start)]
        parsed = [record for record in parsed if record[2] is not None]
        for index, _, stored, synset, text in parsed:
            _count_label(task, result, index, stored, synset, text)
        images = [record[1] for record in parsed]
        for (index, *_), data, facts in zip(parsed, images, check_images(images, built=True)):
            result.add(record_name(task.path, index), data, facts)
    return result


def _shard_batches(task: ShardTask, result: TaskResult) -> Iterator[tuple[int, list[bytes]]]:
    """`(first index, serialized records)` in batches; a damaged file is named, once.

    Read in batches, the records before the damage in the failing batch are lost: that
    batch is read again record by record up to the damage.
    """
    tf, _, _ = _checks()
    from input_pipeline import records as records_lib

    dataset = tf.data.TFRecordDataset(task.path, buffer_size=records_lib.READ_BUFFER_BYTES)
    start = 0
    try:
        for batch in dataset.batch(BATCH):
            yield start, list(batch.numpy())
            start += BATCH
        return
    except tf.errors.OpError:
        pass
    good = []
    try:
        for record in dataset.skip(start):
            good.append(record.numpy())
    except tf.errors.OpError as error:
        result.problems.append(
            (
                'tfrecord',
                task.path,
                (
                    f'TFRecord file {task.path} is truncated or corrupt after record '
                    f'{start + len(good)}: {_op_error(error)}'
                ),
            )
        )
    for offset, batch in enumerate(_batches(iter(good))):
        yield start + offset * BATCH, batch


def _parse(task: ShardTask, records: list[bytes], start: int, result: TaskResult) -> list[tuple]:
    """`(image bytes, stored label, synset, text)` per record; unparsable ones named."""
    tf, _, _ = _checks()
    from input_pipeline import decode

    spec = {
        task.image_key: tf.io.FixedLenFeature([], tf.string, default_value=''),
        task.label_key: tf.io.FixedLenFeature([], tf.int64, default_value=decode.MISSING_LABEL),
        _SYNSET_KEY: tf.io.FixedLenFeature([], tf.string, default_value=''),
        _TEXT_KEY: tf.io.FixedLenFeature([], tf.string, default_value=''),
    }
    try:
        features = tf.io.parse_example(tf.constant(records), spec)
    except tf.errors.OpError:
        return [_parse_one(task, r, start + i, spec, result) for i, r in enumerate(records)]
    columns = [features[key].numpy() for key in spec]
    return [
        (encoded, int(label), synset.decode(errors='replace'), text.decode(errors='replace'))
        for encoded, label, synset, text in zip(*columns)
    ]


def _parse_one(task, record, index, spec, result) -> tuple:
    tf, _, _ = _checks()
    try:
        features = tf.io.parse_single_example(record, spec)
    except tf.errors.OpError as error:
        name = record_name(task.path, index)
        result.problems.append(('record', name, f'not a tf.train.Example: {_op_error(error)}'))
        return b'', None, '', ''
    encoded, label, synset, text = (features[key].numpy() for key in spec)
    return encoded, int(label), synset.decode(errors='replace'), text.decode(errors='replace')


def _count_label(task: ShardTask, result, index: int, stored, synset: str, text: str) -> None:
    from input_pipeline import decode

    if stored == decode.MISSING_LABEL:
        name = record_name(task.path, index)
        result.problems.append(('label', name, f'the record has no {task.label_key}'))
        return
    key = (stored - task.label_offset, synset, text)
    entry = result.labels.setdefault(key, [0, record_name(task.path, index)])
    entry[0] += 1


def run_task(task: FolderTask | ShardTask) -> TaskResult:
    if isinstance(task, FolderTask):
        return run_folder_task(task)
    return run_shard_task(task)


def _worker_start() -> None:
    # Every failure is reported by name; TensorFlow's own C++ log lines would only repeat it.
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


# --- finding the dataset --------------------------------------------------------------


@dataclasses.dataclass
class Dataset:
    """What is validated: folders of class folders, or TFRecord shards.

    `groups[split]`: the class names (folders) or the shard paths, in task order.
    `sizes[split]`: images per class (folders only).
    """

    dataset_dir: str
    format: str
    describe: str
    groups: dict[str, list[str]]
    sizes: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    roots: dict[str, str] = dataclasses.field(default_factory=dict)
    schema: Any = None
    label_offset: int = 0

    def tasks(self) -> list[FolderTask | ShardTask]:
        if self.format == 'folders':
            return [
                FolderTask(
                    split,
                    group,
                    os.path.join(self.roots[split], name),
                    start,
                    min(start + FOLDER_CHUNK, size),
                )
                for split, names in self.groups.items()
                for group, (name, size) in enumerate(zip(names, self.sizes[split]))
                for start in range(0, size, FOLDER_CHUNK)
            ]
        return [
            ShardTask(
                split, group, path, self.schema.image_key, self.schema.label_key, self.label_offset
            )
            for split, paths in self.groups.items()
            for group, path in enumerate(paths)
        ]

    def image_name(self, split: str, group: int, index: int, listings: dict) -> str:
        """The name of one image from where it is (the folder listed again, once)."""
        if self.format == 'tfrecords':
            return record_name(self.groups[split][group], index)
        folder = os.path.join(self.roots[split], self.groups[split][group])
        if folder not in listings:
            listings[folder] = class_images(folder)
        return os.path.join(folder, listings[folder][index])


def find(dataset_dir: str, label_offset: int | None = None) -> Dataset:
    """The dataset in `dataset_dir`: TFRecords first, else a class-folder tree.

    Raises:
      DatasetError: one line naming the folder, when it is missing or holds neither.
    """
    if not os.path.isdir(dataset_dir):
        what = 'is a file, not a folder' if os.path.exists(dataset_dir) else 'does not exist'
        raise DatasetError(f'dataset directory {dataset_dir} {what}')
    found = _find_records(dataset_dir, label_offset) or _find_folders(dataset_dir)
    if found is None:
        raise DatasetError(
            f'dataset directory {dataset_dir} holds no TFRecords and no class folders of '
            f'images (expected {dataset_dir}/train/<class>/<image> or {dataset_dir}/<class>/<image>)'
        )
    return found


def _shard_names_exist(dataset_dir: str) -> bool:
    """Whether any layout's shard names are there, without importing TensorFlow."""
    import glob

    patterns = ('*-of-*', os.path.join('*', '*-of-*'), os.path.join('*', '*', '*.tfrecord-*-of-*'))
    return any(glob.glob(os.path.join(dataset_dir, pattern)) for pattern in patterns)


def _find_records(dataset_dir: str, label_offset: int | None) -> Dataset | None:
    if not _shard_names_exist(dataset_dir):
        return None
    from input_pipeline import formats

    for splits in (SPLITS, SPLITS[:1], SPLITS[1:]):
        try:
            found = formats.find_dataset(dataset_dir, label_offset=label_offset, splits=splits)
        except MissingDataError:
            continue
        except DataError as error:
            raise DatasetError(str(error)) from error
        groups = {split: list(found.files(split)) for split in SPLITS if found.files(split)}
        return Dataset(
            dataset_dir,
            'tfrecords',
            found.describe(),
            groups,
            schema=found.schema,
            label_offset=found.label_offset,
        )
    return None


def _split_roots(dataset_dir: str) -> dict[str, str]:
    """`{split: folder of class folders}`, by the builder's rule (`build_folders.find_folders`)."""
    try:
        folders = build_folders.find_folders(dataset_dir, flag='--dataset_dir')
    except ValueError as error:
        raise DatasetError(str(error)) from None
    roots = {'train': folders.train}
    if folders.validation:
        roots['validation'] = folders.validation
    return roots


def _find_folders(dataset_dir: str) -> Dataset | None:
    roots = _split_roots(dataset_dir)
    groups, sizes = {}, {}
    for split, root in roots.items():
        classes = image_files.class_folders(root)
        counts = [len(class_images(os.path.join(root, name))) for name in classes]
        groups[split], sizes[split] = classes, counts
    if not any(sum(counts) for counts in sizes.values()):
        return None
    describe = ', '.join(
        f'{split}: {roots[split]} ({len(groups[split])} class folders)' for split in roots
    )
    return Dataset(dataset_dir, 'folders', describe, groups, sizes, roots)


# --- running the tasks ----------------------------------------------------------------


class Progress:
    """Lines on stderr for a long run: none in the first `PROGRESS_AFTER_S` seconds.

    The builder's bar (`build_imagenet.Progress`) counts shards written; this counts
    images checked, over tasks of either kind.
    """

    def __init__(self, total_tasks: int, stream=None):
        self.total, self.done, self.images = total_tasks, 0, 0
        self.stream = stream or sys.stderr
        self.start, self.last = time.time(), 0.0

    def advance(self, images: int) -> None:
        self.done += 1
        self.images += images
        now = time.time()
        if now - self.start < PROGRESS_AFTER_S:
            return
        if now - self.last < PROGRESS_INTERVAL_S and self.done < self.total:
            return
        self.last = now
        elapsed = now - self.start
        left = elapsed * (self.total - self.done) / max(self.done, 1)
        self.stream.write(
            f'validate: {self.done}/{self.total} tasks, {self.images:,} images checked '
            f'({self.images / elapsed:.0f}/s), about {left / 60:.0f} min left\n'
        )
        self.stream.flush()


def default_workers(dataset: Dataset) -> int:
    """One process per CPU this process may use, none with fewer than ~1,000 images."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    if dataset.format == 'folders':
        images = sum(sum(sizes) for sizes in dataset.sizes.values())
        return max(1, min(cpus or 1, images // IMAGES_PER_WORKER))
    return max(1, min(cpus or 1, sum(len(paths) for paths in dataset.groups.values())))


def run_tasks(tasks: Sequence, num_workers: int) -> Iterator[TaskResult]:
    """The tasks' results, as they finish: in this process, or in spawned workers."""
    progress = Progress(len(tasks))
    if num_workers <= 1:
        _worker_start()
        for task in tasks:
            result = run_task(task)
            progress.advance(result.count)
            yield result
        return
    # Spawned, as the builder's workers: forking after TensorFlow started is unsafe.
    context = multiprocessing.get_context('spawn')
    with context.Pool(num_workers, initializer=_worker_start) as pool:
        for result in pool.imap_unordered(run_task, tasks):
            progress.advance(result.count)
            yield result


# --- the findings ---------------------------------------------------------------------


class Findings:
    """Everything the results say, gathered in the main process in compact arrays."""

    def __init__(self):
        self.digests = bytearray()
        self.heights = array.array('i')
        self.widths = array.array('i')
        self.where = array.array('q')  # (split << 56) | (group << 28) | index, per image
        self.kinds = collections.Counter()
        self.problems = collections.defaultdict(list)  # (severity, kind) -> [entry]
        self.counts = collections.Counter()  # (severity, kind) -> n
        self.labels = collections.defaultdict(lambda: [0, ''])  # (split, label, synset, text)

    def add_result(self, result: TaskResult) -> None:
        split = SPLITS.index(result.split)
        self.digests += result.digests
        self.heights += result.heights
        self.widths += result.widths
        base = (split << 56) | (result.group << 28)
        self.where.extend(base | (result.start + i) for i in range(result.count))
        self.kinds.update(result.kinds)
        for kind, name, message in result.problems:
            self.problem('error', kind, name, message)
        for (label, synset, text), (count, first) in result.labels.items():
            entry = self.labels[result.split, label, synset, text]
            entry[0] += count
            entry[1] = entry[1] or first

    def full(self, severity: str, kind: str) -> bool:
        """Whether `LISTED_IN_JSON` problems of this kind are listed (more are only counted)."""
        return len(self.problems[severity, kind]) >= LISTED_IN_JSON

    def problem(self, severity: str, kind: str, name: str, message: str, **extra) -> None:
        self.counts[severity, kind] += 1
        listed = self.problems[severity, kind]
        if len(listed) < LISTED_IN_JSON:
            listed.append({'kind': kind, 'name': name, 'message': message, **extra})


def locate(where: int) -> tuple[str, int, int]:
    return SPLITS[where >> 56], (where >> 28) & (2**28 - 1), where & (2**28 - 1)


def duplicate_groups(findings: Findings) -> Iterator[list[int]]:
    """Indices of images with the same digest, a list per digest held more than once.

    The digests are sorted as two 64-bit halves (numpy), not put in a dict: 16 bytes
    an image stay 16 bytes.
    """
    import numpy as np

    halves = np.frombuffer(bytes(findings.digests), dtype='<u8').reshape(-1, 2)
    if not len(halves):
        return
    order = np.lexsort((halves[:, 1], halves[:, 0]))
    ordered = halves[order]
    same = np.all(ordered[1:] == ordered[:-1], axis=1)
    starts = np.flatnonzero(np.diff(np.concatenate([[0], same.astype(np.int8), [0]])) == 1)
    ends = np.flatnonzero(np.diff(np.concatenate([[0], same.astype(np.int8), [0]])) == -1)
    for start, end in zip(starts, ends):
        yield sorted(int(i) for i in order[start : end + 1])


def find_duplicates(dataset: Dataset, findings: Findings) -> None:
    """Copies inside a split (warnings) and validation copies of train images (errors).

    Inside a split every copy is paired with the group's first image; a validation
    image whose bytes a train image has is paired with the first such train image.
    """
    listings: dict = {}

    def name(index: int) -> str:
        return dataset.image_name(*locate(findings.where[index]), listings)

    def pair(severity: str, kind: str, index: int, first: int, what: str) -> None:
        # Names are looked up only for the pairs listed; the rest are only counted.
        if findings.full(severity, kind):
            findings.counts[severity, kind] += 1
            return
        other = name(first)
        findings.problem(severity, kind, name(index), f'{what} {other}', other=other)

    for members in duplicate_groups(findings):
        by_split = collections.defaultdict(list)
        for index in members:
            by_split[locate(findings.where[index])[0]].append(index)
        for split, indices in by_split.items():
            for index in indices[1:]:
                pair('warning', f'duplicate_{split}', index, indices[0], 'same bytes as')
        if 'train' in by_split:
            for index in by_split.get('validation', []):
                what = 'validation image with the same bytes as train image'
                pair('error', 'leak', index, by_split['train'][0], what)


def class_counts(dataset: Dataset, findings: Findings) -> dict[str, dict[str, int]]:
    """`{split: {class: examples}}`: the folders' sizes, or the records' labels."""
    if dataset.format == 'folders':
        return {
            split: dict(zip(dataset.groups[split], dataset.sizes[split]))
            for split in dataset.groups
        }
    counts: dict = {split: collections.Counter() for split in dataset.groups}
    names = label_names(findings)
    for (split, label, _, _), (count, _) in findings.labels.items():
        counts[split][class_key(label, names.get(label, ''))] += count
    return {split: dict(sorted(c.items())) for split, c in counts.items()}


def class_key(label: int, name: str) -> str:
    return f'{label} {name}'.strip()


def label_names(findings: Findings) -> dict[int, str]:
    """Each label's class name: its synset, else its text (the first, by count)."""
    votes: dict = collections.defaultdict(collections.Counter)
    for (_, label, synset, text), (count, _) in findings.labels.items():
        votes[label][synset or text] += count
    return {label: names.most_common(1)[0][0] for label, names in votes.items()}


def _first_record(item) -> tuple[str, int]:
    """Sorts `Findings.labels` items by their first record: shard, then index as a number."""
    path, _, index = item[1][1].rpartition(':record ')
    return path, int(index or 0)


def check_labels(findings: Findings, num_classes: int | None) -> set[int]:
    """Labels outside `[0, num_classes)`, and labels and names that disagree (errors).

    Without `--num_classes`, the classes are the distinct names the records hold; with
    no names stored at all, only negative labels can be found (a warning says so).

    Returns:
      The labels out of range, which the class checks leave to this error.
    """
    by_label = collections.defaultdict(dict)  # label -> {name: first record}
    by_name = collections.defaultdict(dict)  # name -> {label: first record}
    for (_, label, synset, text), (_, first) in sorted(findings.labels.items(), key=_first_record):
        name = synset or text
        if name:
            by_label[label].setdefault(name, first)
            by_name[name].setdefault(label, first)
    bad = _check_range(findings, num_classes if num_classes else len(by_name) or None)
    for label, names in sorted(by_label.items()):
        if len(names) > 1:
            (a, first), (b, second) = list(names.items())[:2]
            findings.problem(
                'error',
                'label_names',
                second,
                f'label {label} is stored as {b!r} here but as {a!r} in {first}',
            )
    for name, labels in sorted(by_name.items()):
        if len(labels) > 1:
            (a, first), (b, second) = list(labels.items())[:2]
            findings.problem(
                'error',
                'name_labels',
                second,
                f'{name!r} has label {b} here but label {a} in {first}',
            )
    return bad


def _check_range(findings: Findings, num_classes: int | None) -> set[int]:
    if findings.labels and num_classes is None:
        findings.problem(
            'warning',
            'labels_unchecked',
            '',
            'the records store no class names: labels are checked only for being negative; give --num_classes',
        )
    seen = set()
    for (split, label, _, _), (_, first) in sorted(findings.labels.items(), key=_first_record):
        if (label < 0 or (num_classes is not None and label >= num_classes)) and label not in seen:
            seen.add(label)
            findings.problem(
                'error',
                'label_range',
                first,
                f'label {label} (after the label offset) is outside [0, {num_classes or "?"})',
            )
    return seen


def check_classes(
    counts: dict[str, dict[str, int]], findings: Findings, folders: bool, skip: set[str]
) -> None:
    """Small classes (warnings); classes in one split only (validation-only: errors).

    `skip`: classes of labels out of range, already errors of their own.
    """
    counts = {split: {k: n for k, n in c.items() if k not in skip} for split, c in counts.items()}
    for split, classes in counts.items():
        for name, count in classes.items():
            if count < FEW_IMAGES:
                findings.problem(
                    'warning',
                    'few_images',
                    name,
                    f'{count} {split} image{"s" * (count != 1)} (fewer than {FEW_IMAGES})',
                )
    if 'train' not in counts or 'validation' not in counts:
        return
    train, validation = set(counts['train']), set(counts['validation'])
    for name in sorted(validation - train):
        findings.problem(
            'error', 'classes', name, 'a validation class that train lacks: no label learns it'
        )
    for name in sorted(train - validation):
        what = ' (labels of folders built split by split would shift)' if folders else ''
        findings.problem('warning', 'classes', name, f'a train class that validation lacks{what}')


def size_stats(findings: Findings) -> dict[str, dict[str, int]]:
    """min / median / p95 / max of height, width and pixels, over images of known size."""
    import numpy as np

    heights = np.frombuffer(findings.heights, dtype=np.int32).astype(np.int64)
    widths = np.frombuffer(findings.widths, dtype=np.int32).astype(np.int64)
    known = heights > 0
    stats = {}
    for name, values in (
        ('height', heights[known]),
        ('width', widths[known]),
        ('pixels', (heights * widths)[known]),
    ):
        if len(values):
            stats[name] = {
                'min': int(values.min()),
                'median': int(np.median(values)),
                'p95': int(np.percentile(values, 95)),
                'max': int(values.max()),
            }
    return stats


def summarize(
    dataset: Dataset, findings: Findings, num_classes: int | None, seconds: float
) -> dict:
    """The report as JSON-able data: the figures, then the problems listed by severity."""
    bad_labels = check_labels(findings, num_classes) if dataset.format == 'tfrecords' else set()
    names = label_names(findings)
    skip = {class_key(label, names.get(label, '')) for label in bad_labels}
    counts = class_counts(dataset, findings)
    check_classes(counts, findings, dataset.format == 'folders', skip)
    find_duplicates(dataset, findings)
    images = len(findings.where)
    report = {
        'dataset_dir': dataset.dataset_dir,
        'format': dataset.format,
        'found': dataset.describe,
        'images': images,
        'splits': {split: split_summary(classes) for split, classes in counts.items()},
        'image_types': {
            k: findings.kinds.get(k, 0)
            for k in ('jpeg', 'png', 'gif', 'bmp', 'other', 'greyscale', 'cmyk', 'reencoded')
        },
        'sizes': size_stats(findings),
        'few_images_rule': f'a class with fewer than {FEW_IMAGES} images in a split is a warning',
        'seconds': round(seconds, 2),
        'images_per_second': round(images / max(seconds, 1e-9), 1),
    }
    for severity in ('error', 'warning'):
        kinds = {kind: n for (s, kind), n in sorted(findings.counts.items()) if s == severity}
        report[f'{severity}_counts'] = kinds
        report[f'{severity}s'] = [
            entry
            for (s, _), listed in sorted(findings.problems.items())
            if s == severity
            for entry in listed
        ]
    return report


def split_summary(classes: dict[str, int]) -> dict:
    counts = list(classes.values())
    smallest = min(classes, key=classes.get) if classes else None
    largest = max(classes, key=classes.get) if classes else None
    return {
        'examples': sum(counts),
        'num_classes': len(counts),
        'smallest': [smallest, classes[smallest]] if classes else None,
        'largest': [largest, classes[largest]] if classes else None,
        'imbalance': round(classes[largest] / classes[smallest], 2)
        if classes and classes[smallest]
        else None,
        'classes': classes,
    }


# --- output ---------------------------------------------------------------------------


def table(report: dict) -> str:
    """The report as text for a person: the figures, then each kind of problem."""
    lines = [f'Dataset: {report["found"]}', '']
    lines += _split_lines(report) + ['']
    types = report['image_types']
    lines.append(
        'Images: '
        + ', '.join(f'{n:,} {k}' for k, n in types.items() if n)
        + f' ({report["images"]:,} in all)'
    )
    for name, stats in report['sizes'].items():
        lines.append(
            f'  {name:<7} min {stats["min"]:>10,}  median {stats["median"]:>10,}  p95 {stats["p95"]:>10,}  max {stats["max"]:>10,}'
        )
    for severity in ('error', 'warning'):
        lines.append('')
        total = sum(report[f'{severity}_counts'].values())
        lines.append(f'{total:,} {severity}{"s" * (total != 1)}' + (':' if total else ''))
        for kind, count in report[f'{severity}_counts'].items():
            listed = [e for e in report[f'{severity}s'] if e['kind'] == kind][:LISTED_IN_TABLE]
            lines.append(f'  {kind} ({count:,}):')
            lines += [f'    {e["name"]}: {e["message"]}' for e in listed]
            if count > len(listed):
                lines.append(
                    f'    ... and {count - len(listed):,} more (all counted; up to {LISTED_IN_JSON} per kind in --json)'
                )
    lines.append('')
    lines.append(
        f'Checked {report["images"]:,} images in {report["seconds"]:.1f} s ({report["images_per_second"]:,.0f}/s)'
    )
    return '\n'.join(lines)


def _split_lines(report: dict) -> list[str]:
    lines = [
        f'{"split":<11}{"examples":>10}{"classes":>9}{"smallest":>10}{"largest":>10}{"imbalance":>11}'
    ]
    for split, s in report['splits'].items():
        imbalance = f'{s["imbalance"]:.2f}' if s['imbalance'] else 'n/a'
        smallest = s['smallest'][1] if s['smallest'] else 0
        largest = s['largest'][1] if s['largest'] else 0
        lines.append(
            f'{split:<11}{s["examples"]:>10,}{s["num_classes"]:>9,}{smallest:>10,}{largest:>10,}{imbalance:>11}'
        )
    classes = sorted({c for s in report['splits'].values() for c in s['classes']})
    if len(classes) <= 50:
        lines.append('')
        lines.append(f'{"class":<30}' + ''.join(f'{split:>12}' for split in report['splits']))
        for name in classes:
            lines.append(
                f'{name[:29]:<30}'
                + ''.join(f'{s["classes"].get(name, 0):>12,}' for s in report['splits'].values())
            )
    return lines


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m input_pipeline.validate',
        description=__doc__.split('\n\n')[0],
    )
    parser.add_argument(
        '--dataset_dir', required=True, help='TFRecord shards, or a tree of class folders.'
    )
    parser.add_argument('--json', help='Also write the report here as JSON.')
    parser.add_argument(
        '--num_workers',
        type=int,
        help='Processes. Default: one per CPU, fewer for a small dataset.',
    )
    parser.add_argument(
        '--num_classes',
        type=int,
        help='TFRecords: labels must be in [0, N). Default: the class names stored.',
    )
    parser.add_argument(
        '--label_offset',
        type=int,
        help='TFRecords: subtracted from stored labels. Default: as formats.find_dataset decides.',
    )
    args = parser.parse_args(argv)
    if args.num_workers is not None and args.num_workers < 1:
        parser.error('--num_workers must be at least 1')
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        parser.error(f'--json={args.json}: its folder does not exist')
    if args.num_classes is not None and args.num_classes < 1:
        parser.error('--num_classes must be at least 1')
    return args


def validate(
    dataset_dir: str,
    *,
    num_workers: int | None = None,
    num_classes: int | None = None,
    label_offset: int | None = None,
) -> dict:
    """Checks the dataset in `dataset_dir`; returns the report (see `summarize`).

    Raises:
      DatasetError: when there is nothing to check.
    """
    started = time.time()
    dataset = find(dataset_dir, label_offset)
    findings = Findings()
    workers = num_workers or default_workers(dataset)
    for result in run_tasks(dataset.tasks(), workers):
        findings.add_result(result)
    return summarize(dataset, findings, num_classes, time.time() - started)


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the table; exit status 0 (no errors), 1 (errors) or 2 (nothing to check)."""
    args = _parse_args(argv)
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
    try:
        report = validate(
            args.dataset_dir,
            num_workers=args.num_workers,
            num_classes=args.num_classes,
            label_offset=args.label_offset,
        )
    except DatasetError as error:
        print(f'validate: error: {error}', file=sys.stderr)
        return 2
    print(table(report))
    if args.json:
        with open(args.json, 'w') as stream:
            json.dump(report, stream, indent=1)
            stream.write('\n')
    return 1 if report['error_counts'] else 0


if __name__ == '__main__':
    sys.exit(main())

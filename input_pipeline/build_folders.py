"""Builds slim-layout TFRecords from your own photos, sorted into a folder per class.

  python -m input_pipeline.build_folders --image_dir=photos --output_dir=data

Input: `photos/train/<class>/<image>`, and optionally `photos/val/<class>/<image>` (or
`photos/validation/...`); or `photos/<class>/<image>` with no train/ level. A class is
a folder, named anything (spaces and any Unicode included); an image is any file named
as in image_files.IMAGE_EXTENSIONS (.jpeg .jpg .png .bmp .gif, any case); hidden files
are left out, other files too, with a warning.

Labels: the train class folders sorted by name (Python's sorted on the folder name),
class k of that order gets label k, 1-based (TF-slim's convention; the trainer reads
it with label offset 1, `formats.find_dataset`). Each record stores its folder name as
synset and as text, so exports and `trainer.tools.predict` print folder names.
`classes.txt` in the output folder lists the classes, line k = label k.

Validation: `photos/val/` when there is one (every class there must be a train class).
Without it, --val_fraction (default 0.1) of each train class is held out: within a
class the files are ordered by the SHA-1 of their name's bytes and the first
round(fraction * n) (halves rounded up) are taken, at least 1 when the class has 2 or
more images, at most n - 1, none from a class of 1. So the split depends on the file
names only: not on listing order, file dates or the machine. --val_fraction=0: no
validation split.

Shards: by default one per 1,000 images, rounded down (1 below 2,000 images; every
shard then holds 1,000 to 2,000). Shards are written by worker
processes and checked as `build_imagenet.build` does: the same listing, the same rule
for keeping or re-encoding an image (`image_files.encoded_jpeg`: JPEGs kept byte for
byte, PNG and others re-encoded as JPEG), a progress bar, record counts verified.

Reruns: a rerun with the same images (names, sizes, dates), split and shard counts
keeps the shards already finished and writes the rest; the plan it checks against is
a hidden file beside them. Shards in the output folder of any other build are refused,
never mixed in.

Refused, with one line naming the folder or flag: no class folders, an empty class
folder, images beside the class folders, a validation class that is no train class,
--val_fraction outside [0, 1), more shards than images, and shards of another build.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence

from input_pipeline import build_imagenet
from input_pipeline import image_files

DEFAULT_VAL_FRACTION = 0.1
# At least this many images per shard by default (see the module's docstring).
IMAGES_PER_SHARD = 1000
CLASS_LIST = 'classes.txt'
# The build a folder's shards belong to (`plan_digest`), for reruns; hidden, so that no
# reader of the dataset folder (formats.py, dataset.py) ever looks at it.
PLAN_FILE = '.build_folders_plan.json'
_PLAN_VERSION = 1
_TRAIN_FOLDER = 'train'
_VAL_FOLDERS = ('val', 'validation')
# Shard names of the three layouts formats.py reads: any of them in the output folder
# would be read (or refused) together with the new shards.
_SHARD_GLOBS = ('{split}-*-of-*', '{split}/{split}-*-of-*', '*-{split}.tfrecord-*-of-*')


@dataclasses.dataclass(frozen=True)
class Folders:
    """Where the classes are: `train` holds the class folders, `validation` too or None."""

    train: str
    validation: str | None


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a build writes: the class list, the images of each split and the shard counts."""

    train_dir: str
    classes: tuple[str, ...]
    train: tuple[image_files.Source, ...]
    validation: tuple[image_files.Source, ...]
    train_shards: int
    validation_shards: int
    validation_from: str  # how the summary names where validation images came from


def find_folders(image_dir: str, flag: str = '--image_dir') -> Folders:
    """Tells `photos/train/<class>` (with `val/` or `validation/`) from `photos/<class>`.

    A folder named train, val or validation directly in `image_dir` is a split folder;
    other folders beside train/ are refused rather than guessed to be classes, and a
    val/ without train/ too, since the train classes would then be `image_dir`'s folders.
    The validator (`validate.py`) reads a tree by this same rule; `flag` names the
    folder's flag in messages.

    Raises:
      ValueError: naming `image_dir` and the folder that does not fit.
    """
    if not os.path.isdir(image_dir):
        raise ValueError(f'{flag}={image_dir} is not a folder')
    folders = image_files.class_folders(image_dir)
    vals = [name for name in folders if name in _VAL_FOLDERS]
    if len(vals) > 1:
        raise ValueError(f'{flag}={image_dir} holds both val/ and validation/: keep one')
    if _TRAIN_FOLDER not in folders:
        if vals:
            raise ValueError(
                f'{flag}={image_dir} holds {vals[0]}/ but no train/: put the train class '
                f'folders in {os.path.join(image_dir, _TRAIN_FOLDER)}/'
            )
        return Folders(image_dir, None)
    others = [name for name in folders if name not in (_TRAIN_FOLDER, *_VAL_FOLDERS)]
    if others:
        raise ValueError(
            f'{flag}={image_dir} holds train/ and also {others[0]}/: put every train '
            f'class folder in {os.path.join(image_dir, _TRAIN_FOLDER)}/'
        )
    return Folders(
        os.path.join(image_dir, _TRAIN_FOLDER),
        os.path.join(image_dir, vals[0]) if vals else None,
    )


def list_images(folder: str, log) -> list[image_files.Source]:
    """The images of `folder/<class>/`, listed by the builders' shared rule.

    `image_files.class_folder_sources` is the listing every builder uses; the checks
    here are what it passes over silently: a folder without classes or a class without
    images (refused: a class with no image gets a label nothing teaches), images not in
    a class folder (refused: they would be left out), and other files (a warning).

    Raises:
      ValueError: naming the folder or file.
    """
    classes = image_files.class_folders(folder)
    if not classes:
        raise ValueError(f'{folder} holds no class folders (expected {folder}/<class>/<image>)')
    loose = sorted(name for name in os.listdir(folder) if image_files.is_image_name(name))
    if loose:
        raise ValueError(
            f'{os.path.join(folder, loose[0])} is not in a class folder: move it into '
            f'{folder}/<class>/ or out of {folder}'
        )
    for name in classes:
        if '\n' in name or '\r' in name:
            raise ValueError(
                f'class folder {os.path.join(folder, name)!r} has a line break in its name'
            )
    sources = image_files.class_folder_sources(folder)
    counts = collections.Counter(source.synset for source in sources)
    empty = [name for name in classes if not counts[name]]
    if empty:
        raise ValueError(
            f'class folder {os.path.join(folder, empty[0])} holds no images '
            f'({" ".join(image_files.IMAGE_EXTENSIONS)}): add some or remove it'
        )
    _warn_of_other_files(folder, classes, log)
    return sources


def _warn_of_other_files(folder: str, classes: Sequence[str], log) -> None:
    """Names the files of the class folders that are not images (a .heic, a .txt).

    Hidden files (.DS_Store) are not mentioned: no one means them as images.
    """
    others = []
    for name in classes:
        class_dir = os.path.join(folder, name)
        others += [
            os.path.join(class_dir, entry)
            for entry in sorted(os.listdir(class_dir))
            if not entry.startswith('.') and not image_files.is_image_name(entry)
        ]
    if others:
        log.write(
            f'build_folders: warning: {len(others)} file(s) in the class folders of {folder} '
            f'are not images ({" ".join(image_files.IMAGE_EXTENSIONS)}) and are left out, '
            f'such as {others[0]}\n'
        )


def validation_count(count: int, fraction: float) -> int:
    """How many of a class's `count` images go to validation (the module's docstring).

    round(fraction * count) with halves rounded up (Python's round would round 2.5 to 2),
    at least 1 once the class has 2 images, and never the whole class.
    """
    if fraction <= 0 or count < 2:
        return 0
    return min(count - 1, max(1, math.floor(fraction * count + 0.5)))


def name_hash(source: image_files.Source) -> str:
    """The SHA-1 of a file name's bytes: an order that only the name decides.

    Unlike Python's `hash`, it is the same in every process and on every machine.
    """
    return hashlib.sha1(os.fsencode(source.name)).hexdigest()


def split_by_name_hash(
    sources: Sequence[image_files.Source], fraction: float
) -> tuple[list[image_files.Source], list[image_files.Source]]:
    """(train, validation): per class, the first `validation_count` images by `name_hash`.

    Both keep the order of `sources`, so the result depends on which images there are,
    not on the order they are given in.
    """
    by_class = collections.defaultdict(list)
    for source in sources:
        by_class[source.synset].append(source)
    held_out = set()
    for members in by_class.values():
        ordered = sorted(members, key=lambda source: (name_hash(source), source.name))
        held_out.update(ordered[: validation_count(len(members), fraction)])
    return (
        [source for source in sources if source not in held_out],
        [source for source in sources if source in held_out],
    )


def default_shards(count: int) -> int:
    """One shard per `IMAGES_PER_SHARD` images, rounded down, at least 1.

    Rounding down keeps every shard at 1,000 images or more (TF-slim's ImageNet shards
    hold ~1,250).
    """
    return max(1, count // IMAGES_PER_SHARD)


def _check_shards(flag: str, shards: int, count: int) -> None:
    """Refuses a shard count that would write empty shards."""
    if shards > count:
        raise ValueError(f'{flag}={shards} is more than the {count:,} images of that split')


def make_plan(
    image_dir: str,
    *,
    val_fraction: float | None = None,
    train_shards: int | None = None,
    validation_shards: int | None = None,
    log=None,
) -> Plan:
    """Lists and checks the images, labels the classes and splits off validation.

    Raises:
      ValueError: for every refusal of the module's docstring but the output folder's.
    """
    log = log or sys.stderr
    if val_fraction is not None and not 0 <= val_fraction < 1:
        raise ValueError(f'--val_fraction={val_fraction} is outside [0, 1)')
    folders = find_folders(image_dir)
    train = list_images(folders.train, log)
    classes = tuple(sorted({source.synset for source in train}))
    if folders.validation:
        if val_fraction:
            raise ValueError(
                f'--val_fraction={val_fraction} splits the train images, but '
                f'{folders.validation} holds validation images already: give one or the other'
            )
        validation = list_images(folders.validation, log)
        strangers = sorted({source.synset for source in validation} - set(classes))
        if strangers:
            raise ValueError(
                f'validation class folder {os.path.join(folders.validation, strangers[0])} '
                f'is not a class of {folders.train} (the train folders are the class list)'
            )
        validation_from = folders.validation
    else:
        fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
        train, validation = split_by_name_hash(train, fraction)
        validation_from = f'{fraction:g} of each class of {folders.train}, by file-name hash'
    train_shards = train_shards or default_shards(len(train))
    validation_shards = validation_shards or default_shards(len(validation))
    _check_shards('--train_shards', train_shards, len(train))
    if validation:
        _check_shards('--validation_shards', validation_shards, len(validation))
    return Plan(
        folders.train,
        classes,
        tuple(train),
        tuple(validation),
        train_shards,
        validation_shards,
        validation_from,
    )


def plan_digest(plan: Plan, image_dir: str) -> str:
    """A fingerprint of what the shards hold: classes, shard counts, and each image's
    split, class, path under `image_dir`, size and modification time.

    Sizes and times stand in for the bytes (reading 150 GB to resume is not an option):
    an image replaced or edited since gives another fingerprint, and so does the folder
    copied without its dates, which makes a rerun refuse rather than keep shards that
    may not be these images'.
    """
    digest = hashlib.sha256()
    header = [_PLAN_VERSION, image_files.REENCODE_QUALITY, plan.classes]
    digest.update(json.dumps(header + [plan.train_shards, plan.validation_shards]).encode())
    for split, sources in (('train', plan.train), ('validation', plan.validation)):
        for source in sources:
            stat = os.stat(source.path)
            entry = [split, os.path.relpath(source.path, image_dir), source.synset]
            digest.update(json.dumps(entry + [stat.st_size, stat.st_mtime_ns]).encode() + b'\n')
    return digest.hexdigest()


def shard_names(plan: Plan) -> list[str]:
    """The file names `build_imagenet.build` writes for `plan` (an empty split: none)."""
    names = []
    for split, sources, shards in (
        ('train', plan.train, plan.train_shards),
        ('validation', plan.validation, plan.validation_shards),
    ):
        if sources:
            names += [f'{split}-{index:05d}-of-{shards:05d}' for index in range(shards)]
    return names


def existing_shards(output_dir: str) -> list[str]:
    """Shards of any layout in `output_dir`, relative to it (see `_SHARD_GLOBS`)."""
    found = set()
    for split in ('train', 'validation'):
        for pattern in _SHARD_GLOBS:
            found.update(
                glob.glob(os.path.join(glob.escape(output_dir), pattern.format(split=split)))
            )
    return sorted(os.path.relpath(path, output_dir) for path in found)


def _recorded_digest(output_dir: str) -> str | None:
    try:
        with open(os.path.join(output_dir, PLAN_FILE)) as stream:
            return json.load(stream).get('digest')
    except (OSError, ValueError, AttributeError):
        return None


def check_output(output_dir: str, plan: Plan, digest: str) -> None:
    """Lets a rerun keep its shards; refuses shards that another build wrote.

    `build_imagenet.build` keeps every shard already under its final name, whichever
    build wrote it. That is right for a rerun of the same build only: so shards are
    kept only when the plan file beside them has this build's digest, and no shard
    outside this build's names is there.

    Raises:
      ValueError: naming the output folder and one of the other build's shards.
    """
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f'--output_dir={output_dir} is a file, not a folder')
    found = existing_shards(output_dir)
    if not found:
        return
    planned = set(shard_names(plan))
    strangers = [name for name in found if name not in planned]
    if strangers or _recorded_digest(output_dir) != digest:
        raise ValueError(
            f'--output_dir={output_dir} already holds shards of another build '
            f'({(strangers or found)[0]}: other images, classes, split or shard counts): '
            'remove them or choose another --output_dir'
        )


def _write_atomically(path: str, text: str) -> None:
    """Writes a file under a temporary name, then renames it: never half written."""
    temporary = os.path.join(os.path.dirname(path), f'.{os.path.basename(path)}.incomplete')
    with open(temporary, 'w', encoding='utf-8') as stream:
        stream.write(text)
    os.replace(temporary, path)


def build_folders(
    image_dir: str,
    output_dir: str,
    *,
    val_fraction: float | None = None,
    train_shards: int | None = None,
    validation_shards: int | None = None,
    num_workers: int | None = None,
    progress_stream=None,
) -> tuple[Plan, dict[str, int]]:
    """Plans, checks the output folder, writes the shards through `build_imagenet.build`
    and the class list; returns the plan and the verified examples per split.

    Raises:
      ValueError: for the refusals of the module's docstring, and what `build` refuses
        (an image that does not decode, a shard with a wrong record count).
    """
    log = progress_stream or sys.stderr
    plan = make_plan(
        image_dir,
        val_fraction=val_fraction,
        train_shards=train_shards,
        validation_shards=validation_shards,
        log=log,
    )
    digest = plan_digest(plan, image_dir)
    check_output(output_dir, plan, digest)
    os.makedirs(output_dir, exist_ok=True)
    _write_atomically(os.path.join(output_dir, PLAN_FILE), json.dumps({'digest': digest}) + '\n')
    counts = build_imagenet.build(
        output_dir=output_dir,
        train=plan.train,
        validation=plan.validation,
        synsets=plan.classes,
        texts={name: name for name in plan.classes},
        train_shards=plan.train_shards,
        validation_shards=plan.validation_shards,
        num_workers=num_workers,
        progress_stream=progress_stream,
        classes_from=f'the class folders of {plan.train_dir} sorted by name',
    )
    _write_atomically(
        os.path.join(output_dir, CLASS_LIST), ''.join(f'{name}\n' for name in plan.classes)
    )
    return plan, counts


def summary(plan: Plan, counts: dict[str, int], output_dir: str) -> str:
    """The closing lines: the classes, what each split holds and where the list is."""
    lines = [
        (
            f'build_folders: {len(plan.classes)} classes, labels 1..{len(plan.classes)} in the '
            f'sorted order of the class folders of {plan.train_dir}; class list (line k = '
            f'label k): {os.path.join(output_dir, CLASS_LIST)}'
        )
    ]
    for split, sources, shards, origin in (
        ('train', plan.train, plan.train_shards, plan.train_dir),
        ('validation', plan.validation, plan.validation_shards, plan.validation_from),
    ):
        if not sources:
            lines.append(
                f'  {split}: none, so the trainer will not find this dataset '
                '(formats.find_dataset needs both splits): add a val/ folder or --val_fraction'
            )
            continue
        classes = len({source.synset for source in sources})
        files = f'{split}-00000-of-{shards:05d}' + (' ...' if shards > 1 else '')
        lines.append(
            f'  {split}: {counts.get(split, 0):,} images of {classes} classes in {shards} '
            f'shard{"s" if shards > 1 else ""} ({files}), from {origin}'
        )
    return '\n'.join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m input_pipeline.build_folders',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        '--image_dir',
        required=True,
        help='photos/train/<class>/<image> (and photos/val/<class>/...), or photos/<class>/<image>.',
    )
    parser.add_argument('--output_dir', required=True, help='Folder for the TFRecord shards.')
    parser.add_argument(
        '--val_fraction',
        type=float,
        help=f'Without a val/ folder: the fraction of each class held out for validation '
        f'(by file-name hash), in [0, 1). Default: {DEFAULT_VAL_FRACTION}.',
    )
    parser.add_argument(
        '--train_shards',
        type=int,
        help=f'Default: one per {IMAGES_PER_SHARD:,} images, at least 1.',
    )
    parser.add_argument(
        '--validation_shards',
        type=int,
        help=f'Default: one per {IMAGES_PER_SHARD:,} images, at least 1.',
    )
    parser.add_argument(
        '--num_workers',
        type=int,
        help='Processes. Default: one per CPU, fewer for a build of a few thousand images.',
    )
    return parser.parse_args(argv)


def _check_counts(args: argparse.Namespace) -> None:
    """Refuses a shard or worker count below 1, with one line naming the flag."""
    for flag in ('train_shards', 'validation_shards', 'num_workers'):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f'--{flag}={value} must be at least 1')


def main(argv: Sequence[str] | None = None, stream=None) -> dict[str, int]:
    stream = stream or sys.stderr
    args = _parse_args(argv)
    _check_counts(args)
    started = time.time()
    plan, counts = build_folders(
        args.image_dir,
        args.output_dir,
        val_fraction=args.val_fraction,
        train_shards=args.train_shards,
        validation_shards=args.validation_shards,
        num_workers=args.num_workers,
        progress_stream=stream,
    )
    stream.write(summary(plan, counts, args.output_dir) + '\n')
    stream.write(f'Verified in {(time.time() - started) / 60:.1f} min\n')
    return counts


def run(argv: Sequence[str] | None = None) -> int:
    """The command: `main`, with a refusal printed as one line and exit status 1."""
    try:
        main(argv)
    except (ValueError, OSError) as error:
        print(f'build_folders: error: {error}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(run())

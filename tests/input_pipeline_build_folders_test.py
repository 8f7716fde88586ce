"""Tests of `python -m input_pipeline.build_folders` on folders of real scans.

The photos are scikit-learn's handwritten digits (`load_digits`, shipped with the
package), written as JPEG and PNG files into class folders whose names have spaces,
capitals and accents. What the records must say is written out here by hand (the
sorted class order) or computed from the documented rule (the SHA-1 split), never
taken from the builder.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from sklearn import datasets as sklearn_datasets

from input_pipeline import build_folders
from input_pipeline import formats
from input_pipeline import class_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The folder of each digit, and their order under Python's sorted(), written out by
# hand: capitals before lower case, 'sept 7' before 'six', 'zéro' last.
FOLDERS = ['zéro', 'one', 'two', 'three', 'four', 'five', 'six', 'sept 7', 'eight', 'Nine']
SORTED = ['Nine', 'eight', 'five', 'four', 'one', 'sept 7', 'six', 'three', 'two', 'zéro']


def _digit_scans() -> dict[int, list[np.ndarray]]:
    """The scans of each digit as 24x24 RGB uint8 images."""
    digits = sklearn_datasets.load_digits()
    scans = {digit: [] for digit in range(10)}
    for image, digit in zip(digits.images, digits.target):
        grey = Image.fromarray((image * (255 / 16)).astype(np.uint8)).resize((24, 24))
        scans[int(digit)].append(np.asarray(grey.convert('RGB')))
    return scans


SCANS = _digit_scans()


def encode(image: np.ndarray, kind: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, kind, **({'quality': 90} if kind == 'JPEG' else {}))
    return buffer.getvalue()


def write_images(folder, files: dict[str, bytes]) -> None:
    os.makedirs(folder, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(folder, name), 'wb') as stream:
            stream.write(data)


def read_records(output_dir, split: str) -> list[dict]:
    """Every record of a split's shards, by the slim keys."""
    files = sorted(str(path) for path in output_dir.glob(f'{split}-*-of-*'))
    records = []
    for record in tf.data.TFRecordDataset(files):
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        records.append(
            {
                'filename': feature['image/filename'].bytes_list.value[0].decode(),
                'encoded': feature['image/encoded'].bytes_list.value[0],
                'label': feature['image/class/label'].int64_list.value[0],
                'synset': feature['image/class/synset'].bytes_list.value[0].decode(),
                'text': feature['image/class/text'].bytes_list.value[0].decode(),
            }
        )
    return records


def build(image_dir, output_dir, *flags) -> str:
    """Runs the builder in this process (one worker); returns what it printed."""
    stream = io.StringIO()
    build_folders.main(
        [f'--image_dir={image_dir}', f'--output_dir={output_dir}', '--num_workers=1', *flags],
        stream=stream,
    )
    return stream.getvalue()


def test_labels_follow_the_sorted_folder_names(tmp_path):
    """photos/train/<class> and photos/val/<class>: each record's label, synset and text
    are those of the folder its file was written to; JPEGs kept, PNGs re-encoded."""
    truth = {}  # file name -> (split, folder, file bytes, pixels)
    for digit, folder in enumerate(FOLDERS):
        for split, subfolder, first, count in (
            ('train', 'train', 0, 3),
            ('validation', 'val', 3, 1),
        ):
            files = {}
            for index in range(first, first + count):
                kind, extension = (('PNG', 'png'), ('JPEG', 'JPG'))[(digit + index) % 2]
                name = f'scan{digit * 10 + index}.{extension}'
                files[name] = encode(SCANS[digit][index], kind)
                truth[name] = (split, folder, files[name], SCANS[digit][index])
            write_images(tmp_path / 'photos' / subfolder / folder, files)
    (tmp_path / 'photos' / 'train' / 'six' / 'notes.txt').write_text('not a photo')
    (tmp_path / 'photos' / 'train' / 'six' / '.DS_Store').write_bytes(b'\0')

    printed = build(tmp_path / 'photos', tmp_path / 'data')

    for split in ('train', 'validation'):
        records = read_records(tmp_path / 'data', split)
        names = sorted(record['filename'] for record in records)
        assert names == sorted(name for name, item in truth.items() if item[0] == split)
        for record in records:
            _, folder, data, pixels = truth[record['filename']]
            assert record['label'] == SORTED.index(folder) + 1, record['filename']
            assert record['synset'] == record['text'] == folder
            if data.startswith(b'\xff\xd8'):
                assert record['encoded'] == data, record['filename']
            else:
                assert record['encoded'][:2] == b'\xff\xd8' and record['encoded'] != data
                decoded = tf.io.decode_jpeg(record['encoded']).numpy().astype(int)
                assert np.abs(decoded - pixels).mean() < 4, record['filename']
    assert sorted(os.listdir(tmp_path / 'data')) == [
        '.build_folders_plan.json',
        'classes.txt',
        'train-00000-of-00001',
        'validation-00000-of-00001',
    ]
    assert (tmp_path / 'data' / 'classes.txt').read_text(encoding='utf-8').splitlines() == SORTED
    warnings = [line for line in printed.splitlines() if 'warning' in line]
    assert len(warnings) == 1 and 'notes.txt' in warnings[0], printed
    assert '30 images of 10 classes' in printed and '10 images of 10 classes' in printed
    assert str(tmp_path / 'data' / 'classes.txt') in printed

    found = formats.find_dataset(str(tmp_path / 'data'))
    assert (found.layout, found.label_offset) == ('slim', 1)
    names = class_names.read_class_names(
        found.validation_files, num_classes=10, label_offset=found.label_offset
    )
    assert names == SORTED


# Images per class of the flat layout, and how many of each a 0.25 split holds out,
# worked out by hand from the documented rule: round(0.25 * n) with halves up, at least
# 1 from n >= 2, none from n == 1 (10 -> 2.5 -> 3, where Python's round would say 2).
CLASS_SIZES = {'Nine': 1, 'eight': 2, 'five': 5, 'sept 7': 6, 'zéro': 10}
HELD_OUT = {'Nine': 0, 'eight': 1, 'five': 1, 'sept 7': 2, 'zéro': 3}


def write_flat_photos(root, order_seed: int) -> dict[str, str]:
    """photos/<class>/<image>, the files created in an order that `order_seed` shuffles.

    The images and their names are the same for every seed. Returns file -> folder.
    """
    files = []
    for folder, size in CLASS_SIZES.items():
        digit = FOLDERS.index(folder)
        for index in range(size):
            kind = 'PNG' if index % 3 == 0 else 'JPEG'
            name = f'{folder[0]}{index:02d}.{kind.lower()}'
            files.append((folder, name, encode(SCANS[digit][index], kind)))
    random.Random(order_seed).shuffle(files)
    for folder, name, data in files:
        write_images(root / folder, {name: data})
    return {name: folder for folder, name, _ in files}


def test_the_fraction_split_is_by_name_hash_per_class(tmp_path):
    """Without val/: per class, the first files by SHA-1 of the name, whatever the order
    the files were made in; the shards of two such folders are identical."""
    outputs = []
    for order_seed in (1, 2):
        photos, output = tmp_path / f'photos{order_seed}', tmp_path / f'data{order_seed}'
        where = write_flat_photos(photos, order_seed)
        build(photos, output, '--val_fraction=0.25')
        outputs.append(output)
        expected = set()
        for folder in CLASS_SIZES:
            names = sorted(
                (name for name, f in where.items() if f == folder),
                key=lambda name: hashlib.sha1(name.encode()).hexdigest(),
            )
            expected.update(names[: HELD_OUT[folder]])
        validation = {record['filename'] for record in read_records(output, 'validation')}
        train = {record['filename'] for record in read_records(output, 'train')}
        assert validation == expected
        assert train == set(where) - expected
    for name in ('train-00000-of-00001', 'validation-00000-of-00001', 'classes.txt'):
        assert (outputs[0] / name).read_bytes() == (outputs[1] / name).read_bytes(), name


def test_a_rerun_keeps_its_shards_and_another_build_is_refused(tmp_path, capsys):
    write_flat_photos(tmp_path / 'photos', 0)
    data = tmp_path / 'data'
    build(tmp_path / 'photos', data, '--val_fraction=0.25')
    shards = sorted(data.glob('*-of-*'))
    before = {path: os.stat(path).st_mtime_ns for path in shards}

    printed = build(tmp_path / 'photos', data, '--val_fraction=0.25')
    assert '2 kept from an earlier run' in printed and '0 images written' in printed
    assert {path: os.stat(path).st_mtime_ns for path in shards} == before

    for change in ('another image', 'another fraction', 'more shards'):
        flags = ['--val_fraction=0.25']
        if change == 'another image':
            write_images(tmp_path / 'photos' / 'five', {'extra.png': encode(SCANS[5][9], 'PNG')})
        elif change == 'another fraction':
            flags = ['--val_fraction=0.4']
        else:
            flags.append('--train_shards=2')
        status = build_folders.run(
            [
                f'--image_dir={tmp_path / "photos"}',
                f'--output_dir={data}',
                '--num_workers=1',
                *flags,
            ]
        )
        error = capsys.readouterr().err
        assert status == 1, change
        assert error.startswith(f'build_folders: error: --output_dir={data} already holds shards')
        assert len(error.splitlines()) == 1, error
        assert {path: os.stat(path).st_mtime_ns for path in shards} == before, change
        (tmp_path / 'photos' / 'five' / 'extra.png').unlink(missing_ok=True)


def _refusal_case(tmp_path, case: str) -> tuple[list[str], str]:
    """Lays out the photos of one mistake; returns extra flags and the expected message."""
    photos, jpeg = tmp_path / 'photos', encode(SCANS[1][0], 'JPEG')
    write_images(photos / 'train' / 'one', {'a.jpg': jpeg, 'b.jpg': jpeg})
    if case == 'no class folders':
        shutil.rmtree(photos / 'train')
        photos.mkdir(exist_ok=True)
        return [], f'{photos} holds no class folders'
    if case == 'validation class not in train':
        write_images(photos / 'val' / 'seven', {'c.jpg': jpeg})
        return [], f'validation class folder {photos / "val" / "seven"} is not a class of'
    if case == 'empty class folder':
        (photos / 'train' / 'two').mkdir()
        return [], f'class folder {photos / "train" / "two"} holds no images'
    if case == 'image beside the classes':
        write_images(photos / 'train', {'stray.png': jpeg})
        return [], f'{photos / "train" / "stray.png"} is not in a class folder'
    if case == 'fraction of 1':
        return ['--val_fraction=1'], '--val_fraction=1.0 is outside [0, 1)'
    if case == 'negative fraction':
        return ['--val_fraction=-0.1'], '--val_fraction=-0.1 is outside [0, 1)'
    if case == 'fraction and a val folder':
        write_images(photos / 'val' / 'one', {'c.jpg': jpeg})
        return ['--val_fraction=0.2'], f'{photos / "val"} holds validation images already'
    if case == 'more shards than images':
        return [
            '--train_shards=3',
            '--val_fraction=0',
        ], '--train_shards=3 is more than the 2 images'
    # Another build's shards, such as build_imagenet's, with no plan of this build.
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'train-00000-of-00004').write_bytes(b'')
    return [], 'already holds shards of another build (train-00000-of-00004'


REFUSALS = [
    'no class folders',
    'validation class not in train',
    'empty class folder',
    'image beside the classes',
    'fraction of 1',
    'negative fraction',
    'fraction and a val folder',
    'more shards than images',
    'another build in the output folder',
]


@pytest.mark.parametrize('case', REFUSALS)
def test_mistakes_are_refused_with_one_line(tmp_path, capsys, case):
    flags, expected = _refusal_case(tmp_path, case)
    before = sorted(os.listdir(tmp_path / 'data')) if (tmp_path / 'data').exists() else []
    status = build_folders.run(
        [f'--image_dir={tmp_path / "photos"}', f'--output_dir={tmp_path / "data"}', *flags]
    )
    error = capsys.readouterr().err
    assert status == 1
    assert len(error.splitlines()) == 1 and error.startswith('build_folders: error: '), error
    assert expected in error, error
    after = sorted(os.listdir(tmp_path / 'data')) if (tmp_path / 'data').exists() else []
    assert after == before  # nothing written


def test_the_command_states_its_rules_and_exits_1_on_a_mistake(tmp_path):
    def command(*flags):
        return subprocess.run(
            [sys.executable, '-m', 'input_pipeline.build_folders', *map(str, flags)],
            check=False,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    helped = command('--help')
    assert helped.returncode == 0
    text = ' '.join(helped.stdout.split())
    assert 'sorted by name' in text and 'label k, 1-based' in text
    assert 'SHA-1' in text and 'one per 1,000 images' in text
    refused = command(f'--image_dir={tmp_path / "none"}', f'--output_dir={tmp_path / "data"}')
    assert refused.returncode == 1
    assert (
        refused.stderr == f'build_folders: error: --image_dir={tmp_path / "none"} is not a folder\n'
    )

"""Tests of the dataset validator (`input_pipeline/validate.py`) on planted problems.

A class-folder tree of real images (scikit-learn's digits, upsampled, as RGB, greyscale
and CMYK JPEGs and a few PNGs) holds one of each problem the validator must name, and
the tests check that each is found by name and that nothing else is an error; then the
same for TFRecords written from a clean tree, with bad records added.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import sklearn.datasets
import tensorflow as tf
from input_pipeline_build_test import encode  # CMYK through PIL: tensorflow cannot write it
from jpeg_headers import declaring

from input_pipeline import image_files, validate, writer

CLASSES = ('c0', 'c1', 'c2', 'c3')
# Images per class and split; c3 has fewer train images than `validate.FEW_IMAGES`.
TRAIN = {'c0': 8, 'c1': 8, 'c2': 8, 'c3': 2}
VALIDATION = 5


def digit(number: int) -> np.ndarray:
    """Digit `number` of scikit-learn's set as a tinted RGB image, 32 or 40 pixels a side.

    The corner pixels hold `number`, so no two images have the same bytes by chance.
    """
    pixels = sklearn.datasets.load_digits().images[number] * 15
    scale = 4 + number % 2
    big = np.kron(pixels, np.ones((scale, scale)))
    image = np.stack([big, big * 0.6 + 40, 255 - big], axis=-1).astype(np.uint8)
    image[0, 0] = (number % 256, number // 256, 7)
    return image


def cut_then_ended(data: bytes) -> bytes:
    """A JPEG cut in its scan, with the end marker put back: libjpeg warns, fills grey."""
    return data[: len(data) * 2 // 3] + b'\xff\xd9'


def write_tree(root, *, problems: bool) -> dict[str, str]:
    """`root/train/<class>/`, `root/val/<class>/`; with `problems`, one of each planted.

    Returns the planted files by problem (empty without `problems`).
    """
    number = 0
    for split, counts in (('train', TRAIN), ('val', dict.fromkeys(CLASSES, VALIDATION))):
        for synset, count in counts.items():
            os.makedirs(root / split / synset)
            for index in range(count):
                kind, mode = {1: ('PNG', None), 2: ('JPEG', 'L'), 3: ('JPEG', 'CMYK')}.get(
                    number if split == 'train' else 0, ('JPEG', None)
                )
                name = f'{synset}_{index}.{"png" if kind == "PNG" else "JPEG"}'
                (root / split / synset / name).write_bytes(encode(digit(number), kind, mode))
                number += 1
    if not problems:
        return {}
    good = (root / 'train' / 'c0' / 'c0_0.JPEG').read_bytes()
    planted = {
        'leak': root / 'val' / 'c1' / 'copy_of_train.JPEG',
        'duplicate': root / 'train' / 'c2' / 'copy_of_c1_4.JPEG',
        'undecodable': root / 'train' / 'c1' / 'page.jpg',
        'data_lost': root / 'train' / 'c1' / 'cut_then_ended.JPEG',
        'declared_larger': root / 'train' / 'c2' / 'declares_larger.JPEG',
        'no_end_marker': root / 'train' / 'c0' / 'cut.JPEG',
    }
    shutil.copy(root / 'train' / 'c0' / 'c0_4.JPEG', planted['leak'])
    shutil.copy(root / 'train' / 'c1' / 'c1_4.JPEG', planted['duplicate'])
    planted['undecodable'].write_bytes(b'<html>404 Not Found</html>')
    planted['data_lost'].write_bytes(cut_then_ended(good))
    planted['declared_larger'].write_bytes(declaring(good, 400, 400))
    planted['no_end_marker'].write_bytes(good[: len(good) // 2])
    return {kind: str(path) for kind, path in planted.items()}


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp('tree')
    return root, write_tree(root, problems=True)


@pytest.fixture(scope='module')
def tree_report(tree):
    root, _ = tree
    return validate.validate(str(root), num_workers=1)


def names(report: dict, severity: str, kind: str) -> set[str]:
    return {entry['name'] for entry in report[f'{severity}s'] if entry['kind'] == kind}


def test_planted_image_problems_are_errors_by_name(tree, tree_report):
    _, planted = tree
    messages = {e['name']: e['message'] for e in tree_report['errors'] if e['kind'] == 'image'}
    assert set(messages) == {
        planted[kind] for kind in ('undecodable', 'data_lost', 'declared_larger', 'no_end_marker')
    }, messages
    assert messages[planted['undecodable']] == 'not a JPEG, PNG, GIF or BMP image'
    for kind in ('data_lost', 'declared_larger'):
        assert messages[planted[kind]].startswith("libjpeg says 'Corrupt JPEG data"), messages
    assert 'without its end marker' in messages[planted['no_end_marker']]


def test_leak_is_an_error_and_duplicate_a_warning_with_both_names(tmp_path, tree, tree_report):
    root, planted = tree
    assert tree_report['error_counts'] == {'image': 4, 'leak': 1}, tree_report['errors']
    (leak,) = [e for e in tree_report['errors'] if e['kind'] == 'leak']
    assert (leak['name'], leak['other']) == (planted['leak'], str(root / 'train/c0/c0_4.JPEG'))
    assert tree_report['warning_counts'] == {'duplicate_train': 1, 'few_images': 1}
    (copy,) = [e for e in tree_report['warnings'] if e['kind'] == 'duplicate_train']
    assert {copy['name'], copy['other']} == {
        planted['duplicate'],
        str(root / 'train/c1/c1_4.JPEG'),
    }
    assert names(tree_report, 'warning', 'few_images') == {'c3'}


def test_counts_types_and_sizes(tree_report):
    train, validation = tree_report['splits']['train'], tree_report['splits']['validation']
    assert train['classes'] == {'c0': 9, 'c1': 10, 'c2': 10, 'c3': 2}
    assert validation['classes'] == {'c0': 5, 'c1': 6, 'c2': 5, 'c3': 5}
    assert (train['smallest'], train['largest'], train['imbalance']) == (['c3', 2], ['c1', 10], 5.0)
    types = tree_report['image_types']
    assert (types['png'], types['greyscale'], types['cmyk'], types['other']) == (1, 1, 1, 1)
    assert types['jpeg'] == tree_report['images'] - 2 == 31 + 21 - 2
    # Re-encoded by a build: the PNG and the CMYK JPEG (the damaged ones are refused).
    assert types['reencoded'] == 2
    assert tree_report['sizes']['height'] == {'min': 32, 'median': 32, 'p95': 40, 'max': 40}
    assert tree_report['sizes']['pixels']['max'] == 40 * 40


def test_main_exit_codes_table_and_json(tmp_path, tree, capsys):
    root, planted = tree
    out = tmp_path / 'report.json'
    assert validate.main([f'--dataset_dir={root}', f'--json={out}', '--num_workers=1']) == 1
    printed = capsys.readouterr().out
    assert f'{planted["leak"]}: validation image with the same bytes as train image' in printed
    assert '5 errors:' in printed and '2 warnings:' in printed
    report = json.loads(out.read_text())
    assert set(report) >= {
        'dataset_dir',
        'format',
        'images',
        'splits',
        'image_types',
        'sizes',
        'errors',
        'error_counts',
        'warnings',
        'warning_counts',
        'few_images_rule',
    }
    assert report['format'] == 'folders'
    assert set(report['errors'][0]) >= {'kind', 'name', 'message'}

    clean = tmp_path / 'clean'
    write_tree(clean, problems=False)
    assert validate.main([f'--dataset_dir={clean}']) == 0  # a few-images warning only
    flat = tmp_path / 'flat'
    shutil.copytree(clean / 'train', flat)  # DIR/<class>/*: all train
    report = validate.validate(str(flat))
    assert list(report['splits']) == ['train'] and report['images'] == sum(TRAIN.values())


@pytest.mark.parametrize('make', ['missing', 'file', 'empty', 'no_images'])
def test_nothing_to_check_exits_2_naming_the_folder(tmp_path, capsys, make):
    target = tmp_path / 'data'
    if make == 'file':
        target.write_text('x')
    elif make == 'empty':
        target.mkdir()
    elif make == 'no_images':
        (target / 'train' / 'c0').mkdir(parents=True)
        (target / 'train' / 'c0' / 'notes.txt').write_text('x')
    assert validate.main([f'--dataset_dir={target}']) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'validate: error: dataset directory {target} ')
    assert captured.out == ''


def test_scaled_decoding_sees_the_damage_a_full_decoding_sees(tree):
    """The premise of `validate.DECODE_RATIO`: libjpeg's warnings do not depend on it."""
    _, planted = tree
    for kind in ('data_lost', 'declared_larger'):
        with open(planted[kind], 'rb') as stream:
            data = stream.read()
        warned = {}
        for ratio in (1, validate.DECODE_RATIO):
            with image_files.libjpeg_warnings() as warned[ratio]:
                tf.io.decode_jpeg(data, channels=3, ratio=ratio)
        assert warned[1] and warned[1] == warned[validate.DECODE_RATIO], warned


def records_of(root) -> list[writer.Example]:
    """Clean validation examples (kept JPEG bytes), labelled 1.. by sorted class folder."""
    examples = []
    for label, synset in enumerate(CLASSES, start=1):
        folder = root / 'val' / synset
        for name in sorted(os.listdir(folder)):
            encoded, height, width = image_files.encoded_jpeg((folder / name).read_bytes(), name)
            examples.append(writer.Example(encoded, label, synset, synset, height, width, name))
    return examples


@pytest.fixture(scope='module')
def records(tmp_path_factory):
    """Train shards by `write_from_folders`; validation ones with four bad records last."""
    source = tmp_path_factory.mktemp('clean')
    write_tree(source, problems=False)
    out = tmp_path_factory.mktemp('records')
    writer.write_from_folders(str(source / 'train'), str(out), split='train', num_shards=2)
    train_copy = (source / 'train' / 'c2' / 'c2_0.JPEG').read_bytes()
    good = records_of(source)
    bad = [
        writer.Example(good[0].encoded[:-1] + b'\x00', 2, 'c1', 'c1'),  # cut short
        writer.Example(train_copy, 3, 'c2', 'c2'),  # a train image again
        writer.Example(encode(digit(1000)), 100),  # label 99 of 4, no class name
        writer.Example(encode(digit(1001)), 1, 'c9', 'c9'),  # label 0 named c9, not c0
    ]
    writer.write_tfrecords(good + bad, str(out), 'validation', 2)
    shard = str(out / 'validation-00001-of-00002')
    first = len(good + bad) // 2
    where = {
        kind: validate.record_name(shard, len(good) - first + i)
        for i, kind in enumerate(('image', 'leak', 'label_range', 'label_names'))
    }
    return out, where


def test_tfrecord_problems_are_errors_by_shard_and_record(records):
    out, where = records
    report = validate.validate(str(out), num_workers=1)
    assert report['format'] == 'tfrecords'
    assert report['error_counts'] == {'image': 1, 'label_names': 1, 'label_range': 1, 'leak': 1}, (
        report['errors']
    )
    for kind, name in where.items():
        assert names(report, 'error', kind) == {name}, (kind, report['errors'])
    assert report['warning_counts'] == {'few_images': 1}, report['warnings']
    assert names(report, 'warning', 'few_images') == {'3 c3'}
    assert report['splits']['train']['classes'] == {'0 c0': 8, '1 c1': 8, '2 c2': 8, '3 c3': 2}
    assert report['splits']['validation']['classes']['0 c0'] == VALIDATION + 1
    # Written by the builders' rule: the PNG and the CMYK JPEG re-encoded as RGB JPEGs.
    assert report['image_types']['png'] == report['image_types']['cmyk'] == 0
    assert report['image_types']['greyscale'] == 1


def test_tfrecord_classes_given_and_exit_code(records, capsys):
    out, where = records
    assert validate.main([f'--dataset_dir={out}', '--num_classes=100']) == 1
    printed = capsys.readouterr().out
    assert 'label_range' not in printed and f'{where["label_names"]}: label 0 is stored' in printed


def test_damaged_shard_is_named_and_its_readable_records_checked(tmp_path, records):
    out, _ = records
    copy = tmp_path / 'records'
    shutil.copytree(out, copy)
    shard = copy / 'train-00001-of-00002'
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])  # the last record cut short
    report = validate.validate(str(copy), num_workers=1)
    (damage,) = [e for e in report['errors'] if e['kind'] == 'tfrecord']
    assert damage['name'] == str(shard)
    assert damage['message'].startswith(
        f'TFRecord file {shard} is truncated or corrupt after record 12'
    )
    assert report['splits']['train']['examples'] == 26 - 1

"""Tests of `python -m input_pipeline.build_imagenet` on tars in the official layout.

The tars are built as image-net.org ships ILSVRC2012 (a train tar of per-class tars, a
flat validation tar, the devkit's tar.gz), from real photos, with the oddities of the
real data: a PNG under a .JPEG name, a CMYK JPEG, validation image numbers that are not
1..N and devkit IDs that are not the label order.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from jpeg_headers import declaring
import scipy.io
import skimage.data
import tensorflow as tf
from PIL import Image

from input_pipeline import build_imagenet
from input_pipeline import decode
from input_pipeline import formats

SYNSETS = ['n01440764', 'n01443537', 'n01484850']
TEXTS = {'n01440764': 'tench, Tinca tinca', 'n01443537': 'goldfish', 'n01484850': 'great white'}
PHOTOS = [skimage.data.coffee(), skimage.data.astronaut(), skimage.data.rocket()]
PER_CLASS = 4
NUM_VALIDATION = 5
BOX = (0.1, 0.2, 0.7, 0.9)  # xmin, ymin, xmax, ymax as in TF-slim's CSV
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The miniature ILSVRC2012 downloads: three classes far apart in the standard order,
# with their labels there (1-based) and names written out here, the truth the records
# are checked against (label 279 is the kit fox in every ImageNet label list).
CLASSES = {'n01440764': 1, 'n02119789': 279, 'n15075141': 1000}
NAMES = {
    'n01440764': 'tench, Tinca tinca',
    'n02119789': 'kit fox, Vulpes macrotis',
    'n15075141': 'toilet tissue, toilet paper, bathroom tissue',
}
# Validation images by their real image numbers (not 1..N), with their classes.
VAL_CLASSES = {1: 'n02119789', 236: 'n15075141', 49999: 'n01440764', 50000: 'n02119789'}
NUM_VAL_IMAGES = 50000  # lines of the devkit's ground truth


def encode(image: np.ndarray, kind: str = 'JPEG', mode: str | None = None) -> bytes:
    picture = Image.fromarray(image)
    if mode:
        picture = picture.convert(mode)
    buffer = io.BytesIO()
    picture.save(buffer, kind, **({'quality': 90} if kind == 'JPEG' else {}))
    return buffer.getvalue()


def small(photo: np.ndarray, index: int) -> np.ndarray:
    """A small, distinct cut of a photo (ImageNet-like content at test size)."""
    cut = photo[index * 16 : index * 16 + 200, index * 16 : index * 16 + 260]
    return np.asarray(Image.fromarray(cut).resize((52, 40)))


def add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


@pytest.fixture(scope='module')
def downloads(tmp_path_factory):
    """ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and the label files."""
    root = tmp_path_factory.mktemp('downloads')
    pixels = {}
    with tarfile.open(root / 'ILSVRC2012_img_train.tar', 'w') as train:
        for synset, photo in zip(SYNSETS, PHOTOS):
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode='w') as class_tar:
                for index in range(PER_CLASS):
                    name = f'{synset}_{index}.JPEG'
                    image = small(photo, index)
                    kind, mode = {(0, 1): ('PNG', None), (1, 2): ('JPEG', 'CMYK')}.get(
                        (SYNSETS.index(synset), index), ('JPEG', None)
                    )
                    add(class_tar, name, encode(image, kind, mode))
                    pixels[name] = image
            add(train, f'{synset}.tar', buffer.getvalue())
    labels = []
    with tarfile.open(root / 'ILSVRC2012_img_val.tar', 'w') as validation:
        for index in range(NUM_VALIDATION):
            name = f'ILSVRC2012_val_{index + 1:08d}.JPEG'
            image = small(PHOTOS[index % 3], index + 5)
            add(validation, name, encode(image))
            pixels[name] = image
            labels.append(SYNSETS[index % 3])
    (root / 'val_labels.txt').write_text('\n'.join(labels) + '\n')
    (root / 'metadata.txt').write_text(''.join(f'{s}\t{t}\n' for s, t in TEXTS.items()))
    (root / 'boxes.csv').write_text(f'n01443537_3.JPEG,{",".join(map(str, BOX))}\n')
    return root, pixels, labels


def val_name(number: int) -> str:
    return f'ILSVRC2012_val_{number:08d}.JPEG'


def devkit_ids(synsets: list[str]) -> dict[str, int]:
    """An ILSVRC2012_ID for each synset: a fixed shuffle of 1..1000, not the label order."""
    ids = list(range(1, len(synsets) + 1))
    random.Random(2012).shuffle(ids)
    return dict(zip(synsets, ids))


def meta_mat(ids: dict[str, int]) -> bytes:
    """The devkit's meta.mat: a `synsets` struct array, the leaves by ID, then a parent."""
    fields = [
        'ILSVRC2012_ID',
        'WNID',
        'words',
        'gloss',
        'num_children',
        'children',
        'wordnet_height',
        'num_train_images',
    ]
    rows = sorted((identifier, synset) for synset, identifier in ids.items())
    rows.append((len(rows) + 1, 'n00001740'))  # "entity", the root, with children
    table = np.zeros((len(rows), 1), dtype=[(field, 'O') for field in fields])
    for row, (identifier, synset) in enumerate(rows):
        leaf = identifier <= len(ids)
        table[row, 0] = (
            np.array([[identifier]], np.uint16),
            synset,
            NAMES.get(synset, 'a class'),
            'a gloss',
            np.array([[0 if leaf else 2]], np.uint8),
            np.zeros((1, 0), np.uint8) if leaf else np.array([[1, 2]], np.uint16),
            np.array([[0 if leaf else 18]], np.uint8),
            np.array([[2 if leaf else 0]], np.uint16),
        )
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {'synsets': table})
    return buffer.getvalue()


def make_ilsvrc2012(root) -> dict[str, tuple[str, np.ndarray]]:
    """Miniature ILSVRC2012 downloads in `root`, in the layout image-net.org ships.

    `ILSVRC2012_img_train.tar` (a tar per class of CLASSES, two JPEGs each),
    `ILSVRC2012_img_val.tar` (the images of VAL_CLASSES, flat, by their numbers) and
    `ILSVRC2012_devkit_t12.tar.gz` (the ground truth, 50,000 lines of IDs, and meta.mat,
    whose IDs are a shuffle of the standard order).

    Returns:
      `file name -> (synset, pixels)` of every image: the truth to check records against.
    """
    truth = {}
    with tarfile.open(os.path.join(root, 'ILSVRC2012_img_train.tar'), 'w') as train:
        for synset, photo in zip(CLASSES, PHOTOS):
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode='w') as class_tar:
                for index in range(2):
                    truth[f'{synset}_{index}.JPEG'] = synset, small(photo, index)
                    add(class_tar, f'{synset}_{index}.JPEG', encode(small(photo, index)))
            add(train, f'{synset}.tar', buffer.getvalue())
    with tarfile.open(os.path.join(root, 'ILSVRC2012_img_val.tar'), 'w') as validation:
        for index, (number, synset) in enumerate(sorted(VAL_CLASSES.items(), reverse=True)):
            image = small(PHOTOS[list(CLASSES).index(synset)], index + 5)
            truth[val_name(number)] = synset, image
            add(validation, val_name(number), encode(image))
    ids = devkit_ids(build_imagenet.standard_synsets())
    assert all(ids[synset] != label for synset, label in CLASSES.items())
    other = ids['n01443537']  # goldfish: every image not built here
    ground_truth = [
        ids[VAL_CLASSES[n]] if n in VAL_CLASSES else other for n in range(1, NUM_VAL_IMAGES + 1)
    ]
    with tarfile.open(os.path.join(root, 'ILSVRC2012_devkit_t12.tar.gz'), 'w:gz') as devkit:
        add(devkit, 'ILSVRC2012_devkit_t12/readme.txt', b'ILSVRC2012 devkit\n')
        add(
            devkit,
            'ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt',
            ''.join(f'{identifier}\n' for identifier in ground_truth).encode(),
        )
        add(devkit, 'ILSVRC2012_devkit_t12/data/meta.mat', meta_mat(ids))
    return truth


@pytest.fixture(scope='module')
def ilsvrc2012(tmp_path_factory):
    root = tmp_path_factory.mktemp('ilsvrc2012')
    return root, make_ilsvrc2012(root)


def read_records(folder, split: str) -> list[dict]:
    """The records of a split's shards, by TF-slim's keys."""
    files = [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.startswith(split)]
    records = []
    for record in tf.data.TFRecordDataset(files):  # one dataset, not one per file
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        records.append(
            {
                key: feature[f'image/{path}'].bytes_list.value[0]
                for key, path in (
                    ('encoded', 'encoded'),
                    ('synset', 'class/synset'),
                    ('text', 'class/text'),
                    ('filename', 'filename'),
                )
            }
            | {'label': feature['image/class/label'].int64_list.value[0]}
        )
    return records


def check_labels(records: list[dict], truth: dict, labels: dict = CLASSES) -> None:
    """Every image of `truth` once, with its class's label, synset and name, and pixels."""
    names = [record['filename'].decode() for record in records]
    assert sorted(names) == sorted(truth)
    for name, record in zip(names, records):
        synset, pixels = truth[name]
        assert (record['label'], record['synset'].decode()) == (labels[synset], synset), name
        assert record['text'].decode() == NAMES[synset]
        # The image is this file's (another class's photo would differ by ~50 levels).
        rgb = tf.io.decode_jpeg(record['encoded']).numpy()
        assert np.abs(rgb.astype(int) - pixels).mean() < 8, name


def read_all(files) -> list[dict]:
    """Every record of `files`, parsed as the pipelines parse them (labels made 0-based),
    and the keys they do not read; as numpy values."""
    records = list(tf.data.TFRecordDataset(list(files)))
    fields = decode.parse_records(tf.stack(records))
    boxes = fields['bbox'].to_list()
    return [
        {
            'encoded': fields['encoded'][index].numpy(),
            'label': int(fields['stored_label'][index]) - 1,
            'bbox': np.array(boxes[index], np.float32).reshape(-1, 4),
            **_extra(record),
        }
        for index, record in enumerate(records)
    ]


def _extra(record) -> dict:
    example = tf.train.Example.FromString(record.numpy()).features.feature
    return {
        'synset': example['image/class/synset'].bytes_list.value[0],
        'text': example['image/class/text'].bytes_list.value[0],
        'filename': example['image/filename'].bytes_list.value[0].decode(),
        'height': example['image/height'].int64_list.value[0],
        'width': example['image/width'].int64_list.value[0],
    }


@pytest.mark.slow
def test_builds_from_the_official_tars(tmp_path, downloads, capsys):
    root, pixels, labels = downloads
    output = tmp_path / 'records'
    arguments = [
        f'--train_tar={root / "ILSVRC2012_img_train.tar"}',
        f'--val_tar={root / "ILSVRC2012_img_val.tar"}',
        f'--val_labels={root / "val_labels.txt"}',
        f'--synset_text={root / "metadata.txt"}',
        f'--bounding_boxes={root / "boxes.csv"}',
        f'--output_dir={output}',
        '--train_shards=3',
        '--validation_shards=2',
        '--num_workers=2',
    ]
    assert build_imagenet.main(arguments) == {'train': 12, 'validation': 5}
    err = capsys.readouterr().err
    assert '12 train and 5 validation images of 3 classes; labels 1..1000 from' in err
    assert '5/5 shards, 17 images written' in err  # a plain line: stderr is no terminal
    assert 'Verified 12 train, 5 validation examples' in err

    found = formats.find_dataset(str(output))
    assert (found.layout, found.label_offset) == ('slim', 1)
    assert [os.path.basename(f) for f in found.train_files] == [
        f'train-0000{i}-of-00003' for i in range(3)
    ]
    train = read_all(found.train_files)
    validation = read_all(found.validation_files)
    # Classes mixed across train shards (shuffled); validation in image order.
    assert len({r['label'] for r in train[:4]}) > 1
    assert [r['filename'] for r in validation] == sorted(r['filename'] for r in validation)
    assert [SYNSETS[r['label']] for r in validation] == labels
    for record in train + validation:
        synset = SYNSETS[int(record['label'])]
        assert record['synset'].decode() == synset
        assert record['text'].decode() == TEXTS[synset]
        if record['filename'].startswith('n'):
            assert record['filename'].startswith(synset)
        # Every image a 3-channel JPEG (the PNG and the CMYK one re-encoded) showing
        # its source's pixels, with its true size.
        assert tf.io.is_jpeg(record['encoded'])
        assert list(tf.io.extract_jpeg_shape(record['encoded']).numpy()) == [40, 52, 3]
        assert (record['height'], record['width']) == (40, 52)
        rgb = tf.io.decode_jpeg(record['encoded']).numpy()
        # (JPEG error on a 52x40 image is ~5 levels; another image's would be ~50.)
        assert np.abs(rgb.astype(int) - pixels[record['filename']]).mean() < 8
        boxes = record['bbox']
        if record['filename'] == 'n01443537_3.JPEG':
            xmin, ymin, xmax, ymax = BOX
            np.testing.assert_allclose(boxes, [[ymin, xmin, ymax, xmax]])
        else:
            assert boxes.shape == (0, 4)

    # Resumable: a rerun keeps finished shards and writes only the missing one.
    stamps = {path: os.path.getmtime(path) for path in found.train_files}
    os.remove(found.validation_files[1])
    assert build_imagenet.main(arguments[:-1] + ['--num_workers=1']) == {
        'train': 12,
        'validation': 5,
    }
    assert '5/5 shards (4 kept from an earlier run), 3 images written' in capsys.readouterr().err
    assert stamps == {path: os.path.getmtime(path) for path in found.train_files}
    assert os.path.exists(found.validation_files[1])

    # Verified: a shard cut short is found and named at the end.
    data = open(found.train_files[2], 'rb').read()
    open(found.train_files[2], 'wb').write(data[:-100])
    with pytest.raises(ValueError, match=f'{found.train_files[2]} is truncated'):
        build_imagenet.main(arguments)


def test_extracted_folders_give_the_same_records(tmp_path, downloads):
    root, _, _ = downloads
    train_dir, val_dir = tmp_path / 'train', tmp_path / 'val'
    with tarfile.open(root / 'ILSVRC2012_img_train.tar') as train:
        for member in train:
            class_dir = train_dir / member.name.split('.')[0]
            class_dir.mkdir(parents=True)
            with tarfile.open(fileobj=train.extractfile(member)) as class_tar:
                class_tar.extractall(class_dir)
    with tarfile.open(root / 'ILSVRC2012_img_val.tar') as validation:
        validation.extractall(val_dir)
    outputs = {}
    for kind, sources in (
        (
            'tar',
            [
                f'--train_tar={root / "ILSVRC2012_img_train.tar"}',
                f'--val_tar={root / "ILSVRC2012_img_val.tar"}',
            ],
        ),
        ('dir', [f'--train_dir={train_dir}', f'--val_dir={val_dir}']),
    ):
        outputs[kind] = tmp_path / kind
        build_imagenet.main(
            sources
            + [
                f'--val_labels={root / "val_labels.txt"}',
                f'--output_dir={outputs[kind]}',
                '--train_shards=2',
                '--validation_shards=1',
                '--num_workers=1',
            ]
        )
    for name in sorted(os.listdir(outputs['tar'])):
        tar_records = list(tf.data.TFRecordDataset(str(outputs['tar'] / name)))
        dir_records = list(tf.data.TFRecordDataset(str(outputs['dir'] / name)))
        assert [r.numpy() for r in tar_records] == [r.numpy() for r in dir_records], name


def test_bad_inputs_are_named(tmp_path, downloads):
    root, _, labels = downloads
    (tmp_path / 'short.txt').write_text('\n'.join(labels[:-1]))
    with pytest.raises(ValueError, match='ILSVRC2012_val_00000005.JPEG has no label: .* 4 lines'):
        build_imagenet.main(
            [
                f'--val_tar={root / "ILSVRC2012_img_val.tar"}',
                f'--val_labels={tmp_path / "short.txt"}',
                f'--output_dir={tmp_path / "out"}',
            ]
        )
    (tmp_path / 'ids.txt').write_text('\n'.join(['65', '970', '230', '809', '516']))
    with pytest.raises(ValueError, match='ids.txt holds ILSVRC2012_IDs: give --devkit'):
        build_imagenet.main(
            [
                f'--val_tar={root / "ILSVRC2012_img_val.tar"}',
                f'--val_labels={tmp_path / "ids.txt"}',
                f'--output_dir={tmp_path / "out"}',
            ]
        )
    broken = tmp_path / 'broken' / 'n01440764'
    broken.mkdir(parents=True)
    (broken / 'n01440764_1.JPEG').write_bytes(b'<html>not found</html>')
    with pytest.raises(ValueError, match='n01440764_1.JPEG is refused: not a JPEG, PNG'):
        build_imagenet.main(
            [
                f'--train_dir={broken.parent}',
                f'--output_dir={tmp_path / "out2"}',
                '--train_shards=1',
                '--num_workers=1',
            ]
        )
    assert not os.listdir(tmp_path / 'out2')  # no partial shard left behind
    shutil.rmtree(tmp_path / 'broken')


def test_damaged_images_and_tars_are_named(tmp_path, downloads):
    """What the builder wrote into shards, or skipped, or failed on, without a name.

    A JPEG whose data is too short for its header's size decoded "recoverably" as grey
    (libjpeg's "Corrupt JPEG data: premature end of data segment") and was written; a
    damaged tar said "invalid header", or ended its listing early; a link or a second
    file of one validation image number passed silently.
    """
    root, _, _ = downloads
    good = encode(small(PHOTOS[0], 1))
    train_tar = tmp_path / 'train.tar'

    def build_train(images: dict[str, bytes]) -> None:
        inner = io.BytesIO()
        with tarfile.open(fileobj=inner, mode='w') as class_tar:
            for name, data in images.items():
                add(class_tar, name, data)
        with tarfile.open(train_tar, 'w') as train:
            add(train, 'n01440764.tar', inner.getvalue())
        build_imagenet.main(
            [
                f'--train_tar={train_tar}',
                f'--output_dir={tmp_path / "out"}',
                '--train_shards=1',
                '--num_workers=1',
            ]
        )

    # Too few bytes for ten times its size: libjpeg's warning makes it refused.
    cases = {
        declaring(good, 520, 400): "libjpeg says 'Corrupt JPEG data: premature end of data",
        declaring(good, 13000, 13000): 'its header declares 13000x13000 pixels, more than',
        declaring(good, 5000, 5000): 'cannot hold the 5000x5000 pixels its header declares',
    }
    for data, reason in cases.items():
        with pytest.raises(ValueError) as raised:
            build_train({'n01440764_1.JPEG': good, 'n01440764_2.JPEG': data})
        message = str(raised.value)
        assert message.startswith(f'{train_tar}:n01440764_2.JPEG is refused: '), message
        assert reason in message, message
    assert not os.listdir(tmp_path / 'out')  # no shard holds them

    # A class tar that is not a tar, and a train tar cut inside its listing.
    with tarfile.open(train_tar, 'w') as train:
        add(train, 'n01440764.tar', b'\x01' * 2048)
    with pytest.raises(ValueError) as raised:
        build_imagenet.train_sources_from_tar(str(train_tar))
    assert str(raised.value) == (
        f'{train_tar}:n01440764.tar is not a readable tar at its first member (invalid header)'
    )
    source = (root / 'ILSVRC2012_img_val.tar').read_bytes()
    cut = tmp_path / 'cut.tar'
    with tarfile.open(root / 'ILSVRC2012_img_val.tar') as archive:
        second = archive.getmembers()[1].offset
    # The second member's header damaged: tarfile ended the listing there, silently.
    cut.write_bytes(source[:second] + b'\xff' * 512 + source[second + 512 :])
    with pytest.raises(ValueError) as raised:
        build_imagenet.val_sources(val_tar=str(cut), val_dir=None, labels=None)
    assert str(raised.value).startswith(
        f'{cut} is damaged after member ILSVRC2012_val_00000001.JPEG: an unreadable header'
    ), raised.value
    cut.write_bytes(source[: second - 100])  # cut inside the first image
    with pytest.raises(
        ValueError,
        match=r'cut.tar is not a readable tar after member ILSVRC2012_val_00000001.JPEG '
        r'\(unexpected end of data\)$',
    ):
        build_imagenet.val_sources(val_tar=str(cut), val_dir=None, labels=None)

    # A link member, and two files of one validation image number.
    linked = tmp_path / 'linked.tar'
    with tarfile.open(linked, 'w') as archive:
        add(archive, val_name(1), good)
        link = tarfile.TarInfo(val_name(2))
        link.type, link.linkname = tarfile.SYMTYPE, val_name(1)
        archive.addfile(link)
    with pytest.raises(ValueError) as raised:
        build_imagenet.val_sources(val_tar=str(linked), val_dir=None, labels=None)
    assert str(raised.value) == (
        f'{linked}: member {val_name(2)} is a link to {val_name(1)}, not a file: build from '
        'a tar of the files themselves'
    )
    twice = tmp_path / 'twice'
    twice.mkdir()
    (twice / val_name(7)).write_bytes(good)
    (twice / val_name(7).replace('.JPEG', '.jpg')).write_bytes(good)
    with pytest.raises(ValueError) as raised:
        build_imagenet.val_sources(val_tar=None, val_dir=str(twice), labels=['n01440764'] * 9)
    assert str(raised.value) == (
        f'validation images {twice / val_name(7)} and '
        f'{twice / val_name(7).replace(".JPEG", ".jpg")} have the same image number 7: keep one'
    )


def test_the_standard_synsets_ship_in_label_order():
    synsets = build_imagenet.standard_synsets()
    assert len(synsets) == len(set(synsets)) == 1000
    assert synsets == sorted(synsets)  # the order TF-slim, the TPU scripts and TFDS use
    assert {synset: synsets.index(synset) + 1 for synset in CLASSES} == CLASSES
    names = build_imagenet.standard_class_names()
    assert sorted(names) == synsets
    assert {synset: names[synset] for synset in CLASSES} == NAMES


def test_builds_from_the_devkit_as_downloaded(tmp_path, ilsvrc2012):
    root, truth = ilsvrc2012
    shards = ['--train_shards=2', '--validation_shards=2', '--num_workers=1']
    assert build_imagenet.main(
        [
            f'--train_tar={root / "ILSVRC2012_img_train.tar"}',
            f'--val_tar={root / "ILSVRC2012_img_val.tar"}',
            f'--devkit={root / "ILSVRC2012_devkit_t12.tar.gz"}',
            f'--output_dir={tmp_path / "records"}',
        ]
        + shards
    ) == {'train': 6, 'validation': 4}
    train = read_records(tmp_path / 'records', 'train')
    validation = read_records(tmp_path / 'records', 'validation')
    check_labels(train + validation, truth)
    assert [r['filename'].decode() for r in validation] == [val_name(n) for n in VAL_CLASSES]

    # The extracted devkit, or its ground truth file with meta.mat beside it, label the
    # validation images alike.
    with tarfile.open(root / 'ILSVRC2012_devkit_t12.tar.gz') as devkit:
        devkit.extractall(tmp_path / 'extracted')
    data = tmp_path / 'extracted' / 'ILSVRC2012_devkit_t12' / 'data'
    for index, labels in enumerate(
        [
            f'--devkit={tmp_path / "extracted"}',
            f'--devkit={data.parent}',
            f'--val_labels={data / "ILSVRC2012_validation_ground_truth.txt"}',
        ]
    ):
        output = tmp_path / f'validation{index}'
        build_imagenet.main(
            [f'--val_tar={root / "ILSVRC2012_img_val.tar"}', labels, f'--output_dir={output}']
            + shards
        )
        assert read_records(output, 'validation') == validation, labels


def test_tf_slim_labels_and_a_class_list_of_ones_own(tmp_path, ilsvrc2012):
    root, truth = ilsvrc2012
    # TF-slim's imagenet_2012_validation_synset_labels.txt: a synset per image number.
    slim = tmp_path / 'imagenet_2012_validation_synset_labels.txt'
    slim.write_text(
        ''.join(f'{VAL_CLASSES.get(n, "n01443537")}\n' for n in range(1, NUM_VAL_IMAGES + 1))
    )
    # A class list of one's own: its order gives the labels.
    order = ['n15075141', 'n01440764', 'n02119789']
    (tmp_path / 'synsets.txt').write_text('\n'.join(order) + '\n')
    build_imagenet.main(
        [
            f'--train_tar={root / "ILSVRC2012_img_train.tar"}',
            f'--val_tar={root / "ILSVRC2012_img_val.tar"}',
            f'--val_labels={slim}',
            f'--synsets={tmp_path / "synsets.txt"}',
            f'--output_dir={tmp_path / "records"}',
            '--train_shards=1',
            '--validation_shards=1',
            '--num_workers=1',
        ]
    )
    records = read_records(tmp_path / 'records', 'train')
    records += read_records(tmp_path / 'records', 'validation')
    check_labels(records, truth, labels={'n15075141': 1, 'n01440764': 2, 'n02119789': 3})


def _run_builder(*arguments) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, '-m', 'input_pipeline.build_imagenet', *map(str, arguments)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    'mistake',
    ['unlabelled image', 'short labels', 'class outside', 'ids without meta', 'not a devkit'],
)
def test_mistakes_exit_with_one_line_naming_them(tmp_path, ilsvrc2012, mistake):
    root, truth = ilsvrc2012
    val_tar, devkit = root / 'ILSVRC2012_img_val.tar', root / 'ILSVRC2012_devkit_t12.tar.gz'
    if mistake == 'unlabelled image':  # image 50,001: the devkit labels 50,000
        val_tar = tmp_path / 'ILSVRC2012_img_val.tar'
        shutil.copy(root / 'ILSVRC2012_img_val.tar', val_tar)
        with tarfile.open(val_tar, 'a') as archive:
            add(archive, val_name(50001), encode(truth[val_name(1)][1]))
        arguments, expected = (
            [f'--devkit={devkit}'],
            [
                'validation image ILSVRC2012_val_00050001.JPEG has no label',
                'ILSVRC2012_validation_ground_truth.txt has 50,000 lines',
            ],
        )
    elif mistake == 'short labels':  # labels for images 1..300 only
        (tmp_path / 'short.txt').write_text('n01440764\n' * 300)
        arguments, expected = (
            [f'--val_labels={tmp_path / "short.txt"}'],
            [
                'ILSVRC2012_val_00049999.JPEG has no label',
                f'--val_labels={tmp_path / "short.txt"} has 300 lines',
            ],
        )
    elif mistake == 'class outside':  # n00001740 ("entity") is no ILSVRC2012 class
        with tarfile.open(tmp_path / 'train.tar', 'w') as train:
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode='w') as class_tar:
                add(class_tar, 'n00001740_7.JPEG', encode(truth[val_name(1)][1]))
            add(train, 'n00001740.tar', buffer.getvalue())
        arguments, expected = (
            [f'--train_tar={tmp_path / "train.tar"}'],
            [
                'train image n00001740_7.JPEG is of n00001740',
                'imagenet_synsets.txt',
            ],
        )
    elif mistake == 'ids without meta':
        with tarfile.open(devkit) as archive:
            data = archive.extractfile(
                'ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt'
            ).read()
        (tmp_path / 'ILSVRC2012_validation_ground_truth.txt').write_bytes(data)
        labels = tmp_path / 'ILSVRC2012_validation_ground_truth.txt'
        arguments, expected = (
            [f'--val_labels={labels}'],
            [f'--val_labels={labels} holds ILSVRC2012_IDs'],
        )
    else:
        (tmp_path / 'devkit.tar.gz').write_text('<html>session expired</html>')
        arguments, expected = (
            [f'--devkit={tmp_path / "devkit.tar.gz"}'],
            [f'--devkit={tmp_path / "devkit.tar.gz"} is not ILSVRC2012_devkit_t12.tar.gz'],
        )
    if not any(a.startswith('--train_tar') for a in arguments):
        arguments.append(f'--val_tar={val_tar}')
    result = _run_builder(*arguments, f'--output_dir={tmp_path / "out"}', '--num_workers=1')
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('build_imagenet: error: '), result.stderr
    for text in expected:
        assert text in lines[0]
    assert not os.path.exists(tmp_path / 'out') or not os.listdir(tmp_path / 'out')

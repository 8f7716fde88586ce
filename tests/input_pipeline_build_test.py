"""Tests of `python -m input_pipeline.build_imagenet` on tars in the official layout.

The tars are built as image-net.org ships ILSVRC2012 (a train tar of per-class tars, a
flat validation tar), from real photos, with the oddities of the real data: a PNG under
a .JPEG name and a CMYK JPEG.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile

import numpy as np
import pytest
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


def read_all(files) -> list[dict]:
    """Every record of `files`, parsed, as numpy values."""
    parsed = []
    for record in tf.data.TFRecordDataset(list(files)):
        fields = {key: value.numpy() for key, value in decode.parse_record(record, 'f').items()}
        parsed.append({**fields, **_extra(record)})
    return parsed


def _extra(record) -> dict:
    example = tf.train.Example.FromString(record.numpy()).features.feature
    return {
        'filename': example['image/filename'].bytes_list.value[0].decode(),
        'height': example['image/height'].int64_list.value[0],
        'width': example['image/width'].int64_list.value[0],
    }


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
    assert '12 train and 5 validation images, 3 classes' in err
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
    with pytest.raises(ValueError, match='4 lines for 5 validation images'):
        build_imagenet.main(
            [
                f'--val_tar={root / "ILSVRC2012_img_val.tar"}',
                f'--val_labels={tmp_path / "short.txt"}',
                f'--output_dir={tmp_path / "out"}',
            ]
        )
    (tmp_path / 'ids.txt').write_text('\n'.join(['65', '970', '230', '809', '516']))
    with pytest.raises(ValueError, match="'65' is not a synset"):
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
    with pytest.raises(ValueError, match='n01440764_1.JPEG does not decode'):
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

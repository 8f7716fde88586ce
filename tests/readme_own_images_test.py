"""README's "Your own images", walked command by command on a folder of real photos.

The photos are scikit-learn's handwritten digits written as JPEG and PNG files into
class folders named `zero` ... `nine` (train and val as the demo splits them), with
problems planted for the validator: a val photo copied into train (a leak), a file that
is no image, a JPEG cut short, and a class with three val photos. Each ```sh command of
the section runs as written, in a process of its own, with its folders moved to
temporary ones. Two things are not README's own, and why:

- The pretrained weights: nothing can be downloaded here, so instead of Keras' ImageNet
  file the fine-tune starts from a run of the same small DenseNet on five of the ten
  digits (another class count: its classifier is replaced).
- The fine-tune command gets the demo's settings for 32-pixel digits appended
  (`_SMALL`): `finetune.cfg`'s DenseNet-121 at 224 px would take hours on a CPU.

The fine-tune must beat training the same model from scratch for the same steps on the
same data by a wide margin, and predict must print the folder names.
"""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from in_process import run_main_in_process
from sklearn import model_selection

from input_pipeline import digits
from input_pipeline import writer

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine']
FINE_TUNE_EPOCHS = 3
# The demo's settings for 32-pixel digits, on a DenseNet-BC smaller than the demo's (the
# test's time). Its features are wide enough to carry over: with DenseNet-BC-10-4's nine,
# the fine-tune fell below training from scratch.
_SMALL = [
    '--model=densenet_bc_16_8',
    '--image_size=32',
    '--bfloat16=false',
    f'--epochs={FINE_TUNE_EPOCHS}',
    '--initial_lr=0.1',
    '--batch_norm_momentum=0.9',
    '--random_flip=false',
    '--crop_area_range=0.7,1.0',
    '--crop_aspect_range=0.85,1.18',
    '--eval_crop_fraction=1.0',
    '--save_every_epoch=false',
    '--deterministic',
    '--seed=1',
]


def _section() -> str:
    with open(os.path.join(ROOT, 'README.md')) as stream:
        readme = stream.read()
    return readme.split('## Your own images\n', 1)[1].split('\n## ', 1)[0]


def _commands(section: str):
    """Each line of each ```sh block, indentation removed."""
    blocks = re.findall(r'^( *)```sh\n(.*?)^\1```', section, re.MULTILINE | re.DOTALL)
    return [line.strip() for _, block in blocks for line in block.splitlines() if line.strip()]


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as stream:
        stream.write(data)


def _split(labels):
    """The demo's split of the digits (`input_pipeline/digits.py`): train and val indices."""
    return model_selection.train_test_split(
        np.arange(len(labels)), test_size=digits.NUM_VALIDATION, random_state=0, stratify=labels
    )


def _photos(root):
    """The digits as class folders, and the planted problems; returns (planted, a val photo)."""
    images, labels = digits._digit_images()  # pylint: disable=protected-access
    train, val = _split(labels)
    for split, indices in (('train', train), ('val', val)):
        for index in sorted(indices):
            name = NAMES[labels[index]]
            os.makedirs(f'{root}/{split}/{name}', exist_ok=True)
            if split == 'val' and name == 'nine' and len(os.listdir(f'{root}/val/nine')) >= 3:
                continue  # A class with few photos: a warning.
            if split == 'train' and index % 7 == 0:
                data, ext = tf.io.encode_png(images[index]).numpy(), 'png'
            else:
                data, ext = tf.io.encode_jpeg(images[index], quality=95).numpy(), 'jpg'
            _write(f'{root}/{split}/{name}/{index:04d}.{ext}', data)
    seven = sorted(os.listdir(f'{root}/val/seven'))[0]
    shutil.copy(f'{root}/val/seven/{seven}', f'{root}/train/seven/leak.jpg')
    _write(f'{root}/train/three/broken.jpg', b'not an image at all')
    jpeg = tf.io.encode_jpeg(images[train[0]], quality=95).numpy()
    _write(f'{root}/train/{NAMES[labels[train[0]]]}/cut.jpg', jpeg[: len(jpeg) * 2 // 3])
    planted = [
        'train/seven/leak.jpg',
        'train/three/broken.jpg',
        f'train/{NAMES[labels[train[0]]]}/cut.jpg',
    ]
    return planted, f'{root}/val/seven/{seven}'


def _pretrained(tmp):
    """A run of the small DenseNet on the digits 0-4 of the photos' train split only."""
    images, labels = digits._digit_images()  # pylint: disable=protected-access
    train, _ = _split(labels)
    for index in train[labels[train] < 5]:
        split = 'validation' if index % 6 == 0 else 'train'
        data = tf.io.encode_jpeg(images[index], quality=95).numpy()
        _write(f'{tmp}/five/{split}/{labels[index]}/{index:04d}.jpg', data)
    for split in ('train', 'validation'):
        writer.write_from_folders(
            f'{tmp}/five/{split}', f'{tmp}/five_data', split=split, num_shards=1
        )
    model_dir = f'{tmp}/pretrained'
    run_main_in_process(
        [
            *_SMALL,
            '--epochs=12',
            '--num_classes=5',
            '--optimizer=sgd',
            '--nesterov',
            '--lr_sched=cosine',
            '--final_lr=0',
            '--export_last_step=false',
            f'--dataset_dir={tmp}/five_data',
            f'--model_dir={model_dir}',
        ],
        check=True,
    )
    return model_dir


def _run(command):
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', '')
    return subprocess.run(
        ['bash', '-c', command],
        cwd=ROOT,
        env={**os.environ, 'PATH': path},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _top1(stdout):
    return float(re.search(r'Validation top-1 ([\d.]+)', stdout).group(1))


def test_readme_own_images_section_runs_verbatim(tmp_path):
    tmp = str(tmp_path)
    planted, photo = _photos(f'{tmp}/photos')
    pretrained = _pretrained(tmp)
    moves = [
        ('runs/photos', f'{tmp}/runs/photos'),
        ('photos_data', f'{tmp}/photos_data'),
        ('photos/val/cat/0001.jpg', photo),
        ('=photos', f'={tmp}/photos'),
        ('densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5', pretrained),
        ('epoch_010', f'epoch_{FINE_TUNE_EPOCHS:03d}'),
    ]
    commands = _commands(_section())
    assert [c.split()[:3] for c in commands] == [
        ['python', '-m', 'input_pipeline.validate'],
        ['python', '-m', 'input_pipeline.build_folders'],
        ['python', 'main.py', '--flagfile=finetune.cfg'],
        ['python', 'main.py', '--flagfile=runs/photos/flags.cfg'],
        ['python', '-m', 'trainer.tools.predict'],
    ]
    moved = []
    for command in commands:
        for old, new in moves:
            command = command.replace(old, new)
        moved.append(command)
    validate, build, fine_tune, evaluate, predict = moved

    # 1. The validator finds every planted problem, and passes once they are removed.
    result = _run(validate)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    for name in planted:
        assert name.rsplit('/', 1)[1] in result.stdout, (name, result.stdout[-3000:])
    for name in planted:
        os.remove(f'{tmp}/photos/{name}')
    result = _run(validate)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert 'nine' in result.stdout  # The class with three val photos: a warning.

    # 2. The build; 3. the fine-tune from another class count's weights.
    result = _run(build)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(f'{tmp}/photos_data/classes.txt') as stream:
        assert stream.read().split('\n')[:10] == sorted(NAMES)
    result = _run(fine_tune + ' ' + ' '.join(_SMALL))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "predictions starts fresh: the file's has 5 classes, this run 10" in result.stderr
    fine_tuned = _top1(result.stdout)

    # The same model, steps and data from scratch.
    scratch = run_main_in_process(
        [
            '--flagfile=finetune.cfg',
            f'--dataset_dir={tmp}/photos_data',
            f'--model_dir={tmp}/runs/scratch',
            '--num_classes=10',
            '--freeze_backbone_epochs=0',
            '--export_last_step=false',
            *_SMALL,
        ],
        check=True,
    )
    from_scratch = _top1(scratch.stdout)
    print(f'fine-tuned top-1 {fine_tuned:.4f}, from scratch {from_scratch:.4f}')
    assert fine_tuned >= 0.85 and fine_tuned - from_scratch >= 0.05, (fine_tuned, from_scratch)

    # 4. The export evaluates to the run's own last figure; predict names the folders.
    result = _run(evaluate)
    assert result.returncode == 0, result.stderr[-3000:]
    # The same model through the SavedModel: the same figure, give or take one image
    # whose two best logits the two float paths might order differently.
    assert _top1(result.stdout) == pytest.approx(fine_tuned, abs=1.01 / 300)
    result = _run(predict)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == photo and len(lines) == 6, result.stdout
    assert all(line.split()[-1] in NAMES for line in lines[1:]), result.stdout

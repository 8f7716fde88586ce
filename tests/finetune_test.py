"""Fine-tuning end to end: --init_checkpoint of another class count, --freeze_backbone_epochs.

Through main.py's own path, in process (`tests/in_process.py`), on the digits with the
smallest DenseNet-BC: the pretrained source is a 5-class model's checkpoint written
here, so what the run must keep is known without the code under test.
"""

import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from in_process import run_main_in_process
from main_runs import assert_identical, checkpoints

import densenet
from trainer.artifacts import weights_by_name

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 23  # 1,497 training digits in batches of 64.


def _args(digits_dir, model_dir, source, *extra):
    return [
        '--model=densenet_bc_10_4',
        '--image_size=32',
        '--num_classes=10',
        '--bfloat16=false',
        '--batch_size=64',
        '--seed=3',
        '--deterministic',
        '--batch_norm_momentum=0.9',
        f'--dataset_dir={digits_dir}',
        f'--model_dir={model_dir}',
        f'--init_checkpoint={source}',
        '--epochs=2',
        '--freeze_backbone_epochs=1',
        '--checkpoint_every_steps=10',
        '--keep_checkpoints=10',
        '--steps_per_loop=23',
        '--save_every_epoch=false',
        '--export_last_step=false',
        *extra,
    ]


def _weights(prefix, num_classes=10):
    model = densenet.create_model('densenet_bc_10_4', num_classes=num_classes, image_size=32)
    stored = weights_by_name.read_checkpoint(prefix)
    return {
        f'{layer}/{name}': array for layer, weights in stored.items() for name, array in weights
    }, model


@pytest.fixture(scope='module')
def frozen_run(digits_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('finetune')
    keras.utils.set_random_seed(7)
    source_model = densenet.create_model(
        'densenet_bc_10_4', num_classes=5, image_size=32, dropout_rate=0.2
    )
    source = str(tmp / 'pretrained' / 'ckpt-1')
    tf.train.Checkpoint(model=source_model).write(source)
    model_dir = str(tmp / 'run')
    result = run_main_in_process(_args(digits_dir, model_dir, source), check=True)
    return source, model_dir, result


def test_the_backbone_and_its_statistics_stay_pretrained_until_the_switch(frozen_run):
    source, model_dir, result = frozen_run
    assert 'predictions starts fresh: the file\'s has 5 classes, this run 10' in result.stderr
    assert 'only predictions trains until step 23' in result.stderr
    assert 'Step 23: the backbone is unfrozen' in result.stderr
    pretrained, _ = _weights(source)
    found = checkpoints(model_dir)
    assert sorted(found) == [10, 20, 23, 30, 40, 46]
    at_switch, _ = _weights(found[23])
    at_end, _ = _weights(found[46])
    backbone = [key for key in pretrained if not key.startswith('predictions/')]
    moving = [key for key in backbone if 'moving_' in key]
    assert moving and len(backbone) == len(at_switch) - 2
    for key in backbone:  # Kernels, scales, offsets and moving statistics alike.
        np.testing.assert_array_equal(at_switch[key], pretrained[key], err_msg=key)
    assert not np.array_equal(at_switch['predictions/kernel'], at_end['predictions/kernel'])
    # Then every layer trains, and batch norm updates its statistics again.
    changed = [key for key in backbone if not np.array_equal(at_end[key], pretrained[key])]
    assert len(changed) == len(backbone), sorted(set(backbone) - set(changed))[:5]


def test_resumed_before_the_switch_ends_bit_identical(frozen_run, tmp_path, digits_dir):
    # Stopped at step 20, frozen again on restart, unfrozen at 23 by the same rule.
    source, model_dir, _ = frozen_run
    resumed = str(tmp_path / 'resumed')
    shutil.copytree(model_dir, resumed)
    folder = os.path.join(resumed, 'checkpoints')
    for name in os.listdir(folder):
        if name.startswith(('ckpt-23', 'ckpt-30', 'ckpt-40', 'ckpt-46', 'checkpoint')):
            os.remove(os.path.join(folder, name))
    shutil.rmtree(os.path.join(resumed, 'logs'))
    result = run_main_in_process(_args(digits_dir, resumed, source), check=True)
    assert 'Resumed from' in result.stderr or 'ckpt-20' in result.stderr
    assert_identical(checkpoints(resumed)[46], checkpoints(model_dir)[46])

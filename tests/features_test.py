"""Every training flag of README's table runs end to end through main.py's path.

Each row is one `main.py ...` of a few steps on the tiny DenseNet-BC and small digit
images, run in this process through main.py's own parse, check and run
(`tests/in_process.py`: the process is not what a row checks), but for the mirrored
row (see `_TWO_CPU_LAUNCHER`); several flags share a row to keep the suite's time
down, and the rows pair the flags users combine. A row passes when main.py exits 0
with a finite logged loss and a checkpoint; two rows check more (the checkpoints
--keep_checkpoints keeps, the steps float16's loss scaling skips). Mixup and CutMix
have their own runs (trainer_mixing_test.py). The optimizer x schedule grid, with
warmup, runs in this process on a tiny model through the trainer's own schedule,
optimizer and loop (20 main.py starts would cost minutes).
"""

import math
import os
import re

import pytest
import tensorflow as tf

import keras
from in_process import run_main_in_process
from main_runs import MAIN
from main_runs import ROOT
from main_runs import checkpoint_values
from main_runs import checkpoints
from main_runs import run_main
from trainer.engine import loop
from trainer.optimization import optimizers
from trainer.optimization import schedules
from trainer.engine import step as step_lib
from trainer.config import RunConfig

TINY = [
    '--model=densenet_bc_10_4',
    '--image_size=16',
    '--num_classes=10',
    '--batch_size=16',
    '--train_steps=4',
    '--steps_per_loop=2',
    '--log_every_steps=2',
    '--checkpoint_every_steps=2',
    '--save_every_epoch=false',
    '--export_last_step=false',
    '--shuffle_buffer=64',
]

# Runs main.py with the CPU split into two logical devices, as conftest.py does for this
# process, so that --distribution_strategy=mirrored has two replicas. That row is a
# process of its own: TensorFlow's collective ops are keyed per process, and a second
# MirroredStrategy over the same devices in one process can meet the instance keys of
# an earlier one's all-reduces with other shapes ("Shape mismatch in the collective
# instance 100"), which a new process never does.
_TWO_CPU_LAUNCHER = """
import runpy, sys
sys.path.insert(0, {root!r})
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.argv = ['main.py', *sys.argv[1:]]
runpy.run_path({main!r}, run_name='__main__')
"""

ROWS = {
    'float16_memory_efficient_accumulation': [
        '--precision=float16',
        '--memory_efficient',
        '--grad_accum_steps=2',
        '--loss_scale=dynamic',
        '--max_skipped_steps=3',
        '--optimizer=adamw',
        '--lr_sched=linear',
        '--warmup_epochs=0.01',
    ],
    'jit_bfloat16': [
        '--jit_compile',
        '--bfloat16',
        '--optimizer=adam',
        '--lr_sched=exponential',
        '--lr_scaling=linear',
        '--num_gpus=0',
    ],
    'mirrored_two_cpus_ema': [
        '--distribution_strategy=mirrored',
        '--device=cpu',
        '--ema_decay=0.9',
        '--bfloat16=false',
        '--optimizer=rmsprop',
        '--lr_sched=cosine',
        '--warmup_epochs=0.01',
        '--histograms',
        '--profile_steps=2,3',
    ],
    'bad_records_colour_lighting': [
        '--skip_bad_records',
        '--color_jitter=0.4',
        '--pca_lighting=0.1',
        '--randaugment_layers=2',
        '--randaugment_magnitude=5',
        '--checkpoint_every_steps=1',
        '--keep_checkpoints=2',
        '--dropout_rate=0.1',
        '--batch_norm_momentum=0.9',
        '--crop_area_range=0.5,1.0',
        '--crop_aspect_range=0.8,1.25',
        '--random_flip=false',
        '--eval_crop_fraction=0.9',
        '--data_layout=slim',
        '--label_offset=1',
        '--optimizer=sgd',
        '--nesterov',
        '--momentum=0.8',
        '--weight_decay=5e-4',
        '--lr_sched=piecewise',
        '--lr_boundaries=0.001',
        '--lr_values=0.1,0.01',
        '--save_every_epoch',
        '--deterministic',
        '--seed=7',
    ],
}


def _check_run(result, model_dir, name):
    report = f'{name}:\n{result.stderr[-3000:]}'
    assert result.returncode == 0, report
    losses = [float(v) for v in re.findall(r'step \d+/\d+ \([^)]*\): loss (\S+)', result.stderr)]
    assert losses and all(math.isfinite(v) for v in losses), report
    assert checkpoints(model_dir), report
    return losses


@pytest.fixture(scope='module')
def rows(digits_dir, tmp_path_factory):
    """`row(name)`: that row's (result, model_dir), run once, when a test first asks.

    In this process, but for the mirrored row (see `_TWO_CPU_LAUNCHER`).
    """
    tmp = str(tmp_path_factory.mktemp('rows'))
    done = {}

    def row(name):
        if name not in done:
            model_dir = os.path.join(tmp, name)
            args = [*TINY, *ROWS[name], f'--dataset_dir={digits_dir}', f'--model_dir={model_dir}']
            if name == 'mirrored_two_cpus_ema':
                launcher = os.path.join(tmp, 'two_cpus.py')
                with open(launcher, 'w') as stream:
                    stream.write(_TWO_CPU_LAUNCHER.format(root=ROOT, main=MAIN))
                done[name] = run_main(args, launcher=launcher), model_dir
            else:
                done[name] = run_main_in_process(args), model_dir
        return done[name]

    return row


@pytest.mark.parametrize('name', sorted(ROWS))
@pytest.mark.slow
def test_flags_run_end_to_end(name, rows):
    result, model_dir = rows(name)
    _check_run(result, model_dir, name)
    if name == 'mirrored_two_cpus_ema':
        assert 'Strategy: MirroredStrategy, 2 replicas' in result.stderr, result.stderr[-3000:]
    if name == 'bad_records_colour_lighting':
        # Four checkpoints written, --keep_checkpoints=2 keeps the newest two, on disk too.
        assert sorted(checkpoints(model_dir)) == [3, 4]
        on_disk = tf.io.gfile.glob(os.path.join(model_dir, 'checkpoints', 'ckpt-*'))
        assert sorted({os.path.basename(path).split('.')[0] for path in on_disk}) == [
            'ckpt-3',
            'ckpt-4',
        ]
    if name == 'float16_memory_efficient_accumulation':
        # Dynamic loss scaling from 2^15: at most one of the 4 steps skipped for an
        # overflow, and the scale halved at most that once.
        values = checkpoint_values(checkpoints(model_dir)[4])
        skipped = int(values['loss_scaler/skipped_steps/.ATTRIBUTES/VARIABLE_VALUE'])
        scale = float(values['loss_scaler/scale/.ATTRIBUTES/VARIABLE_VALUE'])
        assert skipped <= 1 and scale == 2.0 ** (15 - skipped), (skipped, scale)


@pytest.mark.slow
def test_fine_tuning_and_evaluation_only(rows, digits_dir, tmp_path):
    # A run without dropout: the checkpoint's object graph numbers the model's layers,
    # and dropout layers shift the numbers (a known limit of --init_checkpoint).
    _, first = rows('jit_bfloat16')
    tuned = str(tmp_path / 'tuned')
    result = run_main_in_process(
        [
            *TINY,
            f'--dataset_dir={digits_dir}',
            f'--model_dir={tuned}',
            f'--init_checkpoint={first}',
            '--lr_sched=steps',
            '--lr_decay_epochs=1',
        ]
    )
    _check_run(result, tuned, 'init_checkpoint')
    assert 'Initialised the weights from' in result.stderr
    result = run_main_in_process(
        [*TINY[:4], f'--dataset_dir={digits_dir}', f'--only_eval={tuned}/checkpoints']
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(
        r'Validation top-1 \S+, top-5 \S+, cross-entropy \S+ over 300 examples', result.stdout
    )


@pytest.mark.parametrize('optimizer', optimizers.OPTIMIZERS)
def test_each_optimizer_with_each_schedule_and_warmup(optimizer):
    # A conv, batch norm and dense layer: every kind of variable the DenseNets have, at
    # a tracing cost that 20 optimizer and schedule pairs can afford.
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )
    images = tf.random.stateless_normal([4, 8, 8, 3], [1, 2])
    labels = tf.constant([1, 2, 3, 4])
    strategy = tf.distribute.get_strategy()
    for schedule_name in schedules.SCHEDULES:
        config = RunConfig(
            optimizer=optimizer,
            lr_sched=schedule_name,
            initial_lr=0.01,
            warmup_epochs=1.0,
            lr_boundaries=(1.0,) if schedule_name == 'piecewise' else (),
            lr_values=(0.01, 0.001) if schedule_name == 'piecewise' else (),
        )
        schedule = schedules.from_config(
            config, steps_per_epoch=2, total_steps=4, global_batch_size=4
        )
        optimizer_object = optimizers.create_optimizer(
            optimizer,
            schedule,
            weight_decay=1e-4,
            variables=model.trainable_variables,
            decayed_variables=step_lib.decayed_variables_of(model),
        )
        train_step = step_lib.TrainStep(
            model,
            optimizer_object,
            global_batch_size=4,
            weight_decay=optimizers.loss_weight_decay(optimizer, 1e-4),
        )
        train_loop = loop.make_train_loop(strategy, train_step)
        dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
        totals = train_loop(iter(dataset), tf.constant(3))
        loss = float(loop.step_loss(totals)) / 3
        assert math.isfinite(loss), (optimizer, schedule_name, loss)
        assert int(optimizer_object.iterations.numpy()) == 3, (optimizer, schedule_name)
        # The warmup is on: the first step's rate is below the peak.
        assert float(schedule(0)) < 0.01, schedule_name

"""Tests of what a run writes for TensorBoard, read back through the real server.

The end-to-end test trains a tiny DenseNet-BC for 4 steps through main.py's path (in
this process, `tests/in_process.py`), starts
`tensorboard --logdir` on a free loopback port, and compares what its HTTP data API
serves with `eval_results.jsonl` and with the formulas. The same run's event files are
read back against independent references: the learning rate against the cosine and
warmup formula written here, the weight norm and the histograms against the
checkpoints written at the same steps. Unit tests pin the figures that the summaries
are computed from: the gradient norm, the input wait, the image grid.
"""

import glob
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import keras
import numpy as np
import pytest
import tensorflow as tf

import densenet
from in_process import run_main_in_process
from main_runs import checkpoints
from main_runs import events
from main_runs import variable_name
from trainer.engine import loop
from trainer.engine import step as step_lib
from trainer.reporting import summaries
from trainer.config import RunConfig

TRAIN_TAGS = {
    'loss',
    'cross_entropy',
    'l2',
    'top1',
    'top5',
    'learning_rate',
    'loss_scale',
    'skipped_steps',
    'gradient_norm',
    'weight_norm',
    'images_per_second',
    'step_time',
    'input_wait_fraction',
    'epoch',
    'image_size',
}
EVAL_TAGS = {'top1', 'top5', 'cross_entropy'}

# The tiny run's schedule: cosine from INITIAL_LR to FINAL_LR over its one epoch of
# SCHEDULE_STEPS = 23 steps (--epochs=1; --train_steps stops the run at TRAIN_STEPS but
# does not shorten the schedule), times a linear warmup over WARMUP_STEPS =
# round(0.13 epochs x 23 steps per epoch).
TRAIN_STEPS, SCHEDULE_STEPS, INITIAL_LR, FINAL_LR, WARMUP_STEPS = 4, 23, 0.05, 0.001, 3
LOGGED_STEPS = (2, 4)


def _expected_learning_rate(step, warmup=True):
    """The rate of the step-th update (1-based), which the summary at `step` shows.

    Keras optimizers evaluate the schedule at their counter before incrementing it, so
    the step-th update uses the schedule at step - 1 (see `tests/schedules_test.py`,
    `test_the_optimizer_applies_the_schedule_at_the_updates_it_has_done`): progress
    (step - 1) / SCHEDULE_STEPS, and warmup factor ((step - 1) + 1) / WARMUP_STEPS
    (`warmup=False` leaves it out).
    """
    progress = (step - 1) / SCHEDULE_STEPS
    cosine = FINAL_LR + (INITIAL_LR - FINAL_LR) * (1 + math.cos(math.pi * progress)) / 2
    return cosine * min(1.0, step / WARMUP_STEPS) if warmup else cosine


@pytest.fixture(scope='module')
def tiny_run(digits_dir, tmp_path_factory):
    """A 4-step run on the digits, logging and checkpointing every 2 steps, evaluating at
    the end; returns (model_dir, result)."""
    model_dir = str(tmp_path_factory.mktemp('summaries') / 'run')
    result = run_main_in_process(
        [
            '--model=densenet_bc_10_4',
            '--image_size=32',
            '--num_classes=10',
            '--bfloat16=false',
            '--batch_size=64',
            '--lr_sched=cosine',
            f'--initial_lr={INITIAL_LR}',
            f'--final_lr={FINAL_LR}',
            '--warmup_epochs=0.13',
            '--epochs=1',
            # Not --deterministic: under op determinism the input wait is not measured.
            '--seed=3',
            '--shuffle_buffer=256',
            f'--train_steps={TRAIN_STEPS}',
            '--export_last_step=false',
            '--steps_per_loop=2',
            '--log_every_steps=2',
            '--checkpoint_every_steps=2',
            '--keep_checkpoints=10',
            '--histograms',
            '--profile_steps=2,3',
            f'--dataset_dir={digits_dir}',
            f'--model_dir={model_dir}',
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir, result


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


class _TensorBoard:
    """A `tensorboard --logdir` server on a loopback port, and its HTTP data API."""

    def __init__(self, logdir):
        executable = os.path.join(os.path.dirname(sys.executable), 'tensorboard')
        command = (
            [executable]
            if os.path.exists(executable)
            else [sys.executable, '-m', 'tensorboard.main']
        )
        self.port = _free_port()
        self.process = subprocess.Popen(
            [
                *command,
                f'--logdir={logdir}',
                '--host=127.0.0.1',
                f'--port={self.port}',
                '--load_fast=false',  # The Python loader: no data-server binary needed.
                '--reload_interval=1',
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'},
        )
        # Loopback only: a proxy from the environment must not see these requests.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(self, path, body=None):
        request = urllib.request.Request(
            f'http://127.0.0.1:{self.port}/{path}',
            data=None if body is None else json.dumps(body).encode(),
            headers={'Content-Type': 'application/json'},
        )
        with self._opener.open(request, timeout=30) as response:
            return json.loads(response.read())

    def wait_for(self, path, ready, timeout=180):
        """GETs `path` until `ready(answer)`; the server loads event files in the background."""
        deadline = time.time() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f'tensorboard exited:\n{self.process.stdout.read()[-3000:]}')
            try:
                answer = self.get(path)
                if ready(answer):
                    return answer
            except OSError:
                pass  # Not listening yet.
            if time.time() > deadline:
                raise AssertionError(f'tensorboard did not serve {path} in {timeout} s')
            time.sleep(0.5)

    def close(self):
        self.process.kill()
        self.process.wait(timeout=30)
        self.process.stdout.close()


@pytest.mark.slow
def test_tensorboard_server_serves_the_runs_summaries(tiny_run):
    model_dir, _ = tiny_run
    with open(os.path.join(model_dir, 'eval_results.jsonl')) as stream:
        evaluation = json.loads(stream.readlines()[-1])
    server = _TensorBoard(os.path.join(model_dir, 'logs'))
    try:
        tags = server.wait_for(
            'data/plugin/scalars/tags',
            lambda answer: (
                TRAIN_TAGS <= set(answer.get('train', {}))
                and EVAL_TAGS <= set(answer.get('eval', {}))
            ),
        )
        assert set(tags['train']) == TRAIN_TAGS

        def scalars(run, tag):
            query = urllib.parse.urlencode({'run': run, 'tag': tag})
            return {
                step: value for _, step, value in server.get(f'data/plugin/scalars/scalars?{query}')
            }

        # Evaluation: the numbers of eval_results.jsonl, as float32.
        assert evaluation['step'] == 4
        for tag in ('top1', 'top5', 'cross_entropy'):
            assert scalars('eval', tag) == {4: pytest.approx(evaluation[tag], rel=1e-6)}, tag
        # Training: one point per log interval, consistent with each other.
        train = {tag: scalars('train', tag) for tag in TRAIN_TAGS}
        for tag, values in train.items():
            assert sorted(values) == list(LOGGED_STEPS), tag
            assert all(math.isfinite(value) for value in values.values()), tag
        for step in LOGGED_STEPS:
            assert train['loss'][step] == pytest.approx(
                train['cross_entropy'][step] + train['l2'][step], rel=1e-6
            )
            assert train['epoch'][step] == pytest.approx(step / 23)  # 1,497 digits // 64
            assert train['image_size'][step] == 32  # One size: --image_size.
            assert train['learning_rate'][step] == pytest.approx(
                _expected_learning_rate(step), rel=1e-5
            )
            assert 0 <= train['top1'][step] <= train['top5'][step] <= 1
            assert 0 <= train['input_wait_fraction'][step] <= 1
            assert train['gradient_norm'][step] > 0 and train['weight_norm'][step] > 0
            assert train['loss_scale'][step] == 1 and train['skipped_steps'][step] == 0
            assert train['images_per_second'][step] == pytest.approx(
                64 / train['step_time'][step], rel=1e-4
            )
        # The image grid, the weight histograms and the hparams.
        images = server.get('data/plugin/images/tags')
        assert images['train']['training_images']['samples'] == 1
        histograms = server.get('data/plugin/histograms/tags')
        assert 'conv1_conv/kernel' in histograms['train'], sorted(histograms['train'])[:5]
        experiment = server.get('data/plugin/hparams/experiment', body={'experimentName': ''})
        hparams = {info['name'] for info in experiment['hparamInfos']}
        assert {'model', 'batch_size', 'initial_lr', 'weight_decay'} <= hparams
        metrics = {
            (info['name']['group'], info['name']['tag']) for info in experiment['metricInfos']
        }
        assert ('eval', 'top1') in metrics
    finally:
        server.close()


@pytest.mark.slow
def test_console_shows_banner_and_plain_progress_lines(tiny_run):
    _, result = tiny_run
    output = result.stdout + result.stderr
    # Not a terminal here: no carriage returns, no escape sequences.
    assert '\r' not in output and '\033' not in output
    for fragment in (
        f'TensorFlow {tf.__version__}',
        'Devices: ',
        'Strategy: ',
        'global batch 64 (64 per replica)',
        'Steps: 23 per epoch, 4 in all',
    ):
        assert fragment in result.stderr, fragment
    data_line = re.search(r'Data: .*', result.stderr).group(0)
    assert 'layout' in data_line and '1497' in data_line and '300' in data_line, data_line
    lines = re.findall(r'epoch \S+ step \d+/4 .*', result.stderr)
    assert len(lines) == 2, lines
    pattern = (
        r'epoch 0\.\d\d/0\.1739 step (2|4)/4 \(\d+\.\d%\): loss \d+\.\d{4} top-1 [01]\.\d{4} '
        r'lr (0\.\d{5}) \d+\.\d images/s ETA \d+:\d\d:\d\d'
    )
    for line in lines:
        match = re.fullmatch(pattern, line)
        assert match, line
        assert match.group(2) == f'{_expected_learning_rate(int(match.group(1))):.5f}', line
    assert 'Evaluating [' in result.stderr  # The progress bar's final line.


@pytest.mark.slow
def test_profile_trace_is_written_for_tensorboard(tiny_run):
    model_dir, result = tiny_run
    traces = glob.glob(
        os.path.join(model_dir, 'logs', 'train', 'plugins', 'profile', '*', '*.xplane.pb')
    )
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
    assert 'Profiling train steps 2 to 3' in result.stderr


def _checkpointed_model(model_dir, step):
    """The tiny run's model with the weights of its checkpoint at `step`."""
    model = densenet.create_model('densenet_bc_10_4', num_classes=10, image_size=32)
    status = tf.train.Checkpoint(model=model).restore(checkpoints(model_dir)[step])
    status.assert_existing_objects_matched().expect_partial()
    return model


@pytest.mark.slow
def test_learning_rate_is_the_rate_of_each_logged_steps_update(tiny_run):
    model_dir, _ = tiny_run
    scalars = events(model_dir, 'train', 'scalars')
    logged = {step: float(value) for step, value in scalars['learning_rate'].items()}
    expected = {step: _expected_learning_rate(step) for step in LOGGED_STEPS}
    assert logged == pytest.approx(expected, rel=1e-5)
    # It can fail: a summary one step off either way, or one without the warmup (still
    # on at step 2), would show values more than 100 times the tolerance away.
    for step in LOGGED_STEPS:
        for wrong in (_expected_learning_rate(step - 1), _expected_learning_rate(step + 1)):
            assert abs(wrong - expected[step]) > 1e-3 * expected[step], step
    assert _expected_learning_rate(2, warmup=False) > 1.1 * expected[2]


@pytest.mark.slow
def test_weight_norm_is_the_norm_of_the_weights_checkpointed_at_that_step(tiny_run):
    model_dir, _ = tiny_run
    scalars = events(model_dir, 'train', 'scalars')
    logged = {step: float(value) for step, value in scalars['weight_norm'].items()}
    assert sorted(logged) == list(LOGGED_STEPS)
    norms = {}
    for step in LOGGED_STEPS:
        model = _checkpointed_model(model_dir, step)
        norms[step] = math.sqrt(
            sum(np.sum(np.square(v.numpy().astype(np.float64))) for v in model.trainable_variables)
        )
    assert logged == pytest.approx(norms, rel=1e-6)
    # The norm moves between the logged steps (by about 1e-4 of itself, in the warmup's
    # small steps) by more than ten times the tolerance: a norm of the wrong moment fails.
    assert norms[2] != pytest.approx(norms[4], rel=1e-5)


@pytest.mark.slow
def test_histograms_are_every_trainable_weight_at_each_evaluation(tiny_run):
    # README: one histogram per trainable weight, tagged with the weight's name, written
    # at each evaluation (here once, at the end: step 4; step 2 was a log step only).
    model_dir, _ = tiny_run
    with open(os.path.join(model_dir, 'eval_results.jsonl')) as stream:
        evaluated = {json.loads(line)['step'] for line in stream}
    assert evaluated == {4}
    histograms = events(model_dir, 'train', 'histograms')
    model = _checkpointed_model(model_dir, 4)
    trainable = {variable_name(variable): variable for variable in model.trainable_variables}
    assert len(trainable) == len(model.trainable_variables) > 20
    assert sorted(histograms) == sorted(trainable)
    assert not any('moving_' in tag for tag in histograms)
    for tag, by_step in histograms.items():
        assert set(by_step) == evaluated, tag
        # [left edge, right edge, count] rows: every element of the weight counted, and
        # the edges the extremes of its value at the evaluation (the checkpoint's).
        buckets, value = by_step[4], trainable[tag].numpy()
        assert buckets[:, 2].sum() == value.size, tag
        assert buckets[0, 0] == pytest.approx(value.min(), rel=1e-5, abs=1e-7), tag
        assert buckets[-1, 1] == pytest.approx(value.max(), rel=1e-5, abs=1e-7), tag


def test_train_scalars_follow_from_the_window():
    window = {
        'cross_entropy': 230.0,
        'l2': 0.5,
        'top1': 25.0,
        'top5': 75.0,
        'count': 100.0,
        'grad_norm_sq': 8.0,
        'grad_norm_steps': 2.0,
        'skipped': 1.0,
        'input_wait': 0.5,
    }
    values = summaries.train_scalars(
        window, steps=2, seconds=2.0, learning_rate=0.1, epoch=1.5, weight_norm=3.0
    )
    assert values == {
        'loss': pytest.approx(2.3 + 0.25),
        'cross_entropy': pytest.approx(2.3),
        'l2': 0.25,
        'top1': 0.25,
        'top5': 0.75,
        'learning_rate': 0.1,
        'loss_scale': 1.0,
        'skipped_steps': 1.0,
        'gradient_norm': 2.0,  # sqrt(8 / 2 measured steps), whatever the skipped steps
        'weight_norm': 3.0,
        'images_per_second': 50.0,
        'step_time': 1.0,
        'input_wait_fraction': 0.25,
        'epoch': 1.5,
    }
    # No step measured (each call's last step skipped): no gradient norm rather than a
    # made-up one.
    assert math.isnan(
        summaries.train_scalars(
            {**window, 'grad_norm_sq': 0.0, 'grad_norm_steps': 0.0},
            steps=2,
            seconds=2.0,
            learning_rate=0.1,
            epoch=1.5,
            weight_norm=3.0,
        )['gradient_norm']
    )
    del window['input_wait']  # Not measured: no figure rather than a made-up one.
    assert 'input_wait_fraction' not in summaries.train_scalars(
        window, steps=2, seconds=2.0, learning_rate=0.1, epoch=1.5, weight_norm=3.0
    )


def test_gradient_norm_is_the_global_gradient_norm_on_one_replica():
    model = densenet.create_model('densenet_bc_10_4', num_classes=10, image_size=16)
    images = tf.random.stateless_normal([4, 16, 16, 3], seed=[1, 2])
    labels = tf.constant([0, 3, 5, 9])
    decay = step_lib.decayed_variables_of(model)
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        loss = tf.reduce_sum(cross_entropy) / 4 + step_lib.l2_term(decay, 1e-4)
    expected = tf.linalg.global_norm(tape.gradient(loss, model.trainable_variables))
    train_step = step_lib.TrainStep(
        model,
        keras.optimizers.SGD(0.0),
        global_batch_size=4,
        num_replicas=1,
        weight_decay=1e-4,
    )
    gradients, metrics = train_step.gradients(images, labels)
    # The gradient half leaves the norm to the loop, which pays for it where it is read.
    assert 'grad_norm_sq' not in metrics
    got = math.sqrt(float(train_step.grad_norm_sq(gradients)))
    assert got == pytest.approx(float(expected), rel=1e-5)


def test_input_wait_counts_the_time_blocked_on_the_pipeline():
    strategy = tf.distribute.get_strategy()
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(2)])
    optimizer = keras.optimizers.SGD(0.0)
    optimizer.build(model.trainable_variables)
    train_step = step_lib.TrainStep(model, optimizer, global_batch_size=1)
    train_loop = loop.make_train_loop(strategy, train_step, measure_input_wait=True)

    def slow(index):
        time.sleep(0.05)
        return np.float32(index)

    def dataset(delay):
        data = tf.data.Dataset.range(100)
        if delay:
            data = data.map(lambda i: tf.numpy_function(slow, [i], tf.float32))
        else:
            data = data.map(lambda i: tf.cast(i, tf.float32)).prefetch(8)
        return data.map(lambda x: (tf.reshape(x, [1, 1]), tf.zeros([1], tf.int32)))

    waits = {}
    for delay in (False, True):
        iterator = iter(strategy.experimental_distribute_dataset(dataset(delay)))
        train_loop(iterator, tf.constant(1))  # Traces.
        if not delay:
            time.sleep(0.2)  # The prefetch buffer fills.
        start = time.time()
        waits[delay] = float(train_loop(iterator, tf.constant(8))['input_wait'])
        assert waits[delay] <= time.time() - start + 1e-3
    # Eight batches at 50 ms each: 0.4 s of waiting, less what tf.data's own injected
    # prefetch made ahead while the first call returned; eight prefetched batches: next
    # to none.
    assert waits[True] >= 0.25, waits
    assert waits[False] < 0.1, waits


def test_image_grid_tiles_and_denormalises():
    pixels = (np.arange(5 * 4 * 4 * 3).reshape([5, 4, 4, 3]) % 256).astype(np.uint8)
    grid = summaries.image_grid(pixels).numpy()
    # 5 images -> 3 columns, 2 rows of 5x5 tiles (a 1-pixel white line above and left
    # of each), and the closing line at the right and bottom.
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
    np.testing.assert_allclose(grid[1:5, 1:5], pixels[0] / 255, atol=1e-6)
    np.testing.assert_allclose(grid[6:10, 6:10], pixels[4] / 255, atol=1e-6)
    np.testing.assert_allclose(grid[6:10, 11:15], 1.0)  # the blank sixth tile
    assert (grid[0] == 1).all() and (grid[:, 0] == 1).all()


def test_workers_other_than_the_chief_write_nothing(tmp_path):
    writers = summaries.SummaryWriters(str(tmp_path), enabled=False)
    writers.scalars('train', 1, {'loss': 1.0})
    writers.image_grid(1, tf.zeros([1, 4, 4, 3]))
    writers.histograms(1, [tf.Variable([1.0, 2.0])])
    writers.hparams(RunConfig())
    writers.close()
    assert not os.listdir(tmp_path)

"""`--deterministic` at the sizes users run: DenseNet-121 itself and the demo's model.

Two `--deterministic` runs used to drift apart from the first step for every model
bigger than densenet_bc_10_4: TensorFlow's AddN kernel, which sums the gradients a
tensor receives from its consumers, reorders its addends by thread timing, and
Keras' batch norm gave each of its inputs three such addends (densenet/batch_norm.py).
The race shows on some runs only, so one equal pair proves little. Here:

- the traced train step of DenseNet-121 (plain and memory-efficient, bf16) must not
  contain a sum of more than two gradient terms: that is what makes the order
  irrelevant, checked on the graph, independently of luck;
- the demo model's step, repeated in one process, must give bit-identical gradients
  and metrics every time (before the fix about every second repeat differed);
- whole runs of main.py, DenseNet-121 at 32 px and the demo's own flags: a run is
  killed while a checkpoint is being written and resumed; every checkpoint it shares
  with an uninterrupted run (the one before the kill, written by a second process
  with the same flags, and those after the resume) must be bit-identical.
"""

import collections
import re
import signal
import socket

import numpy as np
import pytest
import tensorflow as tf

import densenet
from main_runs import Started
from main_runs import checkpoints
from main_runs import differing_values
from main_runs import folder_bytes
from main_runs import run_main
from main_runs import start_main
from main_runs import write_pausing_launcher
from trainer.optimization import optimizers
from trainer.optimization import loss_scaling
from trainer.engine import step as step_lib


def _train_step(model):
    optimizer = optimizers.create_optimizer(
        'sgd',
        0.01,
        momentum=0.9,
        nesterov=False,
        weight_decay=1e-4,
        variables=model.trainable_variables,
        decayed_variables=step_lib.decayed_variables_of(model),
    )
    return step_lib.TrainStep(
        model,
        optimizer,
        loss_scaler=loss_scaling.LossScaler(),
        global_batch_size=4,
        weight_decay=1e-4,
        label_smoothing=0.1,
    )


def _sum_arities(graph_def):
    """How many AddN nodes of each input count, in a graph and every function it calls."""
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    return collections.Counter(
        sum(not name.startswith('^') for name in node.input) for node in nodes if node.op == 'AddN'
    )


@pytest.mark.parametrize('memory_efficient', [False, True], ids=['plain', 'memory_efficient'])
@pytest.mark.slow
def test_densenet121_step_sums_at_most_two_gradient_terms(memory_efficient):
    model = densenet.create_model(
        'densenet121',
        num_classes=10,
        image_size=32,
        precision='bfloat16',
        memory_efficient=memory_efficient,
    )
    train_step = _train_step(model)
    images = tf.TensorSpec([4, 32, 32, 3], tf.bfloat16)
    labels = tf.TensorSpec([4], tf.int32)
    graph = tf.function(train_step.gradients).get_concrete_function(images, labels).graph
    arities = _sum_arities(graph.as_graph_def())
    # 58 dense-layer and transition inputs of DenseNet-121 each receive a sum.
    assert sum(arities.values()) >= 58, arities
    assert max(arities) == 2, f'AddN nodes by number of inputs: {dict(arities)}'


def test_demo_model_gradients_repeat_bit_for_bit():
    # The demo's model and batch: before the fix about every second repeat differed.
    model = densenet.create_model('densenet_bc_22_12', num_classes=10, image_size=32)
    train_step = _train_step(model)
    images = tf.random.stateless_normal([64, 32, 32, 3], [1, 2])
    labels = tf.random.stateless_uniform([64], [3, 4], maxval=10, dtype=tf.int32)

    @tf.function
    def gradients():
        # With the squared gradient norm the loop logs (`TrainStep.grad_norm_sq`): a sum
        # over every gradient, which must not reorder its terms either.
        gradients, metrics = train_step.gradients(images, labels)
        return gradients, {**metrics, 'grad_norm_sq': train_step.grad_norm_sq(gradients)}

    first, first_metrics = gradients()
    for repeat in range(5):
        again, metrics = gradients()
        differing = [
            v.path
            for v, a, b in zip(model.trainable_variables, first, again)
            if not np.array_equal(a.numpy(), b.numpy())
        ]
        assert not differing, (
            f'repeat {repeat + 1}: {len(differing)} gradients differ: {differing[:4]}'
        )
        for key in ('l2', 'grad_norm_sq', 'cross_entropy'):
            assert metrics[key].numpy() == first_metrics[key].numpy(), key


_DENSENET121 = [
    '--model=densenet121',
    '--image_size=32',
    '--num_classes=10',
    '--batch_size=8',
    '--optimizer=sgd',
    '--nesterov',
    '--initial_lr=0.05',
    '--lr_sched=cosine',
    '--save_every_epoch=false',
    '--deterministic',
    '--seed=5',
]
# The demo's own flag file, shortened; its flags say --deterministic.
_DEMO = ['--flagfile=demo.cfg', '--prepare_digits_demo=false']


@pytest.mark.parametrize('flags', [_DENSENET121, _DEMO], ids=['densenet121', 'demo'])
@pytest.mark.slow
def test_killed_in_checkpoint_write_and_resumed_equals_uninterrupted(flags, digits_dir, tmp_path):
    common = [
        *flags,
        f'--dataset_dir={digits_dir}',
        '--train_steps=6',
        '--steps_per_loop=2',
        '--log_every_steps=2',
        '--checkpoint_every_steps=2',
        '--keep_checkpoints=10',
        '--export_last_step=false',  # Not what this test checks; an export costs seconds.
    ]
    straight_dir, killed_dir = str(tmp_path / 'straight'), str(tmp_path / 'killed')
    # The uninterrupted run goes on beside the killed one (bit-identical all the same).
    straight_run = start_main([*common, f'--model_dir={straight_dir}'])

    # Killed in the middle of writing ckpt-4: its files exist, the state file does not
    # name them; the restart resumes from ckpt-2 and writes ckpt-4 anew.
    launcher = write_pausing_launcher(tmp_path)
    run = Started(
        [*common, f'--model_dir={killed_dir}'], launcher=launcher, env={'PAUSE_CHECKPOINT_AT': '4'}
    )
    run.wait_for(r'PAUSED IN CHECKPOINT WRITE')
    # While it runs, a second trainer on its folder is refused before writing anything,
    # with the same flags or another seed (seen: both ran, both exited 0).
    before = folder_bytes(killed_dir)
    for second in ([], ['--seed=9']):
        refused = run_main([*common, f'--model_dir={killed_dir}', *second])
        assert refused.returncode == 1, refused.stderr[-3000:]
        assert re.fullmatch(
            rf'main\.py: error: --model_dir={re.escape(killed_dir)} is in use by pid '
            rf'{run.process.pid} on host {re.escape(socket.gethostname())}, training since '
            r'[-0-9: ]+UTC: wait for it to end or stop it, or use another --model_dir',
            refused.stderr.strip().splitlines()[-1],
        ), refused.stderr[-3000:]
    assert folder_bytes(killed_dir) == before
    # SIGKILLed, it leaves its lock file, but no lock: the restart below takes the folder.
    run.process.kill()
    assert run.finish() == -signal.SIGKILL
    assert sorted(checkpoints(killed_dir)) == [2]
    result = run_main([*common, f'--model_dir={killed_dir}'])
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'Resumed from' in result.stderr
    # The same input version wrote and resumed it: no input-change line.
    assert 'training input changed' not in result.stderr, result.stderr[-3000:]
    result = straight_run.result()
    assert result.returncode == 0, result.stderr[-3000:]

    straight, killed = checkpoints(straight_dir), checkpoints(killed_dir)
    assert sorted(straight) == sorted(killed) == [2, 4, 6]
    for step in (2, 4, 6):
        differing, total = differing_values(straight[step], killed[step])
        print(f'step {step}: {len(differing)} of {total} checkpoint values differ')
        assert total > 100 and not differing, (
            f'step {step}: {len(differing)} of {total} differ: {differing[:5]}'
        )

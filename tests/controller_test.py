"""The controller (`trainer/engine/controller.py`) and the actions (`trainer/actions.py`), each alone.

The controller is checked against a step-by-step simulation written here: an action
with cadence `Every(p, q, last_step=n)` must see exactly the steps that are multiples
of p or q, and n, whatever `steps_per_loop` is; no call runs more than
`steps_per_loop` steps or past a step some action asked for; an action's True stops
the run after that call. The train-scalar action is checked on real event files
against the interval's sums computed here.
"""

import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from main_runs import checkpoints
from main_runs import events
from trainer import actions
from trainer.artifacts import checkpoint as checkpoint_lib
from trainer.reporting import console
from trainer.reporting import summaries
from trainer.engine.controller import Action
from trainer.engine.controller import At
from trainer.engine.controller import Controller
from trainer.engine.controller import Every
from trainer.engine.controller import EveryCall


class _Recorder(Action):
    """Records every call it observes and the steps it is called at (its cadence's, as the
    controller decides); stops the run at `stop_at`."""

    def __init__(self, cadence, stop_at=None):
        self.cadence, self.stop_at = cadence, stop_at
        self.due_steps, self.calls, self.started = [], [], None

    def start(self, step):
        self.started = step

    def observe(self, output):
        self.calls.append((output.step, output.num_steps))

    def __call__(self, output):
        self.due_steps.append(output.step)
        return output.step == self.stop_at


def _train_fn(log):
    def train(num_steps):
        log.append(num_steps)
        return {'count': tf.constant(float(num_steps))}

    return train


@pytest.mark.parametrize('steps_per_loop', [1, 3, 7, 100])
@pytest.mark.parametrize('start', [0, 5, 11])
def test_each_action_sees_exactly_its_steps(steps_per_loop, start):
    last_step = 43
    cadences = [Every(4, last_step=last_step), Every(10, 6, last_step=last_step), Every(0)]
    recorders = [_Recorder(cadence) for cadence in cadences]
    calls = []
    controller = Controller(
        _train_fn(calls), steps_per_loop=steps_per_loop, last_step=last_step, actions=recorders
    )

    assert controller.run(start) == last_step

    # Step by step: the steps after `start` that each cadence names.
    after = range(start + 1, last_step + 1)
    assert recorders[0].due_steps == [s for s in after if s % 4 == 0 or s == last_step]
    expected = [s for s in after if s % 10 == 0 or s % 6 == 0 or s == last_step]
    assert recorders[1].due_steps == expected
    assert recorders[2].due_steps == []
    assert sum(calls) == last_step - start
    assert max(calls) <= steps_per_loop
    # Every action saw every call, and the same ones, starting where the run started.
    assert recorders[0].calls == recorders[1].calls == recorders[2].calls
    assert all(recorder.started == start for recorder in recorders)
    # A call ends at the first step after its start that any action asked for.
    wanted = set(recorders[0].due_steps) | set(recorders[1].due_steps)
    previous = start
    for step, num_steps in recorders[0].calls:
        assert step - num_steps == previous
        assert not any(previous < s < step for s in wanted), (previous, step)
        previous = step


@pytest.mark.parametrize('steps_per_loop', [1, 4, 100])
def test_at_and_every_call_cadences_are_called_at_exactly_their_steps(steps_per_loop):
    """`At` (an image-size change, the end of a frozen phase) stops a call at each of its
    steps and is called there only; `EveryCall` is called after every call and ends a
    call where its `stop_at` says (a profiler's window)."""
    at = _Recorder(At(3, 11, 12, 40))  # 40: past the last step, never reached
    window = _Recorder(EveryCall(stop_at=lambda step: 7 - step if step < 7 else None))
    calls = []
    Controller(
        _train_fn(calls), steps_per_loop=steps_per_loop, last_step=20, actions=[at, window]
    ).run(0)
    assert at.due_steps == [3, 11, 12]
    assert window.due_steps == [step for step, _ in window.calls]
    ends = [step for step, _ in window.calls]
    assert {3, 7, 11, 12, 20} <= set(ends)
    assert max(calls) <= steps_per_loop


@pytest.mark.parametrize(
    'every_epoch, at_last_step, expected',
    [(True, True, [10, 20, 25]), (True, False, [10, 20]), (False, True, [25]), (False, False, [])],
)
def test_export_declares_epoch_ends_and_the_last_step_as_its_cadence(
    every_epoch, at_last_step, expected
):
    export = actions.Export(
        model=None,
        model_dir='unused',
        steps_per_epoch=10,
        last_step=25,
        every_epoch=every_epoch,
        weight_average=None,
        export_kwargs={},
        class_names=None,
        at_last_step=at_last_step,
    )
    assert [step for step in range(1, 26) if export.cadence.due(step)] == expected


def test_an_action_that_returns_true_stops_the_run_after_that_call():
    calls = []
    stopper = _Recorder(Every(5), stop_at=10)
    later = _Recorder(Every(0))
    controller = Controller(
        _train_fn(calls), steps_per_loop=5, last_step=50, actions=[stopper, later]
    )
    assert controller.run(0) == 10
    # The actions after the one that asked to stop still ran for that call.
    assert later.calls[-1] == (10, 5)
    assert sum(calls) == 10


def test_a_run_already_at_its_last_step_trains_nothing():
    calls = []
    recorder = _Recorder(Every(1))
    assert (
        Controller(_train_fn(calls), steps_per_loop=5, last_step=8, actions=[recorder]).run(8) == 8
    )
    assert calls == [] and recorder.calls == []


def test_train_scalars_sum_the_calls_of_an_interval(tmp_path):
    writers = summaries.SummaryWriters(str(tmp_path))
    log = actions.LogTrainScalars(
        Every(6, last_step=20),
        writers,
        console.TrainConsole(total_steps=20, steps_per_epoch=10),
        lambda step: dict(learning_rate=0.1 * step, weight_norm=2.0, loss_scale=1.0),
        steps_per_epoch=10,
    )
    rng = np.random.default_rng(0)
    sums = []

    def train(num_steps):
        totals = _totals(rng, num_steps)
        sums.append((num_steps, totals))
        return totals

    controller = Controller(train, steps_per_loop=4, last_step=20, actions=[log])
    controller.run(0)
    writers.close()
    scalars = events(str(tmp_path), 'train', plugin='scalars')
    # Intervals end at 6, 12, 18 and the last step, 20; calls at 4, 6, 10, 12, ...
    assert sorted(scalars['loss']) == [6, 12, 18, 20]
    step, interval = 0, {}
    for num_steps, totals in sums:
        step += num_steps
        for key, value in totals.items():
            interval[key] = interval.get(key, 0.0) + float(value)
        interval['steps'] = interval.get('steps', 0) + num_steps
        if step in (6, 12, 18, 20):
            count = interval['count']
            loss = interval['cross_entropy'] / count + interval['l2'] / interval['steps']
            assert float(scalars['loss'][step]) == pytest.approx(loss, rel=1e-6)
            assert float(scalars['top1'][step]) == pytest.approx(interval['top1'] / count, rel=1e-6)
            assert float(scalars['learning_rate'][step]) == pytest.approx(0.1 * step, rel=1e-6)
            assert float(scalars['epoch'][step]) == pytest.approx(step / 10)
            assert math.isfinite(float(scalars['images_per_second'][step]))
            interval = {}


def _totals(rng, num_steps):
    count = 8.0 * num_steps
    return {
        'cross_entropy': tf.constant(rng.uniform(1, 3) * count),
        'top1': tf.constant(rng.uniform(0, 1) * count),
        'top5': tf.constant(rng.uniform(0, 1) * count),
        'count': tf.constant(count),
        'l2': tf.constant(rng.uniform(0, 0.1) * num_steps),
        # The loop's marker of the first non-finite step: not summed into the scalars.
        'first_nonfinite_step': tf.constant(-1.0),
    }


def test_checkpoints_are_saved_at_their_cadence(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
    state = checkpoint_lib.CheckpointState(
        model=model, optimizer=optimizer, directory=os.path.join(tmp_path, 'checkpoints'), keep=10
    )
    controller = Controller(
        lambda num_steps: {'count': 1.0},
        steps_per_loop=4,
        last_step=17,
        actions=[actions.SaveCheckpoint(Every(5, 7, last_step=17), state)],
    )
    controller.run(0)
    assert sorted(checkpoints(str(tmp_path))) == [5, 7, 10, 14, 15, 17]

"""The outer training loop: runs the train loop some steps at a time, then the actions.

The train loop (`trainer/engine/loop.py`) runs up to `--steps_per_loop` steps inside one
`tf.function` call. Each action declares when it is due (its `cadence`, as Orbit's
`ConditionalAction` separates the condition from the action); the controller asks
the cadences where to end each call and calls each action at its steps (log,
evaluate, export, checkpoint, stop on a signal, profile: `trainer/actions.py`). A
call never runs past a step at which some action is due, so an action sees the exact
step it asked for. A new action is a new `Action`, a new rule a new cadence; this
loop does not change.
"""

import dataclasses
import time
from typing import Callable, Mapping, Optional, Sequence


@dataclasses.dataclass(frozen=True)
class LoopOutput:
    """What one call of the train loop did."""

    step: int  # The global step after the call (steps done since the run began).
    num_steps: int  # Steps the call ran.
    totals: Mapping[str, float]  # Its metrics, summed over its steps and the replicas.
    seconds: float  # Its wall time, until its results were read back.


class Cadence:
    """When an action is due: which global steps, and how far the next one is."""

    def due(self, step: int) -> bool:
        """Whether the action runs after the call that ended at global step `step`."""
        raise NotImplementedError

    def steps_to_next(self, step: int) -> Optional[int]:
        """Steps from `step` to the next step at which the action is due, where the
        controller must end a call; None: no step it must end a call at."""
        raise NotImplementedError


class Every(Cadence):
    """The steps that are multiples of any of `periods`, and `last_step`.

    A period of 0 (or None) adds no steps.
    """

    def __init__(self, *periods: Optional[int], last_step: Optional[int] = None):
        self.periods = tuple(period for period in periods if period)
        self.last_step = last_step

    def due(self, step: int) -> bool:
        return step == self.last_step or any(step % period == 0 for period in self.periods)

    def steps_to_next(self, step: int) -> Optional[int]:
        return min((period - step % period for period in self.periods), default=None)


class At(Cadence):
    """The given steps (an image-size change, the end of a frozen phase)."""

    def __init__(self, *steps: int):
        self.steps = frozenset(steps)

    def due(self, step: int) -> bool:
        return step in self.steps

    def steps_to_next(self, step: int) -> Optional[int]:
        return min((each - step for each in self.steps if each > step), default=None)


class EveryCall(Cadence):
    """After every call of the train loop, ending calls where `stop_at(step)` says (the
    steps to the next boundary of a profiler's window), if given."""

    def __init__(self, stop_at: Optional[Callable[[int], Optional[int]]] = None):
        self.stop_at = stop_at

    def due(self, step: int) -> bool:
        return True

    def steps_to_next(self, step: int) -> Optional[int]:
        return self.stop_at(step) if self.stop_at else None


class Action:
    """Something done between calls of the train loop, at the steps of its `cadence`."""

    cadence: Cadence = EveryCall()

    def start(self, step: int) -> None:
        """Called once, before the first call, with the step the run starts (or resumes) at."""

    def observe(self, output: LoopOutput) -> None:
        """Called after every call, due or not (to sum an interval's metrics)."""

    def __call__(self, output: LoopOutput) -> Optional[bool]:
        """Called after a call that ended at a step of the cadence; True stops training."""
        raise NotImplementedError


class Controller:
    """Trains from a step to `last_step`, calling `actions` (in order) after every call.

    Args:
      train_fn: `train_fn(num_steps) -> totals`: runs that many steps (the train loop
        on the training iterator).
      steps_per_loop: the most steps one call runs.
      last_step: the global step at which training ends.
      actions: run after each call, in this order.
    """

    def __init__(
        self,
        train_fn: Callable[[int], Mapping],
        *,
        steps_per_loop: int,
        last_step: int,
        actions: Sequence[Action],
    ):
        self.train_fn = train_fn
        self.steps_per_loop = steps_per_loop
        self.last_step = last_step
        self.actions = list(actions)

    def run(self, step: int) -> int:
        """Trains from global step `step`; returns the step it stopped at."""
        for action in self.actions:
            action.start(step)
        while step < self.last_step:
            limits = [action.cadence.steps_to_next(step) for action in self.actions]
            num_steps = min([self.steps_per_loop, self.last_step - step] + [n for n in limits if n])
            began = time.time()
            totals = {key: float(value) for key, value in self.train_fn(num_steps).items()}
            step += num_steps
            output = LoopOutput(step, num_steps, totals, time.time() - began)
            stop = False
            for action in self.actions:
                action.observe(output)
                if action.cadence.due(step):
                    stop = bool(action(output)) or stop
            if stop:
                break
        return step

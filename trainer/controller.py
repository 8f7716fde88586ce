"""The outer training loop: runs the train loop some steps at a time, then the actions.

The train loop (`trainer/loop.py`) runs up to `--steps_per_loop` steps inside one
`tf.function` call. Between calls, the controller hands each action what the call
did; each action decides from its own cadence whether this step is one of its steps
(log, evaluate, export, checkpoint, stop on a signal, profile: `trainer/actions.py`).
A call never runs past a step at which some action is due, so an action sees the
exact step it asked for. A new cadence or a new action is a new `Action`; this loop
does not change.
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


class Action:
    """Something done between calls of the train loop at the steps of its cadence."""

    def steps_to_next(self, step: int) -> Optional[int]:
        """Steps from global step `step` to the next step at which this action is due.

        The controller ends its next call there. None: no step of its own.
        """
        return None

    def start(self, step: int) -> None:
        """Called once, before the first call, with the step the run starts (or resumes) at."""

    def __call__(self, output: LoopOutput) -> Optional[bool]:
        """Called after every call of the train loop; True stops training after it."""
        raise NotImplementedError


class Every:
    """A cadence: the steps that are multiples of any of `periods`, and `last_step`.

    A period of 0 (or None) adds no steps.
    """

    def __init__(self, *periods: Optional[int], last_step: Optional[int] = None):
        self.periods = tuple(period for period in periods if period)
        self.last_step = last_step

    def due(self, step: int) -> bool:
        return step == self.last_step or any(step % period == 0 for period in self.periods)

    def steps_to_next(self, step: int) -> Optional[int]:
        return min((period - step % period for period in self.periods), default=None)


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
            limits = [action.steps_to_next(step) for action in self.actions]
            num_steps = min([self.steps_per_loop, self.last_step - step] + [n for n in limits if n])
            began = time.time()
            totals = {key: float(value) for key, value in self.train_fn(num_steps).items()}
            step += num_steps
            output = LoopOutput(step, num_steps, totals, time.time() - began)
            stop = False
            for action in self.actions:
                stop = bool(action(output)) or stop
            if stop:
                break
        return step

"""What the controller does between calls of the train loop, each at its own cadence.

`trainer/run.py` lists them, in the order they run after a call:

  StopProfiler   the profiler trace ends right after the call of its last step;
  CheckFinite    a non-finite loss, or too many skipped steps, stops the run before
                 anything is written (`trainer/engine/nonfinite.py`);
  LogTrainScalars  TensorBoard's train scalars and the console line, every
                 --log_every_steps, at epoch ends and at the end;
  Evaluate       the validation split at epoch ends and at the end;
  Export         a SavedModel at epoch ends (--save_every_epoch) and at the last step;
  SaveCheckpoint every --checkpoint_every_steps, at epoch ends and at the end;
  StopOnSignal   after SIGTERM or SIGINT: a checkpoint at this step, then stop;
  StartProfiler  the trace begins before the call of its first step;
  ResizeImages   at each image-size change, the training input starts anew at the new size
                 (`trainer/image_sizes.py`).

Each declares its `cadence` (`trainer/engine/controller.py`); the controller calls it
at those steps only. Evaluation and export see the weight average when the run keeps one.
"""

import os
from typing import Callable, Dict, Optional

from absl import logging

from trainer.reporting import console
from trainer.optimization import ema
from trainer.artifacts import export
from trainer.reporting import summaries
from trainer.engine.controller import Action
from trainer.engine.controller import At
from trainer.engine.controller import Every
from trainer.engine.controller import EveryCall
from trainer.engine.controller import LoopOutput


class StopProfiler(Action):
    """Stops the `profiling.StepProfiler` trace after the last step it covers."""

    def __init__(self, profiler):
        self.profiler = profiler
        self.cadence = EveryCall(stop_at=profiler.steps_to_boundary)

    def __call__(self, output: LoopOutput):
        self.profiler.after_steps(output.step)


class StartProfiler(StopProfiler):
    """Starts the trace before the first step it covers (or at once, inside its window)."""

    def start(self, step):
        self.profiler.before_steps(step)

    def __call__(self, output: LoopOutput):
        self.profiler.before_steps(output.step)


class CheckFinite(Action):
    """`nonfinite.TrainingGuard.check` of every call, naming the newest checkpoint."""

    def __init__(self, guard, checkpoint_state):
        self.guard = guard
        self.checkpoint_state = checkpoint_state

    def __call__(self, output: LoopOutput):
        self.guard.check(
            output.totals,
            first_step=output.step - output.num_steps + 1,
            last_step=output.step,
            newest_checkpoint=self.checkpoint_state.latest,
        )


class LogTrainScalars(Action):
    """Sums the calls' metrics over an interval, then writes the train scalars and a line.

    Args:
      cadence: the steps that end an interval.
      writers: `summaries.SummaryWriters`.
      train_console: `console.TrainConsole`.
      extra_scalars: `extra_scalars(step) -> {'learning_rate', 'weight_norm',
        'loss_scale'}`, and optionally `image_size` (the interval's last step's training
        image side, written as it is): what the run's state says at the end of the
        interval.
      steps_per_epoch: for the `epoch` scalar.
    """

    def __init__(
        self,
        cadence: Every,
        writers: summaries.SummaryWriters,
        train_console: console.TrainConsole,
        extra_scalars: Callable[[int], Dict[str, float]],
        steps_per_epoch: int,
    ):
        self.cadence = cadence
        self.writers = writers
        self.train_console = train_console
        self.extra_scalars = extra_scalars
        self.steps_per_epoch = steps_per_epoch
        self._reset()

    def _reset(self):
        self.window, self.window_steps, self.window_seconds = {}, 0, 0.0

    def observe(self, output: LoopOutput):
        for key, value in output.totals.items():
            if not key.startswith('first_nonfinite'):
                self.window[key] = self.window.get(key, 0.0) + value
        self.window_steps += output.num_steps
        self.window_seconds += output.seconds

    def __call__(self, output: LoopOutput):
        extra = dict(self.extra_scalars(output.step))
        # Not a figure of the interval's sums: written as the run's state gives it.
        image_size = extra.pop('image_size', None)
        values = summaries.train_scalars(
            self.window,
            steps=self.window_steps,
            seconds=self.window_seconds,
            epoch=output.step / self.steps_per_epoch,
            **extra,
        )
        if image_size is not None:
            values['image_size'] = image_size
        self.writers.scalars('train', output.step, values)
        logging.info('%s', self.train_console.line(output.step, values))
        self._reset()


class Evaluate(Action):
    """Evaluates (`evaluate_fn() -> result dict`), logs and records the result.

    Records go to TensorBoard's eval run, to `eval_results.jsonl` (`record`) and, with
    --histograms, the weights' histograms. `last_result` is the newest result.
    """

    def __init__(
        self,
        cadence: Every,
        evaluate_fn: Callable[[int], Optional[Dict]],
        weight_average: Optional[ema.WeightAverage],
    ):
        self.cadence = cadence
        self.evaluate_fn = evaluate_fn
        self.weight_average = weight_average
        self.last_result = None

    def __call__(self, output: LoopOutput):
        self.last_result = self.evaluate_at(output.step) or self.last_result

    def evaluate_at(self, step: int) -> Optional[Dict]:
        with ema.averaged_weights(self.weight_average):
            return self.evaluate_fn(step)


class Export(Action):
    """Exports a SavedModel to `model_dir/saves/` at epoch ends and at the run's last step.

    At every epoch end with `every_epoch`, and at the last step with `at_last_step`, also
    where it ends inside an epoch (`--train_steps`): `saves/epoch_NNN`, or `epoch_NNN.FFFF`
    (`export.export_name`). At the start, the chief removes the unfinished exports
    (`.partial`, `.old`) that a run killed while exporting left, and logs their names.
    """

    def __init__(
        self,
        *,
        model,
        model_dir: str,
        steps_per_epoch: int,
        last_step: int,
        every_epoch: bool,
        weight_average: Optional[ema.WeightAverage],
        export_kwargs: Dict,
        class_names,
        at_last_step: bool = True,
    ):
        self.model = model
        self.model_dir = model_dir
        self.cadence = Every(
            steps_per_epoch if every_epoch else None,
            last_step=last_step if at_last_step else None,
        )
        self.steps_per_epoch = steps_per_epoch
        self.weight_average = weight_average
        self.export_kwargs = export_kwargs
        self.class_names = class_names

    def start(self, step):
        if not self.export_kwargs.get('chief', True):
            return
        for path in export.remove_unfinished(os.path.join(self.model_dir, 'saves')):
            logging.warning(
                'Removed %s: an unfinished export, left by a run stopped while writing it', path
            )

    def __call__(self, output: LoopOutput):
        name = export.export_name(output.step, self.steps_per_epoch)
        path = os.path.join(self.model_dir, 'saves', name)
        with ema.averaged_weights(self.weight_average):
            export.export_saved_model(
                self.model, path, class_names=self.class_names.get(), **self.export_kwargs
            )


class SaveCheckpoint(Action):
    """`checkpoint.CheckpointState.save` at the steps of `cadence`."""

    def __init__(self, cadence: Every, checkpoint_state):
        self.cadence = cadence
        self.checkpoint_state = checkpoint_state

    def __call__(self, output: LoopOutput):
        self.checkpoint_state.save(output.step)


class StopOnSignal(Action):
    """After SIGTERM or SIGINT, checkpoints this step and stops (`trainer/engine/preemption.py`)."""

    def __init__(self, watcher):
        self.watcher = watcher

    def __call__(self, output: LoopOutput):
        return self.watcher.checkpoint_and_stop(output.step)


class ResizeImages(Action):
    """At each step where the training image size changes, `on_change(step)` starts the
    training input anew from that step, at its size (`RunData.size_changes`)."""

    def __init__(self, change_steps, on_change: Callable[[int], None]):
        self.cadence = At(*change_steps)
        self.on_change = on_change

    def __call__(self, output: LoopOutput):
        self.on_change(output.step)

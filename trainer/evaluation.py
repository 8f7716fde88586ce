"""Evaluation over the whole validation split, and its record in `eval_results.jsonl`."""

import json
import os
from typing import Dict

from absl import logging
import tensorflow as tf

from trainer.engine import loop
from trainer.reporting import progress
from trainer.engine import step as step_lib
from trainer.run_data import RunData

# An evaluation runs in about this many loop calls so that its progress bar moves; a
# call costs one host round trip, nothing next to an evaluation's duration.
_EVAL_PROGRESS_CALLS = 20


def make_evaluator(strategy, data: RunData, predict_fn, *, show_progress: bool = True):
    """Returns `evaluate() -> metrics` over the whole validation split, each example once.

    The eval loop is traced once and reused for every evaluation of the run.
    """
    eval_loop = loop.make_eval_loop(
        strategy,
        lambda images, labels, weights: step_lib.eval_step(predict_fn, images, labels, weights),
    )
    distributed = data.eval_dataset()
    return lambda: _evaluate(eval_loop, distributed, data.eval_steps, show_progress=show_progress)


def _evaluate(eval_loop, distributed, eval_steps, *, show_progress=True) -> Dict[str, float]:
    iterator = iter(distributed)
    calls = max(1, -(-eval_steps // _EVAL_PROGRESS_CALLS))
    totals = {}
    with progress.ProgressBar('Evaluating', eval_steps, enabled=show_progress) as bar:
        while bar.done < eval_steps:
            num_steps = min(calls, eval_steps - bar.done)
            for key, value in eval_loop(iterator, tf.constant(num_steps)).items():
                totals[key] = totals.get(key, 0.0) + float(value)
            bar.advance(num_steps)
    count = max(totals['count'], 1.0)
    return {
        'top1': totals['top1'] / count,
        'top5': totals['top5'] / count,
        # The mean cross-entropy: not `loss`, which in training includes the L2 term.
        'cross_entropy': totals['cross_entropy'] / count,
        'num_examples': int(round(totals['count'])),
    }


def append_result(model_dir: str, result: Dict) -> None:
    """Adds `result` to `eval_results.jsonl`: one row per training step, the newest kept.

    The trainer evaluates before it checkpoints, so a run killed between the two repeats
    that evaluation when it resumes: its row replaces the earlier one of the same step,
    instead of standing twice in the file. `--only_eval` rows (they carry a `path`) are
    always added. A line cut short by a kill mid-write is dropped. The file is replaced
    atomically, so a kill now leaves the old file or the new one.
    """
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, 'eval_results.jsonl')
    lines = []
    if os.path.exists(path):
        with open(path) as stream:
            for line in stream:
                try:
                    row = json.loads(line)
                except ValueError:
                    logging.warning('Dropped a damaged line of %s: %r', path, line[:200])
                    continue
                if (
                    'path' not in result
                    and 'path' not in row
                    and row.get('step') == result.get('step')
                ):
                    continue
                lines.append(line.rstrip('\n'))
    lines.append(json.dumps(result))
    with open(path + '.tmp', 'w') as stream:
        stream.write('\n'.join(lines) + '\n')
    os.replace(path + '.tmp', path)


def epoch_from_results(model_dir: str, step: int):
    """The epoch of global step `step`, from the training run's own rows of
    `eval_results.jsonl` in `model_dir` (a row at an epoch's end, step = epoch x steps
    per epoch, gives the steps per epoch); None where there is none.

    So that `--only_eval` of a checkpoint reads no training records: counting the
    training split would be its only use of them.
    """
    path = os.path.join(model_dir, 'eval_results.jsonl')
    if not os.path.exists(path):
        return None
    with open(path) as stream:
        for line in stream:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            epoch, at = row.get('epoch'), row.get('step')
            if 'path' not in row and isinstance(epoch, int) and epoch > 0 and at:
                return epoch_value(step, at // epoch)
    return None


def epoch_value(step: int, steps_per_epoch: int):
    epoch, rest = divmod(step, steps_per_epoch)
    return epoch if rest == 0 else round(step / steps_per_epoch, 4)

"""Learning curves of a run as a PNG: top-1 and loss against epoch, train and validation.

    python -m trainer.tools.plot /runs/densenet121                   # -> /runs/densenet121/curves.png
    python -m trainer.tools.plot demo_run/model --output docs/demo_curves.png

Train figures come from the TensorBoard event files in `MODEL_DIR/logs/train` (each
point is the average over one log interval, on augmented images in training mode);
validation figures from `MODEL_DIR/eval_results.jsonl` (each point one full pass over
the validation split), or from `logs/eval` when that file is missing. Steps become
epochs through the train run's `epoch` scalar, or, for runs that did not write it, the
steps per epoch that the evaluations at whole epochs imply.

A command of its own rather than a flag of `main.py`: it reads files only, needs no
accelerator, and works on a run that is still going or was copied off the machine.
"""

import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Tuple

Series = Dict[int, float]  # step -> value


def read_scalars(logdir: str) -> Dict[str, Series]:
    """All scalars of one TensorBoard model_dir, by tag, then by step.

    TF2's `tf.summary.scalar` stores scalars as tensors; older writers as simple
    values: both are read. A step written twice (a run resumed from a checkpoint
    older than its last log line) keeps its later value.
    """
    if not os.path.isdir(logdir):
        return {}
    # Imported here: `--help` and argument errors should not wait for TensorBoard.
    from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
    from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top

    accumulator = event_accumulator.EventAccumulator(
        logdir,
        size_guidance={event_accumulator.TENSORS: 0, event_accumulator.SCALARS: 0},
    )
    accumulator.Reload()
    tags = accumulator.Tags()
    scalars: Dict[str, Series] = {}
    for tag in tags.get(event_accumulator.TENSORS, []):
        for event in accumulator.Tensors(tag):
            value = tensor_util.make_ndarray(event.tensor_proto)
            if value.size == 1 and value.dtype.kind in 'fiu':
                scalars.setdefault(tag, {})[event.step] = float(value.reshape(()))
    for tag in tags.get(event_accumulator.SCALARS, []):
        for event in accumulator.Scalars(tag):
            scalars.setdefault(tag, {})[event.step] = float(event.value)
    return scalars


def read_eval_results(model_dir: str) -> List[dict]:
    """The trainer's own evaluations from `eval_results.jsonl`, one per step, in order.

    Rows of `--only_eval` runs (they carry a `path`) and rows without an epoch are left
    out: they repeat or stand beside the training curve rather than extend it.
    """
    path = os.path.join(model_dir, 'eval_results.jsonl')
    if not os.path.exists(path):
        return []
    by_step = {}
    with open(path) as stream:
        for line in stream:
            line = line.strip()
            if not line:
                continue
            row = json.loads(line)
            if 'path' in row or row.get('epoch') is None or row.get('step') is None:
                continue
            by_step[row['step']] = row
    return [by_step[step] for step in sorted(by_step)]


def steps_to_epochs(train: Dict[str, Series], evals: List[dict]):
    """Returns `step -> epoch` and the x-axis label.

    Uses the train run's `epoch` scalar where it was written, and in between (or
    without it) the steps per epoch implied by the evaluations at whole epochs.
    Without either the x axis stays in steps.
    """
    per_epoch = [
        row['step'] / row['epoch']
        for row in evals
        if row['epoch'] and row['epoch'] == int(row['epoch'])
    ]
    epochs = train.get('epoch', {})
    if epochs:
        known = [(step, value) for step, value in epochs.items() if step and value]
        per_epoch += [step / value for step, value in known]
    if not per_epoch:
        return (lambda step: step), 'step'
    steps_per_epoch = per_epoch[-1]

    def to_epoch(step: int) -> float:
        return epochs[step] if step in epochs else step / steps_per_epoch

    return to_epoch, 'epoch'


def _points(series: Series, to_x) -> Tuple[List[float], List[float]]:
    steps = sorted(series)
    return [to_x(step) for step in steps], [series[step] for step in steps]


def plot_run(model_dir: str, output: str, *, title: Optional[str] = None) -> str:
    """Draws the run's curves into `output` (a PNG); returns the path.

    Raises:
      FileNotFoundError: the folder holds neither event files nor evaluations.
    """
    import matplotlib  # pylint: disable=g-import-not-at-top

    matplotlib.use('Agg')  # Files only: no display needed (servers, CI).
    from matplotlib import pyplot  # pylint: disable=g-import-not-at-top

    train = read_scalars(os.path.join(model_dir, 'logs', 'train'))
    evals = read_eval_results(model_dir)
    if not evals:
        eval_scalars = read_scalars(os.path.join(model_dir, 'logs', 'eval'))
        steps = sorted(eval_scalars.get('top1', {}))
        evals = [
            {
                'step': step,
                'top1': eval_scalars['top1'][step],
                'cross_entropy': eval_scalars['cross_entropy'][step],
            }
            for step in steps
            if step in eval_scalars.get('cross_entropy', {})
        ]
    if not train.get('top1') and not evals:
        raise FileNotFoundError(
            f'{model_dir} holds no training curves: no logs/train event files with scalars '
            'and no eval_results.jsonl'
        )
    to_x, x_label = steps_to_epochs(train, [row for row in evals if 'epoch' in row])
    eval_x = [row['epoch'] if 'epoch' in row else to_x(row['step']) for row in evals]

    figure, (top1_axes, loss_axes) = pyplot.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    if train.get('top1'):
        x, y = _points(train['top1'], to_x)
        top1_axes.plot(x, [100 * value for value in y], label='train (augmented)', color='C0')
    if evals:
        top1_axes.plot(
            eval_x, [100 * row['top1'] for row in evals], 'o-', label='validation', color='C1'
        )
        # The figure a run is reported by: its last evaluation (not its best, which
        # would be chosen on the validation set).
        top1_axes.annotate(
            f'{100 * evals[-1]["top1"]:.2f}%',
            (eval_x[-1], 100 * evals[-1]['top1']),
            textcoords='offset points',
            xytext=(0, -16),
            ha='right',
            color='C1',
        )
    top1_axes.set_ylabel('top-1 accuracy (%)')
    # The training loss logged as `cross_entropy` compares like with like; older runs
    # logged only `loss`, which includes the L2 term.
    train_loss = train.get('cross_entropy') or train.get('loss')
    if train_loss:
        x, y = _points(train_loss, to_x)
        loss_axes.plot(x, y, label='train (augmented)', color='C0')
    if evals:
        # Rows of versions before the figure's rename call the same cross-entropy `loss`.
        validation = [row.get('cross_entropy', row.get('loss')) for row in evals]
        loss_axes.plot(eval_x, validation, 'o-', label='validation', color='C1')
    loss_axes.set_ylabel('cross-entropy loss')
    loss_axes.set_yscale('log')
    for axes in (top1_axes, loss_axes):
        axes.set_xlabel(x_label)
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.suptitle(title or os.path.normpath(model_dir))
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    figure.savefig(output)
    pyplot.close(figure)
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m trainer.tools.plot',
        description='Plots train and validation top-1 and loss against epoch for a run.',
    )
    parser.add_argument('model_dir', help='the --model_dir of a run')
    parser.add_argument('--output', help='PNG to write (default: MODEL_DIR/curves.png)')
    parser.add_argument('--title', help='figure title (default: the folder name)')
    args = parser.parse_args(argv)
    if not os.path.isdir(args.model_dir):
        parser.exit(1, f'{parser.prog}: error: {args.model_dir} is not a folder\n')
    output = args.output or os.path.join(args.model_dir, 'curves.png')
    try:
        plot_run(args.model_dir, output, title=args.title)
    except FileNotFoundError as error:
        parser.exit(1, f'{parser.prog}: error: {error}\n')
    print(f'Wrote {output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

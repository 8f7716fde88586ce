"""Progressive resizing on the digits demo: top-1 and wall time against the fixed-size demo.

  python bench/progressive.py                 # 3 repeats of both (about 15 min on 2 cores)
  python bench/progressive.py --repeats=1 --epochs=2

Each repeat trains the bundled demo (`demo.cfg`: DenseNet-BC-22 on scikit-learn's
digits, 12 epochs at 32 px) twice, in processes of their own started as a user starts
them (`python main.py --flagfile=demo.cfg ...`), one after the other and in
alternating order, so that load from other processes falls on both alike:

- fixed: the demo as it ships;
- progressive: the same run with `--min_image_size` and its ramp (default: 16 px for
  epochs 1-8, 32 px from epoch 9 on; two sizes, so one trace more than the fixed run).

Both use the repeat's seed (1, 2, 3, ...): the pairs differ only in the image sizes.
The wall time is the whole process's, start-up, tracing, per-epoch evaluations and
the export included: what a user waits for. Then each run's final checkpoint is
evaluated again at `--larger_eval_size` (`--only_eval --eval_image_size`, the
FixRes-style evaluation above the training size), against its own evaluation at the
training size.

The last line is `RESULT {json}`: per repeat the top-1 and seconds of both, the
larger-size top-1 of both, and the medians; `top1_gap` is the median of fixed minus
progressive top-1 (the issue's bound: <= 0.005) and `time_ratio` the median of
progressive over fixed seconds (target: < 1).
"""

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, 'main.py')

flags.DEFINE_integer('repeats', 3, 'Pairs of runs (seeds 1, 2, ...).')
flags.DEFINE_integer('epochs', 12, "Epochs of both runs (the demo's 12).")
flags.DEFINE_integer('min_image_size', 16, 'The progressive run\'s first size.')
flags.DEFINE_integer('image_size_step', 16, 'Its size step.')
flags.DEFINE_integer('resize_start_epoch', 7, 'Its last epoch (from 0) at the first size.')
flags.DEFINE_integer('resize_end_epoch', 8, 'Its first epoch (from 0) at the final size.')
flags.DEFINE_integer(
    'larger_eval_size', 40, 'The second evaluation size of every final checkpoint.'
)
flags.DEFINE_string('work_dir', '', 'Where the runs write (default: a temporary folder).')
FLAGS = flags.FLAGS

_RESULT_LINE = re.compile(r'Validation top-1 ([\d.]+), top-5 ([\d.]+), loss ([\d.]+)')
_TRACED = re.compile(r'Traced the train loop for (\d+)x\d+ images')


def _main_py(args):
    """Runs main.py to its end; returns (seconds, stdout + stderr). Raises on failure."""
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, MAIN, *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - began
    if done.returncode:
        raise RuntimeError(f'main.py {" ".join(args)} failed:\n{done.stderr[-3000:]}')
    return seconds, done.stdout + done.stderr


def _top1(output: str) -> float:
    found = _RESULT_LINE.findall(output)
    if not found:
        raise RuntimeError(f'no result line in:\n{output[-2000:]}')
    return float(found[-1][0])


def _train(variant: str, seed: int, data_dir: str, work_dir: str):
    model_dir = os.path.join(work_dir, f'{variant}_seed{seed}')
    args = [
        f'--flagfile={os.path.join(ROOT, "demo.cfg")}',
        '--prepare_digits_demo=false',
        f'--dataset_dir={data_dir}',
        f'--model_dir={model_dir}',
        f'--epochs={FLAGS.epochs}',
        f'--seed={seed}',
    ]
    if variant == 'progressive':
        args += [
            f'--min_image_size={FLAGS.min_image_size}',
            f'--image_size_step={FLAGS.image_size_step}',
            f'--resize_start_epoch={FLAGS.resize_start_epoch}',
            f'--resize_end_epoch={FLAGS.resize_end_epoch}',
        ]
    seconds, output = _main_py(args)
    traced = [int(size) for size in _TRACED.findall(output)]
    # The final checkpoint again, at a size above the training size.
    _, larger = _main_py(
        [
            f'--flagfile={os.path.join(model_dir, "flags.cfg")}',
            f'--only_eval={os.path.join(model_dir, "checkpoints")}',
            f'--eval_image_size={FLAGS.larger_eval_size}',
        ]
    )
    figures = {
        'top1': _top1(output),
        'seconds': round(seconds, 1),
        'traced_sizes': traced,
        f'top1_at_{FLAGS.larger_eval_size}': _top1(larger),
    }
    print(f'{variant} seed {seed}: {figures}', flush=True)
    return figures


def main(argv):
    del argv
    sys.path.insert(0, ROOT)
    from input_pipeline import digits  # noqa: PLC0415  (TensorFlow loads here)

    work_dir = FLAGS.work_dir or tempfile.mkdtemp(prefix='progressive_')
    data_dir = os.path.join(work_dir, 'data')
    digits.ensure_digits_dataset(data_dir)  # Written once, outside the timed runs.
    runs = {'fixed': [], 'progressive': []}
    for repeat in range(FLAGS.repeats):
        order = ('fixed', 'progressive') if repeat % 2 == 0 else ('progressive', 'fixed')
        for variant in order:
            runs[variant].append(_train(variant, repeat + 1, data_dir, work_dir))

    def median(variant, key):
        return statistics.median(run[key] for run in runs[variant])

    larger = f'top1_at_{FLAGS.larger_eval_size}'
    gaps = [f['top1'] - p['top1'] for f, p in zip(runs['fixed'], runs['progressive'])]
    ratios = [p['seconds'] / f['seconds'] for f, p in zip(runs['fixed'], runs['progressive'])]
    result = {
        'runs': runs,
        'fixed_top1_median': median('fixed', 'top1'),
        'progressive_top1_median': median('progressive', 'top1'),
        'fixed_seconds_median': median('fixed', 'seconds'),
        'progressive_seconds_median': median('progressive', 'seconds'),
        'top1_gap': statistics.median(gaps),
        'time_ratio': round(statistics.median(ratios), 3),
        f'fixed_{larger}_median': median('fixed', larger),
        f'progressive_{larger}_median': median('progressive', larger),
        'larger_eval_gain_median': statistics.median(
            run[larger] - run['top1'] for variant in runs for run in runs[variant]
        ),
        'settings': {
            'epochs': FLAGS.epochs,
            'progressive': [
                FLAGS.min_image_size,
                FLAGS.image_size_step,
                FLAGS.resize_start_epoch,
                FLAGS.resize_end_epoch,
            ],
            'larger_eval_size': FLAGS.larger_eval_size,
        },
    }
    print('RESULT ' + json.dumps(result))


if __name__ == '__main__':
    app.run(main)

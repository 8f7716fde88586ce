"""What `--deterministic` costs: training images/s through main.py with and without it.

  python bench/deterministic.py                               # DenseNet-121, 64 px, batch 16
  python bench/deterministic.py --model=densenet_bc_22_12 --image_size=32 --batch_size=64 \
      --data=digits                                           # the demo's model, real JPEGs
  python bench/deterministic.py --portable ...                # the same CPU bits anywhere

`--deterministic` turns on TensorFlow's op determinism (deterministic kernels, no
clock reads in the loop) and fixes the seeds; the model's own gradient sums are exact
either way (densenet/batch_norm.py). Under op determinism tf.data also runs a parallel
map whose function is stateful one element at a time: `--data=digits` trains on the
bundled digits as JPEG TFRecords, so that the input pipeline's share is measured too;
`--data=synthetic` measures the model alone. Each round runs main.py twice on synthetic data,
once with and once without the flag, alternating which goes first, so that load from
other processes falls on both alike. A run logs images/s per window of
`--steps_per_loop` steps; the first window (tracing) is dropped and the rest are
pooled. The figures are medians over `--rounds`.

With `--portable` both runs are deterministic and the second is made under
`trainer/cpu_isa.PORTABLE_ENV` (oneDNN's ops off, its kernels capped at AVX, one
intra-op thread), under which a run's bits do not depend on the core count or the ISA
(not on every CPU model: `trainer/devices/cpu_isa.py`): what that
costs against a deterministic run as TensorFlow sets itself up. The cost grows with the
cores a machine has, since the portable run uses one per op.

The last line is `RESULT {json}` with `ratio` (deterministic over default images/s, or
portable over deterministic with `--portable`) and both medians.
"""

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from trainer.devices import cpu_isa  # The repository's: ROOT is on the path above.

flags.DEFINE_string('model', 'densenet121', 'Model name.')
flags.DEFINE_integer('image_size', 64, 'Input side in pixels.')
flags.DEFINE_integer('batch_size', 16, 'Per-replica batch.')
flags.DEFINE_integer('steps_per_loop', 5, 'Steps per logged window.')
flags.DEFINE_integer('windows', 3, 'Timed windows per run, after the tracing one.')
flags.DEFINE_integer('rounds', 3, 'Pairs of runs.')
flags.DEFINE_string('precision', 'float32', 'Compute precision of both runs.')
flags.DEFINE_enum('data', 'synthetic', ['synthetic', 'digits'], 'Training data.')
flags.DEFINE_bool(
    'portable', False, 'Compare deterministic runs without and with cpu_isa.PORTABLE_ENV.'
)
FLAGS = flags.FLAGS


def _data_flags(folder: str):
    if FLAGS.data == 'synthetic':
        return ['--synthetic_data', '--num_classes=1000']
    return ['--prepare_digits_demo', f'--dataset_dir={folder}', '--num_classes=10']


def _images_per_second(contender: bool, data_dir: str) -> float:
    """The median images/s of one main.py run's windows after the first.

    `contender` is `--deterministic`, or with `--portable` whether the (deterministic)
    run is made under `cpu_isa.PORTABLE_ENV`.
    """
    deterministic = contender or FLAGS.portable
    env = {**os.environ, **cpu_isa.PORTABLE_ENV} if FLAGS.portable and contender else None
    with tempfile.TemporaryDirectory() as model_dir:
        steps = FLAGS.steps_per_loop * (FLAGS.windows + 1)
        command = [
            sys.executable,
            os.path.join(ROOT, 'main.py'),
            *_data_flags(data_dir),
            f'--model={FLAGS.model}',
            f'--image_size={FLAGS.image_size}',
            f'--batch_size={FLAGS.batch_size}',
            f'--precision={FLAGS.precision}',
            f'--train_steps={steps}',
            f'--steps_per_loop={FLAGS.steps_per_loop}',
            f'--log_every_steps={FLAGS.steps_per_loop}',
            f'--checkpoint_every_steps={10 * steps}',
            '--seed=1',
            f'--deterministic={str(deterministic).lower()}',
            f'--model_dir={model_dir}',
        ]
        result = subprocess.run(
            command, check=False, cwd=ROOT, capture_output=True, text=True, env=env
        )
        if result.returncode:
            raise RuntimeError(f'{" ".join(command)} failed:\n{result.stderr[-3000:]}')
    rates = [float(v) for v in re.findall(r'([\d.]+) images/s', result.stderr)]
    return statistics.median(rates[1:])


def main(argv):
    del argv
    runs = {True: [], False: []}
    name = 'portable' if FLAGS.portable else 'deterministic'
    data_dir = tempfile.mkdtemp()
    for round_index in range(FLAGS.rounds):
        order = (False, True) if round_index % 2 == 0 else (True, False)
        for deterministic in order:
            runs[deterministic].append(_images_per_second(deterministic, data_dir))
            print(
                f'round {round_index + 1}: {name}={deterministic} '
                f'{runs[deterministic][-1]:.1f} images/s',
                flush=True,
            )
    default, deterministic = (statistics.median(runs[key]) for key in (False, True))
    # With --portable: the deterministic run as TensorFlow sets itself up, and under the pin.
    first, second = (
        ('deterministic', 'portable') if FLAGS.portable else ('default', 'deterministic')
    )
    result = {
        'model': FLAGS.model,
        'image_size': FLAGS.image_size,
        'batch_size': FLAGS.batch_size,
        'precision': FLAGS.precision,
        'data': FLAGS.data,
        f'images_per_second_{first}': round(default, 2),
        f'images_per_second_{second}': round(deterministic, 2),
        'ratio': round(deterministic / default, 3),
        'rounds': FLAGS.rounds,
        'machine': f'{platform.machine()}, {os.cpu_count()} cores',
    }
    print('RESULT ' + json.dumps(result), flush=True)


if __name__ == '__main__':
    app.run(main)

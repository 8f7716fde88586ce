"""Train-step speed and memory: our loop against Keras `model.fit`, and `--memory_efficient`.

  python bench/train_step.py                                   # the full run (slow on a CPU)
  python bench/train_step.py --image_size=64 --memory_image_size=64 --steps=2 --repeats=2

Every measurement runs in a child process of its own (a fresh TensorFlow, its own peak
memory), on the same synthetic batch, model, batch size, optimizer (SGD, momentum 0.9,
no weight decay: `model.fit` would not add our L2 term) and precision:

- throughput, images/s (median over `--repeats` windows of `--steps` steps, after a
  warm-up round that includes tracing): our loop with one step per `tf.function`
  call and with `--steps_per_loop` steps per call, against Keras `model.fit`
  (`steps_per_execution=1`, its default); then both again with `--jit_compile`. The
  contenders run in turns, window by window, in one child process (`_child_versus`),
  so that load from other processes falls on all of them alike.
- memory: the peak resident memory a train step adds (the child's max RSS minus its
  RSS once model and optimizer are built), plain model against `--memory_efficient`,
  at `--memory_image_size` and `--memory_batch_size`, one child each; and the time per
  step of both, measured in one more child that alternates a plain and a
  memory-efficient step `--repeats` times and takes each one's median, so that load
  from other processes on a shared machine falls on both alike.

The last line is `RESULT {json}` with `vs_fit` (our loop with steps_per_loop over
fit), `vs_fit_xla` (both with XLA), `memory_ratio` and `time_ratio` (memory-efficient
over plain) and the raw figures. The targets: vs_fit >= 1.0, memory_ratio <= 0.5,
time_ratio <= 1.25 (README.md, "Measured results"). This file may use `model.fit`;
the trainer never does.
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

flags.DEFINE_string('model', 'densenet121', 'Model name, as main.py --model.')
flags.DEFINE_integer('num_classes', 1000, 'Classes.')
flags.DEFINE_integer('image_size', 128, 'Image side for the throughput runs.')
flags.DEFINE_integer('batch_size', 32, 'Batch for the throughput runs.')
flags.DEFINE_integer('memory_image_size', 224, 'Image side for the memory runs.')
flags.DEFINE_integer('memory_batch_size', 32, 'Batch for the memory runs.')
flags.DEFINE_enum(
    'precision',
    'float32',
    ['float32', 'bfloat16', 'float16'],
    'Compute dtype for every run (float32 on CPUs without bf16 units, where bf16 is slower).',
)
flags.DEFINE_integer('steps', 4, 'Steps per timed window.')
flags.DEFINE_integer('repeats', 3, 'Timed windows per measurement (the median is reported).')
flags.DEFINE_integer('steps_per_loop', 4, 'Steps per tf.function call in the looped run.')
flags.DEFINE_list(
    'parts',
    ['throughput', 'xla', 'memory'],
    'Which measurements: throughput (ours vs fit), xla (both with XLA), memory, and '
    'loop (ours only, without and with XLA: bench/gpu.sh).',
)
flags.DEFINE_integer('child_timeout', 3600, 'Seconds before a measurement is abandoned.')
# Set by the parent for a child.
flags.DEFINE_string('child', None, 'Internal: run one measurement (ours, versus, memory, time).')
flags.DEFINE_bool('jit_compile', False, 'Internal: XLA for the child.')
flags.DEFINE_bool('memory_efficient', False, 'Internal: memory-efficient model for the child.')
flags.DEFINE_integer('loop_steps', 1, 'Internal: steps per tf.function call for the child.')

FLAGS = flags.FLAGS


def _rss_bytes() -> int:
    with open('/proc/self/statm') as stream:
        return int(stream.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux.


def _build(image_size: int, memory_efficient: bool):
    """Model, optimizer and the synthetic dataset, as the trainer builds them."""
    import keras  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    import densenet  # pylint: disable=g-import-not-at-top
    from input_pipeline import dataset as dataset_lib  # pylint: disable=g-import-not-at-top

    keras.utils.set_random_seed(0)
    model = densenet.create_model(
        FLAGS.model,
        num_classes=FLAGS.num_classes,
        image_size=image_size,
        precision=FLAGS.precision,
        memory_efficient=memory_efficient,
    )
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    optimizer.build(model.trainable_variables)
    dtype = tf.float32 if FLAGS.precision == 'float32' else tf.as_dtype(FLAGS.precision)
    return model, optimizer, dtype, dataset_lib


def _synthetic(dataset_lib, dtype, image_size: int, batch_size: int):
    """The synthetic batches every measurement trains on (`--synthetic_data`'s)."""
    return dataset_lib.synthetic_dataset(
        batch_size=batch_size, image_size=image_size, num_classes=FLAGS.num_classes, dtype=dtype
    )


def _our_loop(model, optimizer, batch_size: int, jit_compile: bool):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    from trainer import loop  # pylint: disable=g-import-not-at-top
    from trainer import precision  # pylint: disable=g-import-not-at-top
    from trainer import step as step_lib  # pylint: disable=g-import-not-at-top

    train_step = step_lib.TrainStep(
        model,
        optimizer,
        loss_scaler=precision.create_loss_scaler(FLAGS.precision),
        global_batch_size=batch_size,
        weight_decay=0.0,
    )
    return loop.make_train_loop(tf.distribute.get_strategy(), train_step, jit_compile=jit_compile)


def _time_our_loop(train_loop, iterator, loop_steps: int):
    """Seconds per step of `--repeats` windows of `--steps` steps, after a warm-up."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    calls = max(1, FLAGS.steps // loop_steps)
    float(train_loop(iterator, tf.constant(loop_steps))['count'])  # Trace and warm up.
    float(train_loop(iterator, tf.constant(loop_steps))['count'])
    per_step = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        for _ in range(calls):
            float(train_loop(iterator, tf.constant(loop_steps))['count'])  # Waits for it.
        per_step.append((time.perf_counter() - start) / (calls * loop_steps))
    return per_step


def _child_ours():
    model, optimizer, dtype, dataset_lib = _build(FLAGS.image_size, False)
    data = _synthetic(dataset_lib, dtype, FLAGS.image_size, FLAGS.batch_size)
    train_loop = _our_loop(model, optimizer, FLAGS.batch_size, FLAGS.jit_compile)
    per_step = _time_our_loop(train_loop, iter(data), FLAGS.loop_steps)
    return {'images_per_second': FLAGS.batch_size / statistics.median(per_step)}


def _child_versus():
    """Our loop and `model.fit` timed in turns in one process, window by window.

    Run one after the other in separate processes, a drift in the machine's load
    (other jobs, thermal state) lands on one of them only; in turns it lands on both.
    Each contender has its own model, built from the same seed, on the same batches.
    Per round: `--steps` steps of our loop at `--loop_steps` steps per call, the same
    at one step per call, and one `model.fit` epoch of `--steps` steps (timed from its
    epoch callbacks, so fit's own set-up is left out).
    """
    import keras  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    keras.utils.set_random_seed(0)
    model, optimizer, dtype, dataset_lib = _build(FLAGS.image_size, False)
    train_loop = _our_loop(model, optimizer, FLAGS.batch_size, FLAGS.jit_compile)
    iterator = iter(_synthetic(dataset_lib, dtype, FLAGS.image_size, FLAGS.batch_size))
    keras.utils.set_random_seed(0)
    fit_model, fit_optimizer, _, _ = _build(FLAGS.image_size, False)
    fit_model.compile(
        optimizer=fit_optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=FLAGS.jit_compile,
    )
    fit_data = _synthetic(dataset_lib, dtype, FLAGS.image_size, FLAGS.batch_size)

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.start

    def ours(loop_steps):
        start = time.perf_counter()
        for _ in range(max(1, FLAGS.steps // loop_steps)):
            float(train_loop(iterator, tf.constant(loop_steps))['count'])  # Waits for it.
        return (time.perf_counter() - start) / (max(1, FLAGS.steps // loop_steps) * loop_steps)

    def fit():
        timer = Timer()
        fit_model.fit(fit_data, epochs=1, steps_per_epoch=FLAGS.steps, callbacks=[timer], verbose=0)
        return timer.seconds / FLAGS.steps

    contenders = {'ours_loop': lambda: ours(FLAGS.loop_steps), 'ours': lambda: ours(1), 'fit': fit}
    seconds = {name: [] for name in contenders}
    for repeat in range(FLAGS.repeats + 1):  # The first round traces and warms up.
        for name, run in contenders.items():
            per_step = run()
            if repeat:
                seconds[name].append(per_step)
    return {
        f'{name}_images_per_second': FLAGS.batch_size / statistics.median(values)
        for name, values in seconds.items()
    }


def _memory_loop(memory_efficient: bool):
    """(loop, iterator) of one-step calls at the memory runs' size."""
    model, optimizer, dtype, dataset_lib = _build(FLAGS.memory_image_size, memory_efficient)
    data = _synthetic(dataset_lib, dtype, FLAGS.memory_image_size, FLAGS.memory_batch_size)
    iterator = iter(data)
    next(iterator)  # The input pipeline's own buffers belong to the baseline.
    return _our_loop(model, optimizer, FLAGS.memory_batch_size, False), iterator


def _child_memory():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    train_loop, iterator = _memory_loop(FLAGS.memory_efficient)
    baseline = _rss_bytes()
    for _ in range(2):  # Tracing, then a step like every later one.
        float(train_loop(iterator, tf.constant(1))['count'])
    return {'baseline_bytes': baseline, 'added_bytes': _peak_rss_bytes() - baseline}


def _child_time():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    loops = [_memory_loop(memory_efficient) for memory_efficient in (False, True)]
    seconds = [[], []]
    for repeat in range(FLAGS.repeats + 1):  # The first round traces and warms up.
        for which, (train_loop, iterator) in enumerate(loops):
            start = time.perf_counter()
            float(train_loop(iterator, tf.constant(1))['count'])
            if repeat:
                seconds[which].append(time.perf_counter() - start)
    plain, efficient = (statistics.median(s) for s in seconds)
    return {'plain_step_seconds': plain, 'efficient_step_seconds': efficient}


def _run_child(mode: str, **options) -> dict:
    """Runs one measurement in a fresh process; returns its JSON result."""
    args = [
        sys.executable,
        os.path.abspath(__file__),
        f'--child={mode}',
        f'--model={FLAGS.model}',
        f'--num_classes={FLAGS.num_classes}',
        f'--image_size={FLAGS.image_size}',
        f'--batch_size={FLAGS.batch_size}',
        f'--memory_image_size={FLAGS.memory_image_size}',
        f'--memory_batch_size={FLAGS.memory_batch_size}',
        f'--precision={FLAGS.precision}',
        f'--steps={FLAGS.steps}',
        f'--repeats={FLAGS.repeats}',
    ]
    args += [f'--{name}={value}' for name, value in options.items()]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
    start = time.time()
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=FLAGS.child_timeout, env=env
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith('CHILD ')]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f'{mode} {options} failed:\n{result.stderr[-3000:]}')
    figures = json.loads(lines[-1][len('CHILD ') :])
    print(f'{mode} {options}: {figures} ({time.time() - start:.0f} s)', flush=True)
    return figures


def _parent() -> dict:
    parts = set(FLAGS.parts)
    result = {
        'model': FLAGS.model,
        'precision': FLAGS.precision,
        'image_size': FLAGS.image_size,
        'batch_size': FLAGS.batch_size,
        'steps_per_loop': FLAGS.steps_per_loop,
    }
    if 'throughput' in parts:
        versus = _run_child('versus', loop_steps=FLAGS.steps_per_loop)
        ours_1, ours_n, fit = (
            versus[f'{name}_images_per_second'] for name in ('ours', 'ours_loop', 'fit')
        )
        result.update(
            ours_images_per_second=round(ours_1, 2),
            ours_loop_images_per_second=round(ours_n, 2),
            fit_images_per_second=round(fit, 2),
            vs_fit=round(ours_n / fit, 3),
            vs_fit_one_step_per_call=round(ours_1 / fit, 3),
        )
    if 'xla' in parts:
        versus = _run_child('versus', loop_steps=FLAGS.steps_per_loop, jit_compile=True)
        ours_xla, fit_xla = versus['ours_loop_images_per_second'], versus['fit_images_per_second']
        result.update(
            ours_xla_images_per_second=round(ours_xla, 2),
            fit_xla_images_per_second=round(fit_xla, 2),
            vs_fit_xla=round(ours_xla / fit_xla, 3),
        )
    if 'loop' in parts:
        plain = _run_child('ours', loop_steps=FLAGS.steps_per_loop)['images_per_second']
        xla = _run_child('ours', loop_steps=FLAGS.steps_per_loop, jit_compile=True)
        result.update(
            ours_loop_images_per_second=round(plain, 1),
            ours_xla_images_per_second=round(xla['images_per_second'], 1),
            xla_speedup=round(xla['images_per_second'] / plain, 3),
        )
    if 'memory' in parts:
        plain = _run_child('memory', memory_efficient=False)
        efficient = _run_child('memory', memory_efficient=True)
        times = _run_child('time')
        result.update(
            memory_image_size=FLAGS.memory_image_size,
            memory_batch_size=FLAGS.memory_batch_size,
            plain_added_mib=round(plain['added_bytes'] / 2**20),
            efficient_added_mib=round(efficient['added_bytes'] / 2**20),
            plain_step_seconds=round(times['plain_step_seconds'], 3),
            efficient_step_seconds=round(times['efficient_step_seconds'], 3),
            memory_ratio=round(efficient['added_bytes'] / plain['added_bytes'], 3),
            time_ratio=round(times['efficient_step_seconds'] / times['plain_step_seconds'], 3),
        )
    for key in ('vs_fit', 'vs_fit_xla', 'memory_ratio', 'time_ratio'):
        result.setdefault(key, None)
    return result


def main(argv):
    del argv
    if FLAGS.child:
        figures = {
            'ours': _child_ours,
            'memory': _child_memory,
            'time': _child_time,
            'versus': _child_versus,
        }[FLAGS.child]()
        print('CHILD ' + json.dumps(figures), flush=True)
        return
    print('RESULT ' + json.dumps(_parent()), flush=True)


if __name__ == '__main__':
    app.run(main)

"""Train-step speed and memory: our loop against Keras `model.fit`, and `--memory_efficient`.

  python bench/train_step.py                                   # the full run (slow on a CPU)
  python bench/train_step.py --image_size=64 --memory_image_size=64 --steps=2 --repeats=2
  python bench/train_step.py --parts=overhead                  # the loop's own cost, seconds

Every measurement runs in a child process of its own (a fresh TensorFlow, its own peak
memory), on the same synthetic batch, model, batch size, optimizer (SGD, momentum 0.9,
no weight decay: `model.fit` would not add our L2 term) and precision:

- throughput, images/s (median over `--repeats` windows of `--steps` steps, after a
  warm-up round that includes tracing): our loop with one step per `tf.function`
  call and with `--steps_per_loop` steps per call, against Keras `model.fit` at
  `steps_per_execution=1` (its default) and at `steps_per_execution=--steps_per_loop`
  (fit's best configuration: as many steps per `tf.function` call as ours); then
  again with `--jit_compile`. The contenders run in turns, window by window, in one
  child process (`_child_versus`), so that load from other processes falls on all of
  them alike.
- overhead: the same four contenders on a tiny DenseNet-BC (`--overhead_model`) at
  `--overhead_image_size` pixels, batch `--overhead_batch_size`, `--overhead_steps`
  steps per window: there the model's compute is small and what the loop itself does
  per step (Python round trips, metrics, bookkeeping ops) is most of the time. On
  DenseNet-121 a CPU spends seconds per step in convolutions, which hides all of it.
- memory: the peak resident memory a train step adds (the child's max RSS minus its
  RSS once model and optimizer are built), plain model against `--memory_efficient`,
  at `--memory_image_size` and `--memory_batch_size`, one child each; and the time per
  step of both, measured in one more child that alternates a plain and a
  memory-efficient step `--repeats` times and takes each one's median, so that load
  from other processes on a shared machine falls on both alike.
- max_batch (bench/gpu.sh only): the largest batch whose train steps run without
  running out of device memory, plain and `--memory_efficient`, doubling from
  `--max_batch_start` then bisecting, one short child process per try.

The last line is `RESULT {json}` with `vs_fit` (our loop with steps_per_loop over
fit at one step per execution), `vs_fit_spe` (over fit at steps_per_loop steps per
execution), `overhead_vs_fit` and `overhead_vs_fit_spe` (the same on the overhead
case), `vs_fit_xla` and `vs_fit_spe_xla` (with XLA), `memory_ratio` and `time_ratio`
(memory-efficient over plain) and the raw figures. The targets: vs_fit >= 1.0,
vs_fit_spe >= 1.05 and overhead_vs_fit_spe >= 1.05 (on a CPU, each over three runs),
memory_ratio <= 0.5, time_ratio <= 1.25 (README.md, "Measured results"). This file
may use `model.fit`; the trainer never does.
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Optional

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path[:1] != [ROOT]:
    # First, even where PYTHONPATH already holds it: the script's own folder comes before
    # PYTHONPATH, and bench/input_pipeline.py would hide the package of that name.
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
    ['throughput', 'overhead', 'xla', 'memory'],
    'Which measurements: throughput (ours vs fit), overhead (the same on a tiny model), '
    'xla (ours vs fit with XLA), memory, loop (ours only, without and with XLA) and '
    'max_batch (the largest batch that trains, plain and --memory_efficient; for '
    'bench/gpu.sh, not on a CPU: it would fill the RAM).',
)
flags.DEFINE_list(
    'contenders',
    ['ours_loop', 'ours', 'fit', 'fit_spe'],
    'Who runs in the throughput, overhead and xla parts: ours_loop (--steps_per_loop '
    'steps per call), ours (one per call), fit (steps_per_execution=1), fit_spe '
    '(steps_per_execution=--steps_per_loop). bench/gpu.sh keeps ours_loop,fit_spe: '
    'each model.fit contender is a second model to build and trace.',
)
flags.DEFINE_integer('max_batch_start', 256, 'max_batch part: the first batch tried.')
flags.DEFINE_integer('max_batch_limit', 8192, 'max_batch part: the search stops there.')
flags.DEFINE_float(
    'max_batch_tolerance',
    0.125,
    'max_batch part: the bisection stops once the first batch that does not fit is within '
    'this fraction above the largest that does.',
)
flags.DEFINE_string(
    'overhead_model', 'densenet_bc_10_4', 'Model of the overhead case (the smallest the tests use).'
)
flags.DEFINE_integer('overhead_image_size', 8, 'Image side of the overhead case.')
flags.DEFINE_integer('overhead_batch_size', 8, 'Batch of the overhead case.')
flags.DEFINE_integer('overhead_num_classes', 10, 'Classes of the overhead case.')
flags.DEFINE_integer(
    'overhead_steps',
    200,
    'Steps per timed window of the overhead case (a multiple of --steps_per_loop).',
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


def _synthetic(dataset_lib, dtype, image_size: int, batch_size: int, for_fit: bool = False):
    """The synthetic batches every measurement trains on (`--synthetic_data`'s).

    uint8 pixels, as the input pipeline gives them; our step normalises them inside
    (`step.model_input`). `model.fit` has no such step, so for it (`for_fit`) the batch
    is normalised once, ahead, and cached: fit is not charged for the normalisation our
    step pays, which keeps the comparison on the conservative side.
    """
    data = dataset_lib.synthetic_dataset(
        batch_size=batch_size, image_size=image_size, num_classes=FLAGS.num_classes
    )
    if not for_fit:
        return data
    from trainer.engine import step as step_lib  # pylint: disable=g-import-not-at-top

    normalised = data.take(1).map(
        lambda images, labels: (step_lib.model_input(images, dtype), labels)
    )
    return normalised.cache().repeat()


def _our_loop(model, optimizer, batch_size: int, jit_compile: bool):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    from trainer.engine import loop  # pylint: disable=g-import-not-at-top
    from trainer.optimization import loss_scaling  # pylint: disable=g-import-not-at-top
    from trainer.engine import step as step_lib  # pylint: disable=g-import-not-at-top

    train_step = step_lib.TrainStep(
        model,
        optimizer,
        loss_scaler=loss_scaling.create_loss_scaler(FLAGS.precision),
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


def _compiled_for_fit(steps_per_execution: int):
    """A model compiled for `model.fit`, built from the same seed as ours."""
    import keras  # pylint: disable=g-import-not-at-top

    keras.utils.set_random_seed(0)
    model, optimizer, _, _ = _build(FLAGS.image_size, False)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=FLAGS.jit_compile,
        steps_per_execution=steps_per_execution,
    )
    return model


def _fit_timer(model, data):
    """`run() -> seconds per step` of one `model.fit` epoch of `--steps` steps.

    Timed from fit's epoch callbacks, so that fit's own set-up (the epoch iterator, the
    callback list) is left out, as our loop's tracing is.
    """
    import keras  # pylint: disable=g-import-not-at-top

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.start

    def run():
        timer = Timer()
        model.fit(data, epochs=1, steps_per_epoch=FLAGS.steps, callbacks=[timer], verbose=0)
        return timer.seconds / FLAGS.steps

    return run


def _child_versus():
    """Our loop and `model.fit` timed in turns in one process, window by window.

    Run one after the other in separate processes, a drift in the machine's load
    (other jobs, thermal state) lands on one of them only; in turns it lands on both.
    Each contender has its own model, built from the same seed, on the same batches.
    Per round: `--steps` steps of our loop at `--loop_steps` steps per call, the same
    at one step per call, one `model.fit` epoch of `--steps` steps at one step per
    execution and one at `--loop_steps` steps per execution: fit's best configuration
    runs as many steps per `tf.function` call as our loop, and only that one compares
    the two loops' per-step work rather than their calls.
    """
    import keras  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    keras.utils.set_random_seed(0)
    model, optimizer, dtype, dataset_lib = _build(FLAGS.image_size, False)
    train_loop = _our_loop(model, optimizer, FLAGS.batch_size, FLAGS.jit_compile)
    iterator = iter(_synthetic(dataset_lib, dtype, FLAGS.image_size, FLAGS.batch_size))

    def fit_data():
        return _synthetic(dataset_lib, dtype, FLAGS.image_size, FLAGS.batch_size, for_fit=True)

    def ours(loop_steps):
        calls = max(1, FLAGS.steps // loop_steps)
        start = time.perf_counter()
        for _ in range(calls):
            float(train_loop(iterator, tf.constant(loop_steps))['count'])  # Waits for it.
        return (time.perf_counter() - start) / (calls * loop_steps)

    makers = {
        'ours_loop': lambda: lambda: ours(FLAGS.loop_steps),
        'ours': lambda: lambda: ours(1),
        'fit': lambda: _fit_timer(_compiled_for_fit(1), fit_data()),
        'fit_spe': lambda: _fit_timer(_compiled_for_fit(FLAGS.loop_steps), fit_data()),
    }
    contenders = {name: make() for name, make in makers.items() if name in FLAGS.contenders}
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


def _run_child(mode: str, overrides: Optional[dict] = None, **options) -> dict:
    """Runs one measurement in a fresh process; returns its JSON result.

    `overrides` replaces the parent's own flags (the overhead case's model and sizes);
    `options` are the child's internal flags.
    """
    settings = {
        'model': FLAGS.model,
        'num_classes': FLAGS.num_classes,
        'image_size': FLAGS.image_size,
        'batch_size': FLAGS.batch_size,
        'memory_image_size': FLAGS.memory_image_size,
        'memory_batch_size': FLAGS.memory_batch_size,
        'precision': FLAGS.precision,
        'steps': FLAGS.steps,
        'repeats': FLAGS.repeats,
        'contenders': ','.join(FLAGS.contenders),
        **(overrides or {}),
        **options,
    }
    args = [sys.executable, os.path.abspath(__file__), f'--child={mode}']
    args += [f'--{name}={value}' for name, value in settings.items()]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
    start = time.time()
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=FLAGS.child_timeout, env=env
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith('CHILD ')]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f'{mode} {overrides or ""} {options} failed:\n{result.stderr[-3000:]}')
    figures = json.loads(lines[-1][len('CHILD ') :])
    seconds = time.time() - start
    print(f'{mode} {overrides or ""} {options}: {figures} ({seconds:.0f} s)', flush=True)
    return figures


def _versus_figures(versus: dict, prefix: str = '') -> dict:
    """images/s of the contenders that ran, and our loop's ratios over fit's settings."""
    speed = {
        name: versus[f'{name}_images_per_second']
        for name in ('ours', 'ours_loop', 'fit', 'fit_spe')
        if f'{name}_images_per_second' in versus
    }
    figures = {f'{prefix}{name}_images_per_second': round(v, 2) for name, v in speed.items()}
    ratios = {
        'vs_fit': ('ours_loop', 'fit'),
        'vs_fit_spe': ('ours_loop', 'fit_spe'),
        'vs_fit_one_step_per_call': ('ours', 'fit'),
    }
    for key, (ours, fit) in ratios.items():
        if ours in speed and fit in speed:
            figures[f'{prefix}{key}'] = round(speed[ours] / speed[fit], 3)
    return figures


def _child_fits():
    """Whether a few train steps run at `--batch_size` without running out of memory.

    ResourceExhaustedError is the answer "no"; any other error is a failure of the
    measurement and propagates. The peak device memory is reported where TensorFlow
    tracks it (GPUs).
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    try:
        model, optimizer, dtype, dataset_lib = _build(FLAGS.image_size, FLAGS.memory_efficient)
        data = _synthetic(dataset_lib, dtype, FLAGS.image_size, FLAGS.batch_size)
        train_loop = _our_loop(model, optimizer, FLAGS.batch_size, False)
        iterator = iter(data)
        for _ in range(2):  # Tracing, then a step like every later one.
            float(train_loop(iterator, tf.constant(1))['count'])
    except tf.errors.ResourceExhaustedError as error:
        return {'fits': False, 'error': str(error).splitlines()[0][:200]}
    figures = {'fits': True}
    if tf.config.list_physical_devices('GPU'):
        figures['peak_bytes'] = tf.config.experimental.get_memory_info('GPU:0')['peak']
    return figures


# How a shortage of device memory reads in a dead child's stderr (TensorFlow's allocator,
# XLA, cuDNN's workspace, CUDA).
_OUT_OF_MEMORY = (
    'ResourceExhausted',
    'RESOURCE_EXHAUSTED',
    'OOM when',
    'out of memory',
    'Dst tensor is not initialized',
    'CUDNN_STATUS_ALLOC_FAILED',
)


def _fits(batch_size: int, memory_efficient: bool) -> bool:
    """One child process: does `batch_size` train? A crash for lack of memory is a no.

    A GPU can run out of memory outside TensorFlow's allocator (cuDNN or XLA
    workspaces, the driver), which kills the child instead of raising in it; its
    stderr then names the shortage.
    """
    try:
        figures = _run_child('fits', {'batch_size': batch_size}, memory_efficient=memory_efficient)
    except RuntimeError as error:
        if any(sign in str(error) for sign in _OUT_OF_MEMORY):
            print(f'batch {batch_size}: out of memory (the child died)', flush=True)
            return False
        raise
    return figures['fits']


def _largest_batch(memory_efficient: bool) -> dict:
    """The largest batch that trains: doubling from --max_batch_start, then bisection.

    Each try is a child process of its own, so that memory a failed try left allocated
    cannot spoil the next. Stops at --max_batch_limit (reported as reached) or when
    the first batch that does not fit is within --max_batch_tolerance of the largest
    that does.
    """
    fits, too_big, tries = 0, None, 0
    batch = FLAGS.max_batch_start
    while batch <= FLAGS.max_batch_limit:  # Doubling.
        tries += 1
        if not _fits(batch, memory_efficient):
            too_big = batch
            break
        fits, batch = batch, 2 * batch
    if too_big is not None:
        low = fits or 0
        while too_big - low > max(1, FLAGS.max_batch_tolerance * max(low, 1)):  # Bisection.
            middle = (low + too_big) // 2
            tries += 1
            if _fits(middle, memory_efficient):
                low = middle
            else:
                too_big = middle
        fits = low
    return {'largest': fits, 'first_too_big': too_big, 'tries': tries}


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
        result.update(_versus_figures(_run_child('versus', loop_steps=FLAGS.steps_per_loop)))
    if 'overhead' in parts:
        overrides = {
            'model': FLAGS.overhead_model,
            'image_size': FLAGS.overhead_image_size,
            'batch_size': FLAGS.overhead_batch_size,
            'num_classes': FLAGS.overhead_num_classes,
            'steps': FLAGS.overhead_steps,
        }
        versus = _run_child('versus', overrides, loop_steps=FLAGS.steps_per_loop)
        result.update(
            overhead_model=FLAGS.overhead_model,
            overhead_image_size=FLAGS.overhead_image_size,
            overhead_batch_size=FLAGS.overhead_batch_size,
            **_versus_figures(versus, 'overhead_'),
        )
    if 'xla' in parts:
        versus = _run_child('versus', loop_steps=FLAGS.steps_per_loop, jit_compile=True)
        figures = _versus_figures(versus)
        names = {
            'ours_loop_images_per_second': 'ours_xla_images_per_second',
            'fit_images_per_second': 'fit_xla_images_per_second',
            'fit_spe_images_per_second': 'fit_spe_xla_images_per_second',
            'vs_fit': 'vs_fit_xla',
            'vs_fit_spe': 'vs_fit_spe_xla',
        }
        result.update({names[key]: value for key, value in figures.items() if key in names})
    if 'max_batch' in parts:
        for memory_efficient, name in ((False, 'max_batch'), (True, 'max_batch_memory_efficient')):
            search = _largest_batch(memory_efficient)
            result[name] = search['largest']
            result[f'{name}_first_too_big'] = search['first_too_big']
            result[f'{name}_tries'] = search['tries']
        result['max_batch_limit'] = FLAGS.max_batch_limit
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
    for key in (
        'vs_fit',
        'vs_fit_spe',
        'overhead_vs_fit_spe',
        'vs_fit_xla',
        'memory_ratio',
        'time_ratio',
    ):
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
            'fits': _child_fits,
        }[FLAGS.child]()
        print('CHILD ' + json.dumps(figures), flush=True)
        return
    print('RESULT ' + json.dumps(_parent()), flush=True)


if __name__ == '__main__':
    app.run(main)

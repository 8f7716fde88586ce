"""Trains or evaluates DenseNet on ImageNet-format TFRecords. Flags only.

  python main.py --flagfile=imagenet.cfg --dataset_dir=/data/imagenet --model_dir=/runs/d121
  python main.py --flagfile=demo.cfg                      # CPU demo on bundled digits
  python main.py --flagfile=imagenet.cfg --only_eval=/runs/d121/saves/epoch_090

This file is intentionally kept short: it defines and validates flags, turns them into
one frozen `RunConfig`, writes it to `model_dir/flags.cfg` and calls the trainer.
Everything below takes plain arguments.
"""

import json
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging

from trainer import errors
from trainer import gaudi
from trainer import stderr_filter

_BEFORE = set(flags.FLAGS)

# Data and output.
flags.DEFINE_string('dataset_dir', None, 'Folder of ImageNet TFRecords (train-*, validation-*).')
flags.DEFINE_string('model_dir', None, 'Everything the run writes goes below this folder.')
flags.DEFINE_bool('synthetic_data', False, 'Random images of the right shape, for speed runs.')
flags.DEFINE_bool(
    'prepare_digits_demo',
    False,
    "Write scikit-learn's bundled digits as TFRecords into --dataset_dir first "
    '(once; the demo uses it).',
)
# Model.
flags.DEFINE_string(
    'model',
    'densenet121',
    'densenet121, -169, -201, -161, -264, or densenet_bc_DEPTH_GROWTH for small images.',
)
flags.DEFINE_integer('num_classes', 1000, 'Number of classes.')
flags.DEFINE_integer('image_size', 224, 'Input side in pixels.')
flags.DEFINE_float(
    'dropout_rate',
    0.0,
    'Dropout after each conv in dense blocks (paper: 0.2 without augmentation; 0 for ImageNet).',
)
flags.DEFINE_float(
    'batch_norm_momentum',
    0.99,
    "Decay of batch-norm moving statistics (Keras Applications' 0.99; the paper's Torch code "
    'used 0.9, better for small data sets with few steps).',
)
flags.DEFINE_bool(
    'bfloat16', True, 'bf16 compute with float32 variables and logits (alias of --precision).'
)
flags.DEFINE_enum(
    'precision',
    None,
    ['float32', 'bfloat16', 'float16'],
    'Compute dtype (variables and logits stay float32). When given it wins over --bfloat16, '
    'the seed\'s flag, which otherwise picks bfloat16 (true) or float32 (false).',
)
flags.DEFINE_string(
    'loss_scale',
    'auto',
    "Loss scaling: 'auto' (dynamic for float16, none for bfloat16/float32), 'dynamic' "
    '(2^15, x2 after 2000 finite steps, /2 and skip on overflow), or a fixed number.',
)
flags.DEFINE_bool(
    'memory_efficient',
    False,
    'Recompute BN-ReLU-conv of dense layers in the backward pass: far less activation '
    'memory for about a fifth more time; the same weights, but checkpoints laid out '
    'differently, so a run keeps the setting it started with.',
)
# Data processing.
flags.DEFINE_enum(
    'data_layout',
    'auto',
    ['auto', 'slim', 'tpu', 'tfds'],
    'TFRecord layout: slim (train-00000-of-01024 in one folder), tpu (train/ and '
    'validation/ sub-folders), tfds (imagenet2012-train.tfrecord-*); auto: from file names.',
)
flags.DEFINE_integer(
    'label_offset',
    None,
    'Subtracted from stored labels. Default: from the records (TF-slim and TPU labels are '
    '1..1000, TFDS labels 0..999).',
)
flags.DEFINE_bool(
    'skip_bad_records',
    False,
    'Skip (and count in the log) truncated TFRecord files and undecodable images '
    'instead of stopping. A label out of range still stops the run.',
)
flags.DEFINE_float(
    'color_jitter',
    0.0,
    'Brightness/contrast/saturation jitter (fb.resnet.torch: 0.4).',
    lower_bound=0.0,
    upper_bound=0.99,
)
flags.DEFINE_float(
    'pca_lighting', 0.0, 'PCA lighting noise std (AlexNet, fb.resnet.torch: 0.1).', lower_bound=0.0
)
flags.DEFINE_integer(
    'randaugment_layers',
    0,
    'RandAugment operations per image (timm recipe: 2); 0: off.',
    lower_bound=0,
)
flags.DEFINE_float(
    'randaugment_magnitude',
    9.0,
    'RandAugment magnitude, 0..10 (timm recipe: 9).',
    lower_bound=0.0,
    upper_bound=10.0,
)
flags.DEFINE_float(
    'mixup_alpha',
    0.0,
    'Mixup Beta(alpha, alpha) (timm: 0.2-0.8); > 0 makes labels soft.',
    lower_bound=0.0,
)
flags.DEFINE_float(
    'cutmix_alpha',
    0.0,
    'CutMix Beta(alpha, alpha) (timm: 1.0); > 0 makes labels soft; with '
    'mixup, a coin picks one per batch.',
    lower_bound=0.0,
)
flags.DEFINE_list('crop_area_range', ['0.08', '1.0'], 'Random-resized-crop area fraction range.')
flags.DEFINE_list('crop_aspect_range', ['0.75', '1.3333333'], 'Random-resized-crop aspect range.')
flags.DEFINE_bool('random_flip', True, 'Random left-right flips in training.')
flags.DEFINE_float('eval_crop_fraction', 0.875, 'Central crop fraction for evaluation (224/256).')
flags.DEFINE_integer('shuffle_buffer', 10000, 'Examples in the training shuffle buffer.')
# Optimisation.
flags.DEFINE_integer('batch_size', 64, 'Batch size per replica.')
flags.DEFINE_integer('epochs', 90, 'Epochs to train.')
flags.DEFINE_integer('train_steps', 0, 'When > 0, stop after this many global steps in total.')
flags.DEFINE_enum(
    'optimizer',
    'sgd',
    ['sgd', 'adam', 'adamw', 'rmsprop'],
    'Optimizer. adamw decays weights itself (decoupled, lr * weight_decay * w; try '
    '--weight_decay=0.05); the others get the L2 term in the loss.',
)
flags.DEFINE_float('momentum', 0.9, 'Momentum of SGD and RMSprop.')
flags.DEFINE_bool('nesterov', False, 'Nesterov momentum for SGD (the paper used it).')
flags.DEFINE_float(
    'weight_decay',
    1e-4,
    'L2 coefficient of w in the gradient (loss gains wd/2*|w|^2); conv and dense kernels only.',
)
flags.DEFINE_enum(
    'lr_sched',
    'steps',
    ['steps', 'piecewise', 'linear', 'exponential', 'cosine'],
    'Learning-rate schedule; steps: initial_lr * 0.1^(epoch // lr_decay_epochs); piecewise: '
    '--lr_values between --lr_boundaries.',
)
flags.DEFINE_float('initial_lr', 5e-2, 'Initial learning rate.')
flags.DEFINE_float('final_lr', 1e-5, 'Final learning rate (linear, exponential, cosine).')
flags.DEFINE_integer('lr_decay_epochs', 30, 'Epochs between 10x decays of the steps schedule.')
flags.DEFINE_list(
    'lr_boundaries', [], 'piecewise: epochs at which the learning rate changes, e.g. 30,60,80.'
)
flags.DEFINE_list(
    'lr_values',
    [],
    'piecewise: learning rates, one more than --lr_boundaries (default initial_lr x 0.1^i).',
)
flags.DEFINE_float(
    'warmup_epochs', 0.0, 'Linear learning-rate warmup from 0 over this many epochs (Goyal et al.).'
)
flags.DEFINE_enum(
    'lr_scaling',
    'none',
    ['none', 'linear'],
    'linear: every learning rate x global batch / 256 (the flags give the rates of batch 256).',
)
flags.DEFINE_float(
    'label_smoothing', 0.0, 'Label smoothing eps (0.1 is usual on ImageNet; the paper used 0).'
)
flags.DEFINE_float(
    'ema_decay',
    0.0,
    'Exponential moving average of the weights, used for evaluation and export, e.g. '
    '0.9999; 0 turns it off.',
)
flags.DEFINE_integer(
    'grad_accum_steps',
    1,
    'Compute each replica batch as this many micro-batches and apply their summed gradient '
    'once: the update of --batch_size at the activation memory of batch_size/N.',
)
# Loop and output cadence.
flags.DEFINE_integer('steps_per_loop', 100, 'Train steps run inside one tf.function call.')
flags.DEFINE_integer('log_every_steps', 100, 'Steps between train summaries and log lines.')
flags.DEFINE_integer(
    'checkpoint_every_steps', 1000, 'Steps between checkpoints (also at epoch ends).'
)
flags.DEFINE_integer('keep_checkpoints', 5, 'Checkpoints kept.')
flags.DEFINE_string(
    'init_checkpoint',
    None,
    'Start from these weights only (fine-tuning; the optimizer and step start afresh): a '
    'checkpoint (prefix or folder) or a Keras .h5 weights file. Ignored when --model_dir '
    'already holds checkpoints, which are resumed instead.',
)
flags.DEFINE_integer(
    'max_skipped_steps',
    50,
    'Stop when loss scaling skips more than this many steps in a row (0: no limit).',
)
flags.DEFINE_bool(
    'save_every_epoch', True, 'Export a SavedModel to saves/epoch_NNN after each epoch.'
)
flags.DEFINE_bool(
    'histograms', False, 'Weight histograms in TensorBoard at each evaluation (large event files).'
)
flags.DEFINE_list(
    'profile_steps',
    [],
    'A,B: profiler trace of train steps A to B (from 1) into logs/train, for TensorBoard.',
)
# Hardware and reproducibility.
flags.DEFINE_enum(
    'distribution_strategy',
    'auto',
    ['auto', 'one_device', 'mirrored', 'multi_worker_mirrored', 'tpu', 'hpu'],
    'tf.distribute strategy.',
)
flags.DEFINE_enum('device', 'auto', ['auto', 'cpu', 'gpu', 'tpu', 'hpu'], 'Device kind.')
flags.DEFINE_integer('num_gpus', -1, 'GPUs to use; -1 for all visible.')
flags.DEFINE_string('tpu', '', 'TPU name or address for TPUClusterResolver.')
flags.DEFINE_bool('jit_compile', False, 'XLA-compile the train step.')
flags.DEFINE_bool('deterministic', False, 'Bit-reproducible runs (TF op determinism).')
flags.DEFINE_integer('seed', 0, 'Seed of weights, data order and augmentation.')
# Evaluation only.
flags.DEFINE_string(
    'only_eval', None, 'Evaluate this checkpoint (prefix or folder) or SavedModel and exit.'
)

_OURS = sorted(set(flags.FLAGS) - _BEFORE)
FLAGS = flags.FLAGS


class UsageError(errors.UserError):
    """A flag value or combination that cannot work."""


def _float_pair(name):
    values = FLAGS[name].value
    try:
        low, high = (float(value) for value in values)
    except ValueError:
        raise UsageError(f'--{name} takes two numbers LOW,HIGH, not {",".join(values)}') from None
    if not 0 < low <= high:
        raise UsageError(f'--{name}={low},{high} needs 0 < LOW <= HIGH')
    return low, high


def _profile_steps():
    values = FLAGS.profile_steps
    if not values:
        return None
    try:
        first, last = (int(value) for value in values)
    except ValueError:
        raise UsageError(
            f'--profile_steps takes two step numbers A,B, not {",".join(values)}'
        ) from None
    if not 1 <= first <= last:
        raise UsageError(f'--profile_steps={first},{last} needs 1 <= A <= B')
    return first, last


def _is_local(path):
    return '://' not in path


def _check_devices():
    """Refuses --device and --distribution_strategy values that contradict each other."""
    device, strategy = FLAGS.device, FLAGS.distribution_strategy
    allowed = {'tpu': ('auto', 'tpu'), 'hpu': ('auto', 'hpu')}
    if strategy in allowed and device not in allowed[strategy]:
        raise UsageError(f'--distribution_strategy={strategy} cannot run on --device={device}')
    if device in allowed and strategy not in allowed[device] + ('one_device',):
        raise UsageError(
            f'--device={device} needs --distribution_strategy={device} (or one_device, auto), '
            f'not {strategy}'
        )
    # Checked here as well as where the module is loaded: it saves importing TensorFlow.
    if 'hpu' in (device, strategy):
        gaudi.check_present()
    tf_config = os.environ.get('TF_CONFIG')
    if tf_config:
        try:
            json.loads(tf_config)
        except ValueError as error:
            raise UsageError(
                f'the TF_CONFIG environment variable is not valid JSON: {error}'
            ) from None


def _float_list(name):
    try:
        return tuple(float(value) for value in FLAGS[name].value)
    except ValueError:
        raise UsageError(
            f'--{name} takes numbers separated by commas, not {",".join(FLAGS[name].value)}'
        ) from None


def _training_fields():
    """Validates the precision, schedule and regularisation flags; their RunConfig fields.

    --precision wins over --bfloat16 (the seed's flag). Both are set to agree here, so
    that flags.cfg holds a consistent pair and a restart from it is the same run.
    """
    precision = FLAGS.precision or ('bfloat16' if FLAGS.bfloat16 else 'float32')
    FLAGS.bfloat16 = precision == 'bfloat16'
    FLAGS.precision = precision
    if FLAGS.loss_scale not in ('auto', 'dynamic'):
        try:
            scale = float(FLAGS.loss_scale)
        except ValueError:
            scale = 0.0
        if not scale > 0:
            raise UsageError(
                f"--loss_scale={FLAGS.loss_scale} must be 'auto', 'dynamic' or a positive number"
            )
    if FLAGS.grad_accum_steps < 1 or FLAGS.batch_size % FLAGS.grad_accum_steps:
        raise UsageError(
            f'--grad_accum_steps={FLAGS.grad_accum_steps} must be positive and divide '
            f'--batch_size={FLAGS.batch_size}'
        )
    for name in ('label_smoothing', 'ema_decay'):
        if not 0 <= FLAGS[name].value < 1:
            raise UsageError(f'--{name}={FLAGS[name].value} must be in [0, 1)')
    if FLAGS.warmup_epochs < 0:
        raise UsageError(f'--warmup_epochs={FLAGS.warmup_epochs} must be 0 or more')
    boundaries, values = _float_list('lr_boundaries'), _float_list('lr_values')
    if FLAGS.lr_sched == 'piecewise':
        if not boundaries or list(boundaries) != sorted(boundaries) or boundaries[0] <= 0:
            raise UsageError(
                '--lr_sched=piecewise needs --lr_boundaries: increasing positive epochs'
            )
        if values and len(values) != len(boundaries) + 1:
            raise UsageError(
                f'--lr_values needs {len(boundaries) + 1} values (one more than '
                f'--lr_boundaries), not {len(values)}'
            )
    return dict(precision=precision, lr_boundaries=boundaries, lr_values=values)


def _config():
    """Validates the flags and returns the frozen RunConfig.

    Everything here is plain Python, run before TensorFlow is imported, so that a
    mistyped command fails in a fraction of a second.
    """
    from trainer.config import RunConfig  # pylint: disable=g-import-not-at-top

    if FLAGS.only_eval and FLAGS.train_steps:
        raise UsageError(
            '--only_eval evaluates and exits; it cannot be combined with --train_steps'
        )
    if not FLAGS.synthetic_data and not FLAGS.dataset_dir:
        raise UsageError('--dataset_dir is required (or --synthetic_data for speed runs)')
    if (
        FLAGS.dataset_dir
        and not FLAGS.prepare_digits_demo
        and _is_local(FLAGS.dataset_dir)
        and not os.path.isdir(FLAGS.dataset_dir)
    ):
        raise UsageError(f'--dataset_dir={FLAGS.dataset_dir} does not exist')
    if not FLAGS.model_dir and not FLAGS.only_eval:
        raise UsageError('--model_dir is required for training')
    path = FLAGS.only_eval
    if path and _is_local(path) and not (os.path.exists(path) or os.path.exists(path + '.index')):
        raise UsageError(f'--only_eval={path}: no such checkpoint or SavedModel')
    _check_devices()
    for name in (
        'batch_size',
        'epochs',
        'steps_per_loop',
        'log_every_steps',
        'checkpoint_every_steps',
        'keep_checkpoints',
        'image_size',
        'num_classes',
    ):
        if FLAGS[name].value <= 0:
            raise UsageError(f'--{name} must be positive, not {FLAGS[name].value}')
    if not 0 < FLAGS.eval_crop_fraction <= 1:
        raise UsageError(f'--eval_crop_fraction={FLAGS.eval_crop_fraction} must be in (0, 1]')
    if not 0 <= FLAGS.dropout_rate < 1:
        raise UsageError(f'--dropout_rate={FLAGS.dropout_rate} must be in [0, 1)')
    if FLAGS.max_skipped_steps < 0:
        raise UsageError(f'--max_skipped_steps must be 0 or more, not {FLAGS.max_skipped_steps}')
    path = FLAGS.init_checkpoint
    if path and _is_local(path) and not (os.path.exists(path) or os.path.exists(path + '.index')):
        raise UsageError(f'--init_checkpoint={path}: no such checkpoint or weights file')
    training_fields = _training_fields()
    fields = {
        name: FLAGS[name].value
        for name in _OURS
        if name
        not in ('prepare_digits_demo', 'crop_area_range', 'crop_aspect_range', 'profile_steps')
    }
    fields.update(
        **training_fields,
        crop_area_range=_float_pair('crop_area_range'),
        crop_aspect_range=_float_pair('crop_aspect_range'),
        profile_steps=_profile_steps(),
        dataset_dir=FLAGS.dataset_dir or '',
        model_dir=FLAGS.model_dir or '',
    )
    return RunConfig(**fields)


# The flags that shape a run's checkpoints: a model_dir that holds a run with other
# values cannot be resumed with these. (--memory_efficient keeps the weights but nests
# the dense layers differently, so the checkpoints' object paths differ.)
_RUN_IDENTITY = ('model', 'image_size', 'num_classes', 'memory_efficient')


def _read_text(path):
    """The text of a local or remote (`gs://...`) file, or None when it is missing."""
    if _is_local(path):
        if not os.path.isfile(path):
            return None
        with open(path) as stream:
            return stream.read()
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    return tf.io.gfile.GFile(path).read() if tf.io.gfile.exists(path) else None


def _checkpointed_run_dir(path):
    """The run folder that checkpoint `path` (prefix, checkpoints/ or run folder) is in."""
    path = os.path.abspath(path.rstrip('/')) if _is_local(path) else path.rstrip('/')
    if os.path.basename(os.path.dirname(path)) == 'checkpoints':  # A prefix: .../ckpt-23.
        path = os.path.dirname(path)
    if os.path.basename(path) == 'checkpoints':
        return os.path.dirname(path)
    return path  # A run folder, or a SavedModel: it has no checkpoints/ to compare.


def _check_run_dir(config):
    """Refuses to mix this run with a run of another model or image size.

    The run folder is `--model_dir`, or the one that the `--only_eval` checkpoint is
    in. When it holds checkpoints, its flags.cfg says what they hold: resuming or
    evaluating them as another model would fail deep inside the restore (or restore
    into the wrong shapes), and overwriting flags.cfg would lose the record of what
    they are. Checked before flags.cfg is rewritten.
    """
    run_dir = _checkpointed_run_dir(config.only_eval) if config.only_eval else config.model_dir
    if _read_text(os.path.join(run_dir, 'checkpoints', 'checkpoint')) is None:
        return
    previous = {}
    for line in (_read_text(os.path.join(run_dir, 'flags.cfg')) or '').splitlines():
        if line.startswith('--') and '=' in line:
            name, value = line[2:].split('=', 1)
            previous[name] = value
        elif line.startswith('--no'):  # A boolean flag, false.
            previous[line[4:].strip()] = 'False'
        elif line.startswith('--'):  # A boolean flag, true.
            previous[line[2:].strip()] = 'True'
    differences = [
        (name, previous[name], str(getattr(config, name)))
        for name in _RUN_IDENTITY
        if name in previous and previous[name] != str(getattr(config, name))
    ]
    if differences:
        theirs = ' '.join(f'--{name}={value}' for name, value, _ in differences)
        ours = ' '.join(f'--{name}={value}' for name, _, value in differences)
        raise UsageError(
            f'{run_dir} holds a run with {theirs} (its flags.cfg), not {ours}: '
            'use another --model_dir, or the flags of that run'
        )


def _write_flagfile(model_dir):
    """The resolved flags, reusable as --flagfile; written atomically."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    tf.io.gfile.makedirs(model_dir)
    lines = [FLAGS[name].serialize() for name in _OURS if FLAGS[name].value is not None]
    tmp = os.path.join(model_dir, f'.flags.cfg.{os.getpid()}')
    with tf.io.gfile.GFile(tmp, 'w') as stream:
        stream.write('\n'.join(line for line in lines if line) + '\n')
    tf.io.gfile.rename(tmp, os.path.join(model_dir, 'flags.cfg'), overwrite=True)


# What the input pipeline's in-graph checks say (input_pipeline/decode.py,
# input_pipeline/records.py): an InvalidArgumentError with one of these is bad data.
_DATA_CHECK = re.compile(r'label out of range|undecodable image in|TFRecord file ', re.IGNORECASE)


def _one_line(error):
    """A readable single line for an error the user caused.

    TensorFlow wraps the cause of an op's failure in the names of the functions and
    ops it ran in (`{{function_node ...}}`, `[Op:...]`), and prints the data of a
    `tf.debugging.Assert` as `] [`-separated items: all that is noise to the user.
    """
    message = getattr(error, 'message', None) or str(error)
    # The input pipeline's own messages name the file: a bad label, image or TFRecord file.
    match = re.search(f'({_DATA_CHECK.pattern})[^\\n]*', message, re.IGNORECASE)
    if match:
        message = re.sub(r'\]\s*\[', ' ', match.group(0)).rstrip(']')
    message = re.sub(r'\{\{function_node [^}]*\}\}', '', message.split('\n')[0])
    message = re.sub(r'\s*\[Op:[^\]]*\].*$', '', message)
    return ' '.join(message.split())


def _exit_with(error):
    """Ends the program with one readable line; the traceback only with --v=1."""
    logging.debug('Full error', exc_info=True)
    print(f'main.py: error: {_one_line(error)}', file=sys.stderr)
    sys.exit(1)


def _is_user_error(error, tf):
    """Whether `error` is a mistake in the flags, files or data, rather than a bug."""
    if isinstance(error, (errors.UserError, FileNotFoundError, PermissionError)):
        return True
    if isinstance(error, (tf.errors.DataLossError, tf.errors.NotFoundError)):
        return True  # A damaged or missing file; TensorFlow's message names it.
    if isinstance(error, tf.errors.InvalidArgumentError):
        return bool(_DATA_CHECK.search(getattr(error, 'message', None) or str(error)))
    return False


def _report_bug(tf):
    """The traceback of an exception that is not the user's doing, and who to blame."""
    import keras  # pylint: disable=g-import-not-at-top
    import traceback  # pylint: disable=g-import-not-at-top

    traceback.print_exc()
    print(
        'main.py: internal error: the exception above is a bug in the trainer, not a '
        f'mistake in your flags or data (TensorFlow {tf.__version__}, Keras '
        f'{keras.__version__}); please report it with the traceback',
        file=sys.stderr,
    )
    sys.exit(2)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    # Before TensorFlow is imported: its harmless C++ start-up lines stay off the console.
    stderr_filter.install()
    try:
        config = _config()
        _check_run_dir(config)
    except errors.UserError as error:
        _exit_with(error)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from trainer import run  # pylint: disable=g-import-not-at-top

    try:
        if FLAGS.prepare_digits_demo:
            from input_pipeline import digits  # pylint: disable=g-import-not-at-top

            counts = digits.ensure_digits_dataset(config.dataset_dir)
            logging.info('Digits demo data in %s: %s', config.dataset_dir, counts)
        if config.only_eval:
            result = run.evaluate(config)
        else:
            from trainer import distribute  # pylint: disable=g-import-not-at-top

            if distribute.is_chief_task():  # Other workers of a multi-worker run write nothing.
                _write_flagfile(config.model_dir)
            result = run.train(config)
    except Exception as error:  # pylint: disable=broad-except
        if _is_user_error(error, tf):
            _exit_with(error)
        _report_bug(tf)
    if result:
        print(
            f'Validation top-1 {result["top1"]:.4f}, top-5 {result["top5"]:.4f}, loss '
            f'{result["loss"]:.4f} over {result["num_examples"]} examples (step {result["step"]})'
        )


def _parse_flags(argv):
    """absl's parser, with a bad flag reported in the same one line as other errors."""
    try:
        return FLAGS(argv)
    except flags.Error as error:
        print(f'main.py: error: {_one_line(error)} (see --helpfull)', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    app.run(main, flags_parser=_parse_flags)

"""Trains or evaluates DenseNet on ImageNet-format TFRecords. Flags only.

  python main.py --flagfile=imagenet.cfg --dataset_dir=/data/imagenet --model_dir=/runs/d121
  python main.py --flagfile=demo.cfg                      # CPU demo on bundled digits
  python main.py --flagfile=imagenet.cfg --only_eval=/runs/d121/saves/epoch_090

This file is intentionally kept short: it defines and validates flags, turns them into
one frozen `RunConfig`, writes it to `model_dir/flags.cfg` and calls the trainer.
Everything below takes plain arguments.
"""

import os
import re
import sys

from absl import app
from absl import flags
from absl import logging

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
flags.DEFINE_bool('bfloat16', True, 'bf16 compute with float32 variables and logits.')
# Data processing.
flags.DEFINE_integer(
    'label_offset', 1, 'Subtracted from stored labels (TF-slim labels are 1..1000).'
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
flags.DEFINE_enum('optimizer', 'sgd', ['sgd', 'adam', 'rmsprop'], 'Optimizer.')
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
    ['steps', 'linear', 'exponential', 'cosine'],
    'Learning-rate schedule; steps: initial_lr * 0.1^(epoch // lr_decay_epochs).',
)
flags.DEFINE_float('initial_lr', 5e-2, 'Initial learning rate.')
flags.DEFINE_float('final_lr', 1e-5, 'Final learning rate (linear, exponential, cosine).')
flags.DEFINE_integer('lr_decay_epochs', 30, 'Epochs between 10x decays of the steps schedule.')
# Loop and output cadence.
flags.DEFINE_integer('steps_per_loop', 100, 'Train steps run inside one tf.function call.')
flags.DEFINE_integer('log_every_steps', 100, 'Steps between train summaries and log lines.')
flags.DEFINE_integer(
    'checkpoint_every_steps', 1000, 'Steps between checkpoints (also at epoch ends).'
)
flags.DEFINE_integer('keep_checkpoints', 5, 'Checkpoints kept.')
flags.DEFINE_bool(
    'save_every_epoch', True, 'Export a SavedModel to saves/epoch_NNN after each epoch.'
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


class UsageError(ValueError):
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


def _config():
    """Validates the flags and returns the frozen RunConfig."""
    from trainer.config import RunConfig  # pylint: disable=g-import-not-at-top

    if FLAGS.only_eval and FLAGS.train_steps:
        raise UsageError(
            '--only_eval evaluates and exits; it cannot be combined with --train_steps'
        )
    if not FLAGS.synthetic_data and not FLAGS.dataset_dir:
        raise UsageError('--dataset_dir is required (or --synthetic_data for speed runs)')
    if not FLAGS.model_dir and not FLAGS.only_eval:
        raise UsageError('--model_dir is required for training')
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
    fields = {
        name: FLAGS[name].value
        for name in _OURS
        if name not in ('prepare_digits_demo', 'crop_area_range', 'crop_aspect_range')
    }
    fields.update(
        crop_area_range=_float_pair('crop_area_range'),
        crop_aspect_range=_float_pair('crop_aspect_range'),
        dataset_dir=FLAGS.dataset_dir or '',
        model_dir=FLAGS.model_dir or '',
    )
    return RunConfig(**fields)


def _write_flagfile(model_dir):
    """The resolved flags, reusable as --flagfile; written atomically."""
    os.makedirs(model_dir, exist_ok=True)
    lines = [FLAGS[name].serialize() for name in _OURS if FLAGS[name].value is not None]
    tmp = os.path.join(model_dir, f'.flags.cfg.{os.getpid()}')
    with open(tmp, 'w') as stream:
        stream.write('\n'.join(line for line in lines if line) + '\n')
    os.replace(tmp, os.path.join(model_dir, 'flags.cfg'))


def _one_line(error):
    """A readable single line for an error the user caused."""
    message = getattr(error, 'message', None) or str(error)
    match = re.search(r'label out of range[^\n]*', message, re.IGNORECASE)
    if match:
        message = match.group(0)
    return ' '.join(message.split('\n')[0].split())


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from trainer import run  # pylint: disable=g-import-not-at-top

    try:
        config = _config()
        if FLAGS.prepare_digits_demo:
            from input_pipeline import digits  # pylint: disable=g-import-not-at-top

            counts = digits.ensure_digits_dataset(config.dataset_dir)
            logging.info('Digits demo data in %s: %s', config.dataset_dir, counts)
        if config.only_eval:
            result = run.evaluate(config)
        else:
            _write_flagfile(config.model_dir)
            result = run.train(config)
    except (
        UsageError,
        ValueError,
        FileNotFoundError,
        tf.errors.InvalidArgumentError,
        tf.errors.DataLossError,
        tf.errors.NotFoundError,
    ) as error:
        logging.debug("Full error", exc_info=True)
        print(f'main.py: error: {_one_line(error)}', file=sys.stderr)
        sys.exit(1)
    if result:
        print(
            f'Validation top-1 {result["top1"]:.4f}, top-5 {result["top5"]:.4f}, loss '
            f'{result["loss"]:.4f} over {result["num_examples"]} examples (step {result["step"]})'
        )


if __name__ == '__main__':
    app.run(main)

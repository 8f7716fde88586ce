"""The run's configuration: one frozen object that every module of the trainer reads.

Each field is a flag of `main.py` under the same name, with its default and help
text defined here once: the command (`trainer/tools/train.py`) derives the flags from
these fields, and
`RunConfig(...)` validates its values on construction. So a config built in Python
(a notebook, a test) gets the same checks and the same one-line errors as the
command line, and a default cannot differ between the two.

Nothing here imports TensorFlow: a mistyped command fails before it is loaded.
"""

import dataclasses
import json
import os
from typing import Optional, Sequence, Tuple

from input_pipeline import LAYOUTS  # --data_layout's choices: the pipeline's own list
from input_pipeline import DataError
from input_pipeline import data_service
from base import errors
from trainer import image_sizes

# The values a choice flag accepts. The modules that implement them raise on any
# other (trainer/optimization/: optimizers.py, schedules.py, loss_scaling.py;
# trainer/devices/distribute.py) and take these tuples from here, so that the command
# can offer the choices without importing TensorFlow. The data layouts are the input
# pipeline's own list (`input_pipeline.LAYOUTS`).
OPTIMIZERS = ('sgd', 'adam', 'adamw', 'rmsprop')
SCHEDULES = ('steps', 'piecewise', 'linear', 'exponential', 'cosine')
LR_SCALINGS = ('none', 'linear')
PRECISIONS = ('float32', 'bfloat16', 'float16')
STRATEGIES = ('auto', 'one_device', 'mirrored', 'multi_worker_mirrored', 'tpu', 'hpu')
DEVICES = ('auto', 'cpu', 'gpu', 'tpu', 'hpu')

# The fields that shape a run's checkpoints: a model_dir that holds a run with other
# values cannot be resumed with these. (--memory_efficient keeps the weights but nests
# the dense layers differently, so the checkpoints' object paths differ.)
RUN_IDENTITY = ('model', 'image_size', 'num_classes', 'memory_efficient')


# The fields that name files or folders: flags.cfg stores them absolute.
PATH_FIELDS = ('dataset_dir', 'model_dir', 'init_checkpoint', 'only_eval')


class ConfigError(errors.UserError):
    """A value or combination of values that cannot work; names the flag."""


def _option(default, help_text: str, *, choices: Optional[Sequence[str]] = None):
    return dataclasses.field(default=default, metadata={'help': help_text, 'choices': choices})


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a training or evaluation run depends on.

    Defaults are the seed's recipe (`imagenet.cfg`), except where a help text says.
    """

    # Data and output.
    dataset_dir: str = _option('', 'Folder of ImageNet TFRecords (train-*, validation-*).')
    model_dir: str = _option('', 'Everything the run writes goes below this folder.')
    synthetic_data: bool = _option(False, 'Random images of the right shape, for speed runs.')
    prepare_digits_demo: bool = _option(
        False,
        "Write scikit-learn's bundled digits as TFRecords into --dataset_dir first "
        '(once; the demo uses it).',
    )
    # Model.
    model: str = _option(
        'densenet121',
        'densenet121, -169, -201, -161, -264, or densenet_bc_DEPTH_GROWTH for small images.',
    )
    num_classes: int = _option(1000, 'Number of classes.')
    image_size: int = _option(
        224, 'Input side in pixels (with --min_image_size: the final training size).'
    )
    min_image_size: int = _option(
        0,
        'Progressive resizing (FFCV): train at this size up to --resize_start_epoch, at '
        '--image_size from --resize_end_epoch on, linearly in steps of --image_size_step '
        'between; the batch size stays. 0: every epoch at --image_size.',
    )
    resize_start_epoch: int = _option(
        0, 'With --min_image_size: the last epoch (from 0) at the smallest size.'
    )
    resize_end_epoch: int = _option(
        0, 'With --min_image_size: the first epoch (from 0) at --image_size.'
    )
    image_size_step: int = _option(
        32,
        'With --min_image_size: every size is a multiple of this (each size is one traced shape).',
    )
    eval_image_size: int = _option(
        0,
        'Evaluation and export size, e.g. 1.15-1.3x the training size (FixRes; the central '
        'crop keeps --eval_crop_fraction); 0: --image_size.',
    )
    dropout_rate: float = _option(
        0.0,
        'Dropout after each conv in dense blocks (paper: 0.2 without augmentation; 0 for '
        'ImageNet).',
    )
    batch_norm_momentum: float = _option(
        0.99,
        "Decay of batch-norm moving statistics (Keras Applications' 0.99; the paper's Torch "
        'code used 0.9, better for small data sets with few steps).',
    )
    bfloat16: bool = _option(
        True, 'bf16 compute with float32 variables and logits (alias of --precision).'
    )
    # Resolved on construction: --precision when given, else from --bfloat16.
    precision: Optional[str] = _option(
        None,
        'Compute dtype (variables and logits stay float32). When given it wins over '
        "--bfloat16, the seed's flag, which otherwise picks bfloat16 (true) or float32 (false).",
        choices=PRECISIONS,
    )
    loss_scale: str = _option(
        'auto',
        "Loss scaling: 'auto' (dynamic for float16, none for bfloat16/float32), 'dynamic' "
        '(2^15, x2 after 2000 finite steps, /2 and skip on overflow), or a fixed number.',
    )
    memory_efficient: bool = _option(
        False,
        'Recompute the stem, dense layers and transitions in the backward pass: about 0.28x '
        'the memory of a step for a few percent more time; the same weights, but checkpoints '
        'laid out differently, so a run keeps the setting it started with.',
    )
    # Data processing.
    data_layout: str = _option(
        'auto',
        'TFRecord layout: slim (train-00000-of-01024 in one folder), tpu (train/ and '
        'validation/ sub-folders), tfds (imagenet2012-train.tfrecord-*); auto: from file names.',
        choices=('auto',) + LAYOUTS,
    )
    label_offset: Optional[int] = _option(
        None,
        'Subtracted from stored labels. Default: from the records (TF-slim and TPU labels are '
        '1..1000, TFDS labels 0..999).',
    )
    skip_bad_records: bool = _option(
        False,
        'Skip (and count in the log) truncated TFRecord files and undecodable images '
        'instead of stopping. A label out of range still stops the run.',
    )
    data_service_address: str = _option(
        '',
        'HOST:PORT of a tf.data service dispatcher (python -m input_pipeline.data_service): '
        'the training input is decoded and augmented on its workers, batch for batch as '
        'locally; evaluation stays here.',
    )
    data_service_timeout: float = _option(
        60.0,
        'With --data_service_address: seconds the training loop waits for a batch before '
        'the run ends in one line naming the workers that stopped (a worker that died is '
        'noticed sooner, by its batches stopping while the others go on).',
    )
    color_jitter: float = _option(
        0.0, 'Brightness/contrast/saturation jitter, 0..0.99 (fb.resnet.torch: 0.4).'
    )
    pca_lighting: float = _option(0.0, 'PCA lighting noise std (AlexNet, fb.resnet.torch: 0.1).')
    randaugment_layers: int = _option(
        0, 'RandAugment operations per image (timm recipe: 2); 0: off.'
    )
    randaugment_magnitude: float = _option(9.0, 'RandAugment magnitude, 0..10 (timm recipe: 9).')
    mixup_alpha: float = _option(
        0.0, 'Mixup Beta(alpha, alpha) (timm: 0.2-0.8); > 0 makes labels soft.'
    )
    cutmix_alpha: float = _option(
        0.0,
        'CutMix Beta(alpha, alpha) (timm: 1.0); > 0 makes labels soft; with mixup, a coin '
        'picks one per batch.',
    )
    crop_area_range: Tuple[float, float] = _option(
        (0.08, 1.0), 'Random-resized-crop area fraction range (Inception crop).'
    )
    crop_aspect_range: Tuple[float, float] = _option(
        (0.75, 1.3333333), 'Random-resized-crop aspect range.'
    )
    random_flip: bool = _option(True, 'Random left-right flips in training.')
    eval_crop_fraction: float = _option(0.875, 'Central crop fraction for evaluation (224/256).')
    shuffle_buffer: int = _option(10000, 'Examples in the training shuffle buffer.')
    # Optimisation.
    batch_size: int = _option(64, 'Batch size per replica.')
    epochs: int = _option(90, 'Epochs to train.')
    train_steps: int = _option(
        0,
        'When > 0, stop after this many global steps in total (the learning-rate schedule '
        'still spans --epochs, so a stopped run can be extended by raising it).',
    )
    optimizer: str = _option(
        'sgd',
        'Optimizer. adamw decays weights itself (decoupled, lr * weight_decay * w; try '
        '--weight_decay=0.05); the others get the L2 term in the loss.',
        choices=OPTIMIZERS,
    )
    momentum: float = _option(0.9, 'Momentum of SGD and RMSprop.')
    nesterov: bool = _option(False, 'Nesterov momentum for SGD (the paper used it).')
    weight_decay: float = _option(
        1e-4,
        'L2 coefficient of w in the gradient (loss gains wd/2*|w|^2); conv and dense kernels only.',
    )
    lr_sched: str = _option(
        'steps',
        'Learning-rate schedule; steps: initial_lr * 0.1^(epoch // lr_decay_epochs); '
        'piecewise: --lr_values between --lr_boundaries.',
        choices=SCHEDULES,
    )
    initial_lr: float = _option(5e-2, 'Initial learning rate.')
    final_lr: float = _option(1e-5, 'Final learning rate (linear, exponential, cosine).')
    lr_decay_epochs: int = _option(30, 'Epochs between 10x decays of the steps schedule.')
    lr_boundaries: Tuple[float, ...] = _option(
        (), 'piecewise: epochs at which the learning rate changes, e.g. 30,60,80.'
    )
    lr_values: Tuple[float, ...] = _option(
        (), 'piecewise: learning rates, one more than --lr_boundaries (default initial_lr x 0.1^i).'
    )
    warmup_epochs: float = _option(
        0.0, 'Linear learning-rate warmup from 0 over this many epochs (Goyal et al.).'
    )
    lr_scaling: str = _option(
        'none',
        'linear: every learning rate x global batch / 256 (the flags give the rates of batch 256).',
        choices=LR_SCALINGS,
    )
    label_smoothing: float = _option(
        0.0, 'Label smoothing eps (0.1 is usual on ImageNet; the paper used 0).'
    )
    ema_decay: float = _option(
        0.0,
        'Exponential moving average of the weights, used for evaluation and export, e.g. '
        '0.9999; 0 turns it off.',
    )
    grad_accum_steps: int = _option(
        1,
        'Compute each replica batch as this many micro-batches and apply their summed '
        'gradient once: the update of --batch_size at the activation memory of batch_size/N.',
    )
    # Loop and output cadence.
    steps_per_loop: int = _option(100, 'Train steps run inside one tf.function call.')
    log_every_steps: int = _option(100, 'Steps between train summaries and log lines.')
    checkpoint_every_steps: int = _option(1000, 'Steps between checkpoints (also at epoch ends).')
    keep_checkpoints: int = _option(5, 'Checkpoints kept.')
    init_checkpoint: Optional[str] = _option(
        None,
        'Start from these weights only (fine-tuning; the optimizer and step start afresh): a '
        'checkpoint (prefix or folder), an export (saves/epoch_NNN), or a Keras .h5 or '
        '.weights.h5 file (Keras Applications, with or without top). Layers match by name; a '
        'classifier of another class count, or none, starts fresh. Ignored when --model_dir '
        'already holds checkpoints, which are resumed instead.',
    )
    freeze_backbone_epochs: int = _option(
        0,
        'Fine-tuning: train only the classifier for this many epochs (every other layer '
        'frozen, its batch-norm statistics too), then every layer.',
    )
    # A dynamic scale starting at 2^15 needs about 15 skips to settle, so 50 in a row
    # means divergence.
    max_skipped_steps: int = _option(
        50, 'Stop when loss scaling skips more than this many steps in a row (0: no limit).'
    )
    save_every_epoch: bool = _option(
        True,
        'Export a SavedModel to saves/epoch_NNN after each epoch.',
    )
    export_last_step: bool = _option(
        True,
        "Export a SavedModel at the run's last step, also when it ends inside an epoch "
        '(saves/epoch_NNN.FFFF); false: only the exports of --save_every_epoch.',
    )
    histograms: bool = _option(
        False, 'Weight histograms in TensorBoard at each evaluation (large event files).'
    )
    profile_steps: Optional[Tuple[int, int]] = _option(
        None, 'A,B: profiler trace of train steps A to B (from 1) into logs/train, for TensorBoard.'
    )
    # Hardware and reproducibility.
    distribution_strategy: str = _option('auto', 'tf.distribute strategy.', choices=STRATEGIES)
    device: str = _option('auto', 'Device kind.', choices=DEVICES)
    num_gpus: int = _option(-1, 'GPUs to use; -1 for all visible.')
    tpu: str = _option('', 'TPU name or address for TPUClusterResolver.')
    jit_compile: bool = _option(False, 'XLA-compile the train step.')
    deterministic: bool = _option(False, 'Bit-reproducible runs (TF op determinism).')
    seed: int = _option(0, 'Seed of weights, data order and augmentation.')
    # Evaluation only.
    only_eval: Optional[str] = _option(
        None, 'Evaluate this checkpoint (prefix or folder) or SavedModel and exit.'
    )

    def __post_init__(self):
        # Sequences from the command line arrive as lists of strings.
        set_field = lambda name, value: object.__setattr__(self, name, value)
        set_field('crop_area_range', _range('crop_area_range', self.crop_area_range))
        set_field('crop_aspect_range', _range('crop_aspect_range', self.crop_aspect_range))
        set_field('lr_boundaries', _numbers('lr_boundaries', self.lr_boundaries))
        set_field('lr_values', _numbers('lr_values', self.lr_values))
        set_field('profile_steps', _profile_steps(self.profile_steps))
        # --precision wins over --bfloat16 (the seed's flag); both are set to agree, so
        # that flags.cfg holds a consistent pair and a restart from it is the same run.
        precision = self.precision or ('bfloat16' if self.bfloat16 else 'float32')
        set_field('precision', precision)
        set_field('bfloat16', precision == 'bfloat16')
        _check_values(self)


def _numbers(name: str, values, kind=float) -> tuple:
    if isinstance(values, str):
        values = [value for value in values.split(',') if value]
    try:
        return tuple(kind(value) for value in values)
    except (TypeError, ValueError):
        raise ConfigError(
            f'--{name} takes numbers separated by commas, not {",".join(map(str, values))}'
        ) from None


def _range(name: str, values) -> Tuple[float, float]:
    numbers = _numbers(name, values)
    if len(numbers) != 2:
        raise ConfigError(f'--{name} takes two numbers LOW,HIGH, not {",".join(map(str, values))}')
    low, high = numbers
    if not 0 < low <= high:
        raise ConfigError(f'--{name}={low},{high} needs 0 < LOW <= HIGH')
    return low, high


def _profile_steps(values) -> Optional[Tuple[int, int]]:
    if not values:
        return None
    try:
        first, last = _numbers('profile_steps', values, int)
    except (ConfigError, ValueError):
        raise ConfigError(
            f'--profile_steps takes two step numbers A,B, not {",".join(map(str, values))}'
        ) from None
    if not 1 <= first <= last:
        raise ConfigError(f'--profile_steps={first},{last} needs 1 <= A <= B')
    return first, last


def chief_rule(task_type, task_id, cluster_has_chief: bool) -> bool:
    """Whether a task of a tf.distribute cluster is the chief, the one that writes."""
    return (
        task_type is None
        or task_type == 'chief'
        or (task_type == 'worker' and task_id == 0 and not cluster_has_chief)
    )


def is_chief_task() -> bool:
    """Whether TF_CONFIG makes this process the chief (True without TF_CONFIG).

    The rule of `trainer/devices/distribute.py`'s `is_chief`, for code that runs before a
    strategy exists and before TensorFlow is loaded (taking the model_dir, writing
    flags.cfg): the `chief` task, or worker 0 of a cluster without one.
    """
    tf_config = json.loads(os.environ.get('TF_CONFIG') or '{}')
    task = tf_config.get('task', {})
    return chief_rule(
        task.get('type'), task.get('index', 0), 'chief' in tf_config.get('cluster', {})
    )


def is_local(path: str) -> bool:
    """Whether `path` is on this machine's file system (not `gs://...` and the like)."""
    return '://' not in path


def _check_values(config: RunConfig) -> None:
    """Raises ConfigError, naming the flag, for a value or combination that cannot work."""
    for name, choices in (
        ('device', DEVICES),
        ('distribution_strategy', STRATEGIES),
        ('optimizer', OPTIMIZERS),
        ('lr_sched', SCHEDULES),
        ('lr_scaling', LR_SCALINGS),
        ('precision', PRECISIONS),
        ('data_layout', ('auto',) + LAYOUTS),
    ):
        if getattr(config, name) not in choices:
            raise ConfigError(
                f'--{name}={getattr(config, name)!r} is not one of {", ".join(choices)}'
            )
    device, strategy = config.device, config.distribution_strategy
    allowed = {'tpu': ('auto', 'tpu'), 'hpu': ('auto', 'hpu')}
    if strategy in allowed and device not in allowed[strategy]:
        raise ConfigError(f'--distribution_strategy={strategy} cannot run on --device={device}')
    if device in allowed and strategy not in allowed[device] + ('one_device',):
        raise ConfigError(
            f'--device={device} needs --distribution_strategy={device} (or one_device, auto), '
            f'not {strategy}'
        )
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
        if getattr(config, name) <= 0:
            raise ConfigError(f'--{name} must be positive, not {getattr(config, name)}')
    if not 0 < config.eval_crop_fraction <= 1:
        raise ConfigError(f'--eval_crop_fraction={config.eval_crop_fraction} must be in (0, 1]')
    for name, low, high in (('color_jitter', 0.0, 0.99), ('randaugment_magnitude', 0.0, 10.0)):
        if not low <= getattr(config, name) <= high:
            raise ConfigError(f'--{name}={getattr(config, name)} must be in [{low}, {high}]')
    for name in ('pca_lighting', 'randaugment_layers', 'mixup_alpha', 'cutmix_alpha'):
        if getattr(config, name) < 0:
            raise ConfigError(f'--{name}={getattr(config, name)} must be 0 or more')
    for name in ('dropout_rate', 'label_smoothing', 'ema_decay'):
        if not 0 <= getattr(config, name) < 1:
            raise ConfigError(f'--{name}={getattr(config, name)} must be in [0, 1)')
    # 0 is allowed: a run that keeps its initial weights (tests use it to check them).
    for name in ('initial_lr', 'final_lr', 'momentum', 'weight_decay', 'train_steps'):
        if getattr(config, name) < 0:
            raise ConfigError(f'--{name} must be 0 or more, not {getattr(config, name)}')
    if any(value < 0 for value in config.lr_values):
        raise ConfigError(f'--lr_values must all be 0 or more, not {config.lr_values}')
    if config.max_skipped_steps < 0:
        raise ConfigError(f'--max_skipped_steps must be 0 or more, not {config.max_skipped_steps}')
    if config.freeze_backbone_epochs < 0:
        raise ConfigError(
            f'--freeze_backbone_epochs must be 0 or more, not {config.freeze_backbone_epochs}'
        )
    image_sizes.check(config, ConfigError)
    if config.data_service_address:
        _check_data_service(config)
    _check_training(config)


def _check_data_service(config: RunConfig) -> None:
    try:
        data_service.parse_address(config.data_service_address)
    except DataError as error:
        raise ConfigError(str(error)) from None
    if config.synthetic_data:
        raise ConfigError('--data_service_address has no input to serve with --synthetic_data')
    if config.skip_bad_records:
        # Skipping changes which records make a batch, and the workers must agree on it.
        raise ConfigError('--data_service_address cannot be combined with --skip_bad_records')
    if not config.data_service_timeout > 0:
        raise ConfigError(
            f'--data_service_timeout must be positive, not {config.data_service_timeout}'
        )


def _check_training(config: RunConfig) -> None:
    """The precision, schedule and regularisation values."""
    if config.loss_scale not in ('auto', 'dynamic'):
        try:
            scale = float(config.loss_scale)
        except ValueError:
            scale = 0.0
        if not scale > 0:
            raise ConfigError(
                f"--loss_scale={config.loss_scale} must be 'auto', 'dynamic' or a positive number"
            )
    if config.grad_accum_steps < 1 or config.batch_size % config.grad_accum_steps:
        raise ConfigError(
            f'--grad_accum_steps={config.grad_accum_steps} must be positive and divide '
            f'--batch_size={config.batch_size}'
        )
    if config.warmup_epochs < 0:
        raise ConfigError(f'--warmup_epochs={config.warmup_epochs} must be 0 or more')
    boundaries, values = config.lr_boundaries, config.lr_values
    if config.lr_sched == 'piecewise':
        if not boundaries or list(boundaries) != sorted(boundaries) or boundaries[0] <= 0:
            raise ConfigError(
                '--lr_sched=piecewise needs --lr_boundaries: increasing positive epochs'
            )
        if values and len(values) != len(boundaries) + 1:
            raise ConfigError(
                f'--lr_values needs {len(boundaries) + 1} values (one more than '
                f'--lr_boundaries), not {len(values)}'
            )

"""The run's configuration: one frozen object that every module below `main.py` reads.

`main.py` turns flags into a `RunConfig`; nothing else parses flags, so the trainer
can be driven from a test or a notebook with plain keyword arguments.
"""

import dataclasses
from typing import Optional, Tuple


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a training or evaluation run depends on.

    Defaults are the seed's recipe (`imagenet.cfg`), except where noted.
    """

    # Where the data is and where everything the run writes goes.
    dataset_dir: str = ''
    model_dir: str = ''
    synthetic_data: bool = False
    # The model.
    model: str = 'densenet121'
    num_classes: int = 1000
    image_size: int = 224
    dropout_rate: float = 0.0  # The seed's default; the paper used 0.2 only without augmentation.
    batch_norm_momentum: float = 0.99  # Keras Applications; the paper's Torch code: 0.9.
    bfloat16: bool = True  # bf16 compute, float32 variables and logits.
    # float32, bfloat16 or float16; '' follows `bfloat16` (the seed's flag, its alias).
    precision: str = ''
    # 'auto': dynamic for float16 (2^15, x2 after 2,000 finite steps), 1 otherwise;
    # 'dynamic'; or a fixed positive number.
    loss_scale: str = 'auto'
    # Recompute BN-ReLU-conv in dense layers in the backward pass: less memory, more time.
    memory_efficient: bool = False
    # Data and augmentation.
    # 'auto' or slim, tpu, tfds (input_pipeline/formats.py): how the TFRecords are laid out.
    data_layout: str = 'auto'
    # None: from the records (TF-slim and TPU labels are 1..1000, TFDS's 0..999).
    label_offset: Optional[int] = None
    crop_area_range: Tuple[float, float] = (0.08, 1.0)  # Inception crop (Szegedy et al.).
    crop_aspect_range: Tuple[float, float] = (0.75, 4.0 / 3.0)
    random_flip: bool = True
    eval_crop_fraction: float = 0.875  # 224/256, the usual single-crop evaluation.
    shuffle_buffer: int = 10000
    # Optional augmentation, all off by default (the seed's recipe).
    color_jitter: float = 0.0  # fb.resnet.torch (the paper's code): 0.4.
    pca_lighting: float = 0.0  # fb.resnet.torch: 0.1.
    randaugment_layers: int = 0  # timm's DenseNet recipe: 2 layers at magnitude 9.
    randaugment_magnitude: float = 9.0
    mixup_alpha: float = 0.0  # > 0 (timm: 0.2-0.8): soft labels [batch, num_classes].
    cutmix_alpha: float = 0.0  # > 0 (timm: 1.0): soft labels too.
    skip_bad_records: bool = False  # Skip (and count) damaged records instead of stopping.
    # Optimisation.
    batch_size: int = 64  # Per replica, as the seed.
    epochs: int = 90
    train_steps: int = 0  # When > 0, stop after this many global steps in total.
    optimizer: str = 'sgd'
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4  # Coefficient of w in the gradient (L2 term wd/2*|w|^2).
    lr_sched: str = 'steps'
    initial_lr: float = 5e-2
    final_lr: float = 1e-5
    lr_decay_epochs: int = 30  # `steps` schedule: lr * 0.1 every this many epochs.
    lr_boundaries: Tuple[float, ...] = ()  # `piecewise` schedule: epochs where lr changes.
    lr_values: Tuple[float, ...] = ()  # `piecewise`: one more than boundaries (or 0.1x steps).
    warmup_epochs: float = 0.0  # Linear warmup from 0 over this many epochs (Goyal et al.).
    lr_scaling: str = 'none'  # 'linear': learning rates x global batch / 256.
    label_smoothing: float = 0.0  # 0.1 is the usual ImageNet value; the paper used none.
    ema_decay: float = 0.0  # Weight averaging for eval/export, e.g. 0.9999; 0: off.
    grad_accum_steps: int = 1  # Split each replica's batch into this many micro-batches.
    # Loop, cadence and output.
    steps_per_loop: int = 100
    log_every_steps: int = 100
    checkpoint_every_steps: int = 1000
    keep_checkpoints: int = 5
    save_every_epoch: bool = True
    # Weights only (fine-tuning), when model_dir has no checkpoint yet: a checkpoint
    # or a Keras .h5 weights file.
    init_checkpoint: Optional[str] = None
    # Loss scaling skips overflowing steps; a dynamic scale starting at 2^15 needs about
    # 15 skips to settle, so 50 in a row means divergence. 0: no limit.
    max_skipped_steps: int = 50
    histograms: bool = False  # Weight histograms at each evaluation: large event files.
    profile_steps: Optional[Tuple[int, int]] = None  # Profiler trace of steps A..B.
    # Hardware and reproducibility.
    distribution_strategy: str = 'auto'
    device: str = 'auto'
    num_gpus: int = -1  # -1: all visible GPUs.
    tpu: str = ''
    jit_compile: bool = False
    deterministic: bool = False
    seed: int = 0
    # Evaluation only.
    only_eval: Optional[str] = None

    @property
    def compute_dtype(self) -> str:
        return self.precision or ('bfloat16' if self.bfloat16 else 'float32')

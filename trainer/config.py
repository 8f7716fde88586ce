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
    # Data and augmentation.
    label_offset: int = 1  # Inception/TF-slim labels are 1..1000; 0 is unused.
    crop_area_range: Tuple[float, float] = (0.08, 1.0)  # Inception crop (Szegedy et al.).
    crop_aspect_range: Tuple[float, float] = (0.75, 4.0 / 3.0)
    random_flip: bool = True
    eval_crop_fraction: float = 0.875  # 224/256, the usual single-crop evaluation.
    shuffle_buffer: int = 10000
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
    # Loop, cadence and output.
    steps_per_loop: int = 100
    log_every_steps: int = 100
    checkpoint_every_steps: int = 1000
    keep_checkpoints: int = 5
    save_every_epoch: bool = True
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
        return 'bfloat16' if self.bfloat16 else 'float32'

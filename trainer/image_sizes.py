"""The image sizes of a run: progressive resizing in training, and the evaluation size.

Progressive resizing trains the first epochs on small images and grows them to the
final size (FFCV's ImageNet recipes; fast.ai's DAWNBench entry before them): a small
image costs the decoder and the network a fraction of a large one, and the early
epochs, which learn coarse features, lose little. The rule is FFCV's: epoch `e`
(counted from 0) trains at `--min_image_size` up to `--resize_start_epoch`, at
`--image_size` from `--resize_end_epoch` on, and in between at the linear
interpolation, rounded to the nearest multiple of `--image_size_step`. So
a run meets at most `(image_size - min_image_size) / image_size_step + 1` sizes, and
each is one traced shape of the train loop (and one XLA compilation); sizes change
only between epochs, where the trainer builds the next epoch's input anew
(`trainer/run.py`).

The batch size stays the same at every size, as in FFCV's recipes: the steps of an
epoch, the learning-rate schedule and the data position of a step (exact resume) do
not depend on the size, and a smaller image only leaves memory unused.

Evaluation and the exported signatures use `--eval_image_size` (default: the final
training size). Evaluating above the training size counters the apparent-object-size
gap between random-resized-crop training and centre-crop testing (Touvron et al.,
"Fixing the train-test resolution discrepancy", 2019).

Nothing here imports TensorFlow: `main.py` prints the schedule's errors before loading it.
"""

import dataclasses
from typing import List, Optional, Tuple


@dataclasses.dataclass(frozen=True)
class ImageSizes:
    """The training size of each epoch, and the evaluation size.

    Args:
      final: the training size from `ramp_end` on (`--image_size`).
      smallest: the training size up to `ramp_start` (`--min_image_size`); equal to
        `final` for a run at one size.
      ramp_start: the last epoch at `smallest`.
      ramp_end: the first epoch at `final`.
      step: every size is a multiple of it.
      eval: the evaluation and export size.
    """

    final: int
    smallest: int
    ramp_start: int = 0
    ramp_end: int = 0
    step: int = 32
    eval: int = 0

    def __post_init__(self):
        if not self.eval:
            object.__setattr__(self, 'eval', self.final)

    @classmethod
    def from_settings(cls, config) -> 'ImageSizes':
        """From a `RunConfig`'s fields of the same names (checked there)."""
        return cls(
            final=config.image_size,
            smallest=config.min_image_size or config.image_size,
            ramp_start=config.resize_start_epoch,
            ramp_end=config.resize_end_epoch,
            step=config.image_size_step,
            eval=config.eval_image_size or config.image_size,
        )

    @property
    def progressive(self) -> bool:
        return self.smallest != self.final

    def train(self, epoch: int) -> int:
        """The training image size of epoch `epoch` (from 0)."""
        if not self.progressive or epoch <= self.ramp_start:
            return self.smallest
        if epoch >= self.ramp_end:
            return self.final
        fraction = (epoch - self.ramp_start) / (self.ramp_end - self.ramp_start)
        # Rounded as FFCV rounds (NumPy's, halves to even); both ends are multiples of step.
        return self.step * round(
            (self.smallest + fraction * (self.final - self.smallest)) / self.step
        )

    def next_change(self, epoch: int) -> Optional[int]:
        """The first epoch after `epoch` that trains at another size; None if none does."""
        if not self.progressive:
            return None
        size = self.train(epoch)
        for later in range(epoch + 1, max(self.ramp_end, epoch) + 1):
            if self.train(later) != size:
                return later
        return None

    def phases(self, epochs: int) -> List[Tuple[int, int]]:
        """(first epoch, size) of each stretch of one size within `epochs` epochs."""
        phases, epoch = [(0, self.train(0))], 0
        while (epoch := self.next_change(epoch)) is not None and epoch < epochs:
            phases.append((epoch, self.train(epoch)))
        return phases

    def all_sizes(self) -> List[int]:
        """Every size the model meets: the training sizes, then evaluation's if new."""
        sizes = [size for _, size in self.phases(max(self.ramp_end, 0) + 1)]
        return sizes + ([self.eval] if self.eval not in sizes else [])

    def describe(self, epochs: int) -> str:
        """The schedule in words, for the start-up banner."""
        phases = self.phases(epochs)
        if len(phases) == 1:
            text = f'{phases[0][1]}x{phases[0][1]} training images'
        else:
            ends = [first for first, _ in phases[1:]] + [epochs]
            stretches = [
                f'{size} px for epoch{"s" * (end - first > 1)} '
                f'{first + 1}{f"-{end}" if end - first > 1 else ""}'
                for (first, size), end in zip(phases, ends)
            ]
            text = f'progressive training image sizes ({len(phases)} traced shapes): ' + ', '.join(
                stretches
            )
        return f'{text}; evaluation and export at {self.eval}x{self.eval}'


def check(config, error) -> None:
    """Raises `error(message)` naming the flag for a schedule that cannot work."""
    final, smallest, step = config.image_size, config.min_image_size, config.image_size_step
    if config.eval_image_size < 0:
        raise error(
            f'--eval_image_size must be positive (or 0: --image_size), not {config.eval_image_size}'
        )
    if step <= 0:
        raise error(f'--image_size_step must be positive, not {step}')
    if not smallest:
        return
    if not 0 < smallest <= final:
        raise error(
            f'--min_image_size={smallest} must be positive and at most --image_size={final}'
        )
    if final % step or smallest % step:
        raise error(
            f'--image_size={final} and --min_image_size={smallest} must be multiples of '
            f'--image_size_step={step}'
        )
    if not 0 <= config.resize_start_epoch < config.resize_end_epoch:
        raise error(
            f'--min_image_size needs 0 <= --resize_start_epoch < --resize_end_epoch, not '
            f'{config.resize_start_epoch} and {config.resize_end_epoch}'
        )

"""TensorBoard summaries: `logs/train` and `logs/eval` under the model_dir, chief only.

What a run writes, and where TensorBoard shows it:

- Scalars (`train` and `eval` runs): per log interval the train figures of
  `train_scalars`, per evaluation `top1`, `top5`, `loss` and `cross_entropy` (the same
  value as `loss`: the train run's `loss` includes the L2 term, so compare
  `cross_entropy` across the two runs).
- Images (`train`): one grid of augmented training images at the start, denormalised
  back to what the eye reads, so crops and flips can be checked by looking.
- HParams (the `logs` folder itself): the run's configuration, for the hparams
  dashboard's table of runs.
- Histograms (`train`, opt-in): every trainable variable, at each evaluation.

Everything is written from Python between loops, never inside the traced step, which
keeps the step free of summary ops and sidesteps the writer-capture trap of
`tf.function` (a traced function keeps writing to the default writer of the time it
was traced).
"""

import dataclasses
import math
import os
from typing import Dict, Iterable, Mapping, Optional

import numpy as np
import tensorflow as tf

from input_pipeline import augment

# The hparams dashboard's metric columns: (run, tag).
_HPARAMS_METRICS = (
    ('eval', 'top1'),
    ('eval', 'top5'),
    ('eval', 'cross_entropy'),
    ('train', 'loss'),
    ('train', 'top1'),
)


class SummaryWriters:
    """One event-file writer per split; no-op writers on workers other than the chief.

    Args:
      model_dir: the run's folder; event files go to `model_dir/logs/{train,eval}`.
      enabled: False on workers other than the chief: every call is then a no-op.
    """

    def __init__(self, model_dir: str, *, enabled: bool = True):
        self.enabled = enabled
        self.logdir = os.path.join(model_dir, 'logs')
        self._writers = {}
        # '' is the logs folder itself: the hparams plugin reads a session there and
        # finds its metrics in the `train` and `eval` runs below it.
        for split in ('train', 'eval', ''):
            self._writers[split] = (
                tf.summary.create_file_writer(os.path.join(self.logdir, split))
                if enabled
                else tf.summary.create_noop_writer()
            )

    def scalars(self, split: str, step: int, values: Mapping[str, float]) -> None:
        """Writes `values` as scalars of run `split` at `step`, and flushes."""
        writer = self._writers[split]
        with writer.as_default():
            for name, value in values.items():
                tf.summary.scalar(name, value, step=step)
        writer.flush()

    def image_grid(self, step: int, images: tf.Tensor, *, name: str = 'training_images') -> None:
        """Writes uint8 images (the input pipeline's) as one grid image.

        One grid, rather than `max_outputs` separate images, shows a batch at a glance.
        """
        if not self.enabled:
            return
        writer = self._writers['train']
        with writer.as_default():
            tf.summary.image(name, image_grid(images)[tf.newaxis], step=step)
        writer.flush()

    def hparams(self, config) -> None:
        """Writes the run's configuration (a dataclass) for the hparams dashboard."""
        if not self.enabled:
            return
        # Imported here: only the chief needs the plugin, and only once.
        from tensorboard.plugins.hparams import api as hparams_api  # pylint: disable=g-import-not-at-top

        values = hparams_values(config)
        writer = self._writers['']
        with writer.as_default():
            hparams_api.hparams_config(
                hparams=[hparams_api.HParam(name) for name in values],
                metrics=[
                    hparams_api.Metric(tag, group=run, display_name=f'{run} {tag}')
                    for run, tag in _HPARAMS_METRICS
                ],
            )
            hparams_api.hparams(values)
        writer.flush()

    def histograms(self, step: int, variables: Iterable[tf.Variable]) -> None:
        """Writes a histogram of each variable to the `train` run."""
        if not self.enabled:
            return
        writer = self._writers['train']
        with writer.as_default():
            for variable in variables:
                tf.summary.histogram(variable_name(variable), variable, step=step)
        writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()


def train_scalars(
    window: Mapping[str, float],
    *,
    steps: int,
    seconds: float,
    learning_rate: float,
    epoch: float,
    weight_norm: float,
    loss_scale: Optional[float] = None,
) -> Dict[str, float]:
    """Turns one log interval's sums into the train scalars.

    Args:
      window: the train loop's totals, summed over the interval's steps and replicas:
        `cross_entropy`, `top1`, `top5` (sums over examples), `count` (examples), `l2`
        (the L2 term, once per step), `grad_norm_sq` and `grad_norm_steps` (the
        squared gradient norm summed over the steps it was measured at, and their
        number: the train loop measures it on the last step of each of its calls
        only, and not where that step was skipped; see `loop.make_train_loop`), and
        when present `skipped` (steps whose update dynamic loss scaling skipped) and
        `input_wait` (seconds the loop waited for batches, see `loop.py`; not
        measured under op determinism).
      steps: train steps in the interval.
      seconds: wall time of the interval.
      learning_rate: the learning rate of the interval's last step.
      epoch: epochs done at the end of the interval (fractional).
      weight_norm: global L2 norm of the trainable weights, now.
      loss_scale: the loss scaler's scale; 1 when the run scales no loss.

    Returns:
      A dict of scalars by tag name; `input_wait_fraction` only where it was measured.
    """
    count = max(window['count'], 1.0)
    steps = max(steps, 1)
    seconds = max(seconds, 1e-9)
    cross_entropy = window['cross_entropy'] / count
    l2 = window['l2'] / steps
    measured = round(window.get('grad_norm_steps', 0.0))
    values = {
        'loss': cross_entropy + l2,
        'cross_entropy': cross_entropy,
        'l2': l2,
        'top1': window['top1'] / count,
        'top5': window['top5'] / count,
        'learning_rate': learning_rate,
        'loss_scale': 1.0 if loss_scale is None else loss_scale,
        'skipped_steps': window.get('skipped', 0.0),
        # Root of the mean over the measured steps: the last step of each loop call in
        # the interval (a call ends at every logging step, so an interval of one call
        # gives the norm at the logged step). A skipped step's gradients were not
        # finite: the loop does not count it as measured. NaN when no step was measured.
        'gradient_norm': (
            math.sqrt(max(window.get('grad_norm_sq', 0.0), 0.0) / measured)
            if measured
            else math.nan
        ),
        'weight_norm': weight_norm,
        'images_per_second': window['count'] / seconds,
        'step_time': seconds / steps,
        'epoch': epoch,
    }
    if 'input_wait' in window:
        values['input_wait_fraction'] = min(window['input_wait'] / seconds, 1.0)
    return values


def global_norm(variables: Iterable[tf.Variable]) -> float:
    """sqrt(sum of squares) of all `variables`, in float64 on the host.

    Read once per log interval; numpy keeps it out of any traced function and exact
    enough for DenseNet-121's 8M weights.
    """
    total = 0.0
    for variable in variables:
        value = np.asarray(tf.convert_to_tensor(variable), np.float64)
        total += float(np.sum(value * value))
    return math.sqrt(total)


def image_grid(images: tf.Tensor, columns: int = 0) -> tf.Tensor:
    """Tiles images `[N, H, W, 3]` into one `[H', W', 3]` grid.

    Args:
      images: uint8 pixels, as the input pipeline gives them.
      columns: images per row; 0 for a square-ish grid.

    Returns:
      A float32 image with values in [0, 1], 1-pixel white lines between the tiles.
    """
    images = tf.cast(images, tf.float32) / 255.0
    count = int(images.shape[0])
    columns = columns or int(math.ceil(math.sqrt(count)))
    rows = -(-count // columns)
    # White padding: blank tiles for a short last row, and the lines between tiles.
    images = tf.concat([images, tf.ones([rows * columns - count, *images.shape[1:]])], 0)
    images = tf.pad(images, [[0, 0], [1, 0], [1, 0], [0, 0]], constant_values=1.0)
    height, width = int(images.shape[1]), int(images.shape[2])
    grid = tf.reshape(images, [rows, columns, height, width, 3])
    grid = tf.reshape(tf.transpose(grid, [0, 2, 1, 3, 4]), [rows * height, columns * width, 3])
    return tf.pad(grid, [[0, 1], [0, 1], [0, 0]], constant_values=1.0)


def hparams_values(config) -> Dict[str, object]:
    """The dataclass's fields as hparams values: bool, int, float or str, no None."""
    values = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value is None:
            continue
        if isinstance(value, (tuple, list)):
            value = ','.join(str(item) for item in value)
        if not isinstance(value, (bool, int, float, str)):
            value = str(value)
        values[field.name] = value
    return values


def variable_name(variable: tf.Variable) -> str:
    """The variable's path without the `:0` suffix, on Keras 2 and Keras 3."""
    name = getattr(variable, 'path', None) or variable.name
    return name[:-2] if name.endswith(':0') else name

"""One replica's train and eval steps.

The train step is a `TrainStep` of (model, optimizer, loss scaler) in two halves:
`gradients(images, labels)` (forward, backward, unscaled gradients and metrics) and
`apply(gradients)` (the optimizer's update, then the weight average). The loop
(`trainer/engine/loop.py`) runs each half through `strategy.run` and decides in between
whether to apply at all: with dynamic loss scaling a step whose gradients overflowed
is skipped, and that decision must be taken outside the replicas (see
`trainer/optimization/loss_scaling.py`).

Steps return *sums* over the replica's examples; the loop adds them over replicas and
steps and divides once, so averages are exact whatever the batch split.

The squared gradient norm is a third, separate replica function,
`grad_norm_sq(gradients)`: it reads every gradient once more, a cost worth paying only
at the steps whose figure is logged, so the loop runs it on the last step of each of
its calls only (`trainer/engine/loop.py`).
"""

from typing import Dict, List, Optional, Sequence, Tuple

import keras
import tensorflow as tf

import densenet
from input_pipeline import augment
from trainer.optimization import loss_scaling


def decayed_variables_of(model: keras.Model) -> List[tf.Variable]:
    """The variables that L2 decay applies to: conv and dense kernels only.

    Batch-norm scales and offsets and biases are left alone, as in the paper's Torch
    code (which decays all, but DenseNet has no conv biases) and the usual modern
    practice; decaying BN parameters only shrinks them against their own invariance.
    """
    kernels = []
    for layer in densenet.all_layers(model):
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            kernels.append(layer.kernel)
    return kernels


def ordered_sum(values: Sequence[tf.Tensor]) -> tf.Tensor:
    """The sum of float scalars, added in the same order on every run.

    `tf.add_n` adds its inputs in an order that depends on thread timing
    (`densenet/batch_norm.py` says why), so a sum of many float terms changes in its
    last bits from run to run; a reduction over the stacked values does not.
    """
    return tf.reduce_sum(tf.stack(values))


def l2_term(variables: Sequence[tf.Variable], weight_decay: float) -> tf.Tensor:
    """wd/2 * sum(w^2): its gradient adds wd * w, the paper's and PyTorch's weight decay."""
    if not variables or not weight_decay:
        return tf.constant(0.0)
    squares = [tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in variables]
    return 0.5 * weight_decay * ordered_sum(squares)


def _top_k_correct(logits: tf.Tensor, classes: tf.Tensor, k: int) -> tf.Tensor:
    k = min(k, logits.shape[-1])
    return tf.cast(tf.math.in_top_k(classes, logits, k), tf.float32)


def _is_distribution(labels: tf.Tensor) -> bool:
    """Whether `labels` are target distributions `[batch, classes]`, not class ids `[batch]`."""
    return labels.dtype.is_floating


def reference_classes(labels: tf.Tensor) -> tf.Tensor:
    """The class each example's top-1 and top-5 are measured against, int32 `[batch]`.

    Class ids are their own reference. For target distributions (mixup, CutMix) it is
    the argmax: the source that contributes most to the mixed example (for a mixed
    pair of one class, that class).
    """
    if _is_distribution(labels):
        return tf.argmax(labels, axis=-1, output_type=tf.int32)
    return tf.cast(labels, tf.int32)


def cross_entropy_loss(
    labels: tf.Tensor, logits: tf.Tensor, label_smoothing: float = 0.0
) -> tf.Tensor:
    """Per-example softmax cross-entropy against class ids or target distributions.

    The label contract of the train step: `labels` are int class ids `[batch]`, or
    float target distributions `[batch, classes]` (rows summing to 1), which is what
    the input pipeline yields with mixup or CutMix.

    Label smoothing (Szegedy et al., 2016) trains towards (1 - eps) on the target and
    eps / num_classes on every class, which keeps logits from growing without bound;
    eps = 0.1 is the usual ImageNet value. It is applied here, after the pipeline
    mixed the targets: both are affine maps of the one-hot targets, so mixing then
    smoothing equals timm's smoothing then mixing.
    """
    if not _is_distribution(labels) and not label_smoothing:
        return tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(labels, tf.int32), logits)
    num_classes = logits.shape[-1]
    if _is_distribution(labels):
        targets = tf.cast(labels, tf.float32)
    else:
        targets = tf.one_hot(tf.cast(labels, tf.int32), num_classes)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return tf.nn.softmax_cross_entropy_with_logits(targets, logits)


class TrainStep:
    """Forward, backward and update on one replica's share of the global batch.

    Args:
      model: the Keras model (images -> logits).
      optimizer: a Keras optimizer, built on `model.trainable_variables`.
      loss_scaler: a `loss_scaling.LossScaler` (a fixed scale of 1 when None).
      global_batch_size: examples in one step over all replicas (per-replica batch x
        replicas); the per-example loss sum is divided by it.
      num_replicas: replicas in sync; each adds 1/num_replicas of the L2 term.
      weight_decay: L2 coefficient (0 where the optimizer decays weights itself).
      decayed_variables: the variables L2 applies to (default: `decayed_variables_of(model)`).
      label_smoothing: eps of label smoothing, 0 for none.
      grad_accum_steps: N > 1 splits the replica's batch into N micro-batches, one
        forward and backward each, and applies their summed gradients once: the
        update of the whole batch (exactly, for models without batch norm) at the
        activation memory of one micro-batch. Batch norm normalises, and updates its
        moving statistics, per micro-batch.
      weight_average: a `trainer.optimization.ema.WeightAverage` to update after each applied step.
    """

    def __init__(
        self,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        *,
        loss_scaler: Optional[loss_scaling.LossScaler] = None,
        global_batch_size: int,
        num_replicas: int = 1,
        weight_decay: float = 0.0,
        decayed_variables: Optional[Sequence[tf.Variable]] = None,
        label_smoothing: float = 0.0,
        grad_accum_steps: int = 1,
        weight_average=None,
    ):
        if grad_accum_steps < 1:
            raise ValueError(f'grad_accum_steps must be positive, not {grad_accum_steps}')
        self.model = model
        self.optimizer = optimizer
        self.loss_scaler = loss_scaler or loss_scaling.LossScaler()
        self.global_batch_size = int(global_batch_size)
        self.num_replicas = int(num_replicas)
        self.weight_decay = float(weight_decay)
        self.decayed_variables = list(
            decayed_variables_of(model) if decayed_variables is None else decayed_variables
        )
        self.label_smoothing = float(label_smoothing)
        self.grad_accum_steps = int(grad_accum_steps)
        self.weight_average = weight_average
        self.variables = model.trainable_variables

    def gradients(
        self, images: tf.Tensor, labels: tf.Tensor
    ) -> Tuple[List[tf.Tensor], Dict[str, tf.Tensor]]:
        """This replica's unscaled gradients of the global mean loss, and its metrics.

        Args:
          images: the replica's batch.
          labels: int class ids `[batch]` or float target distributions `[batch,
            classes]` (mixup, CutMix); see `cross_entropy_loss`. Top-1 and top-5 count
            hits of `reference_classes(labels)`.

        Returns:
          (gradients, one per trainable variable, not yet summed over replicas;
          metrics: sums over this replica's examples (`cross_entropy`, `top1`, `top5`,
          `count`) and this replica's share of the L2 term (`l2`); summed over
          replicas these give the global figures. With dynamic loss scaling also
          `non_finite`, the number of inf or NaN gradient values, which the loop sums
          over replicas to decide the skip. The gradient norm is not among them: see
          `grad_norm_sq`.)
        """
        if self.grad_accum_steps == 1:
            gradients, metrics = self._micro_batch(images, labels)
        else:
            gradients, metrics = self._accumulate(images, labels)
        gradients = self.loss_scaler.unscale(gradients)
        if self.loss_scaler.skips_steps:
            metrics['non_finite'] = self.loss_scaler.count_non_finite(gradients)
        return gradients, metrics

    def grad_norm_sq(self, gradients: Sequence[Optional[tf.Tensor]]) -> tf.Tensor:
        """This replica's share of the squared gradient norm, from `gradients`' output.

        The squared norm of the loss gradient as this replica's batch estimates it (its
        share times num_replicas), weighted so that the sum over replicas is the mean:
        on one replica, exactly the global gradient's. The all-reduced gradient's own
        norm would cost a second all-reduce of every gradient. A sum over every
        gradient value, so the loop runs it only at the steps it reports (see
        `trainer/engine/loop.py`), not on every step.
        """
        return self.num_replicas * ordered_sum(
            [tf.reduce_sum(tf.square(tf.cast(g, tf.float32))) for g in gradients if g is not None]
        )

    def apply(self, gradients: Sequence[tf.Tensor]) -> tf.Tensor:
        """Applies this replica's gradients; the optimizer sums them over replicas."""
        self.optimizer.apply_gradients(zip(gradients, self.variables))
        if self.weight_average is not None:
            self.weight_average.update()
        return tf.constant(True)

    def skip(self) -> tf.Tensor:
        """Counts a step without updating the weights (cross-replica context).

        The optimizer's step counter is the global step: it still advances, so that
        the data position, the learning-rate schedule and the checkpoint numbers keep
        counting batches.
        """
        self.optimizer.iterations.assign_add(1)
        return tf.constant(False)

    def _micro_batch(self, images, labels):
        """Scaled gradients and metric sums of one (micro-)batch."""
        with tf.GradientTape() as tape:
            # Logits in float32 whatever the compute dtype: softmax in bf16 loses the tail.
            logits = tf.cast(
                self.model(model_input(images, self.model.compute_dtype), training=True),
                tf.float32,
            )
            per_example = cross_entropy_loss(labels, logits, self.label_smoothing)
            cross_entropy = tf.reduce_sum(per_example)
            # The optimizer sums gradients over replicas, so dividing the per-example sum
            # by the *global* batch makes that sum the gradient of the global mean loss;
            # the L2 term is counted once in total, a 1/num_replicas share on each
            # replica, split again over the micro-batches of an accumulated step.
            l2 = l2_term(self.decayed_variables, self.weight_decay) / (
                self.num_replicas * self.grad_accum_steps
            )
            loss = cross_entropy / self.global_batch_size + l2
            scaled_loss = self.loss_scaler.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, self.variables)
        classes = reference_classes(labels)
        metrics = {
            'cross_entropy': cross_entropy,
            'l2': l2,
            'top1': tf.reduce_sum(_top_k_correct(logits, classes, 1)),
            'top5': tf.reduce_sum(_top_k_correct(logits, classes, 5)),
            'count': tf.cast(tf.shape(labels)[0], tf.float32),
        }
        return gradients, metrics

    def _accumulate(self, images, labels):
        """Sums `_micro_batch` over `grad_accum_steps` equal slices of the batch."""
        steps = self.grad_accum_steps
        micro = tf.shape(images)[0] // steps

        def body(i, gradients, metrics):
            start = i * micro
            new_gradients, new_metrics = self._micro_batch(
                images[start : start + micro], labels[start : start + micro]
            )
            gradients = [
                total + (tf.zeros_like(total) if g is None else tf.convert_to_tensor(g))
                for total, g in zip(gradients, new_gradients)
            ]
            metrics = {key: metrics[key] + new_metrics[key] for key in metrics}
            return i + 1, gradients, metrics

        zeros = [tf.zeros(v.shape, tf.float32) for v in self.variables]
        keys = ('cross_entropy', 'l2', 'top1', 'top5', 'count')
        _, gradients, metrics = tf.while_loop(
            lambda i, *_: i < steps,
            body,
            (tf.constant(0), zeros, {key: tf.constant(0.0) for key in keys}),
            # One micro-batch at a time: running them in parallel would hold the
            # activations of several, which is what accumulation is there to avoid.
            parallel_iterations=1,
        )
        return gradients, metrics


def model_input(images: tf.Tensor, dtype) -> tf.Tensor:
    """The model's input: the pipeline's uint8 pixels normalised, in `dtype`.

    The host ships uint8 (a quarter of float32's bytes) and the normalisation runs
    here, on the accelerator, inside the compiled step (`input_pipeline/preprocessing.py`).
    Float inputs are taken as already prepared and passed on as they are (a model fed
    by a pipeline of its own, or features that are not pixels); the choice is made
    from the static dtype, when the step is traced.
    """
    if images.dtype != tf.uint8:
        return images
    return augment.normalize(images, dtype)


def eval_step(
    predict_fn, images: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor
) -> Dict[str, tf.Tensor]:
    """Weighted sums of loss and hits; padding examples carry weight 0.

    Args:
      predict_fn: images -> logits, a Keras model in inference mode or a SavedModel's
        signature, so checkpoints and exports are evaluated by the same code.
    """
    labels = tf.cast(labels, tf.int32)
    logits = tf.cast(predict_fn(model_input(images, tf.float32)), tf.float32)
    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    return {
        'cross_entropy': tf.reduce_sum(per_example * weights),
        'top1': tf.reduce_sum(_top_k_correct(logits, labels, 1) * weights),
        'top5': tf.reduce_sum(_top_k_correct(logits, labels, 5) * weights),
        'count': tf.reduce_sum(weights),
    }

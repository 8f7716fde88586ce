"""The per-replica loop: `steps_per_loop` steps inside one `tf.function`.

Running many steps per call keeps the host out of the accelerator's way (one Python
round trip per loop instead of per step), which is what makes small per-step times
reachable on GPUs and TPUs. The number of steps is a tensor, so changing it (the last
loop of an epoch is often shorter) does not retrace.

Each train step is two `strategy.run` calls, the gradients and the update (see
`trainer/engine/step.py`). Between them, in cross-replica context, the loop sums the metrics
over replicas and, with dynamic loss scaling, decides whether to apply the update.
The decision sits here because a `tf.cond` around an update *inside* a replica
function fails under MirroredStrategy (the optimizer's `merge_call` may not run in a
nested graph), while a `tf.cond` around a whole `strategy.run` works on every
strategy we run.

The logged gradient norm is measured on the last step of each call only, likewise in
cross-replica context: a `tf.cond` on "last step" around a `strategy.run` of
`TrainStep.grad_norm_sq`. On every step, reading every gradient once more cost two
ops per variable, about 80 of the 1,300 ops of a step of the small model of
`bench/train_step.py`'s overhead case, for a figure that is read once per log
interval; and the controller ends a call at every step some action is due at
(`trainer/engine/controller.py`), every logging step among them, so the last step of a call
is the step a log line reports.
"""

from typing import Callable, Dict, Optional, Sequence

import tensorflow as tf

from trainer.devices import distribute

TRAIN_METRICS = (
    'cross_entropy',
    'l2',
    'top1',
    'top5',
    'count',
    'grad_norm_sq',
    'grad_norm_steps',
    'skipped',
)
EVAL_METRICS = ('cross_entropy', 'top1', 'top5', 'count')


def _summed_loop(
    step_fn: Callable,
    keys: Sequence[str],
    *,
    measure_input_wait: bool = False,
    loss_of: Optional[Callable] = None,
) -> Callable:
    """Wraps `step_fn(batch, last) -> sums over replicas` into `loop(iterator, num_steps)`.

    The returned function runs `num_steps` steps on batches from the distributed
    iterator and returns the metrics summed over steps. `last`, a bool tensor, is
    True on the call's last step only (index `num_steps - 1`): the step whose figures
    a log line after the call reports. Also `input_wait`: the seconds
    the host spent blocked in `next(iterator)`. tf.data hands over a prefetched batch
    at once, so the wait is the time the input pipeline fell behind. Where the device
    runs behind the host (GPUs, TPUs), part of it can overlap the previous step's
    compute: it bounds the device's starving from above. Only with
    `measure_input_wait`: TensorFlow refuses to read the clock in a graph under op
    determinism (`--deterministic`).

    With `loss_of(sums) -> scalar loss`, it also returns `first_nonfinite_step`, the
    0-based index in the loop of the first step whose loss was not finite (-1 if
    none), and `first_nonfinite_loss`, that loss: a sum over the loop cannot say which
    step diverged, and a user going back to a checkpoint needs to know.
    """

    @tf.function
    def loop(iterator, num_steps):
        totals = {key: tf.constant(0.0) for key in keys}
        input_wait = tf.constant(0.0, tf.float64)
        first_bad, bad_loss = tf.constant(-1, tf.int32), tf.constant(0.0)
        for index in tf.range(num_steps):
            if measure_input_wait:
                start = tf.timestamp()
                with tf.control_dependencies([start]):
                    batch = next(iterator)
                with tf.control_dependencies(tf.nest.flatten(batch, expand_composites=True)):
                    input_wait += tf.timestamp() - start
            else:
                batch = next(iterator)
            sums = step_fn(batch, tf.equal(index, num_steps - 1))
            totals = {key: totals[key] + sums[key] for key in keys}
            if loss_of is not None:
                loss = tf.cast(loss_of(sums), tf.float32)
                first = tf.logical_and(first_bad < 0, tf.logical_not(tf.math.is_finite(loss)))
                first_bad = tf.where(first, tf.cast(index, tf.int32), first_bad)
                bad_loss = tf.where(first, loss, bad_loss)
        if loss_of is not None:
            totals = {**totals, 'first_nonfinite_step': first_bad, 'first_nonfinite_loss': bad_loss}
        if not measure_input_wait:
            return totals
        return {**totals, 'input_wait': tf.cast(input_wait, tf.float32)}

    return loop


def _sum_over_replicas(strategy, per_replica, keys):
    return {
        key: strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica[key], axis=None)
        for key in keys
    }


def make_train_loop(
    strategy: tf.distribute.Strategy,
    train_step,
    *,
    jit_compile: bool = False,
    measure_input_wait: bool = False,
) -> Callable[..., Dict[str, tf.Tensor]]:
    """`loop(iterator, num_steps)` running a `step.TrainStep` `num_steps` times per call.

    Args:
      strategy: the strategy whose replicas run the step.
      train_step: a `trainer.engine.step.TrainStep`.
      jit_compile: XLA-compile the gradient half of the step, and the update half
        where XLA can compile its cross-replica sum (one replica, or GPUs only).
      measure_input_wait: also return `input_wait`, the seconds spent waiting for
        batches; not possible under op determinism.

    Returns:
      The loop; it returns TRAIN_METRICS summed over replicas and steps (`skipped`
      counts the steps dynamic loss scaling skipped), `first_nonfinite_step` and
      `first_nonfinite_loss` (see `_summed_loop`), and `input_wait` when measured.
      The gradient norm is sampled, not summed over every step: `grad_norm_sq` is
      the squared norm (`step.TrainStep.grad_norm_sq`, summed over replicas) of the
      call's last step, and `grad_norm_steps` is 1 for that measurement; both are 0
      when that step was skipped, whose gradients are inf or NaN. Over the calls of
      a log interval, sqrt(sum grad_norm_sq / sum grad_norm_steps) is the RMS norm
      of the sampled steps (`summaries.train_scalars`).
    """
    gradients_fn, norm_fn, apply_fn = (
        train_step.gradients,
        train_step.grad_norm_sq,
        train_step.apply,
    )
    if jit_compile:
        gradients_fn = tf.function(gradients_fn, jit_compile=True)
        norm_fn = tf.function(norm_fn, jit_compile=True)
        if distribute.xla_compiles_updates(strategy):
            apply_fn = tf.function(apply_fn, jit_compile=True)
    scaler = train_step.loss_scaler
    keys = [
        key for key in TRAIN_METRICS if key not in ('grad_norm_sq', 'grad_norm_steps', 'skipped')
    ]

    def apply(gradients):
        strategy.run(apply_fn, args=(gradients,))
        return tf.constant(True)

    def norm_sq(gradients):
        per_replica = strategy.run(norm_fn, args=(gradients,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def one_step(batch, last):
        gradients, per_replica = strategy.run(gradients_fn, args=batch)
        sums = _sum_over_replicas(strategy, per_replica, keys)
        if scaler.skips_steps:
            # Summed over replicas, so every replica sees the same count and the same
            # branch is taken everywhere.
            non_finite = strategy.reduce(
                tf.distribute.ReduceOp.SUM, per_replica['non_finite'], axis=None
            )
            finite = tf.equal(non_finite, 0.0)
            tf.cond(finite, lambda: apply(gradients), train_step.skip)
            scaler.update(finite)
            sums['skipped'] = 1.0 - tf.cast(finite, tf.float32)
            # A skipped step's gradients are inf or NaN: measured, its squared norm would
            # make the interval's gradient_norm NaN. It counts as not measured.
            measured = tf.logical_and(last, finite)
        else:
            apply(gradients)
            sums['skipped'] = tf.constant(0.0)
            measured = last
        # Around the whole strategy.run, in cross-replica context, like the update's
        # cond above; the branch not taken costs nothing.
        sums['grad_norm_sq'] = tf.cond(
            measured, lambda: norm_sq(gradients), lambda: tf.constant(0.0)
        )
        sums['grad_norm_steps'] = tf.cast(measured, tf.float32)
        return sums

    return _summed_loop(
        one_step, TRAIN_METRICS, measure_input_wait=measure_input_wait, loss_of=step_loss
    )


def step_loss(sums: Dict[str, tf.Tensor]) -> tf.Tensor:
    """One step's training loss from its metrics summed over replicas (as logged)."""
    return sums['cross_entropy'] / tf.maximum(sums['count'], 1.0) + sums['l2']


def make_eval_loop(
    strategy: tf.distribute.Strategy, replica_step: Callable
) -> Callable[..., Dict[str, tf.Tensor]]:
    """`replica_step(images, labels, weights) -> dict of sums`, `num_steps` per call."""

    def one_step(batch, last):
        del last  # Every eval step's sums count.
        return _sum_over_replicas(strategy, strategy.run(replica_step, args=batch), EVAL_METRICS)

    return _summed_loop(one_step, EVAL_METRICS)

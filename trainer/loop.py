"""The per-replica loop: `steps_per_loop` steps inside one `tf.function`.

Running many steps per call keeps the host out of the accelerator's way (one Python
round trip per loop instead of per step), which is what makes small per-step times
reachable on GPUs and TPUs. The number of steps is a tensor, so changing it (the last
loop of an epoch is often shorter) does not retrace.
"""

from typing import Callable, Dict, Sequence

import tensorflow as tf

TRAIN_METRICS = ('cross_entropy', 'l2', 'top1', 'top5', 'count')
EVAL_METRICS = ('cross_entropy', 'top1', 'top5', 'count')


def _summed_loop(
    strategy: tf.distribute.Strategy, replica_fn: Callable, keys: Sequence[str]
) -> Callable:
    """Wraps `replica_fn(*batch) -> dict of sums` into `loop(iterator, num_steps)`.

    The returned function runs `num_steps` steps, each `strategy.run` over one batch
    from the distributed iterator, and returns the metrics summed over replicas and
    steps.
    """

    @tf.function
    def loop(iterator, num_steps):
        totals = {key: tf.constant(0.0) for key in keys}
        for _ in tf.range(num_steps):
            per_replica = strategy.run(replica_fn, args=next(iterator))
            totals = {
                key: totals[key]
                + strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica[key], axis=None)
                for key in keys
            }
        return totals

    return loop


def make_train_loop(
    strategy: tf.distribute.Strategy, replica_step: Callable, *, jit_compile: bool = False
) -> Callable[..., Dict[str, tf.Tensor]]:
    """`replica_step(images, labels) -> dict of sums` run `num_steps` times per call."""
    if jit_compile:
        replica_step = tf.function(replica_step, jit_compile=True)
    return _summed_loop(strategy, replica_step, TRAIN_METRICS)


def make_eval_loop(
    strategy: tf.distribute.Strategy, replica_step: Callable
) -> Callable[..., Dict[str, tf.Tensor]]:
    """`replica_step(images, labels, weights) -> dict of sums`, `num_steps` per call."""
    return _summed_loop(strategy, replica_step, EVAL_METRICS)

"""A check shared by the memory-efficient model's tests: recomputation changes nothing."""

import numpy as np
import tensorflow as tf


def assert_recomputed_gradients_equal_stored(block, images, projection, reduce=tf.reduce_sum):
    """`block`'s gradients with its recomputation on equal those with it off.

    Both runs draw the same random numbers (seed 7), so a block with dropout must reuse
    the forward pass's masks when it recomputes. Every gradient must be non-zero, so the
    check cannot pass on a block that trains nothing. `reduce` turns the projected
    output into the loss (a mean where hand-written and autodiff backward passes round
    differently in the last bits).
    """

    def gradients(recompute):
        block.recompute = recompute
        tf.random.set_seed(7)
        with tf.GradientTape() as tape:
            tape.watch(images)
            loss = reduce(block(images, training=True) * projection)
        return tape.gradient(loss, [images] + block.trainable_variables)

    for got, want in zip(gradients(True), gradients(False)):
        assert float(tf.reduce_max(tf.abs(want))) > 0
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)

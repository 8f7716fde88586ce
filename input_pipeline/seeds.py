"""The seed contract of the training input: what makes a run reproducible and resumable.

Every random choice the training input makes is a stateless function of the run's
seed and of where it is made, never of a generator's state or of TensorFlow's global
seed. So the data position a checkpoint needs is two integers, (epoch, batches done in
it), and a resumed run draws exactly what the uninterrupted one drew.

The keys form a tree, each level folded in with `stateless_fold_in`:

    run      = [seed, 0]
    epoch    = fold(run, epoch)
    file order of the epoch     fold(epoch, FILE_ORDER)                  (same on every pipeline)
    pipeline = fold(epoch, PIPELINE, pipeline id)
    record shuffle              fold(pipeline, RECORD_ORDER) -> the shuffle's seed
    per-example kernel k        fold(fold(pipeline, AUGMENTATION), k)[0] with the example's
                                position in the epoch: [key, position]
    per-batch mixing            fold(fold(pipeline, MIXING), batch index in the epoch)

An example's position is counted after the shuffle and before any record is skipped,
so a resumed epoch, which skips the batches already done, gives its remaining
examples the seeds they had. Changing any tag, kernel index or the way a seed is made
changes every run's bits: `KERNELS` only grows at its end.
"""

from __future__ import annotations

import tensorflow as tf

# Tags that fold a purpose into an epoch's key, giving independent random streams.
FILE_ORDER, PIPELINE, RECORD_ORDER, AUGMENTATION, MIXING = range(5)

# The per-example random kernels, each with a stream of its own; new ones go last.
KERNELS = ('crop', 'flip', 'randaugment', 'color', 'lighting')
CROP, FLIP, RANDAUGMENT, COLOR, LIGHTING = range(len(KERNELS))


def fold_in(key: tf.Tensor, *data: int | tf.Tensor) -> tf.Tensor:
    """`key` with each of `data` folded in, in turn (`stateless_fold_in`)."""
    for value in data:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(value, tf.int64))
    return key


def run_key(seed: int) -> tf.Tensor:
    """The root of a run's keys."""
    return tf.constant([seed, 0], tf.int64)


def epoch_key(seed: int, epoch: tf.Tensor) -> tf.Tensor:
    return fold_in(run_key(seed), epoch)


def file_order(key_of_epoch: tf.Tensor, num_files: int) -> tf.Tensor:
    """The epoch's file order: the same on every pipeline, which deal files from it."""
    return tf.random.experimental.stateless_shuffle(
        tf.range(num_files), fold_in(key_of_epoch, FILE_ORDER)
    )


def pipeline_key(key_of_epoch: tf.Tensor, pipeline_id: int) -> tf.Tensor:
    return fold_in(key_of_epoch, PIPELINE, pipeline_id)


def shuffle_seed(key_of_pipeline: tf.Tensor) -> tf.Tensor:
    """The record shuffle's int64 seed for one pipeline's epoch."""
    return tf.random.stateless_uniform(
        [], fold_in(key_of_pipeline, RECORD_ORDER), minval=0, maxval=2**31 - 1, dtype=tf.int64
    )


def kernel_keys(key_of_pipeline: tf.Tensor) -> tf.Tensor:
    """int64 `[len(KERNELS)]`: each kernel's key for one pipeline's epoch."""
    augmentation = fold_in(key_of_pipeline, AUGMENTATION)
    return tf.stack([fold_in(augmentation, kernel)[0] for kernel in range(len(KERNELS))])


def example_seeds(keys: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
    """int64 `[batch, len(KERNELS), 2]`: `[kernel key, position]` for each example.

    Built for a batch at once; each row is what `stateless_fold_in`-style seeding by
    position would give, without an op per example.
    """
    shape = [len(KERNELS), tf.size(positions)]
    seeds = tf.stack(
        [tf.broadcast_to(keys[:, tf.newaxis], shape), tf.broadcast_to(positions, shape)], axis=-1
    )
    return tf.transpose(seeds, [1, 0, 2])


def mixing_key(key_of_pipeline: tf.Tensor) -> tf.Tensor:
    return fold_in(key_of_pipeline, MIXING)


def batch_seed(key_of_mixing: tf.Tensor, batch_index: tf.Tensor) -> tf.Tensor:
    """The seed of batch `batch_index` of the epoch (mixup, CutMix)."""
    return fold_in(key_of_mixing, batch_index)


def pin_graph_seed(seed: int) -> None:
    """Makes the shuffle's order a function of `seed` alone, not of the global seed.

    tf.data mixes a graph-level seed into every shuffle seed: that of the function
    being traced, which TensorFlow copies from the process's global seed. So the order
    depended on whatever had set the global seed last, and a global seed of 0 failed
    outright (TensorFlow's seed helper compares the tensor seed with 0 in Python:
    OperatorNotAllowedInGraphError). The traced epoch function's graph seed is pinned
    to `seed + 1`, the global seed the trainer has always set before building the
    data (trainer/run.py), so that runs started before this keep their order.
    """
    tf.compat.v1.get_default_graph().seed = seed + 1

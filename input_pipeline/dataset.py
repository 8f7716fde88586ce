"""The tf.data graphs that feed training and evaluation.

Training data order and augmentation are functions of (seed, epoch, position) only, so
the data position to checkpoint is two integers, (epoch, batches done in that epoch),
and not the iterator's buffers (which hold gigabytes for ImageNet). Every epoch holds a
whole number of training steps, so an epoch boundary never falls inside a step.

Evaluation visits every example exactly once: records are split by index across input
pipelines and padded with zero-weight examples so that every replica runs the same
number of full batches (a replica that runs out early would hang the others in their
collective ops).

This module decides which records make each batch and in which order; what a record
becomes is `preprocessing.py`'s (`TrainPreprocessing`, `EvalPreprocessing`): parsed and
checked a batch at a time (one op per batch for what can be vectorised: parsing,
checks, seeds), decoded and augmented one at a time, handed out as uint8 pixels.

Bad data stops a run with the file named (`records.py` for damaged TFRecord files,
`decode.check_image` and `decode.check_labels` for records, `decode.check_jpeg` just
before each image is decoded: a size beyond `decode.MAX_IMAGE_PIXELS`, or too few bytes
for it), or, with `skip_bad_records`, is skipped: a damaged file's unreadable rest, and
a record whose image fails `check_jpeg` or fails to decode. Training drops such
records and logs a running count per epoch; evaluation gives them weight 0, so
`num_examples` counts what was evaluated. A label out of range or missing stops the run
either way: it means a wrong `label_offset` or `num_classes`, or records of another
schema, not a bad image.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from input_pipeline import data_service
from input_pipeline import records
from input_pipeline import seeds
from input_pipeline.preprocessing import EvalPreprocessing
from input_pipeline.preprocessing import TrainPreprocessing
from input_pipeline import DataError

# Files read at once. Fixed rather than tied to the file count, so the interleaved order
# depends on the seed and the file list only.
_INTERLEAVE_CYCLE = 16

# Training runs until the trainer stops reading; this only bounds the epoch counter.
_EPOCH_LIMIT = 2**31


def count_examples(files: Sequence[str], *, skip_bad_records: bool = False) -> int:
    """Counts the records in TFRecord files by reading them all.

    Args:
      files: TFRecord paths.
      skip_bad_records: count only the readable records of damaged files; otherwise a
        damaged file stops the count with its name.

    Returns:
      The number of records.

    Raises:
      tf.errors.InvalidArgumentError: unless `skip_bad_records`, "TFRecord file F is
        truncated or corrupt: ..." (see `records.read_file`).
    """
    if not files:
        return 0
    found = records.read_files(
        records.file_table(files),
        skip_bad_records=skip_bad_records,
        cycle_length=min(len(files), _INTERLEAVE_CYCLE),
    )
    return int(found.reduce(tf.constant(0, tf.int64), lambda count, *_: count + 1))


def eval_steps(num_examples: int, global_batch_size: int) -> int:
    """Returns the evaluation steps that cover `num_examples`; the last one is padded."""
    return -(-num_examples // global_batch_size)


def _pipeline_layout(
    input_context: tf.distribute.InputContext | None,
) -> tuple[int, int, int]:
    """Returns (number of input pipelines, this pipeline's id, replicas it feeds).

    Each pipeline feeds `num_replicas_in_sync // num_input_pipelines` replicas, one
    batch per replica per step, in turn.
    """
    if input_context is None:
        return 1, 0, 1
    num_pipelines = input_context.num_input_pipelines
    num_replicas = input_context.num_replicas_in_sync
    if num_replicas % num_pipelines:
        raise DataError(
            f'{num_replicas} replicas cannot be split evenly over {num_pipelines} input pipelines'
        )
    return num_pipelines, input_context.input_pipeline_id, num_replicas // num_pipelines


def _check_enough_records(files: tf.data.Dataset, needed: int, skip_bad_records: bool) -> None:
    """Fails when the files hold fewer records than one training step needs.

    Such a dataset would yield empty epochs forever (each epoch is cut to whole steps),
    so iteration would hang instead of failing. Reads at most `needed` records.

    Args:
      files: `(filename, size)` pairs, see `records.file_table`.
      needed: records one step needs.
      skip_bad_records: as in `train_dataset`.
    """
    found_records = records.read_files(files, skip_bad_records=skip_bad_records, cycle_length=1)
    found = int(
        found_records.take(needed).reduce(tf.constant(0, tf.int64), lambda count, *_: count + 1)
    )
    if found < needed:
        first = next(iter(files.take(1)))[0].numpy().decode()
        raise DataError(
            f'the train files hold {found} records, fewer than one step needs ({needed}): '
            f'lower the batch size or add data ({first} ...)'
        )


def train_dataset(
    files: Sequence[str],
    preprocessing: TrainPreprocessing,
    *,
    batch_size: int,
    seed: int,
    start_epoch: int = 0,
    skip_batches: int = 0,
    shuffle_buffer: int = 10000,
    input_context: tf.distribute.InputContext | None = None,
    batches_per_epoch: int | None = None,
    for_data_service: bool = False,
) -> tf.data.Dataset:
    """Builds the endless, reproducible training stream of augmented batches.

    This function decides which records make each batch; `preprocessing` decides what
    they become. Epoch `e` (counting from `start_epoch`) shuffles the file order,
    interleaves the files deterministically, shuffles records in a buffer and numbers
    them; the keys of all three, and of each example's and batch's augmentation, follow
    `seeds.py` (the seed contract). TensorFlow's global seed plays no part.

    Batches never straddle two epochs, so the trainer's position (epoch, steps done)
    always maps to the same batches. An epoch is `batches_per_epoch` batches when given;
    otherwise it is the pipeline's records cut to a whole number of steps (one step is
    `batch_size` examples for each replica this pipeline feeds).

    With `input_context`, pipelines read disjoint files when there are at least as many
    files as pipelines (each epoch deals the shuffled files out anew); otherwise every
    pipeline reads all files and keeps every `num_input_pipelines`-th record.

    Args:
      files: train TFRecord paths (see `formats.find_dataset`).
      preprocessing: what each record becomes (its records' schema, labels and
        bad-record handling, the image size and the augmentation).
      batch_size: examples per batch, per replica.
      seed: the run's seed.
      start_epoch: first epoch to produce.
      skip_batches: batches of `start_epoch` to skip, as counted in this dataset's
        output (with several replicas per pipeline a step consumes one batch per
        replica). Skipped records are not decoded.
      shuffle_buffer: records in the shuffle buffer.
      input_context: from `strategy.distribute_datasets_from_function`, or None.
      batches_per_epoch: batches this pipeline yields per epoch (the trainer's steps
        per epoch times the replicas it feeds), so that every pipeline and the trainer
        agree on where epochs end. Extra records are dropped; a pipeline whose files
        hold too few (file sharding deals out unequal shares) reads the start of its
        epoch again to fill up. None: cut each epoch to whole steps.
      for_data_service: build the stream for tf.data service workers
        (`data_service.worker_batches`): every worker reads and shuffles the records
        (cheap), then keeps every `num_workers`-th batch of serialised records and
        decodes and augments only those, with the same `preprocessing`. Needs
        `batches_per_epoch` and cannot skip bad records (skipping changes which
        records make a batch).

    Returns:
      A dataset of `(images [batch_size, image_size, image_size, 3], labels)` as
      `preprocessing.finish_batch` gives them. With `for_data_service`, a third
      element: the batch's position in the stream.

    Raises:
      DataError: when `files` is empty or holds fewer records than one step needs, or
        when `skip_batches` is not within the epoch.
    """
    skip_bad_records = preprocessing.records.skip_bad_records
    if not files:
        raise DataError('no train files given')
    if batches_per_epoch is not None and not 0 <= skip_batches < batches_per_epoch:
        raise DataError(
            f'skip_batches={skip_batches} is not within an epoch of {batches_per_epoch} batches'
        )
    if for_data_service and (batches_per_epoch is None or skip_bad_records):
        raise DataError(
            'a training stream for the tf.data service needs batches_per_epoch and cannot '
            'skip bad records'
        )
    num_pipelines, pipeline_id, replicas_per_pipeline = _pipeline_layout(input_context)
    shard_files = num_pipelines > 1 and len(files) >= num_pipelines
    shard_records = num_pipelines > 1 and not shard_files
    # Records per step across the pipelines that split one record stream between them.
    records_per_step = batch_size * replicas_per_pipeline * (num_pipelines if shard_records else 1)
    file_names = tf.constant(list(files))
    file_sizes = tf.constant(records.file_sizes(files), tf.int64)
    _check_enough_records(
        tf.data.Dataset.from_tensor_slices((file_names, file_sizes)),
        records_per_step * (num_pipelines if shard_files else 1),
        skip_bad_records,
    )

    def epoch_records(epoch: tf.Tensor):
        """One epoch of this pipeline's numbered records, and the epoch's keys."""
        epoch_key = seeds.epoch_key(seed, epoch)
        # The same order on every pipeline: they must agree on the order they deal from.
        order = seeds.file_order(epoch_key, len(files))
        files_dataset = tf.data.Dataset.from_tensor_slices(
            (tf.gather(file_names, order), tf.gather(file_sizes, order))
        )
        if shard_files:
            files_dataset = files_dataset.shard(num_pipelines, pipeline_id)
        stream = records.read_files(
            files_dataset, skip_bad_records=skip_bad_records, cycle_length=_INTERLEAVE_CYCLE
        )
        if batches_per_epoch is None:
            # Batching the serialised records with drop_remainder cuts the epoch to
            # whole steps (of all pipelines that share the stream) before decoding.
            stream = stream.batch(records_per_step, drop_remainder=True).unbatch()
        if shard_records:
            stream = stream.shard(num_pipelines, pipeline_id)
        if batches_per_epoch is not None:
            # Taken before the shuffle, so that its buffer never holds more than the
            # epoch. Skipped records would shorten the epoch: take a margin for them.
            needed = batches_per_epoch * batch_size
            margin = needed // 100 + batch_size if skip_bad_records else 0
            stream = stream.repeat().take(needed + margin)
        pipeline_key = seeds.pipeline_key(epoch_key, pipeline_id)
        seeds.pin_graph_seed(seed)
        stream = stream.shuffle(shuffle_buffer, seed=seeds.shuffle_seed(pipeline_key))
        # Numbered before skipping, so resumed examples keep their seeds.
        stream = stream.enumerate()
        first_batch = tf.where(tf.equal(epoch, start_epoch), skip_batches, 0)
        stream = stream.skip(tf.cast(first_batch * batch_size, tf.int64))
        keys = (seeds.kernel_keys(pipeline_key), seeds.mixing_key(pipeline_key))
        return stream, first_batch, keys

    def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
        """One epoch of this pipeline's batches."""
        stream, first_batch, (kernel_keys, mixing_key) = epoch_records(epoch)
        if for_data_service:
            # Serialised batches only; the workers decode their share.
            batches = stream.batch(batch_size).enumerate(start=tf.cast(first_batch, tf.int64))
            return batches.map(lambda index, batch: (kernel_keys, mixing_key, epoch, index, batch))
        stream = stream.batch(batch_size).map(
            lambda positions, records_and_files: preprocessing.prepare_batch(
                kernel_keys, positions, *records_and_files
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        examples = stream.unbatch().map(
            preprocessing.example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
        if skip_bad_records:
            examples = examples.ignore_errors(log_warning=True)
            if batches_per_epoch is not None:
                remaining = (batches_per_epoch - first_batch) * batch_size
                examples = examples.take(tf.cast(remaining, tf.int64))
        batches = examples.batch(batch_size, drop_remainder=True)
        if skip_bad_records:
            batches = _count_skipped(batches, epoch, first_batch * batch_size, batch_size)
        batches = batches.enumerate(start=tf.cast(first_batch, tf.int64))
        return batches.map(
            lambda index, batch: preprocessing.finish_batch(mixing_key, index, *batch)
        )

    dataset = tf.data.Dataset.range(start_epoch, _EPOCH_LIMIT).flat_map(epoch_batches)
    if for_data_service:
        dataset = data_service.worker_batches(
            dataset, preprocessing, batch_size=batch_size, batches_per_epoch=batches_per_epoch
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def _count_skipped(
    batches: tf.data.Dataset, epoch: tf.Tensor, first_position: tf.Tensor, batch_size: int
) -> tf.data.Dataset:
    """Logs a running count of one epoch's skipped records whenever it grows.

    Examples are numbered before decoding, so the records skipped up to the end of a
    batch are its last number, plus one, minus the examples delivered so far.
    """
    first_position = tf.cast(first_position, tf.int64)

    def count(state, batch):
        delivered, reported = state
        positions = batch[1][3]  # (images, (labels, stored labels, files, positions))
        delivered += batch_size
        skipped = positions[-1] + 1 - first_position - delivered
        report = tf.cond(
            skipped > reported,
            lambda: tf.print(
                'input_pipeline: skipped',
                skipped,
                'bad records so far in epoch',
                epoch,
                '(up to example',
                positions[-1],
                'of the epoch)',
            ),
            tf.no_op,
        )
        with tf.control_dependencies([report]):
            skipped = tf.identity(skipped)
        return (delivered, skipped), batch

    zero = tf.constant(0, tf.int64)
    return batches.scan((zero, zero), count)


def eval_dataset(
    files: Sequence[str],
    preprocessing: EvalPreprocessing,
    *,
    batch_size: int,
    num_examples: int,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Builds the evaluation stream: every example once, then zero-weight padding.

    Records are dealt out by index across input pipelines. Each pipeline then pads its
    share with blank images (label 0, weight 0) up to
    `eval_steps(num_examples, batch_size * num_replicas_in_sync)` steps' worth of
    batches, so all replicas run the same number of full batches and metrics weighted
    by `weights` count each example exactly once.

    Args:
      files: validation TFRecord paths (see `formats.find_dataset`).
      preprocessing: what each record becomes (central crop; its records' labels and
        bad-record handling: with `skip_bad_records` an undecodable image gets weight
        0, logged, and damaged files' unreadable rest is not read, as `count_examples`
        counts).
      batch_size: examples per batch, per replica.
      num_examples: records in `files` (see `count_examples`, with the same
        `skip_bad_records`). A different count stops the pipeline with an error rather
        than dropping or inventing examples.
      input_context: from `strategy.distribute_datasets_from_function`, or None.

    Returns:
      A finite dataset of `(images [batch_size, image_size, image_size, 3], labels
      int32 [batch_size], weights float32 [batch_size])`.
    """
    skip_bad_records = preprocessing.records.skip_bad_records
    image_size = preprocessing.image_size
    num_pipelines, pipeline_id, replicas_per_pipeline = _pipeline_layout(input_context)
    num_steps = eval_steps(num_examples, batch_size * replicas_per_pipeline * num_pipelines)
    own_examples = len(range(pipeline_id, num_examples, num_pipelines))
    padded_examples = num_steps * replicas_per_pipeline * batch_size

    stream = records.read_files(
        records.file_table(files), skip_bad_records=skip_bad_records, cycle_length=_INTERLEAVE_CYCLE
    )
    stream = stream.shard(num_pipelines, pipeline_id)
    stream = stream.apply(tf.data.experimental.assert_cardinality(own_examples))

    def example(encoded: tf.Tensor, label: tf.Tensor, filename: tf.Tensor):
        if not skip_bad_records:
            return preprocessing.example(encoded, filename), label, tf.constant(1.0)
        # A dataset that drops a failing decode is the graph's only try/except; its cost
        # per image is paid only in this mode.
        attempt = tf.data.Dataset.from_tensors(encoded)
        attempt = attempt.map(lambda data: (preprocessing.example(data, filename), True))
        fallback = (preprocessing.blank(), False)
        attempt = attempt.ignore_errors().concatenate(tf.data.Dataset.from_tensors(fallback))
        image, decoded = attempt.take(1).get_single_element()
        report = tf.cond(
            decoded,
            tf.no_op,
            lambda: tf.print(
                tf.strings.join(
                    ['input_pipeline: evaluating without an undecodable image in ', filename]
                )
            ),
        )
        with tf.control_dependencies([report]):
            weight = tf.cast(decoded, tf.float32)
        return image, tf.where(decoded, label, 0), weight

    # Batching right after the map lets tf.data write each image straight into its
    # batch (map-and-batch fusion); the last, partial batch is padded on its own.
    stream = stream.batch(batch_size).map(
        preprocessing.prepare_batch, num_parallel_calls=tf.data.AUTOTUNE
    )
    batches = stream.unbatch().map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    batches = batches.batch(batch_size)

    def pad_batch(images, labels, weights):
        missing = batch_size - tf.shape(labels)[0]

        def padded():
            return (
                tf.pad(images, [[0, missing], [0, 0], [0, 0], [0, 0]]),
                tf.pad(labels, [[0, missing]]),
                tf.pad(weights, [[0, missing]]),
            )

        images, labels, weights = tf.cond(missing > 0, padded, lambda: (images, labels, weights))
        # Static batch shapes, as `drop_remainder` would give, for XLA and TPU.
        return (
            tf.ensure_shape(images, [batch_size, image_size, image_size, 3]),
            tf.ensure_shape(labels, [batch_size]),
            tf.ensure_shape(weights, [batch_size]),
        )

    blank = preprocessing.blank()
    zeros = (
        tf.zeros([batch_size, *blank.shape], blank.dtype),
        tf.zeros([batch_size], tf.int32),
        tf.zeros([batch_size], tf.float32),
    )
    real_batches = -(-own_examples // batch_size)
    padding = tf.data.Dataset.from_tensors(zeros).repeat(
        padded_examples // batch_size - real_batches
    )
    dataset = batches.map(pad_batch).concatenate(padding)
    return dataset.prefetch(tf.data.AUTOTUNE)


def synthetic_dataset(
    *,
    batch_size: int,
    image_size: int,
    num_classes: int,
    soft_labels: bool = False,
) -> tf.data.Dataset:
    """Repeats one random batch forever, to measure the model without the input cost.

    Args:
      batch_size: examples per batch.
      image_size: side of the square images.
      num_classes: labels are drawn from `[0, num_classes)`.
      soft_labels: labels as float32 one-hot rows, the shape mixup and CutMix give.

    Returns:
      An endless dataset of `(images uint8 [batch_size, image_size, image_size, 3],
      labels int32 [batch_size] or float32 [batch_size, num_classes])`, as the real
      pipelines give them.
    """
    images = tf.random.stateless_uniform(
        [batch_size, image_size, image_size, 3], seed=[0, 0], minval=0, maxval=256, dtype=tf.int32
    )
    labels = tf.random.stateless_uniform(
        [batch_size], seed=[0, 1], minval=0, maxval=num_classes, dtype=tf.int32
    )
    if soft_labels:
        labels = tf.one_hot(labels, num_classes, dtype=tf.float32)
    return tf.data.Dataset.from_tensors((tf.cast(images, tf.uint8), labels)).repeat()

"""The tf.data graphs that feed training and evaluation.

Training data order and augmentation are functions of (seed, epoch, position) only, so
the data position to checkpoint is two integers, (epoch, batches done in that epoch),
and not the iterator's buffers (which hold gigabytes for ImageNet). Every epoch holds a
whole number of training steps, so an epoch boundary never falls inside a step.

Evaluation visits every example exactly once: records are split by index across input
pipelines and padded with zero-weight examples so that every replica runs the same
number of full batches (a replica that runs out early would hang the others in their
collective ops).
"""

from __future__ import annotations

import os
from typing import Sequence

import tensorflow as tf

from input_pipeline import augment
from input_pipeline import decode

# Files read at once. Fixed rather than tied to the file count, so the interleaved order
# depends on the seed and the file list only.
_INTERLEAVE_CYCLE = 16

# Read buffer per open file: large reads keep remote file systems (GCS) busy.
_READ_BUFFER_BYTES = 8 * 1024 * 1024

# Training runs until the trainer stops reading; this only bounds the epoch counter.
_EPOCH_LIMIT = 2**31

# Tags that fold a purpose into an epoch's key, giving independent random streams.
_FILE_ORDER, _PIPELINE, _RECORD_ORDER, _AUGMENTATION = range(4)


def list_files(dataset_dir: str, split: str) -> list[str]:
    """Lists one split's TFRecord shards in the slim layout (`train-00000-of-01024`).

    Args:
      dataset_dir: folder that holds the shards (local or any `tf.io.gfile` path).
      split: `train` or `validation`.

    Returns:
      The sorted paths of `{dataset_dir}/{split}-*-of-*`.

    Raises:
      FileNotFoundError: when the folder is missing or no file matches.
    """
    if not tf.io.gfile.isdir(dataset_dir):
        raise FileNotFoundError(f'dataset directory {dataset_dir} does not exist')
    pattern = os.path.join(dataset_dir, f'{split}-*-of-*')
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f'no {split} TFRecords in {dataset_dir}: nothing matches {pattern}')
    return files


def count_examples(files: Sequence[str]) -> int:
    """Counts the records in TFRecord files by reading them all.

    Args:
      files: TFRecord paths.

    Returns:
      The number of records.
    """
    if not files:
        return 0
    records = tf.data.TFRecordDataset(
        list(files), num_parallel_reads=min(len(files), _INTERLEAVE_CYCLE)
    )
    return int(records.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))


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
        raise ValueError(
            f'{num_replicas} replicas cannot be split evenly over {num_pipelines} input pipelines'
        )
    return num_pipelines, input_context.input_pipeline_id, num_replicas // num_pipelines


def _records_with_filenames(files: tf.data.Dataset) -> tf.data.Dataset:
    """Reads records from a dataset of file names as `(record, filename)` pairs.

    The file name travels with each record so that a bad label can name its file. The
    interleave is deterministic: its order depends only on the order of `files`.
    """

    def read(filename: tf.Tensor) -> tf.data.Dataset:
        records = tf.data.TFRecordDataset(filename, buffer_size=_READ_BUFFER_BYTES)
        return records.map(lambda record: (record, filename))

    return files.interleave(
        read,
        cycle_length=_INTERLEAVE_CYCLE,
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def _check_enough_records(files: Sequence[str], needed: int) -> None:
    """Fails when the files hold fewer records than one training step needs.

    Such a dataset would yield empty epochs forever (each epoch is cut to whole steps),
    so iteration would hang instead of failing. Reads at most `needed` records.
    """
    records = tf.data.TFRecordDataset(list(files)).take(needed)
    found = int(records.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))
    if found < needed:
        raise ValueError(
            f'the train files hold {found} records, fewer than one step needs ({needed}): '
            f'lower the batch size or add data ({files[0]} ...)'
        )


def train_dataset(
    files: Sequence[str],
    *,
    batch_size: int,
    image_size: int,
    num_classes: int,
    seed: int,
    start_epoch: int = 0,
    skip_batches: int = 0,
    label_offset: int = 1,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_ratio_range: tuple[float, float] = (0.75, 4 / 3),
    random_flip: bool = True,
    dtype: tf.DType = tf.float32,
    shuffle_buffer: int = 10000,
    input_context: tf.distribute.InputContext | None = None,
    batches_per_epoch: int | None = None,
) -> tf.data.Dataset:
    """Builds the endless, reproducible training stream of augmented batches.

    Epoch `e` (counting from `start_epoch`) shuffles the file order with a key derived
    from (seed, e), interleaves the files deterministically, shuffles records in a
    buffer seeded from (seed, e, pipeline) and augments the example at position `i` of
    the epoch with a stateless seed derived from (seed, e, pipeline, i). The order is
    also shaped by TensorFlow's global seed, which tf.data mixes into every shuffle
    seed: keep it fixed (or unset) across runs that must match.

    Batches never straddle two epochs, so the trainer's position (epoch, steps done)
    always maps to the same batches. An epoch is `batches_per_epoch` batches when given;
    otherwise it is the pipeline's records cut to a whole number of steps (one step is
    `batch_size` examples for each replica this pipeline feeds).

    With `input_context`, pipelines read disjoint files when there are at least as many
    files as pipelines (each epoch deals the shuffled files out anew); otherwise every
    pipeline reads all files and keeps every `num_input_pipelines`-th record.

    Args:
      files: train TFRecord paths (see `list_files`).
      batch_size: examples per batch, per replica.
      image_size: side of the square images.
      num_classes: number of classes; labels outside `[0, num_classes)` after the
        offset stop the pipeline with an error naming the file.
      seed: the run's seed.
      start_epoch: first epoch to produce.
      skip_batches: batches of `start_epoch` to skip, as counted in this dataset's
        output (with several replicas per pipeline a step consumes one batch per
        replica). Skipped records are not decoded.
      label_offset: subtracted from stored labels (1 for the slim layout).
      area_range: crop area range of the Inception crop.
      aspect_ratio_range: crop aspect ratio range of the Inception crop.
      random_flip: whether to flip images left-right at random.
      dtype: dtype of the images.
      shuffle_buffer: records in the shuffle buffer.
      input_context: from `strategy.distribute_datasets_from_function`, or None.
      batches_per_epoch: batches this pipeline yields per epoch (the trainer's steps
        per epoch times the replicas it feeds), so that every pipeline and the trainer
        agree on where epochs end. Extra records are dropped; a pipeline whose files
        hold too few (file sharding deals out unequal shares) reads the start of its
        epoch again to fill up. None: cut each epoch to whole steps.

    Returns:
      A dataset of `(images [batch_size, image_size, image_size, 3] dtype, normalised;
      labels int32 [batch_size])`.

    Raises:
      ValueError: when `files` is empty or holds fewer records than one step needs, or
        when `skip_batches` is not within the epoch.
    """
    if not files:
        raise ValueError('no train files given')
    if batches_per_epoch is not None and not 0 <= skip_batches < batches_per_epoch:
        raise ValueError(
            f'skip_batches={skip_batches} is not within an epoch of {batches_per_epoch} batches'
        )
    num_pipelines, pipeline_id, replicas_per_pipeline = _pipeline_layout(input_context)
    shard_files = num_pipelines > 1 and len(files) >= num_pipelines
    shard_records = num_pipelines > 1 and not shard_files
    # Records per step across the pipelines that split one record stream between them.
    records_per_step = batch_size * replicas_per_pipeline * (num_pipelines if shard_records else 1)
    _check_enough_records(files, records_per_step * (num_pipelines if shard_files else 1))

    file_names = tf.constant(list(files))
    run_key = tf.constant([seed, 0], tf.int64)

    def fold_in(key: tf.Tensor, *data: int | tf.Tensor) -> tf.Tensor:
        for value in data:
            key = tf.random.experimental.stateless_fold_in(key, tf.cast(value, tf.int64))
        return key

    def epoch_records(epoch: tf.Tensor) -> tf.data.Dataset:
        """One epoch's records of this pipeline as `(augmentation seed, record, file)`."""
        epoch_key = fold_in(run_key, epoch)
        # The same key on every pipeline: they must agree on the order they deal from.
        file_order = tf.random.experimental.stateless_shuffle(
            file_names, fold_in(epoch_key, _FILE_ORDER)
        )
        files_dataset = tf.data.Dataset.from_tensor_slices(file_order)
        if shard_files:
            files_dataset = files_dataset.shard(num_pipelines, pipeline_id)
        records = _records_with_filenames(files_dataset)
        if batches_per_epoch is None:
            # Batching the serialised records with drop_remainder cuts the epoch to
            # whole steps (of all pipelines that share the stream) before decoding.
            records = records.batch(records_per_step, drop_remainder=True).unbatch()
        if shard_records:
            records = records.shard(num_pipelines, pipeline_id)
        if batches_per_epoch is not None:
            records = records.repeat().take(batches_per_epoch * batch_size)

        pipeline_key = fold_in(epoch_key, _PIPELINE, pipeline_id)
        shuffle_seed = tf.random.stateless_uniform(
            [], fold_in(pipeline_key, _RECORD_ORDER), minval=0, maxval=2**31 - 1, dtype=tf.int64
        )
        records = records.shuffle(shuffle_buffer, seed=shuffle_seed)
        # Number the records before skipping so resumed examples keep their seeds.
        records = records.enumerate()
        skip_records = tf.where(tf.equal(epoch, start_epoch), skip_batches * batch_size, 0)
        records = records.skip(tf.cast(skip_records, tf.int64))
        augmentation_key = fold_in(pipeline_key, _AUGMENTATION)
        return records.map(
            lambda index, record_and_file: (fold_in(augmentation_key, index), *record_and_file)
        )

    def preprocess(example_seed: tf.Tensor, record: tf.Tensor, filename: tf.Tensor):
        example = decode.parse_record(
            record, filename, label_offset=label_offset, num_classes=num_classes
        )
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(example_seed, 2))
        image = augment.decode_and_random_crop(
            example['encoded'],
            example['bbox'],
            crop_seed,
            image_size=image_size,
            area_range=area_range,
            aspect_ratio_range=aspect_ratio_range,
        )
        if random_flip:
            image = augment.random_flip(image, flip_seed)
        return augment.normalize(image, dtype), example['label']

    dataset = tf.data.Dataset.range(start_epoch, _EPOCH_LIMIT).flat_map(epoch_records)
    dataset = dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def eval_dataset(
    files: Sequence[str],
    *,
    batch_size: int,
    image_size: int,
    num_classes: int,
    num_examples: int,
    label_offset: int = 1,
    crop_fraction: float = augment.CENTER_CROP_FRACTION,
    dtype: tf.DType = tf.float32,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Builds the evaluation stream: every example once, then zero-weight padding.

    Records are dealt out by index across input pipelines. Each pipeline then pads its
    share with zero images (label 0, weight 0) up to
    `eval_steps(num_examples, batch_size * num_replicas_in_sync)` steps' worth of
    batches, so all replicas run the same number of full batches and metrics weighted
    by `weights` count each example exactly once.

    Args:
      files: validation TFRecord paths (see `list_files`).
      batch_size: examples per batch, per replica.
      image_size: side of the square images.
      num_classes: number of classes; out-of-range labels stop the pipeline.
      num_examples: records in `files` (see `count_examples`). A different count
        stops the pipeline with an error rather than dropping or inventing examples.
      label_offset: subtracted from stored labels (1 for the slim layout).
      crop_fraction: central crop side as a fraction of the shorter image side.
      dtype: dtype of the images.
      input_context: from `strategy.distribute_datasets_from_function`, or None.

    Returns:
      A finite dataset of `(images [batch_size, image_size, image_size, 3] dtype,
      labels int32 [batch_size], weights float32 [batch_size])`.
    """
    num_pipelines, pipeline_id, replicas_per_pipeline = _pipeline_layout(input_context)
    num_steps = eval_steps(num_examples, batch_size * replicas_per_pipeline * num_pipelines)
    own_examples = len(range(pipeline_id, num_examples, num_pipelines))
    padded_examples = num_steps * replicas_per_pipeline * batch_size

    records = _records_with_filenames(tf.data.Dataset.from_tensor_slices(list(files)))
    records = records.shard(num_pipelines, pipeline_id)
    records = records.apply(tf.data.experimental.assert_cardinality(own_examples))

    def preprocess(record: tf.Tensor, filename: tf.Tensor):
        example = decode.parse_record(
            record, filename, label_offset=label_offset, num_classes=num_classes
        )
        image = augment.decode_and_center_crop(
            example['encoded'], image_size=image_size, crop_fraction=crop_fraction
        )
        return augment.normalize(image, dtype), example['label'], tf.constant(1.0)

    examples = records.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    padding = tf.data.Dataset.from_tensors(
        (tf.zeros([image_size, image_size, 3], dtype), tf.constant(0), tf.constant(0.0))
    ).repeat(padded_examples - own_examples)
    dataset = examples.concatenate(padding).batch(batch_size, drop_remainder=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def synthetic_dataset(
    *,
    batch_size: int,
    image_size: int,
    num_classes: int,
    dtype: tf.DType = tf.float32,
) -> tf.data.Dataset:
    """Repeats one random batch forever, to measure the model without the input cost.

    Args:
      batch_size: examples per batch.
      image_size: side of the square images.
      num_classes: labels are drawn from `[0, num_classes)`.
      dtype: dtype of the images.

    Returns:
      An endless dataset of `(images [batch_size, image_size, image_size, 3] dtype,
      labels int32 [batch_size])`.
    """
    images = tf.random.stateless_normal([batch_size, image_size, image_size, 3], seed=[0, 0])
    labels = tf.random.stateless_uniform(
        [batch_size], seed=[0, 1], minval=0, maxval=num_classes, dtype=tf.int32
    )
    return tf.data.Dataset.from_tensors((tf.cast(images, dtype), labels)).repeat()

"""The tf.data graphs that feed training and evaluation.

Training data order and augmentation are functions of (seed, epoch, position) only, so
the data position to checkpoint is two integers, (epoch, batches done in that epoch),
and not the iterator's buffers (which hold gigabytes for ImageNet). Every epoch holds a
whole number of training steps, so an epoch boundary never falls inside a step.

Evaluation visits every example exactly once: records are split by index across input
pipelines and padded with zero-weight examples so that every replica runs the same
number of full batches (a replica that runs out early would hang the others in their
collective ops).

Both graphs parse and check records a batch at a time, then decode and augment them
one at a time: what can be vectorised (parsing, checks, seeds) costs one op per batch.

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

from input_pipeline import augment
from input_pipeline import decode
from input_pipeline import formats
from input_pipeline import mixing
from input_pipeline import randaugment
from input_pipeline import records
from trainer import errors

# Files read at once. Fixed rather than tied to the file count, so the interleaved order
# depends on the seed and the file list only.
_INTERLEAVE_CYCLE = 16

# Training runs until the trainer stops reading; this only bounds the epoch counter.
_EPOCH_LIMIT = 2**31

# Tags that fold a purpose into an epoch's key, giving independent random streams.
_FILE_ORDER, _PIPELINE, _RECORD_ORDER, _AUGMENTATION, _MIXING = range(5)

# The random kernels; each draws from a stream of its own.
_KERNELS = ('crop', 'flip', 'randaugment', 'color', 'lighting')
_CROP, _FLIP, _RANDAUGMENT, _COLOR, _LIGHTING = range(len(_KERNELS))


def list_files(dataset_dir: str, split: str) -> list[str]:
    """Lists one split's TFRecord shards in the slim layout (`train-00000-of-01024`).

    See `formats.find_dataset` for the other layouts and their detection.

    Args:
      dataset_dir: folder that holds the shards (local or any `tf.io.gfile` path).
      split: `train` or `validation`.

    Returns:
      The sorted paths of `{dataset_dir}/{split}-*-of-*`.

    Raises:
      FileNotFoundError: when the folder is missing or no file matches.
    """
    formats.check_folder(dataset_dir)
    pattern = formats.split_pattern(dataset_dir, 'slim', split)
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise errors.MissingFileError(
            f'no {split} TFRecords in {dataset_dir}: nothing matches {pattern}'
        )
    return files


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
        raise errors.UserError(
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
        raise errors.UserError(
            f'the train files hold {found} records, fewer than one step needs ({needed}): '
            f'lower the batch size or add data ({first} ...)'
        )


def _parse_batch(
    serialized: tf.Tensor,
    filenames: tf.Tensor,
    *,
    schema: formats.RecordSchema,
    label_offset: int,
    skip_bad_records: bool,
    num_classes: int | None = None,
) -> dict[str, tf.Tensor]:
    """Parses and checks a batch of records: what the train and eval pipelines share.

    Per batch, not per example: one parse and one image check for the batch cost a
    fraction of one per example.

    Args:
      serialized: string `[B]`, the records.
      filenames: string `[B]`, the file of each record, for the error messages.
      schema: the record keys.
      label_offset: subtracted from the stored labels.
      skip_bad_records: leave the image check to the example's own map (see below).
      num_classes: check the labels here against `[0, num_classes)`; None leaves the
        check to the caller (training checks after skipping bad records).

    Returns:
      `decode.parse_records`' `encoded` (JPEG bytes unless `skip_bad_records`),
      `stored_label` and `bbox`, and `label`: int32 `stored_label - label_offset`.
    """
    parsed = decode.parse_records(serialized, schema=schema)
    stored_labels = parsed['stored_label']
    labels = tf.cast(stored_labels - label_offset, tf.int32)
    if num_classes is not None:
        labels = decode.check_labels(
            labels,
            stored_labels,
            filenames,
            label_offset=label_offset,
            num_classes=num_classes,
            label_key=schema.label_key,
        )
    encoded = parsed['encoded']
    if not skip_bad_records:
        # Named errors for bytes that would fail to decode; PNGs and the like become
        # JPEGs here, for one check per batch. With `skip_bad_records` both wait for
        # the example's own map, where an error drops that example alone.
        encoded = decode.as_jpeg_batch(decode.check_image(encoded, filenames))
    return {**parsed, 'encoded': encoded, 'label': labels}


def _fold_in(key: tf.Tensor, *data: int | tf.Tensor) -> tf.Tensor:
    for value in data:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(value, tf.int64))
    return key


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _pin_graph_seed(seed: int) -> None:
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
    crop_area_range: tuple[float, float] = (0.08, 1.0),
    crop_aspect_range: tuple[float, float] = (0.75, 4 / 3),
    random_flip: bool = True,
    dtype: tf.DType = tf.float32,
    shuffle_buffer: int = 10000,
    input_context: tf.distribute.InputContext | None = None,
    batches_per_epoch: int | None = None,
    schema: formats.RecordSchema = formats.SLIM_SCHEMA,
    color_jitter: float = 0.0,
    pca_lighting: float = 0.0,
    randaugment_layers: int = 0,
    randaugment_magnitude: float = 9.0,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    skip_bad_records: bool = False,
    for_data_service: bool = False,
) -> tf.data.Dataset:
    """Builds the endless, reproducible training stream of augmented batches.

    Epoch `e` (counting from `start_epoch`) shuffles the file order with a key derived
    from (seed, e), interleaves the files deterministically, shuffles records in a
    buffer seeded from (seed, e, pipeline) and augments the example at position `i` of
    the epoch with a stateless seed derived from (seed, e, pipeline, i); batch `b` of
    the epoch is mixed (mixup, CutMix) with a seed from (seed, e, pipeline, b).
    TensorFlow's global seed plays no part (see `_pin_graph_seed`).

    Batches never straddle two epochs, so the trainer's position (epoch, steps done)
    always maps to the same batches. An epoch is `batches_per_epoch` batches when given;
    otherwise it is the pipeline's records cut to a whole number of steps (one step is
    `batch_size` examples for each replica this pipeline feeds).

    With `input_context`, pipelines read disjoint files when there are at least as many
    files as pipelines (each epoch deals the shuffled files out anew); otherwise every
    pipeline reads all files and keeps every `num_input_pipelines`-th record.

    Args:
      files: train TFRecord paths (see `formats.find_dataset`).
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
      crop_area_range: crop area range of the Inception crop.
      crop_aspect_range: crop aspect ratio range of the Inception crop.
      random_flip: whether to flip images left-right at random.
      dtype: dtype of the images.
      shuffle_buffer: records in the shuffle buffer.
      input_context: from `strategy.distribute_datasets_from_function`, or None.
      batches_per_epoch: batches this pipeline yields per epoch (the trainer's steps
        per epoch times the replicas it feeds), so that every pipeline and the trainer
        agree on where epochs end. Extra records are dropped; a pipeline whose files
        hold too few (file sharding deals out unequal shares) reads the start of its
        epoch again to fill up. None: cut each epoch to whole steps.
      schema: the record keys (`formats.find_dataset` tells them).
      color_jitter: > 0: random brightness, contrast and saturation of this strength
        (fb.resnet.torch: 0.4).
      pca_lighting: > 0: PCA lighting noise of this standard deviation (0.1).
      randaugment_layers: > 0: RandAugment with this many operations per image.
      randaugment_magnitude: RandAugment's magnitude, 0..10.
      mixup_alpha: > 0: mixup with Beta(alpha, alpha) weights (soft labels).
      cutmix_alpha: > 0: CutMix with Beta(alpha, alpha) areas (soft labels).
      skip_bad_records: skip damaged files' rest and undecodable images (logged and
        counted) instead of stopping.
      for_data_service: build the stream for tf.data service workers
        (`input_pipeline/data_service.py`): every worker reads and shuffles the records
        (cheap), then keeps every `num_workers`-th batch of serialised records
        (`shard(SHARD_HINT, SHARD_HINT)`, which the service rewrites to the worker's
        index) and decodes and augments only those. Each batch is the one this function
        builds without the flag, with its position in the stream as a third element
        (int64: `epoch * batches_per_epoch + batch`) so that the reader can put the
        workers' batches back in order. Needs `batches_per_epoch` and cannot skip bad
        records (skipping changes which records make a batch).

    Returns:
      A dataset of `(images [batch_size, image_size, image_size, 3] dtype, normalised;
      labels)`: labels are int32 `[batch_size]`, or float32 `[batch_size, num_classes]`
      (soft: one-hot mixed) when mixup or CutMix is on. With `for_data_service`, a
      third element: the batch's position in the stream.

    Raises:
      ValueError: when `files` is empty or holds fewer records than one step needs, or
        when `skip_batches` is not within the epoch.
    """
    if not files:
        raise errors.UserError('no train files given')
    if batches_per_epoch is not None and not 0 <= skip_batches < batches_per_epoch:
        raise errors.UserError(
            f'skip_batches={skip_batches} is not within an epoch of {batches_per_epoch} batches'
        )
    if for_data_service and (batches_per_epoch is None or skip_bad_records):
        raise errors.UserError(
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
    run_key = tf.constant([seed, 0], tf.int64)
    mixes = mixup_alpha > 0 or cutmix_alpha > 0
    # Mixing is done in float32 on whole batches; the cast to `dtype` follows it.
    example_dtype = tf.float32 if mixes else dtype

    def prepare(keys: tf.Tensor, positions: tf.Tensor, serialized: tf.Tensor, filenames: tf.Tensor):
        """Parses and checks a batch of records and gives each example its seeds."""
        parsed = _parse_batch(
            serialized,
            filenames,
            schema=schema,
            label_offset=label_offset,
            skip_bad_records=skip_bad_records,
        )
        # A seed per kernel and example: (the kernel's key for the epoch, the example's
        # position in it), which is what `stateless_fold_in(key, position)` would give.
        seeds = tf.stack(
            [
                tf.broadcast_to(keys[:, tf.newaxis], [len(_KERNELS), tf.size(positions)]),
                tf.broadcast_to(positions, [len(_KERNELS), tf.size(positions)]),
            ],
            axis=-1,
        )
        return (
            parsed['encoded'],
            parsed['bbox'],
            tf.transpose(seeds, [1, 0, 2]),
            (parsed['label'], parsed['stored_label'], filenames, positions),
        )

    def augment_example(encoded, bbox, seeds, label_and_origin):
        filename = label_and_origin[2]
        if skip_bad_records:
            encoded = decode.as_jpeg(decode.check_header(encoded, filename))
        image = augment.decode_and_random_crop(
            decode.check_jpeg(encoded, filename),
            bbox,
            seeds[_CROP],
            image_size=image_size,
            crop_area_range=crop_area_range,
            crop_aspect_range=crop_aspect_range,
            flip=augment.flip_decision(seeds[_FLIP]) if random_flip else None,
            jpeg_only=True,
        )
        if randaugment_layers:
            image = randaugment.randaugment(
                _to_uint8(image),
                seeds[_RANDAUGMENT],
                num_layers=randaugment_layers,
                magnitude=randaugment_magnitude,
            )
        if color_jitter:
            image = augment.color_jitter(tf.cast(image, tf.float32), seeds[_COLOR], color_jitter)
        if pca_lighting:
            image = augment.pca_lighting(tf.cast(image, tf.float32), seeds[_LIGHTING], pca_lighting)
        return augment.normalize(image, example_dtype), label_and_origin

    def finish_batch(key, batch_index, images, label_and_origin):
        labels, stored_labels, filenames, _ = label_and_origin
        # After any skipping: a bad label stops the run even with `skip_bad_records`.
        labels = decode.check_labels(
            labels,
            stored_labels,
            filenames,
            label_offset=label_offset,
            num_classes=num_classes,
            label_key=schema.label_key,
        )
        if not mixes:
            return images, labels
        images, labels = mixing.mix_batch(
            images,
            labels,
            _fold_in(key, batch_index),
            num_classes=num_classes,
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
        )
        return tf.cast(images, dtype), labels

    def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
        """One epoch of this pipeline's batches."""
        epoch_key = _fold_in(run_key, epoch)
        # The same key on every pipeline: they must agree on the order they deal from.
        order = tf.random.experimental.stateless_shuffle(
            tf.range(len(files)), _fold_in(epoch_key, _FILE_ORDER)
        )
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

        pipeline_key = _fold_in(epoch_key, _PIPELINE, pipeline_id)
        shuffle_seed = tf.random.stateless_uniform(
            [], _fold_in(pipeline_key, _RECORD_ORDER), minval=0, maxval=2**31 - 1, dtype=tf.int64
        )
        _pin_graph_seed(seed)
        stream = stream.shuffle(shuffle_buffer, seed=shuffle_seed)
        # Number the records before skipping so resumed examples keep their seeds.
        stream = stream.enumerate()
        first_batch = tf.where(tf.equal(epoch, start_epoch), skip_batches, 0)
        stream = stream.skip(tf.cast(first_batch * batch_size, tf.int64))
        augmentation_key = _fold_in(pipeline_key, _AUGMENTATION)
        kernel_keys = tf.stack([_fold_in(augmentation_key, k)[0] for k in range(len(_KERNELS))])
        mixing_key = _fold_in(pipeline_key, _MIXING)
        if for_data_service:
            # Serialised batches only; the workers decode their share (`service_batches`).
            batches = stream.batch(batch_size).enumerate(start=tf.cast(first_batch, tf.int64))
            return batches.map(lambda index, batch: (kernel_keys, mixing_key, epoch, index, batch))
        stream = stream.batch(batch_size).map(
            lambda positions, records_and_files: prepare(
                kernel_keys, positions, *records_and_files
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        examples = stream.unbatch().map(
            augment_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
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
        return batches.map(lambda index, batch: finish_batch(mixing_key, index, *batch))

    def service_batches(batches: tf.data.Dataset) -> tf.data.Dataset:
        """A worker's share of the serialised batches, decoded as `epoch_batches` does."""

        def prepare_batch(kernel_keys, mixing_key, epoch, index, batch):
            positions, records_and_files = batch
            encoded, bbox, seeds, origin = prepare(kernel_keys, positions, *records_and_files)
            # What `finish_batch` needs rides along with every example of the batch.
            size = tf.size(positions)
            order = epoch * batches_per_epoch + index
            batch_info = (
                tf.fill([size], index),
                tf.tile(mixing_key[tf.newaxis], [size, 1]),
                tf.fill([size], order),
            )
            return encoded, bbox, seeds, origin + batch_info

        examples = batches.map(
            prepare_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
        examples = examples.unbatch().map(
            augment_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )

        def finish(images, label_and_origin):
            *origin, index, mixing_keys, order = label_and_origin
            images, labels = finish_batch(mixing_keys[0], index[0], images, tuple(origin))
            return images, labels, order[0]

        return examples.batch(batch_size, drop_remainder=True).map(finish)

    dataset = tf.data.Dataset.range(start_epoch, _EPOCH_LIMIT).flat_map(epoch_batches)
    if for_data_service:
        # Batch b of the stream goes to worker b % num_workers; endless, as the
        # service's round-robin reads require.
        shard_hint = tf.data.experimental.SHARD_HINT
        dataset = service_batches(dataset.shard(shard_hint, shard_hint)).repeat()
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
    *,
    batch_size: int,
    image_size: int,
    num_classes: int,
    num_examples: int,
    label_offset: int = 1,
    crop_fraction: float = augment.CENTER_CROP_FRACTION,
    dtype: tf.DType = tf.float32,
    input_context: tf.distribute.InputContext | None = None,
    schema: formats.RecordSchema = formats.SLIM_SCHEMA,
    skip_bad_records: bool = False,
) -> tf.data.Dataset:
    """Builds the evaluation stream: every example once, then zero-weight padding.

    Records are dealt out by index across input pipelines. Each pipeline then pads its
    share with zero images (label 0, weight 0) up to
    `eval_steps(num_examples, batch_size * num_replicas_in_sync)` steps' worth of
    batches, so all replicas run the same number of full batches and metrics weighted
    by `weights` count each example exactly once.

    Args:
      files: validation TFRecord paths (see `formats.find_dataset`).
      batch_size: examples per batch, per replica.
      image_size: side of the square images.
      num_classes: number of classes; out-of-range labels stop the pipeline.
      num_examples: records in `files` (see `count_examples`, with the same
        `skip_bad_records`). A different count stops the pipeline with an error rather
        than dropping or inventing examples.
      label_offset: subtracted from stored labels (1 for the slim layout).
      crop_fraction: central crop side as a fraction of the shorter image side.
      dtype: dtype of the images.
      input_context: from `strategy.distribute_datasets_from_function`, or None.
      schema: the record keys.
      skip_bad_records: give undecodable images weight 0 (logged) instead of stopping;
        damaged files' unreadable rest is not read (as `count_examples` counts).

    Returns:
      A finite dataset of `(images [batch_size, image_size, image_size, 3] dtype,
      labels int32 [batch_size], weights float32 [batch_size])`.
    """
    num_pipelines, pipeline_id, replicas_per_pipeline = _pipeline_layout(input_context)
    num_steps = eval_steps(num_examples, batch_size * replicas_per_pipeline * num_pipelines)
    own_examples = len(range(pipeline_id, num_examples, num_pipelines))
    padded_examples = num_steps * replicas_per_pipeline * batch_size

    stream = records.read_files(
        records.file_table(files), skip_bad_records=skip_bad_records, cycle_length=_INTERLEAVE_CYCLE
    )
    stream = stream.shard(num_pipelines, pipeline_id)
    stream = stream.apply(tf.data.experimental.assert_cardinality(own_examples))

    def prepare(serialized: tf.Tensor, filenames: tf.Tensor):
        """Parses and checks a batch of records (one op each for the batch)."""
        parsed = _parse_batch(
            serialized,
            filenames,
            schema=schema,
            label_offset=label_offset,
            skip_bad_records=skip_bad_records,
            num_classes=num_classes,
        )
        return parsed['encoded'], parsed['label'], filenames

    def center_crop(encoded: tf.Tensor, filename: tf.Tensor) -> tf.Tensor:
        if skip_bad_records:
            encoded = decode.as_jpeg(decode.check_header(encoded, filename))
        image = augment.decode_and_center_crop(
            decode.check_jpeg(encoded, filename),
            image_size=image_size,
            crop_fraction=crop_fraction,
            jpeg_only=True,
        )
        return augment.normalize(image, dtype)

    def preprocess(encoded: tf.Tensor, label: tf.Tensor, filename: tf.Tensor):
        if not skip_bad_records:
            return center_crop(encoded, filename), label, tf.constant(1.0)
        # A dataset that drops a failing decode is the graph's only try/except; its cost
        # per image is paid only in this mode.
        attempt = tf.data.Dataset.from_tensors(encoded)
        attempt = attempt.map(lambda data: (center_crop(data, filename), True))
        fallback = (tf.zeros([image_size, image_size, 3], dtype), False)
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
    stream = stream.batch(batch_size).map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    batches = stream.unbatch().map(
        preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
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

    zeros = (
        tf.zeros([batch_size, image_size, image_size, 3], dtype),
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
    dtype: tf.DType = tf.float32,
    soft_labels: bool = False,
) -> tf.data.Dataset:
    """Repeats one random batch forever, to measure the model without the input cost.

    Args:
      batch_size: examples per batch.
      image_size: side of the square images.
      num_classes: labels are drawn from `[0, num_classes)`.
      dtype: dtype of the images.
      soft_labels: labels as float32 one-hot rows, the shape mixup and CutMix give.

    Returns:
      An endless dataset of `(images [batch_size, image_size, image_size, 3] dtype,
      labels int32 [batch_size] or float32 [batch_size, num_classes])`.
    """
    images = tf.random.stateless_normal([batch_size, image_size, image_size, 3], seed=[0, 0])
    labels = tf.random.stateless_uniform(
        [batch_size], seed=[0, 1], minval=0, maxval=num_classes, dtype=tf.int32
    )
    if soft_labels:
        labels = tf.one_hot(labels, num_classes, dtype=tf.float32)
    return tf.data.Dataset.from_tensors((tf.cast(images, dtype), labels)).repeat()

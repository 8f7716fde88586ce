"""The run's data: the split files and sizes, and the datasets the strategy distributes.

`RunData` reads what the dataset folder holds (`input_pipeline/formats.py`), counts
the examples, and builds the per-replica training and evaluation datasets
(`input_pipeline/dataset.py`) from the config; synthetic data stands in for the
training split of speed runs.
"""

import functools
from typing import List, Optional

import tensorflow as tf

from input_pipeline import data_service
from input_pipeline import dataset as dataset_lib
from input_pipeline import formats
from input_pipeline import preprocessing
from base import errors
from trainer import image_sizes
from trainer.config import RunConfig

# ILSVRC2012's training split: the epoch of synthetic-data runs, and the known size
# of its standard 1024-file layout.
IMAGENET_TRAIN_EXAMPLES = 1281167
IMAGENET_TRAIN_SHARDS = 1024
# Records in one of those shards: 1281167 split into 1024 near-equal ranges.
_IMAGENET_SHARD_SIZES = (
    IMAGENET_TRAIN_EXAMPLES // IMAGENET_TRAIN_SHARDS,
    IMAGENET_TRAIN_EXAMPLES // IMAGENET_TRAIN_SHARDS + 1,
)


def _count_train(files, skip_bad_records: bool) -> int:
    """The training split's size: ImageNet's known one, or counted record by record.

    Counting ImageNet's 1.28M training records means reading 140 GB, and its standard
    1024-shard layout has a known size. The layout alone is not proof: another dataset
    written in 1024 shards (a subset of the classes, a user's photos) would silently
    get ImageNet's epoch. So one shard is counted (about 140 MB for ImageNet), and only
    a shard of ImageNet's size keeps the known total.
    """
    if len(files) == IMAGENET_TRAIN_SHARDS:
        first = dataset_lib.count_examples(files[:1], skip_bad_records=skip_bad_records)
        if first in _IMAGENET_SHARD_SIZES:
            return IMAGENET_TRAIN_EXAMPLES
    return dataset_lib.count_examples(files, skip_bad_records=skip_bad_records)


class RunData:
    """The split files and sizes, and the per-replica dataset functions."""

    def __init__(self, config: RunConfig, strategy: tf.distribute.Strategy):
        self.config = config
        self.strategy = strategy
        self.global_batch_size = config.batch_size * strategy.num_replicas_in_sync
        # Mixup and CutMix turn labels into float32 [batch, num_classes] rows.
        self.augmentation = preprocessing.Augmentation.from_settings(config)
        self.soft_labels = self.augmentation.mixes
        self.image_sizes = image_sizes.ImageSizes.from_settings(config)
        # Replaced by what the records say; synthetic data reads none.
        self.schema = formats.SLIM_SCHEMA
        self.label_offset = 1 if config.label_offset is None else config.label_offset
        if config.synthetic_data:
            self.train_files = self.eval_files = []
            self.num_eval = 0
        else:
            # The layout, record keys and label offset, from the files (logged).
            found = formats.find_dataset(
                config.dataset_dir, layout=config.data_layout, label_offset=config.label_offset
            )
            self.found = found
            self.schema, self.label_offset = found.schema, found.label_offset
            self.train_files = list(found.train_files)
            self.eval_files = list(found.validation_files)
            # Validation is always counted: exact evaluation depends on it. The training
            # split is counted when first asked for (`num_train`): --only_eval never does.
            self.num_eval = dataset_lib.count_examples(
                self.eval_files, skip_bad_records=config.skip_bad_records
            )
        # The workers the training batches are dealt to; 0: decoded here. --only_eval
        # (say with a training run's flags.cfg) reads no training batches: no probe, as
        # preflight.check does not check the address then either.
        self.service_workers = 0
        if config.data_service_address and not config.only_eval:
            self.service_workers = data_service.count_workers(config.data_service_address)

    @functools.cached_property
    def num_train(self) -> int:
        """The training split's size (ImageNet's for synthetic data)."""
        if self.config.synthetic_data:
            return IMAGENET_TRAIN_EXAMPLES
        return _count_train(self.train_files, self.config.skip_bad_records)

    @functools.cached_property
    def steps_per_epoch(self) -> int:
        steps = self.num_train // self.global_batch_size
        if steps == 0:
            raise errors.UserError(
                f'--batch_size={self.config.batch_size} x '
                f'{self.strategy.num_replicas_in_sync} replicas is larger than the '
                f'{self.num_train} training examples in {self.config.dataset_dir}'
            )
        return steps

    @property
    def records(self) -> preprocessing.Records:
        """How the records of both splits are read (the keys and offset found on disk)."""
        return preprocessing.Records(
            num_classes=self.config.num_classes,
            label_offset=self.label_offset,
            schema=self.schema,
            skip_bad_records=self.config.skip_bad_records,
        )

    def train_preprocessing(self, epoch: int) -> preprocessing.TrainPreprocessing:
        """What a training record of epoch `epoch` becomes: the augmentation, at its size."""
        return preprocessing.TrainPreprocessing(
            self.records,
            image_size=self.image_sizes.train(epoch),
            augmentation=self.augmentation,
        )

    @property
    def eval_preprocessing(self) -> preprocessing.EvalPreprocessing:
        return preprocessing.EvalPreprocessing(
            self.records,
            image_size=self.image_sizes.eval,
            crop_fraction=self.config.eval_crop_fraction,
        )

    @property
    def description(self) -> str:
        """The data found, for the start-up banner."""
        if self.config.synthetic_data:
            return 'synthetic (one random batch, repeated; ImageNet-sized epochs)'
        served = (
            f'; training input on the tf.data service at {self.config.data_service_address} '
            f'({self.service_workers} workers)'
            if self.service_workers
            else ''
        )
        return (
            f'{self.found.dataset_dir}, {self.found.layout} layout, label offset '
            f'{self.label_offset}: '
            f'{len(self.train_files)} train files ({self.num_train} examples), '
            f'{len(self.eval_files)} validation files ({self.num_eval} examples){served}'
        )

    def _replicas_per_pipeline(self, context: tf.distribute.InputContext) -> int:
        return context.num_replicas_in_sync // context.num_input_pipelines

    def train(self, step: int) -> tf.distribute.DistributedDataset:
        """The training stream from global step `step` on, distributed over replicas.

        With progressive resizing it ends where the image size next changes
        (`size_change_after(step)`): the trainer starts the stream anew there, at the
        new size, as a run resumed at that step would. A stream read past its end stops
        the run with OutOfRangeError rather than training on at the old size.
        """
        dataset_fn = self.train_dataset_fn(step, served=bool(self.service_workers))
        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def size_changes(self, epochs: int) -> List[int]:
        """The global steps, within `epochs` epochs, at which the training size changes."""
        return [first * self.steps_per_epoch for first, _ in self.image_sizes.phases(epochs)[1:]]

    def size_change_after(self, step: int) -> Optional[int]:
        """The first global step after `step` whose epoch trains at another image size."""
        epoch = self.image_sizes.next_change(step // self.steps_per_epoch)
        return None if epoch is None else epoch * self.steps_per_epoch

    def preview_images(self, count: int) -> tf.Tensor:
        """The first `count` images of the first replica's first training batch.

        They come from a pipeline of their own, so the training stream is neither
        consumed nor delayed; only one per-replica batch is decoded.
        """
        context = tf.distribute.InputContext(
            num_input_pipelines=1,
            input_pipeline_id=0,
            num_replicas_in_sync=self.strategy.num_replicas_in_sync,
        )
        images, _ = next(iter(self.train_dataset_fn(0)(context)))
        return images[:count]

    def train_dataset_fn(self, step: int, served: bool = False):
        """`dataset_fn(input_context)` of the training stream from global step `step` on.

        `served`: decoded on the tf.data service's workers (`input_pipeline/data_service.py`),
        which give the same batches in the same order.
        """
        config = self.config
        epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
        image_size = self.image_sizes.train(epoch)
        change = self.size_change_after(step)
        # One job per input pipeline, named anew for every start of the stream.
        job_prefix = data_service.new_job_prefix() if served else None

        def until_change(dataset: tf.data.Dataset, per_pipeline: int) -> tf.data.Dataset:
            return dataset if change is None else dataset.take((change - step) * per_pipeline)

        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            batch = context.get_per_replica_batch_size(self.global_batch_size)
            per_pipeline = self._replicas_per_pipeline(context)
            if config.synthetic_data:
                dataset = dataset_lib.synthetic_dataset(
                    batch_size=batch,
                    image_size=image_size,
                    num_classes=config.num_classes,
                    soft_labels=self.soft_labels,
                )
                return until_change(dataset, per_pipeline)
            batches_per_epoch = self.steps_per_epoch * per_pipeline
            dataset = dataset_lib.train_dataset(
                self.train_files,
                self.train_preprocessing(epoch),
                batch_size=batch,
                seed=config.seed,
                start_epoch=epoch,
                skip_batches=step_in_epoch * per_pipeline,
                batches_per_epoch=batches_per_epoch,
                shuffle_buffer=config.shuffle_buffer,
                input_context=context,
                for_data_service=served,
            )
            if served:
                dataset = data_service.read(
                    dataset,
                    config.data_service_address,
                    num_workers=self.service_workers,
                    first_position=epoch * batches_per_epoch + step_in_epoch * per_pipeline,
                    job_prefix=job_prefix,
                    pipeline=context.input_pipeline_id,
                )
            return until_change(dataset, per_pipeline)

        return dataset_fn

    def eval_dataset(self) -> tf.distribute.DistributedDataset:
        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            return dataset_lib.eval_dataset(
                self.eval_files,
                self.eval_preprocessing,
                batch_size=context.get_per_replica_batch_size(self.global_batch_size),
                num_examples=self.num_eval,
                input_context=context,
            )

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    @property
    def eval_steps(self) -> int:
        return dataset_lib.eval_steps(self.num_eval, self.global_batch_size)

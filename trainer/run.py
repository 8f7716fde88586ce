"""Training and evaluation runs: composes the strategy, data, model and loop.

`train(config)` trains from scratch or resumes from the newest checkpoint in
`model_dir/checkpoints`, evaluates and exports after every epoch, and returns the last
evaluation. `evaluate(config)` evaluates a checkpoint or a SavedModel and exits.
"""

import json
import os
import time
from typing import Dict, Optional

from absl import logging
import keras
import tensorflow as tf

import densenet
from input_pipeline import dataset as datasets
from trainer import checkpoint as checkpoints
from trainer import distribute
from trainer import export
from trainer import loop
from trainer import optimizers
from trainer import schedules
from trainer import step as steps
from trainer import summaries
from trainer.config import RunConfig

# ILSVRC2012 sizes, used for synthetic-data runs so that epochs mean the same.
IMAGENET_TRAIN_EXAMPLES = 1281167
IMAGENET_EVAL_EXAMPLES = 50000


def _set_up_determinism(config: RunConfig) -> None:
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()


class _Data:
    """The split files and sizes, and the per-replica dataset functions."""

    def __init__(self, config: RunConfig, strategy: tf.distribute.Strategy):
        self.config = config
        self.strategy = strategy
        self.global_batch = config.batch_size * strategy.num_replicas_in_sync
        self.dtype = tf.bfloat16 if config.bfloat16 else tf.float32
        if config.synthetic_data:
            self.train_files = self.eval_files = []
            self.num_train, self.num_eval = IMAGENET_TRAIN_EXAMPLES, 0
        else:
            self.train_files = datasets.list_files(config.dataset_dir, 'train')
            self.eval_files = datasets.list_files(config.dataset_dir, 'validation')
            # Counting ImageNet's 1.28M training records means reading 140 GB; its standard
            # 1024-shard layout has a known size. Validation is always counted: exact
            # evaluation depends on it.
            self.num_train = (
                IMAGENET_TRAIN_EXAMPLES
                if len(self.train_files) == 1024
                else datasets.count_examples(self.train_files)
            )
            self.num_eval = datasets.count_examples(self.eval_files)
        self.steps_per_epoch = self.num_train // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f'--batch_size={config.batch_size} x {strategy.num_replicas_in_sync} replicas '
                f'is larger than the {self.num_train} training examples in {config.dataset_dir}'
            )

    def _replicas_per_pipeline(self, context: tf.distribute.InputContext) -> int:
        return context.num_replicas_in_sync // context.num_input_pipelines

    def train(self, step: int) -> tf.distribute.DistributedDataset:
        """The training stream from global step `step` on, distributed over replicas."""
        config = self.config
        epoch, step_in_epoch = divmod(step, self.steps_per_epoch)

        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            batch = context.get_per_replica_batch_size(self.global_batch)
            if config.synthetic_data:
                return datasets.synthetic_dataset(
                    batch_size=batch,
                    image_size=config.image_size,
                    num_classes=config.num_classes,
                    dtype=self.dtype,
                )
            per_pipeline = self._replicas_per_pipeline(context)
            return datasets.train_dataset(
                self.train_files,
                batch_size=batch,
                image_size=config.image_size,
                num_classes=config.num_classes,
                seed=config.seed,
                start_epoch=epoch,
                skip_batches=step_in_epoch * per_pipeline,
                batches_per_epoch=self.steps_per_epoch * per_pipeline,
                label_offset=config.label_offset,
                area_range=config.crop_area_range,
                aspect_ratio_range=config.crop_aspect_range,
                random_flip=config.random_flip,
                dtype=self.dtype,
                shuffle_buffer=config.shuffle_buffer,
                input_context=context,
            )

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def eval(self) -> tf.distribute.DistributedDataset:
        config = self.config

        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            return datasets.eval_dataset(
                self.eval_files,
                batch_size=context.get_per_replica_batch_size(self.global_batch),
                image_size=config.image_size,
                num_classes=config.num_classes,
                num_examples=self.num_eval,
                label_offset=config.label_offset,
                crop_fraction=config.eval_crop_fraction,
                dtype=self.dtype,
                input_context=context,
            )

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    @property
    def eval_steps(self) -> int:
        return datasets.eval_steps(self.num_eval, self.global_batch)


def _make_evaluator(strategy, data: _Data, predict_fn):
    """Returns `evaluate() -> metrics` over the whole validation split, each example once.

    The eval loop is traced once and reused for every evaluation of the run.
    """
    eval_loop = loop.make_eval_loop(
        strategy,
        lambda images, labels, weights: steps.eval_step(predict_fn, images, labels, weights),
    )
    distributed = data.eval()
    return lambda: _evaluate(eval_loop, distributed, data.eval_steps)


def _evaluate(eval_loop, distributed, eval_steps) -> Dict[str, float]:
    totals = eval_loop(iter(distributed), tf.constant(eval_steps))
    totals = {key: float(value) for key, value in totals.items()}
    count = max(totals['count'], 1.0)
    return {
        'top1': totals['top1'] / count,
        'top5': totals['top5'] / count,
        'loss': totals['cross_entropy'] / count,
        'num_examples': int(round(totals['count'])),
    }


def _append_result(model_dir: str, result: Dict) -> None:
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, 'eval_results.jsonl'), 'a') as stream:
        stream.write(json.dumps(result) + '\n')


def _epoch_value(step: int, steps_per_epoch: int):
    epoch, rest = divmod(step, steps_per_epoch)
    return epoch if rest == 0 else round(step / steps_per_epoch, 4)


def build_model(config: RunConfig) -> keras.Model:
    return densenet.create_model(
        config.model,
        num_classes=config.num_classes,
        image_size=config.image_size,
        dropout_rate=config.dropout_rate,
        compute_dtype=config.compute_dtype,
        batch_norm_momentum=config.batch_norm_momentum,
    )


def train(config: RunConfig) -> Optional[Dict[str, float]]:
    """Trains (or resumes) the run described by `config`; returns the last evaluation."""
    _set_up_determinism(config)
    strategy = distribute.create_strategy(
        config.distribution_strategy, device=config.device, num_gpus=config.num_gpus, tpu=config.tpu
    )
    chief = distribute.is_chief(strategy)
    data = _Data(config, strategy)
    steps_per_epoch = data.steps_per_epoch
    total_steps = config.train_steps or config.epochs * steps_per_epoch
    logging.info(
        'Strategy %s with %d replicas, global batch %d, %d steps per epoch, %d steps in all',
        type(strategy).__name__,
        strategy.num_replicas_in_sync,
        data.global_batch,
        steps_per_epoch,
        total_steps,
    )

    with strategy.scope():
        model = build_model(config)
        schedule = schedules.EpochSchedule(
            config.lr_sched,
            initial_lr=config.initial_lr,
            final_lr=config.final_lr,
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            decay_epochs=config.lr_decay_epochs,
        )
        optimizer = optimizers.create_optimizer(
            config.optimizer, schedule, momentum=config.momentum, nesterov=config.nesterov
        )
        # Slots exist before a restore, so the checkpoint fills them rather than deferring.
        optimizer.build(model.trainable_variables)
    state = checkpoints.CheckpointState(
        model=model,
        optimizer=optimizer,
        directory=os.path.join(config.model_dir, 'checkpoints'),
        keep=config.keep_checkpoints,
        chief=chief,
        worker_id=distribute.worker_id(strategy),
    )
    state.restore_latest()
    step = int(optimizer.iterations.numpy())
    writers = summaries.SummaryWriters(config.model_dir, enabled=chief)

    decay_vars = steps.decayed_variables(model)

    def replica_step(images, labels):
        return steps.train_step(
            model,
            optimizer,
            images,
            labels,
            global_batch_size=data.global_batch,
            decay_vars=decay_vars,
            weight_decay=config.weight_decay,
            num_replicas=strategy.num_replicas_in_sync,
        )

    train_loop = loop.make_train_loop(strategy, replica_step, jit_compile=config.jit_compile)
    evaluate_model = _make_evaluator(strategy, data, lambda images: model(images, training=False))

    def evaluate_and_record() -> Optional[Dict[str, float]]:
        if not data.num_eval:
            return None
        result = evaluate_model()
        result = {'epoch': _epoch_value(step, steps_per_epoch), 'step': step, **result}
        logging.info(
            'Evaluation at step %d: top-1 %.4f, top-5 %.4f, loss %.4f over %d examples',
            step,
            result['top1'],
            result['top5'],
            result['loss'],
            result['num_examples'],
        )
        writers.scalars('eval', step, {k: result[k] for k in ('top1', 'top5', 'loss')})
        if chief:
            _append_result(config.model_dir, result)
        return result

    result = None
    if step >= total_steps:
        logging.info('Training already complete at step %d; evaluating.', step)
        return evaluate_and_record()

    iterator = iter(data.train(step))
    window = {key: 0.0 for key in loop.TRAIN_METRICS}
    window_steps, window_start = 0, time.time()
    while step < total_steps:
        num_steps = min(
            config.steps_per_loop,
            total_steps - step,
            steps_per_epoch - step % steps_per_epoch,
            config.log_every_steps - step % config.log_every_steps,
            config.checkpoint_every_steps - step % config.checkpoint_every_steps,
        )
        totals = train_loop(iterator, tf.constant(num_steps))
        step += num_steps
        window = {key: window[key] + float(value) for key, value in totals.items()}
        window_steps += num_steps

        epoch_end = step % steps_per_epoch == 0
        if step % config.log_every_steps == 0 or step == total_steps or epoch_end:
            _log_train(
                writers,
                step,
                total_steps,
                steps_per_epoch,
                window,
                window_steps,
                time.time() - window_start,
                float(schedule(step - 1)),
            )
            window = {key: 0.0 for key in loop.TRAIN_METRICS}
            window_steps, window_start = 0, time.time()
        if epoch_end or step == total_steps:
            result = evaluate_and_record() or result
            if epoch_end and (config.save_every_epoch or step == total_steps):
                export.export_saved_model(
                    model,
                    os.path.join(config.model_dir, 'saves', f'epoch_{step // steps_per_epoch:03d}'),
                    image_size=config.image_size,
                    chief=chief,
                )
        if step % config.checkpoint_every_steps == 0 or epoch_end or step == total_steps:
            state.save(step)
            window_start = time.time()
    writers.close()
    return result


def _log_train(writers, step, total_steps, steps_per_epoch, window, window_steps, seconds, lr):
    count = max(window['count'], 1.0)
    cross_entropy = window['cross_entropy'] / count
    l2 = window['l2'] / max(window_steps, 1)
    values = {
        'loss': cross_entropy + l2,
        'cross_entropy': cross_entropy,
        'l2': l2,
        'top1': window['top1'] / count,
        'top5': window['top5'] / count,
        'learning_rate': lr,
        'images_per_second': window['count'] / max(seconds, 1e-9),
        'step_time': seconds / max(window_steps, 1),
    }
    writers.scalars('train', step, values)
    logging.info(
        'epoch %d step %d/%d: loss %.4f top-1 %.4f lr %.5f %.1f images/s',
        step // steps_per_epoch,
        step,
        total_steps,
        values['loss'],
        values['top1'],
        lr,
        values['images_per_second'],
    )


def evaluate(config: RunConfig) -> Dict[str, float]:
    """Evaluates `config.only_eval` (a SavedModel or a checkpoint) on the validation split.

    The result is appended to `eval_results.jsonl` in `config.model_dir`, or, when that
    is not given, in the run folder the checkpoint or export belongs to.
    """
    path = config.only_eval
    _set_up_determinism(config)
    if export.is_saved_model(path):
        # A SavedModel's variables live on one device: evaluate it without distribution.
        strategy = tf.distribute.get_strategy()
        predict, image_size = export.load_predict_fn(path)
        if image_size is not None and image_size != config.image_size:
            raise ValueError(
                f'--only_eval={path} takes {image_size}x{image_size} images but '
                f'--image_size={config.image_size}'
            )
        step = None
    else:
        strategy = distribute.create_strategy(
            config.distribution_strategy,
            device=config.device,
            num_gpus=config.num_gpus,
            tpu=config.tpu,
        )
        with strategy.scope():
            model = build_model(config)
        prefix = checkpoints.restore_weights(model, path)
        step = int(prefix.rsplit('-', 1)[-1]) if prefix.rsplit('-', 1)[-1].isdigit() else None
        predict = lambda images: model(images, training=False)
    data = _Data(config, strategy)
    if not data.num_eval:
        raise ValueError(f'--only_eval needs validation data in --dataset_dir={config.dataset_dir}')
    result = {
        'epoch': None if step is None else _epoch_value(step, data.steps_per_epoch),
        'step': step,
        **_make_evaluator(strategy, data, predict)(),
        'path': path,
    }
    _append_result(config.model_dir or _run_dir_of(path), result)
    return result


def _run_dir_of(path: str) -> str:
    """The model_dir that a checkpoint or an export under it belongs to."""
    path = os.path.abspath(path.rstrip('/'))
    if os.path.isfile(path + '.index'):
        path = os.path.dirname(path)
    parent = os.path.dirname(path)
    if os.path.basename(path) == 'checkpoints':
        return parent
    if os.path.basename(parent) == 'saves':
        return os.path.dirname(parent)
    return path

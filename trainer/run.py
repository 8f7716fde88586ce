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
from input_pipeline import formats
from trainer import banner
from trainer import checkpoint as checkpoints
from trainer import class_names as class_names_lib
from trainer import console
from trainer import distribute
from trainer import ema
from trainer import export
from trainer import loop
from trainer import nonfinite
from trainer import optimizers
from trainer import precision
from trainer import preemption
from trainer import profiling
from trainer import progress
from trainer import schedules
from trainer import step as steps
from trainer import summaries
from trainer.config import RunConfig
from trainer import errors

# ILSVRC2012 sizes, used for synthetic-data runs so that epochs mean the same.
IMAGENET_TRAIN_EXAMPLES = 1281167
IMAGENET_EVAL_EXAMPLES = 50000

# Augmented training images in the grid that TensorBoard shows at the start of a run.
_PREVIEW_IMAGES = 16

# An evaluation runs in about this many loop calls so that its progress bar moves; a
# call costs one host round trip, nothing next to an evaluation's duration.
_EVAL_PROGRESS_CALLS = 20


def _set_up_determinism(config: RunConfig) -> None:
    keras.utils.set_random_seed(config.seed)
    # tf.data mixes the global seed into each shuffle seed, and TensorFlow's seed
    # helper compares a tensor seed with 0 in Python when the global seed is 0
    # (OperatorNotAllowedInGraphError with the default --seed=0): offset it by one.
    tf.random.set_seed(config.seed + 1)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()


class _Data:
    """The split files and sizes, and the per-replica dataset functions."""

    def __init__(self, config: RunConfig, strategy: tf.distribute.Strategy):
        self.config = config
        self.strategy = strategy
        self.global_batch = config.batch_size * strategy.num_replicas_in_sync
        self.dtype = tf.bfloat16 if config.compute_dtype == 'bfloat16' else tf.float32
        # Mixup and CutMix turn labels into float32 [batch, num_classes] rows.
        self.soft_labels = config.mixup_alpha > 0 or config.cutmix_alpha > 0
        # Replaced by what the records say; synthetic data reads none.
        self.schema = formats.SLIM_SCHEMA
        self.label_offset = 1 if config.label_offset is None else config.label_offset
        if config.synthetic_data:
            self.train_files = self.eval_files = []
            self.num_train, self.num_eval = IMAGENET_TRAIN_EXAMPLES, 0
        else:
            # The layout, record keys and label offset, from the files (logged).
            found = formats.find_dataset(
                config.dataset_dir, layout=config.data_layout, label_offset=config.label_offset
            )
            self.found = found
            self.schema, self.label_offset = found.schema, found.label_offset
            self.train_files = list(found.train_files)
            self.eval_files = list(found.validation_files)
            # Counting ImageNet's 1.28M training records means reading 140 GB; its standard
            # 1024-shard layout has a known size. Validation is always counted: exact
            # evaluation depends on it.
            self.num_train = (
                IMAGENET_TRAIN_EXAMPLES
                if len(self.train_files) == 1024
                else datasets.count_examples(
                    self.train_files, skip_bad_records=config.skip_bad_records
                )
            )
            self.num_eval = datasets.count_examples(
                self.eval_files, skip_bad_records=config.skip_bad_records
            )
        self.steps_per_epoch = self.num_train // self.global_batch
        if self.steps_per_epoch == 0:
            raise errors.UserError(
                f'--batch_size={config.batch_size} x {strategy.num_replicas_in_sync} replicas '
                f'is larger than the {self.num_train} training examples in {config.dataset_dir}'
            )

    @property
    def description(self) -> str:
        """The data found, for the start-up banner."""
        if self.config.synthetic_data:
            return 'synthetic (one random batch, repeated; ImageNet-sized epochs)'
        return (
            f'{self.found.dataset_dir}, {self.found.layout} layout, label offset '
            f'{self.label_offset}: '
            f'{len(self.train_files)} train files ({self.num_train} examples), '
            f'{len(self.eval_files)} validation files ({self.num_eval} examples)'
        )

    def _replicas_per_pipeline(self, context: tf.distribute.InputContext) -> int:
        return context.num_replicas_in_sync // context.num_input_pipelines

    def train(self, step: int) -> tf.distribute.DistributedDataset:
        """The training stream from global step `step` on, distributed over replicas."""
        return self.strategy.distribute_datasets_from_function(self.train_dataset_fn(step))

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

    def train_dataset_fn(self, step: int):
        """`dataset_fn(input_context)` of the training stream from global step `step` on."""
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
                    soft_labels=self.soft_labels,
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
                label_offset=self.label_offset,
                area_range=config.crop_area_range,
                aspect_ratio_range=config.crop_aspect_range,
                random_flip=config.random_flip,
                dtype=self.dtype,
                shuffle_buffer=config.shuffle_buffer,
                input_context=context,
                schema=self.schema,
                color_jitter=config.color_jitter,
                pca_lighting=config.pca_lighting,
                randaugment_layers=config.randaugment_layers,
                randaugment_magnitude=config.randaugment_magnitude,
                mixup_alpha=config.mixup_alpha,
                cutmix_alpha=config.cutmix_alpha,
                skip_bad_records=config.skip_bad_records,
            )

        return dataset_fn

    def eval_dataset(self) -> tf.distribute.DistributedDataset:
        config = self.config

        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            return datasets.eval_dataset(
                self.eval_files,
                batch_size=context.get_per_replica_batch_size(self.global_batch),
                image_size=config.image_size,
                num_classes=config.num_classes,
                num_examples=self.num_eval,
                label_offset=self.label_offset,
                crop_fraction=config.eval_crop_fraction,
                dtype=self.dtype,
                input_context=context,
                schema=self.schema,
                skip_bad_records=config.skip_bad_records,
            )

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    @property
    def eval_steps(self) -> int:
        return datasets.eval_steps(self.num_eval, self.global_batch)


def _make_evaluator(strategy, data: _Data, predict_fn, *, show_progress: bool = True):
    """Returns `evaluate() -> metrics` over the whole validation split, each example once.

    The eval loop is traced once and reused for every evaluation of the run.
    """
    eval_loop = loop.make_eval_loop(
        strategy,
        lambda images, labels, weights: steps.eval_step(predict_fn, images, labels, weights),
    )
    distributed = data.eval_dataset()
    return lambda: _evaluate(eval_loop, distributed, data.eval_steps, show_progress=show_progress)


def _evaluate(eval_loop, distributed, eval_steps, *, show_progress=True) -> Dict[str, float]:
    iterator = iter(distributed)
    calls = max(1, -(-eval_steps // _EVAL_PROGRESS_CALLS))
    totals = {}
    with progress.ProgressBar('Evaluating', eval_steps, enabled=show_progress) as bar:
        while bar.done < eval_steps:
            num_steps = min(calls, eval_steps - bar.done)
            for key, value in eval_loop(iterator, tf.constant(num_steps)).items():
                totals[key] = totals.get(key, 0.0) + float(value)
            bar.advance(num_steps)
    count = max(totals['count'], 1.0)
    return {
        'top1': totals['top1'] / count,
        'top5': totals['top5'] / count,
        'loss': totals['cross_entropy'] / count,
        'num_examples': int(round(totals['count'])),
    }


def _append_result(model_dir: str, result: Dict) -> None:
    """Adds `result` to `eval_results.jsonl`: one row per training step, the newest kept.

    The trainer evaluates before it checkpoints, so a run killed between the two repeats
    that evaluation when it resumes: its row replaces the earlier one of the same step,
    instead of standing twice in the file. `--only_eval` rows (they carry a `path`) are
    always added. A line cut short by a kill mid-write is dropped. The file is replaced
    atomically, so a kill now leaves the old file or the new one.
    """
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, 'eval_results.jsonl')
    lines = []
    if os.path.exists(path):
        with open(path) as stream:
            for line in stream:
                try:
                    row = json.loads(line)
                except ValueError:
                    logging.warning('Dropped a damaged line of %s: %r', path, line[:200])
                    continue
                if (
                    'path' not in result
                    and 'path' not in row
                    and row.get('step') == result.get('step')
                ):
                    continue
                lines.append(line.rstrip('\n'))
    lines.append(json.dumps(result))
    with open(path + '.tmp', 'w') as stream:
        stream.write('\n'.join(lines) + '\n')
    os.replace(path + '.tmp', path)


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
        memory_efficient=config.memory_efficient,
    )


def train(config: RunConfig) -> Optional[Dict[str, float]]:
    """Trains (or resumes) the run described by `config`; returns the last evaluation.

    SIGTERM or SIGINT (Ctrl-C) writes a checkpoint at the next loop boundary and returns
    (see `trainer/preemption.py`); starting again with the same config resumes.
    """
    with preemption.PreemptionWatcher() as preemption_watcher:
        return _train(config, preemption_watcher)


def _train(
    config: RunConfig, preemption_watcher: preemption.PreemptionWatcher
) -> Optional[Dict[str, float]]:
    _set_up_determinism(config)
    strategy = distribute.create_strategy(
        config.distribution_strategy, device=config.device, num_gpus=config.num_gpus, tpu=config.tpu
    )
    chief = distribute.is_chief(strategy)
    data = _Data(config, strategy)
    steps_per_epoch = data.steps_per_epoch
    total_steps = config.train_steps or config.epochs * steps_per_epoch

    with strategy.scope():
        model = build_model(config)
        schedule = schedules.from_config(
            config,
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            global_batch=data.global_batch,
        )
        decay_vars = steps.decayed_variables(model)
        optimizer = optimizers.create_optimizer(
            config.optimizer,
            schedule,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
            variables=model.trainable_variables,
            decayed=decay_vars,
        )
        # Slots exist before a restore, so the checkpoint fills them rather than deferring.
        optimizer.build(model.trainable_variables)
        loss_scaler = precision.create_loss_scaler(config.compute_dtype, config.loss_scale)
        weight_average = ema.WeightAverage(model, config.ema_decay) if config.ema_decay else None
    extra_state = {'loss_scaler': loss_scaler}
    if weight_average is not None:
        extra_state['weight_average'] = weight_average
    state = checkpoints.CheckpointState(
        model=model,
        optimizer=optimizer,
        directory=os.path.join(config.model_dir, 'checkpoints'),
        keep=config.keep_checkpoints,
        chief=chief,
        worker_id=distribute.worker_id(strategy),
        **extra_state,
    )
    if not state.restore_latest() and config.init_checkpoint:
        logging.info(
            'Initialised the weights from %s (fine-tuning: the optimizer and step start afresh)',
            checkpoints.load_initial_weights(model, config.init_checkpoint),
        )
    preemption_watcher.attach(strategy, state)
    step = int(optimizer.iterations.numpy())
    for line in banner.banner_lines(
        model=config.model,
        num_classes=config.num_classes,
        image_size=config.image_size,
        compute_dtype=config.compute_dtype,
        strategy=strategy,
        global_batch=data.global_batch,
        data_description=data.description,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        start_step=step,
        model_dir=config.model_dir,
    ):
        logging.info('%s', line)
    writers = summaries.SummaryWriters(config.model_dir, enabled=chief)
    writers.hparams(config)
    if step == 0 and chief and not config.synthetic_data:
        writers.image_grid(step, data.preview_images(_PREVIEW_IMAGES))

    train_step = steps.TrainStep(
        model,
        optimizer,
        loss_scaler=loss_scaler,
        global_batch_size=data.global_batch,
        num_replicas=strategy.num_replicas_in_sync,
        weight_decay=optimizers.loss_weight_decay(config.optimizer, config.weight_decay),
        decay_vars=decay_vars,
        label_smoothing=config.label_smoothing,
        accumulation_steps=config.grad_accum_steps,
        weight_average=weight_average,
    )
    train_loop = loop.make_train_loop(
        strategy,
        train_step,
        jit_compile=config.jit_compile,
        # TensorFlow forbids reading the clock inside a graph under op determinism.
        measure_input_wait=not config.deterministic,
    )
    evaluate_model = _make_evaluator(
        strategy, data, lambda images: model(images, training=False), show_progress=chief
    )

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
        # `cross_entropy` repeats `loss` under the train run's name for the same figure.
        writers.scalars(
            'eval',
            step,
            {**{k: result[k] for k in ('top1', 'top5', 'loss')}, 'cross_entropy': result['loss']},
        )
        if config.histograms:
            writers.histograms(step, model.trainable_variables)
        if chief:
            _append_result(config.model_dir, result)
        return result

    result = None
    if step >= total_steps:
        logging.info('Training already complete at step %d; evaluating.', step)
        with ema.averaged_weights(weight_average):
            return evaluate_and_record()

    profiler = profiling.StepProfiler(
        config.profile_steps, os.path.join(config.model_dir, 'logs', 'train'), enabled=chief
    )
    train_console = console.TrainConsole(total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    guard = nonfinite.TrainingGuard(
        max_skipped_steps=config.max_skipped_steps,
        consecutive_skipped=lambda: int(loss_scaler.consecutive_skipped.numpy()),
    )
    class_names = class_names_lib.LazyClassNames(
        data.eval_files, num_classes=config.num_classes, label_offset=data.label_offset
    )
    iterator = iter(data.train(step))
    window = {}
    window_steps, window_start = 0, time.time()
    while step < total_steps:
        num_steps = min(
            config.steps_per_loop,
            total_steps - step,
            steps_per_epoch - step % steps_per_epoch,
            config.log_every_steps - step % config.log_every_steps,
            config.checkpoint_every_steps - step % config.checkpoint_every_steps,
            profiler.steps_to_boundary(step) or total_steps,
        )
        profiler.before_steps(step)
        totals = train_loop(iterator, tf.constant(num_steps))
        step += num_steps
        guard.check(
            totals,
            first_step=step - num_steps + 1,
            last_step=step,
            newest_checkpoint=state.latest,
        )
        window = {
            key: window.get(key, 0.0) + float(value)
            for key, value in totals.items()
            if not key.startswith('first_nonfinite')
        }
        window_steps += num_steps
        profiler.after_steps(step)

        epoch_end = step % steps_per_epoch == 0
        if step % config.log_every_steps == 0 or step == total_steps or epoch_end:
            values = summaries.train_scalars(
                window,
                steps=window_steps,
                seconds=time.time() - window_start,
                learning_rate=float(schedule(step - 1)),
                epoch=step / steps_per_epoch,
                weight_norm=summaries.global_norm(model.trainable_variables),
                loss_scale=float(train_step.loss_scaler.scale.numpy()),
            )
            writers.scalars('train', step, values)
            logging.info('%s', train_console.line(step, values))
            window = {}
            window_steps, window_start = 0, time.time()
        if epoch_end or step == total_steps:
            # With weight averaging, evaluations and exports see the averaged weights.
            with ema.averaged_weights(weight_average):
                result = evaluate_and_record() or result
                if epoch_end and (config.save_every_epoch or step == total_steps):
                    export.export_saved_model(
                        model,
                        os.path.join(
                            config.model_dir, 'saves', f'epoch_{step // steps_per_epoch:03d}'
                        ),
                        image_size=config.image_size,
                        crop_fraction=config.eval_crop_fraction,
                        class_names=class_names.get(),
                        chief=chief,
                    )
        if step % config.checkpoint_every_steps == 0 or epoch_end or step == total_steps:
            state.save(step)
            window_start = time.time()
        if preemption_watcher.checkpoint_and_stop(step):
            break
    profiler.stop()
    writers.close()
    # One line per worker: equal on every worker of a multi-worker run. (Batch-norm
    # moving statistics are left out: each replica averages its own batches'.)
    logging.info(
        'Trainable weights fingerprint at step %d: %s',
        step,
        distribute.weights_fingerprint(model.trainable_variables),
    )
    return result


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
            raise errors.UserError(
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
        if config.ema_decay and ema.restore_averages_into(model, prefix):
            logging.info('Evaluating the averaged weights of %s', prefix)
        step = int(prefix.rsplit('-', 1)[-1]) if prefix.rsplit('-', 1)[-1].isdigit() else None
        predict = lambda images: model(images, training=False)
    data = _Data(config, strategy)
    if not data.num_eval:
        raise errors.UserError(f'--only_eval needs validation data in --dataset_dir={config.dataset_dir}')
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

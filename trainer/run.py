"""Training and evaluation runs: builds the training state, then lets the controller run it.

`train(config)` trains from scratch or resumes from the newest checkpoint in
`model_dir/checkpoints`, evaluates and exports after every epoch, and returns the last
evaluation. `evaluate(config)` evaluates a checkpoint or a SavedModel and exits.

Training is three parts: `build_train_state` (strategy, data, model, optimizer,
checkpoint state: what a checkpoint restores), the actions that run at their cadences
(`trainer/actions.py`), and the controller that alternates the two
(`trainer/engine/controller.py`).
"""

import dataclasses
import functools
import os
from typing import Callable, Dict, Optional

from absl import logging
import keras
import tensorflow as tf

import densenet
import input_pipeline
from input_pipeline import data_service
from input_pipeline import preprocessing
from trainer import actions
from trainer.reporting import banner
from trainer.artifacts import checkpoint as checkpoint_lib
from trainer import config as config_lib
from trainer import preflight
from input_pipeline import class_names as class_names_lib
from trainer.reporting import console
from trainer.devices import distribute
from trainer.optimization import ema
from base import errors
from trainer import evaluation
from trainer.artifacts import export
from trainer import finetune
from trainer import image_sizes
from trainer.engine import loop
from trainer.engine import nonfinite
from trainer.optimization import optimizers
from trainer.optimization import loss_scaling
from trainer.engine import preemption
from trainer.reporting import profiling
from trainer.artifacts import model_dir as model_dir_lib
from trainer.artifacts import run_lock
from trainer.optimization import schedules
from trainer.engine import step as step_lib
from trainer.reporting import summaries
from trainer.artifacts import weights_by_name
from trainer.config import RunConfig
from trainer.engine.controller import Controller
from trainer.engine.controller import Every
from trainer.run_data import RunData

# Augmented training images in the grid that TensorBoard shows at the start of a run.
_PREVIEW_IMAGES = 16

# Which errors of the packages below are the user's mistake, not a bug: the trainer
# decides, here. Their messages name the flag, file or value; `users_mistakes` turns
# them into `errors.UserError`, which main.py prints as one line.
USER_ERRORS = (densenet.ModelError, input_pipeline.DataError)


def users_mistakes(function):
    """`function`, with the packages' `USER_ERRORS` raised as `errors.UserError`."""

    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except USER_ERRORS as error:
            raise errors.UserError(str(error)) from error

    return wrapped


def _prepare(config: RunConfig) -> None:
    """Checks the folders and devices (again, for configs built in Python); writes the demo data."""
    preflight.check(config)
    if config.prepare_digits_demo:
        from input_pipeline import digits  # pylint: disable=g-import-not-at-top

        counts = digits.ensure_digits_dataset(config.dataset_dir)
        logging.info('Digits demo data in %s: %s', config.dataset_dir, counts)


def _set_up_determinism(config: RunConfig) -> None:
    keras.utils.set_random_seed(config.seed)
    # tf.data mixes the global seed into each shuffle seed, and TensorFlow's seed
    # helper compares a tensor seed with 0 in Python when the global seed is 0
    # (OperatorNotAllowedInGraphError with the default --seed=0): offset it by one.
    tf.random.set_seed(config.seed + 1)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()


def _create_strategy(config: RunConfig) -> tf.distribute.Strategy:
    return distribute.create_strategy(
        config.distribution_strategy, device=config.device, num_gpus=config.num_gpus, tpu=config.tpu
    )


def build_model(config: RunConfig) -> keras.Model:
    """The config's model; one that meets several image sizes takes any size."""
    sizes = image_sizes.ImageSizes.from_settings(config)
    for size in sizes.all_sizes():
        densenet.check_image_size(config.model, size)
    several = sizes.progressive or sizes.eval != sizes.final
    return densenet.create_model(
        config.model,
        num_classes=config.num_classes,
        image_size=None if several else config.image_size,
        dropout_rate=config.dropout_rate,
        precision=config.precision,
        batch_norm_momentum=config.batch_norm_momentum,
        memory_efficient=config.memory_efficient,
    )


@dataclasses.dataclass
class TrainState:
    """What a training run builds once: the strategy, data, model and what it trains with.

    `checkpoint` saves and restores the model, optimizer, loss scaler and weight
    average; `step` is the global step they were restored at (0 for a new run).
    """

    config: RunConfig
    strategy: tf.distribute.Strategy
    data: RunData
    total_steps: int
    model: keras.Model
    schedule: schedules.EpochSchedule
    optimizer: keras.optimizers.Optimizer
    loss_scaler: loss_scaling.LossScaler
    weight_average: Optional[ema.WeightAverage]
    train_step: step_lib.TrainStep
    checkpoint: checkpoint_lib.CheckpointState
    step: int
    # Fine-tuning: the global step until which only the classifier trains (0: none).
    frozen_until: int = 0
    # Builds a TrainStep for the model's trainable variables as they are now.
    new_train_step: Optional[Callable[[], step_lib.TrainStep]] = None


def build_train_state(
    config: RunConfig, folder_lock: Optional[run_lock.RunLock] = None
) -> TrainState:
    """Builds the training state and restores the newest checkpoint (or --init_checkpoint).

    With `folder_lock`, each checkpoint is written only while the folder is still this
    run's (`RunLock.check`: on remote stores another start may have taken it over).
    """
    _set_up_determinism(config)
    strategy = _create_strategy(config)
    data = RunData(config, strategy)
    # The schedule spans --epochs whatever --train_steps says: --train_steps only stops
    # the run, so that a run stopped there and restarted with a larger one is the run
    # that was never stopped, and a short smoke run trains at the recipe's rates.
    schedule_steps = config.epochs * data.steps_per_epoch
    total_steps = config.train_steps or schedule_steps
    with strategy.scope():
        model = build_model(config)
        schedule = schedules.from_config(
            config,
            steps_per_epoch=data.steps_per_epoch,
            total_steps=schedule_steps,
            global_batch_size=data.global_batch_size,
        )
        decayed_variables = step_lib.decayed_variables_of(model)
        optimizer = optimizers.create_optimizer(
            config.optimizer,
            schedule,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
            variables=model.trainable_variables,
            decayed_variables=decayed_variables,
        )
        # Slots exist before a restore, so the checkpoint fills them rather than deferring.
        optimizer.build(model.trainable_variables)
        loss_scaler = loss_scaling.create_loss_scaler(config.precision, config.loss_scale)
        weight_average = ema.WeightAverage(model, config.ema_decay) if config.ema_decay else None
    extra_state = {'loss_scaler': loss_scaler}
    if weight_average is not None:
        extra_state['weight_average'] = weight_average
    checkpoint = checkpoint_lib.CheckpointState(
        model=model,
        optimizer=optimizer,
        directory=os.path.join(config.model_dir, 'checkpoints'),
        keep=config.keep_checkpoints,
        chief=distribute.is_chief(strategy),
        worker_id=distribute.worker_id(strategy),
        before_save=folder_lock.check if folder_lock else None,
        input_version=preprocessing.VERSION,
        **extra_state,
    )
    resumed = checkpoint.restore_latest()
    if resumed and checkpoint.stored_input_version != preprocessing.VERSION:
        logging.warning(
            '%s', preprocessing.version_change(checkpoint.stored_input_version, resumed)
        )
    if not resumed and config.init_checkpoint:
        loaded = checkpoint_lib.load_initial_weights(model, config.init_checkpoint)
        logging.info(
            'Initialised the weights from %s (fine-tuning: the optimizer and step start afresh)',
            loaded.describe(),
        )
    new_train_step = functools.partial(
        step_lib.TrainStep,
        model,
        optimizer,
        loss_scaler=loss_scaler,
        global_batch_size=data.global_batch_size,
        num_replicas=strategy.num_replicas_in_sync,
        weight_decay=optimizers.loss_weight_decay(config.optimizer, config.weight_decay),
        decayed_variables=decayed_variables,
        label_smoothing=config.label_smoothing,
        grad_accum_steps=config.grad_accum_steps,
        weight_average=weight_average,
    )
    step = int(optimizer.iterations.numpy())
    frozen_until = config.freeze_backbone_epochs * data.steps_per_epoch
    if step < frozen_until:
        finetune.set_backbone_frozen(model, True)
    return TrainState(
        config=config,
        strategy=strategy,
        data=data,
        total_steps=total_steps,
        model=model,
        schedule=schedule,
        optimizer=optimizer,
        loss_scaler=loss_scaler,
        weight_average=weight_average,
        train_step=new_train_step(),
        checkpoint=checkpoint,
        step=step,
        frozen_until=frozen_until,
        new_train_step=new_train_step,
    )


def _evaluation_recorder(state: TrainState, writers: summaries.SummaryWriters, chief: bool):
    """`record(step) -> result`: evaluates, logs, writes the summaries and the jsonl row."""
    config, data, model = state.config, state.data, state.model
    evaluate_model = evaluation.make_evaluator(
        state.strategy, data, lambda images: model(images, training=False), show_progress=chief
    )

    def record(step: int) -> Optional[Dict[str, float]]:
        if not data.num_eval:
            return None
        result = {
            'epoch': evaluation.epoch_value(step, data.steps_per_epoch),
            'step': step,
            **evaluate_model(),
        }
        logging.info(
            'Evaluation at step %d: top-1 %.4f, top-5 %.4f, cross-entropy %.4f over %d examples',
            step,
            result['top1'],
            result['top5'],
            result['cross_entropy'],
            result['num_examples'],
        )
        # The train run's `cross_entropy` is the same figure: one chart compares them.
        writers.scalars(
            'eval', step, {key: result[key] for key in ('top1', 'top5', 'cross_entropy')}
        )
        if config.histograms:
            writers.histograms(step, model.trainable_variables)
        if chief:
            evaluation.append_result(config.model_dir, result)
        return result

    return record


def _actions(state: TrainState, writers, evaluations, profiler, watcher, chief: bool):
    """The actions of a training run, in the order they run after each loop call."""
    config, data, last_step = state.config, state.data, state.total_steps
    steps_per_epoch = data.steps_per_epoch

    def extra_scalars(step: int) -> Dict[str, float]:
        return dict(
            # The s-th update used the schedule's rate at s - 1, and its epoch's size.
            learning_rate=float(state.schedule(step - 1)),
            image_size=float(data.image_sizes.train((step - 1) // steps_per_epoch)),
            weight_norm=summaries.global_norm(state.model.trainable_variables),
            loss_scale=float(state.loss_scaler.scale.numpy()),
        )

    guard = nonfinite.TrainingGuard(
        max_skipped_steps=config.max_skipped_steps,
        consecutive_skipped=lambda: int(state.loss_scaler.consecutive_skipped.numpy()),
    )
    class_names = class_names_lib.LazyClassNames(
        data.eval_files, num_classes=config.num_classes, label_offset=data.label_offset
    )
    return [
        actions.StopProfiler(profiler),
        actions.CheckFinite(guard, state.checkpoint),
        actions.LogTrainScalars(
            Every(config.log_every_steps, steps_per_epoch, last_step=last_step),
            writers,
            console.TrainConsole(total_steps=last_step, steps_per_epoch=steps_per_epoch),
            extra_scalars,
            steps_per_epoch,
        ),
        evaluations,
        actions.Export(
            model=state.model,
            model_dir=config.model_dir,
            steps_per_epoch=steps_per_epoch,
            last_step=last_step,
            every_epoch=config.save_every_epoch,
            at_last_step=config.export_last_step,
            weight_average=state.weight_average,
            export_kwargs=dict(
                image_size=data.image_sizes.eval,
                crop_fraction=config.eval_crop_fraction,
                chief=chief,
            ),
            class_names=class_names,
        ),
        actions.SaveCheckpoint(
            Every(config.checkpoint_every_steps, steps_per_epoch, last_step=last_step),
            state.checkpoint,
        ),
        actions.StopOnSignal(watcher),
        actions.StartProfiler(profiler),
    ]


class _TraceCounter:
    """Calls the train loop, and logs each time TensorFlow traced it anew.

    The loop is traced once per input shape: once per image size of the run (and
    again after fine-tuning unfreezes the backbone, a new step). The log line is
    the count a user can check against the banner's number of traced shapes.
    """

    def __init__(self):
        self.loop, self.seen = None, 0

    def counted(self, train_loop, image_size: int, *args):
        totals = train_loop(*args)
        if train_loop is not self.loop:
            self.loop, self.seen = train_loop, 0
        traced = train_loop.experimental_get_tracing_count()
        if traced > self.seen:
            self.seen = traced
            logging.info(
                'Traced the train loop for %dx%d images (%d trace%s of this step)',
                image_size,
                image_size,
                traced,
                's' * (traced != 1),
            )
        return totals


@users_mistakes
def train(
    config: RunConfig, folder_lock: Optional[run_lock.RunLock] = None
) -> Optional[Dict[str, float]]:
    """Trains (or resumes) the run described by `config`; returns the last evaluation.

    SIGTERM or SIGINT (Ctrl-C) writes a checkpoint at the next loop boundary and raises
    `errors.StoppedEarly` (see `trainer/engine/preemption.py`); starting again with the same
    config resumes.
    `folder_lock` is the model_dir's lock when the caller has taken it (`main.py`,
    before writing flags.cfg); otherwise the chief takes it here (`trainer/artifacts/run_lock.py`).
    """
    _prepare(config)
    with (
        preemption.PreemptionWatcher() as watcher,
        run_lock.holding(
            config.model_dir, folder_lock, chief=config_lib.is_chief_task()
        ) as folder_lock,
    ):
        state = build_train_state(config, folder_lock)
        watcher.attach(state.strategy, state.checkpoint)
        chief = distribute.is_chief(state.strategy)
        for line in banner.banner_lines(
            model=config.model,
            num_classes=config.num_classes,
            image_sizes=state.data.image_sizes.describe(config.epochs),
            precision=config.precision,
            strategy=state.strategy,
            global_batch_size=state.data.global_batch_size,
            data_description=state.data.description,
            steps_per_epoch=state.data.steps_per_epoch,
            total_steps=state.total_steps,
            start_step=state.step,
            model_dir=config.model_dir,
        ):
            logging.info('%s', line)
        writers = summaries.SummaryWriters(config.model_dir, enabled=chief)
        writers.hparams(config)
        evaluations = actions.Evaluate(
            Every(state.data.steps_per_epoch, last_step=state.total_steps),
            _evaluation_recorder(state, writers, chief),
            state.weight_average,
        )
        if state.step >= state.total_steps:
            logging.info('Training already complete at step %d; evaluating.', state.step)
            return evaluations.evaluate_at(state.step)
        if state.step == 0 and chief and not config.synthetic_data:
            writers.image_grid(0, state.data.preview_images(_PREVIEW_IMAGES))

        if state.step < state.frozen_until:
            logging.info(
                'Fine-tuning: only %s trains until step %d (--freeze_backbone_epochs=%d; the '
                "backbone's batch-norm statistics are frozen too), then every layer",
                weights_by_name.CLASSIFIER,
                state.frozen_until,
                config.freeze_backbone_epochs,
            )

        def make_train_loop():
            return loop.make_train_loop(
                state.strategy,
                state.train_step,
                jit_compile=config.jit_compile,
                # TensorFlow forbids reading the clock inside a graph under op determinism.
                measure_input_wait=not config.deterministic,
            )

        train_loop = make_train_loop()
        traces = _TraceCounter()

        def unfreeze():
            nonlocal train_loop
            finetune.set_backbone_frozen(state.model, False)
            state.train_step = state.new_train_step()
            train_loop = make_train_loop()
            logging.info(
                'Step %d: the backbone is unfrozen; every layer trains from here',
                state.frozen_until,
            )

        iterator = iter(state.data.train(state.step))
        image_size = state.data.image_sizes.train(state.step // state.data.steps_per_epoch)

        def resize(step: int):
            nonlocal iterator, image_size
            # The stream from `step` on, as a run resumed there builds it: the same batches.
            iterator = iter(state.data.train(step))
            image_size = state.data.image_sizes.train(step // state.data.steps_per_epoch)
            logging.info(
                'Step %d: training images are %dx%d from here', step, image_size, image_size
            )
            watch.restarted(step)

        profiler = profiling.StepProfiler(
            config.profile_steps, os.path.join(config.model_dir, 'logs', 'train'), enabled=chief
        )
        # With the tf.data service: a lost worker ends the run in one line, and a signal
        # while the loop waits for its batches still checkpoints (input_pipeline/data_service.py).
        with data_service.watched(state, config.data_service_timeout) as watch:
            controller = Controller(
                watch.guard(
                    lambda num_steps: traces.counted(
                        train_loop, image_size, iterator, tf.constant(num_steps)
                    )
                ),
                steps_per_loop=config.steps_per_loop,
                last_step=state.total_steps,
                actions=[
                    finetune.UnfreezeBackbone(state.frozen_until, unfreeze),
                    *_actions(state, writers, evaluations, profiler, watcher, chief),
                    # After the epoch's evaluation and checkpoint: the next epoch's input.
                    actions.ResizeImages(
                        state.data.size_changes(
                            -(-state.total_steps // state.data.steps_per_epoch)
                        ),
                        resize,
                    ),
                ],
            )
            step = controller.run(state.step)
        profiler.stop()
        writers.close()
    # One line per worker: equal on every worker of a multi-worker run. (Batch-norm
    # moving statistics are left out: each replica averages its own batches'.)
    logging.info(
        'Trainable weights fingerprint at step %d: %s',
        step,
        distribute.weights_fingerprint(state.model.trainable_variables),
    )
    watcher.raise_if_stopped(step, state.total_steps, evaluations.last_result)
    return evaluations.last_result


@users_mistakes
def evaluate(config: RunConfig) -> Dict[str, float]:
    """Evaluates `config.only_eval` (a SavedModel or a checkpoint) on the validation split.

    The result is appended to `eval_results.jsonl` in `config.model_dir`, or, when that
    is not given, in the model_dir the checkpoint or export belongs to.
    """
    _prepare(config)
    path = config.only_eval
    export.refuse_unfinished(path, '--only_eval')
    _set_up_determinism(config)
    if model_dir_lib.is_saved_model(path):
        # A SavedModel's variables live on one device: evaluate it without distribution.
        strategy = tf.distribute.get_strategy()
        predict, image_size = export.load_predict_fn(path)
        eval_size = image_sizes.ImageSizes.from_settings(config).eval
        if image_size is not None and image_size != eval_size:
            flag = '--eval_image_size' if config.eval_image_size else '--image_size'
            raise errors.UserError(
                f'--only_eval={path} takes {image_size}x{image_size} images but {flag}={eval_size}'
            )
        step = None
    else:
        strategy = _create_strategy(config)
        with strategy.scope():
            model = build_model(config)
        prefix = checkpoint_lib.restore_weights(model, path)
        if config.ema_decay and ema.restore_averages_into(model, prefix):
            logging.info('Evaluating the averaged weights of %s', prefix)
        step = checkpoint_lib.step_of(prefix)
        predict = lambda images: model(images, training=False)
    data = RunData(config, strategy)
    if not data.num_eval:
        raise errors.UserError(
            f'--only_eval needs validation data in --dataset_dir={config.dataset_dir}'
        )
    model_dir = config.model_dir or model_dir_lib.of(path)
    result = {
        'epoch': None if step is None else evaluation.epoch_from_results(model_dir, step),
        'step': step,
        **evaluation.make_evaluator(strategy, data, predict)(),
        'path': path,
    }
    _append_only_eval_result(model_dir, result)
    return result


def _append_only_eval_result(model_dir: str, result: Dict) -> None:
    """Adds an --only_eval row to the model_dir's results, unless a trainer holds it.

    Evaluating a checkpoint of a run in progress is allowed, but its eval_results.jsonl
    is the trainer's to rewrite: the row would race with the trainer's own. So the
    folder is taken for the moment of the write, or the row is left out, said in a line.
    On a remote store, where taking the folder would stop its trainer
    (`trainer/artifacts/run_lock.py`), the row is added as before.
    """
    if not config_lib.is_local(model_dir):
        evaluation.append_result(model_dir, result)
        return
    try:
        lock = run_lock.acquire(model_dir, purpose='adding an --only_eval result')
    except run_lock.FolderInUseError as error:
        logging.warning(
            'Not added to %s/eval_results.jsonl, which is in use by %s: the result is only printed',
            model_dir,
            error.holder,
        )
        return
    try:
        evaluation.append_result(model_dir, result)
    finally:
        lock.release()

"""Training input on tf.data service workers: more CPUs than the training host has.

One dispatcher and a fixed list of workers, each its own process on any machine that
can read the dataset's files at the same paths:

  python -m input_pipeline.data_service dispatcher --port=5050 \\
      --workers=cpu1:5051,cpu2:5051
  python -m input_pipeline.data_service worker --dispatcher=cpu0:5050 --port=5051 \\
      --address=cpu1:5051        # on cpu1; the same on cpu2 with cpu2:5051

and the trainer reads its training batches from them with
`main.py --data_service_address=cpu0:5050`. Evaluation stays on the training host.

What the workers compute is the local pipeline's own stream
(`dataset.train_dataset(for_data_service=True)`, decoded by `worker_batches` with the
local pipeline's preprocessing objects): every worker reads and shuffles all
records (reading is the cheap part), keeps every `num_workers`-th batch of serialised
records (the service's HINT sharding, which is why the dispatcher needs the worker
list) and decodes and augments only those. The trainer reads the workers in rounds
(coordinated reads, which keep any worker from running ahead of the others) and `read`
puts their batches back in stream order, checking that they are the consecutive
batches it expects. So the guarantees are the
local pipeline's, batch for batch:

- every example exactly once per epoch (an epoch is whole steps; the remainder of the
  records is left out, as locally);
- the same order and augmentation as without the service, for the same seed: the
  batches are bit-identical;
- a resume restores exactly, from the checkpoint's step, not the epoch start (the
  resumed stream starts at (epoch, batch) on the workers, as locally).

The price: every worker reads the whole dataset (N workers read it N times), and the
trainer waits for the slowest worker in each round. A worker that restarts begins its
share again from the stream's start, so a lost worker means restarting the training
(which resumes exactly). A lost worker ends the run in one line naming it, exit 1,
with its last checkpoint intact, and nothing grows meanwhile (`Watchdog`): when a
worker dies, the service goes on reading the others, whose batches the reorder stage
would hold for ever; it holds at most `_MAX_ROUNDS_AHEAD` rounds and stops there. A
worker that answers nothing at all makes the trainer wait: `--data_service_timeout`
seconds without a batch end the run the same way, and SIGTERM or SIGINT while it
waits still writes the checkpoint and stops, as at a loop boundary.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import select
import signal
import socket
import sys
import threading
import time
import uuid

from absl import logging

from base import errors
from input_pipeline import DataError

# How long the trainer waits for the dispatcher and every worker to answer at start.
_PROBE_SECONDS = 60.0

# The most rounds one worker's batches may run ahead of another's in the reorder stage
# (each held batch is a whole training batch: 39 MB at ImageNet's 256 x 224 x 224 in
# uint8). The service's coordinated rounds keep the workers within a round or two of
# each other; more means the service has stopped reading some worker (it died).
_MAX_ROUNDS_AHEAD = 8
# What the reorder stage's check says; `Watchdog` turns it into one line naming the worker.
_BEHIND = 'tf.data service worker fell behind: index'

# The dispatcher serves its --workers list under this dataset id (`serve_dispatcher`),
# so that the trainer can name a worker that stopped by its address.
_WORKER_LIST_ID = 'densenet-worker-list'

# After SIGTERM or SIGINT, how long the trainer waits for a batch before it writes the
# checkpoint itself (the training loop cannot reach its boundary without batches).
_SIGNAL_GRACE_SECONDS = 3.0
# After how long a wait for a batch (once batches have come) the log says so, before
# `--data_service_timeout` ends the run: an operator sees the stall as it begins.
_NOTICE_SECONDS = 5.0


def parse_address(address: str, flag: str = 'data_service_address') -> tuple[str, int]:
    """`host:port` or `grpc://host:port` -> (host, port); a one-line error naming `flag`."""
    rest = address.split('://', 1)[1] if '://' in address else address
    host, _, port = rest.rpartition(':')
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DataError(f'--{flag}={address} is not HOST:PORT (for example cpu0:5050)')
    return host, int(port)


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fails in one line unless something listens at the dispatcher's address.

    TensorFlow's client retries an unreachable dispatcher for many minutes; a plain TCP
    connection tells a mistyped address or a dispatcher that is not running at once.
    """
    host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as error:
        raise DataError(
            f'--data_service_address={address}: no tf.data service dispatcher answers '
            f'({error.strerror or error}); start one with '
            '`python -m input_pipeline.data_service dispatcher`'
        ) from None


def _target(address: str) -> str:
    return address if '://' in address else f'grpc://{address}'


def count_workers(address: str, timeout: float = _PROBE_SECONDS) -> int:
    """The number of workers the dispatcher shards over, once all of them answer.

    A probe job has each worker send its shard index and the shard count (the first two
    elements of a HINT-sharded range differ by the count). It fails at once where the
    dispatcher has no worker list (HINT sharding needs one) and, after `timeout`
    seconds, where a listed worker does not answer: a job would wait for its batches.
    """
    import tensorflow as tf

    service = tf.data.experimental.service
    hint = tf.data.experimental.SHARD_HINT
    probe = tf.data.Dataset.range(2**62).shard(hint, hint).batch(2).take(1)
    probe = probe.map(lambda first_two: (first_two[0], first_two[1] - first_two[0]))
    probe = probe.apply(service.distribute(service.ShardingPolicy.HINT, _target(address)))
    deadline = time.monotonic() + timeout
    answered, listed = set(), None
    while time.monotonic() < deadline:
        found = _read_within(probe, deadline - time.monotonic())
        if isinstance(found, Exception):
            raise DataError(f'--data_service_address={address}: {errors.one_line(found)}') from None
        if found:
            answered = {int(index) for index, _ in found}
            listed = int(found[0][1])
            if len(answered) == listed:
                return listed
        time.sleep(1.0)
    missing = f'{listed - len(answered)} of its {listed}' if listed else 'its'
    raise DataError(
        f'--data_service_address={address}: {missing} workers did not answer within '
        f'{timeout:.0f} s; start every worker the dispatcher lists in --workers'
    )


def _read_within(dataset, seconds: float):
    """The elements of a finite dataset as numpy, an exception, or None after `seconds`."""
    found: list = []

    def read():
        try:
            found.append([tuple(t.numpy() for t in element) for element in dataset])
        except Exception as error:  # noqa: BLE001 - handed to the caller's thread
            found.append(error)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(max(seconds, 0.0))
    return found[0] if found else None


def worker_batches(serialized, preprocessing, *, batch_size: int, batches_per_epoch: int):
    """The workers' side: each worker's share of the stream, decoded as locally.

    Every worker runs this same graph: `serialized` (from `dataset.train_dataset(
    for_data_service=True)`) is the whole stream of serialised batches with their keys,
    `(kernel keys, mixing key, epoch, batch index, (positions, (records, filenames)))`;
    batch b goes to worker b % num_workers (`shard(SHARD_HINT, SHARD_HINT)`, which the
    service rewrites to the worker's index), which decodes only its own with the
    local pipeline's `preprocessing` (prepare_batch, example, finish_batch). So its
    batches are the local pipeline's, bit for bit.

    Returns:
      An endless dataset of `(images, labels, position)`, position int64 `epoch *
      batches_per_epoch + batch index`, by which `read` puts the workers' batches back
      in order. Endless, as the service's round-robin reads require.
    """
    import tensorflow as tf

    shard_hint = tf.data.experimental.SHARD_HINT
    own = serialized.shard(shard_hint, shard_hint)

    def prepare_batch(kernel_keys, mixing_key, epoch, index, batch):
        positions, (records, filenames) = batch
        encoded, bbox, seeds, origin = preprocessing.prepare_batch(
            kernel_keys, positions, records, filenames
        )
        # What `finish_batch` needs rides along with every example of the batch.
        size = tf.size(positions)
        position = epoch * batches_per_epoch + index
        batch_info = (
            tf.fill([size], index),
            tf.tile(mixing_key[tf.newaxis], [size, 1]),
            tf.fill([size], position),
        )
        return encoded, bbox, seeds, origin + batch_info

    def example(encoded, bbox, seeds, origin_and_info):
        image, _ = preprocessing.example(encoded, bbox, seeds, origin_and_info[:4])
        return image, origin_and_info

    def finish(images, origin_and_info):
        *origin, index, mixing_keys, position = origin_and_info
        images, labels = preprocessing.finish_batch(mixing_keys[0], index[0], images, tuple(origin))
        return images, labels, position[0]

    examples = own.map(prepare_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    examples = examples.unbatch().map(
        example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return examples.batch(batch_size, drop_remainder=True).map(finish).repeat()


def read(
    dataset, address: str, num_workers: int, first_position: int, job_prefix: str, pipeline: int
):
    """The trainer's side: `dataset` run on the workers, batches back in stream order.

    Args:
      dataset: from `train_dataset(for_data_service=True)`: (images, labels, position).
      address: the dispatcher's HOST:PORT.
      num_workers: `count_workers(address)`.
      first_position: the position of the stream's first batch.
      job_prefix: from `new_job_prefix()`, the same for a run's input pipelines.
      pipeline: this input pipeline's id (one job each).

    Returns:
      A dataset of (images, labels) in the order the local pipeline gives.
    """
    import tensorflow as tf

    service = tf.data.experimental.service
    dataset = dataset.apply(
        service.distribute(
            service.ShardingPolicy.HINT,
            _target(address),
            job_name=f'{job_prefix}-pipeline{pipeline}',
            consumer_index=0,
            num_consumers=1,
        )
    )

    # Each worker sends its share in stream order, but the reads interleave the workers
    # as the service pleases (a round reads every worker the client knows of, and a
    # worker that registers late joins in a later round). Groups of `num_workers`
    # consecutive batches hold one batch of each worker, so they complete in stream
    # order whatever the interleaving; sorted, they are the stream. What a group holds
    # back is how far one worker is ahead of another, which the rounds keep constant.
    def group_of(images, labels, position):
        del images, labels
        return (position - first_position) // num_workers

    # Each worker's share arrives in order, so the reorder stage below holds what the
    # workers that are ahead sent beyond the one furthest behind. When the service
    # stops reading a worker (it died), the others' batches would pile up there without
    # end: stop once one worker is `_MAX_ROUNDS_AHEAD` rounds ahead of another.
    progress = _Progress(num_workers)
    _PROGRESS.append(progress)

    def count_rounds(rounds, element):
        worker = (element[2] - first_position) % num_workers
        rounds = tf.tensor_scatter_nd_add(rounds, [[worker]], [1])
        # Also in Python, for `Watchdog` to name a worker that stopped sending.
        rounds = rounds + 0 * tf.py_function(progress.arrive, [worker], tf.int64)
        behind = tf.argmin(rounds)
        check = tf.debugging.Assert(
            tf.reduce_max(rounds) - rounds[behind] <= _MAX_ROUNDS_AHEAD,
            [_BEHIND, behind, 'of', num_workers],
        )
        with tf.control_dependencies([check]):
            return rounds, tf.nest.map_structure(tf.identity, element)

    dataset = dataset.scan(tf.zeros([num_workers], tf.int64), count_rounds)

    groups = dataset.group_by_window(
        key_func=group_of,
        reduce_func=lambda key, window: window.batch(num_workers),
        window_size=num_workers,
    )

    def in_order(group, batches):
        images, labels, positions = batches
        order = tf.argsort(positions)
        expected = first_position + group * num_workers + tf.range(num_workers, dtype=tf.int64)
        check = tf.debugging.assert_equal(
            tf.gather(positions, order),
            expected,
            # A worker that restarts sends its share again from the stream's start.
            message=(
                'tf.data service batches out of order: did a worker restart? Restart the '
                'training (it resumes exactly); otherwise this is a bug, please report it'
            ),
        )
        with tf.control_dependencies([check]):
            order = tf.identity(order)
        return tf.gather(images, order), tf.gather(labels, order)

    # Batches put in order (`produced`) and that the training loop takes (`consumed`):
    # equal counts mean the loop waits for a batch (`Watchdog`).
    def counted(counter):
        def count(images, labels):
            tick = tf.py_function(counter, [], tf.int64)
            with tf.control_dependencies([tick]):
                return tf.identity(images), tf.identity(labels)

        return count

    batches = groups.enumerate().map(in_order).unbatch().map(counted(progress.produce))
    return batches.prefetch(tf.data.AUTOTUNE).map(counted(progress.consume))


class _Progress:
    """Counts of the batches one `read` stream received (per worker), put in order and
    handed on, and when the last was handed on."""

    def __init__(self, num_workers: int):
        self.arrived = [0] * num_workers
        self.produced = self.consumed = 0
        self.last_taken = time.monotonic()

    def arrive(self, worker):
        self.arrived[int(worker)] += 1
        return 0

    def produce(self):
        self.produced += 1
        return 0

    def consume(self):
        self.consumed += 1
        self.last_taken = time.monotonic()
        return 0

    @property
    def waiting(self) -> bool:
        """Whether whoever reads the stream waits: everything that arrived was taken."""
        return self.consumed >= self.produced


# The `read` streams of this process (one per input pipeline and start of the stream).
_PROGRESS: list[_Progress] = []


def worker_addresses(address: str, num_workers: int) -> list[str]:
    """The dispatcher's --workers, in shard order, as `serve_dispatcher` serves them.

    A dispatcher started otherwise has no such list: then the workers are named by
    their place in it ("worker 2 of 2").
    """
    import tensorflow as tf

    service = tf.data.experimental.service
    named = [f'worker {index + 1} of {num_workers}' for index in range(num_workers)]
    listing = service.from_dataset_id(
        service.ShardingPolicy.OFF,
        _target(address),
        _WORKER_LIST_ID,
        element_spec=tf.TensorSpec([], tf.string),
    ).take(1)
    found = _read_within(listing.map(lambda text: (text,)), 30.0)
    if isinstance(found, list) and found:
        listed = found[0][0].decode().split(',')
        if len(listed) == num_workers:
            return listed
    return named


def answers(address: str, timeout: float = 3.0) -> bool:
    """Whether something accepts a TCP connection at HOST:PORT."""
    try:
        host, port = parse_address(address)
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except (OSError, DataError):
        return False


class Watchdog:
    """Ends a run whose tf.data service workers stopped, in one line naming them.

    Two ways a lost worker shows: the service stops reading it and goes on with the
    others (a worker that died: the reorder stage's bound stops the stream, and
    `guard` turns that into the line), or nothing arrives at all (a worker stopped, or
    a network gone: a thread of its own sees the training loop wait `timeout` seconds
    without a batch). Either way the line names the workers that do not accept a
    connection, says what to do, and names the checkpoint the restart resumes from.

    The thread ends the process itself (exit 1) since the training loop waits inside
    TensorFlow, where Python cannot interrupt it; it acts only while the loop waits for
    a batch (inside `guard`), never during a checkpoint, evaluation or export. For the
    same reason it watches SIGTERM and SIGINT (`signal.set_wakeup_fd`, which the signal
    reaches while the handler of `trainer/engine/preemption.py` cannot run): once the loop
    has waited `_SIGNAL_GRACE_SECONDS` for a batch and a signal has come, it writes the
    checkpoint of the steps done, as the loop boundary would, and exits with
    `errors.EXIT_STOPPED`. The loop, waiting for its next batch, has finished its
    previous steps; which step that is comes from the batches it took (`_steps_done`).
    Where that cannot be known (several training processes, which must save together),
    it keeps the last checkpoint and says so.

    Before the first batch arrives (workers fill their shuffle buffers and skip to a
    resumed position, which can take minutes on a large dataset), only a worker that
    refuses connections ends the run.
    """

    def __init__(
        self,
        address,
        workers,
        timeout,
        checkpoint=None,
        iterations=None,
        start_step=0,
        batches_per_step=1,
        can_save=False,
    ):
        self.address, self.workers, self.timeout = address, list(workers), timeout
        self.checkpoint, self.iterations, self.can_save = checkpoint, iterations, can_save
        self.start_step, self.batches_per_step = start_step, batches_per_step
        # The stream of the iterator the loop reads (one input pipeline per process).
        self.streams = _PROGRESS[-1:]
        self.in_loop = False
        self.signal_name, self.signal_time = None, 0.0
        self.entered = 0.0
        self._noticed = None  # The start of the wait the log last reported.
        self._stop = threading.Event()
        self._wakeup = None
        self._thread = threading.Thread(
            target=self._watch, name='data-service-watchdog', daemon=True
        )

    # -- the main thread's side
    def restarted(self, step: int) -> None:
        """Follows the stream that the trainer just started at `step` (the newest)."""
        self.streams = _PROGRESS[-1:]
        self.start_step = step

    def guard(self, train_fn):
        """`train_fn` that the watchdog watches while it runs; a lost worker's stop of
        the stream becomes one line."""
        import tensorflow as tf

        def guarded(*args, **kwargs):
            self.entered = time.monotonic()
            self.in_loop = True
            try:
                return train_fn(*args, **kwargs)
            except tf.errors.InvalidArgumentError as error:
                found = re.search(re.escape(_BEHIND) + r'\D*(\d+)', str(error))
                if not found:
                    raise
                raise DataError(self.message(behind=int(found.group(1)))) from None
            finally:
                self.in_loop = False

        return guarded

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            reader, writer = socket.socketpair()
            writer.setblocking(False)
            try:
                previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
                self._wakeup = (reader, writer, previous)
            except ValueError:
                reader.close()
                writer.close()
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        if self._wakeup:
            reader, writer, previous = self._wakeup
            signal.set_wakeup_fd(previous)
            reader.close()
            writer.close()

    # -- what it says
    def _last_checkpoint(self) -> str:
        latest = self.checkpoint.latest if self.checkpoint is not None else None
        return f'from {os.path.basename(latest)}' if latest else 'from step 0 (no checkpoint yet)'

    def message(self, behind=None, waited=None) -> str:
        """The one line: which workers stopped, and what to do."""
        silent = [worker for worker in self.workers if ':' in worker and not answers(worker)]
        if behind is None:
            # The worker whose batches stopped first, if one did.
            arrived = [sum(counts) for counts in zip(*(s.arrived for s in self.streams))]
            if arrived and min(arrived) < max(arrived):
                behind = arrived.index(min(arrived))
        named = list(silent)
        if (
            behind is not None
            and 0 <= behind < len(self.workers)
            and self.workers[behind] not in named
        ):
            named.insert(0, self.workers[behind])
        why = (
            f'the training loop waited {waited:.0f} s for a batch'
            if waited is not None
            else "its batches stopped coming while the other workers' went on"
        )
        if named:
            stopped = (
                'stopped answering' if set(named) <= set(silent) else 'stopped sending batches'
            )
            plural = 's' if len(named) > 1 else ''
            who = f'tf.data service worker{plural} {", ".join(named)} {stopped}'
        else:
            who = (
                f'the tf.data service at {self.address} sends no batches although its '
                f'{len(self.workers)} workers accept connections'
            )
        return (
            f'{who} ({why}): restart the dispatcher and every worker, then this command; '
            f'training resumes exactly, {self._last_checkpoint()}'
        )

    # -- the thread
    def _waiting_since(self):
        """When the training loop began waiting for a batch that has not come, or None."""
        if not self.in_loop:
            return None
        waiting = [stream for stream in self.streams if stream.waiting]
        if not waiting:
            return None
        return max(self.entered, min(stream.last_taken for stream in waiting))

    def _watch(self) -> None:
        while not self._stop.is_set():
            if self._wakeup:
                ready, _, _ = select.select([self._wakeup[0]], [], [], 1.0)
                if ready:
                    data = self._wakeup[0].recv(64)
                    if self._wakeup[2] != -1:
                        # Passed on to the fd this replaced: the preemption watcher's,
                        # which times the signal from its arrival (trainer/engine/preemption.py).
                        try:
                            os.write(self._wakeup[2], data)
                        except OSError:
                            pass
                    for number in data:
                        if number in (signal.SIGTERM, signal.SIGINT) and not self.signal_name:
                            self.signal_name = signal.Signals(number).name
                            self.signal_time = time.monotonic()
            else:
                self._stop.wait(1.0)
            since = self._waiting_since()
            if since is None:
                continue
            now = time.monotonic()
            if self.signal_name and now - since >= _SIGNAL_GRACE_SECONDS:
                self._stop_on_signal(now - since)
            any_batch = any(stream.produced for stream in self.streams)
            if any_batch and now - since >= _NOTICE_SECONDS and self._noticed != since:
                self._noticed = since
                logging.warning(
                    'The training loop has waited %.0f s for a batch from the tf.data '
                    'service; it stops after %.0f s (--data_service_timeout)',
                    now - since,
                    self.timeout,
                )
            if now - since >= self.timeout and (
                any_batch or any(':' in w and not answers(w) for w in self.workers)
            ):
                self._exit(DataError(self.message(waited=now - since)), 1)

    def _steps_done(self):
        """The steps whose updates the variables hold, or None where that is not known.

        Not the optimizer's step counter alone: the loop's next step, waiting for its
        batch, may have counted itself already (its increment does not wait for the
        batch), while its update waits. The batches the loop took tell: waiting, it has
        taken every batch that arrived, one per replica and step.
        """
        if not self.can_save or len(self.streams) != 1 or not self.streams[0].waiting:
            return None
        taken, remainder = divmod(self.streams[0].consumed, self.batches_per_step)
        done = self.start_step + taken
        counted = int(self.iterations.numpy())
        if remainder or counted not in (done, done + 1):
            return None
        if counted != done:
            self.iterations.assign(done)  # The waiting step's count, taken back.
        return done

    def _stop_on_signal(self, seconds: float) -> None:
        step = self._steps_done() if self.checkpoint is not None else None
        if step is not None:
            if not self.checkpoint.has_checkpoint_at(step):
                self.checkpoint.save(step)
            done = f'checkpoint {self.checkpoint.latest} written at step {step}'
        else:
            done = f'the last checkpoint kept (resume {self._last_checkpoint()})'
        text = (
            f'{self.signal_name} while the training loop waited {seconds:.0f} s for a batch '
            f'from the tf.data service: {done}; start again with the same flags to resume '
            f'(exit status {errors.EXIT_STOPPED})'
        )
        logging.info('%s', text)
        self._exit(text, errors.EXIT_STOPPED)

    @staticmethod
    def _exit(what, status: int) -> None:
        """Ends the process from this thread: the main thread waits inside TensorFlow."""
        logging.flush()
        if isinstance(what, DataError):
            print(f'main.py: error: {errors.one_line(what)}', file=sys.stderr, flush=True)
        else:
            print(f'main.py: {what}', file=sys.stderr, flush=True)
        os._exit(status)


class _Unwatched:
    """`watched`'s answer for a run that decodes its own input: nothing to watch."""

    @staticmethod
    def guard(train_fn):
        return train_fn

    def restarted(self, step: int) -> None:
        del step


@contextlib.contextmanager
def watched(state, timeout: float):
    """The `Watchdog` of a run's training loop when it reads from the tf.data service.

    Yields an object with `guard(train_fn)` (the loop, watched) and `restarted(step)`
    (the loop reads a new stream from `step`: progressive resizing starts one at each
    size). Without the service, neither does anything. `state` is `trainer/run.py`'s
    TrainState."""
    if not state.data.service_workers:
        yield _Unwatched()
        return
    import tensorflow as tf

    address = state.config.data_service_address
    watchdog = Watchdog(
        address,
        worker_addresses(address, state.data.service_workers),
        timeout,
        state.checkpoint,
        iterations=state.optimizer.iterations,
        start_step=state.step,
        batches_per_step=state.strategy.num_replicas_in_sync,
        # Several training processes must write a checkpoint together (see
        # trainer/engine/preemption.py): there, the last one is kept.
        can_save=not isinstance(
            state.strategy, (tf.distribute.MultiWorkerMirroredStrategy, tf.distribute.TPUStrategy)
        ),
    )
    with watchdog:
        yield watchdog


def new_job_prefix() -> str:
    """A job name nobody used before: the service must never hand a job's rest to a
    restarted trainer (whose stream starts elsewhere)."""
    return f'densenet-{uuid.uuid4().hex[:12]}'


def serve_dispatcher(port: int, workers: list[str], work_dir: str | None = None):
    """Starts a dispatcher that shards over `workers` (HOST:PORT each, in shard order)."""
    import tensorflow as tf

    service = tf.data.experimental.service
    config = service.DispatcherConfig(
        port=port,
        worker_addresses=workers,
        work_dir=work_dir,
        fault_tolerant_mode=bool(work_dir),
        # A trainer that dies leaves its job behind; free the workers within a minute.
        job_gc_timeout_ms=60_000,
    )
    server = service.DispatchServer(config)
    # The worker list, for the trainer to name a worker that stops (`worker_addresses`).
    service.register_dataset(
        server.target,
        tf.data.Dataset.from_tensors(tf.constant(','.join(workers))),
        dataset_id=_WORKER_LIST_ID,
    )
    return server


def serve_worker(dispatcher: str, port: int, address: str):
    """Starts a worker that registers as `address` (as listed in the dispatcher's
    --workers)."""
    import tensorflow as tf

    service = tf.data.experimental.service
    host, dispatcher_port = parse_address(dispatcher, 'dispatcher')
    config = service.WorkerConfig(
        dispatcher_address=f'{host}:{dispatcher_port}',
        worker_address=address,
        port=port,
        # A worker hears of a new job's task at its next heartbeat: one second, not the
        # default's many, so that a (re)started training gets its batches at once.
        heartbeat_interval_ms=1000,
    )
    return service.WorkerServer(config)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog='python -m input_pipeline.data_service',
        description='Run a tf.data service dispatcher or worker for main.py --data_service_address.',
    )
    roles = parser.add_subparsers(dest='role', required=True)
    dispatcher = roles.add_parser('dispatcher', help='the one dispatcher')
    dispatcher.add_argument('--port', type=int, required=True)
    dispatcher.add_argument(
        '--workers',
        required=True,
        help='every worker as HOST:PORT, comma-separated, as each registers (--address)',
    )
    dispatcher.add_argument(
        '--work_dir', default=None, help='journal folder: a restarted dispatcher resumes from it'
    )
    worker = roles.add_parser('worker', help='one worker')
    worker.add_argument('--dispatcher', required=True, help="the dispatcher's HOST:PORT")
    worker.add_argument('--port', type=int, required=True)
    worker.add_argument(
        '--address', required=True, help="this worker's HOST:PORT, as in the dispatcher's list"
    )
    args = parser.parse_args(argv)

    with errors.reported(user_errors=(DataError,)):
        if args.role == 'dispatcher':
            workers = [w for w in args.workers.split(',') if w]
            if not workers:
                raise DataError('--workers lists no HOST:PORT')
            for address in workers:
                parse_address(address, 'workers')
            server = serve_dispatcher(args.port, workers, args.work_dir)
            print(
                f'data_service: dispatcher on port {args.port}, workers {",".join(workers)}',
                flush=True,
            )
        else:
            parse_address(args.address, 'address')
            server = serve_worker(args.dispatcher, args.port, args.address)
            print(
                f'data_service: worker {args.address} serving dispatcher {args.dispatcher}',
                flush=True,
            )
        server.join()


if __name__ == '__main__':
    main()

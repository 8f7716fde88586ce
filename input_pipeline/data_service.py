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
(`dataset.train_dataset(for_data_service=True)`): every worker reads and shuffles all
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
(which resumes exactly); a worker that is missing makes the trainer wait.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
import uuid

from trainer import errors

# How long the trainer waits for the dispatcher and every worker to answer at start.
_PROBE_SECONDS = 60.0


def parse_address(address: str, flag: str = 'data_service_address') -> tuple[str, int]:
    """`host:port` or `grpc://host:port` -> (host, port); a one-line error naming `flag`."""
    rest = address.split('://', 1)[1] if '://' in address else address
    host, _, port = rest.rpartition(':')
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise errors.UserError(f'--{flag}={address} is not HOST:PORT (for example cpu0:5050)')
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
        raise errors.UserError(
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
            raise errors.UserError(
                f'--data_service_address={address}: {errors.one_line(found)}'
            ) from None
        if found:
            answered = {int(index) for index, _ in found}
            listed = int(found[0][1])
            if len(answered) == listed:
                return listed
        time.sleep(1.0)
    missing = f'{listed - len(answered)} of its {listed}' if listed else 'its'
    raise errors.UserError(
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

    return groups.enumerate().map(in_order).unbatch().prefetch(tf.data.AUTOTUNE)


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
    return service.DispatchServer(config)


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

    with errors.reported():
        if args.role == 'dispatcher':
            workers = [w for w in args.workers.split(',') if w]
            if not workers:
                raise errors.UserError('--workers lists no HOST:PORT')
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

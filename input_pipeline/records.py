"""Reads TFRecord shards record by record, naming the file when one is damaged.

`tf.data.TFRecordDataset` reports a truncated or corrupt file as "truncated record at
2032" or "corrupted record at 1028", without the file's name, and with 1,024 shards
read sixteen at a time that leaves a user nothing to act on. So each file is read with
its errors dropped, and after its last record a sentinel compares the bytes the records
account for (each record takes its length plus 16 bytes of framing) with the file's
size: a file that ends early or fails its checksum falls short, and the shortfall is
reported with the file's name and the records it loses (`_damage`). With
`skip_bad_records` the rest of such a file is skipped and the file named in the log
instead.

The check costs a function call per 64 records and an empty sentinel chunk per file;
file sizes are read once, when the pipeline is built.
"""

from __future__ import annotations

import concurrent.futures
from typing import Sequence

import tensorflow as tf

# Read buffer per open file: large reads keep remote file systems (GCS) busy.
READ_BUFFER_BYTES = 8 * 1024 * 1024

# Length (8 bytes), its CRC (4) and the data's CRC (4) frame every record.
_FRAMING_BYTES = 16

# Records accounted for at once (~7 MB of ImageNet per open file).
_CHUNK_RECORDS = 64

# Stat calls in flight when sizing files: remote file systems take a round trip for each.
_STAT_THREADS = 32


def file_sizes(files: Sequence[str]) -> list[int]:
    """The sizes in bytes of `files` (stat calls run in parallel for remote paths)."""
    with concurrent.futures.ThreadPoolExecutor(_STAT_THREADS) as pool:
        return list(pool.map(lambda path: tf.io.gfile.stat(path).length, files))


def file_table(files: Sequence[str]) -> tf.data.Dataset:
    """A dataset of `(filename, size)` pairs for `read_files`."""
    sizes = tf.constant(file_sizes(files) if files else [], tf.int64)
    return tf.data.Dataset.from_tensor_slices((tf.constant(list(files), tf.string), sizes))


def read_file(filename: tf.Tensor, size: tf.Tensor, *, skip_bad_records: bool) -> tf.data.Dataset:
    """The records of one TFRecord file as `(record, filename)` pairs, checked as it ends.

    Records are accounted for in chunks: one function call per chunk, not per record,
    and the sentinel at the end is an empty chunk, which the final unbatching drops
    without a filter.

    Args:
      filename: scalar string.
      size: scalar int64, the file's size in bytes.
      skip_bad_records: when False a damaged file stops the pipeline; when True its
        readable records are kept and the file is named in the log.

    Returns:
      A dataset of `(record, filename)`.

    Raises:
      tf.errors.InvalidArgumentError: (at run time, unless `skip_bad_records`)
        "TFRecord file F is truncated or corrupt after record N: M records after it
        are unreadable (...)".
    """
    records = tf.data.TFRecordDataset(filename, buffer_size=READ_BUFFER_BYTES).ignore_errors()
    chunks = records.batch(_CHUNK_RECORDS)
    chunks = chunks.concatenate(tf.data.Dataset.from_tensors(tf.zeros([0], tf.string)))

    def account(state, chunk: tf.Tensor):
        read, count = state
        lengths = tf.cast(tf.strings.length(chunk), tf.int64) + _FRAMING_BYTES
        read += tf.reduce_sum(lengths)
        count += tf.size(chunk, out_type=tf.int64)
        # Real chunks are never empty: the empty one is the sentinel after the last.
        intact = tf.logical_or(tf.size(chunk) > 0, tf.equal(read, size))
        # Built only for a damaged file: it reads the file's unreadable rest.
        message = tf.cond(
            intact, lambda: tf.constant(''), lambda: _damage(filename, size, read, count)
        )
        if skip_bad_records:
            report = tf.cond(
                intact,
                tf.no_op,
                lambda: tf.print(
                    tf.strings.join(['input_pipeline: skipping the unreadable rest: ', message])
                ),
            )
        else:
            report = tf.debugging.Assert(intact, [message])
        with tf.control_dependencies([report]):
            names = tf.fill(tf.shape(chunk), filename)
        return (read, count), (chunk, names)

    zero = tf.constant(0, tf.int64)
    return chunks.scan((zero, zero), account).unbatch()


def _damage(filename: tf.Tensor, size: tf.Tensor, read: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
    """Says what a damaged TFRecord file loses, in records: its readable ones, the rest.

    The rest is counted by walking the length headers after the last readable record
    (8 bytes each, little-endian; a record takes its length plus 16 bytes): a record
    whose data fails its checksum still has an intact header, and the walk goes on over
    the records behind it. A walk that ends exactly at the end of the file counts the
    lost records exactly; one that runs past it met a cut or a corrupt header, and the
    count is a lower bound ("at least"): a truncated file's records past the cut are
    gone without a trace.
    """
    data = tf.io.read_file(filename)

    def step(offset, lost):
        header = tf.strings.substr(tf.strings.join([data, '\0' * 8]), offset, 8)
        length = tf.io.decode_raw(header, tf.int64, little_endian=True)[0]
        # A corrupt header may hold any number: it ends the walk.
        length = tf.where(tf.logical_or(length < 0, length > size), size, length)
        return offset + length + _FRAMING_BYTES, lost + 1

    offset, lost = tf.while_loop(lambda offset, _: offset < size, step, (read, tf.zeros_like(read)))
    return tf.strings.join(
        [
            'TFRecord file ',
            filename,
            ' is truncated or corrupt after record ',
            tf.strings.as_string(count),
            ': ',
            tf.where(tf.equal(offset, size), '', 'at least '),
            tf.strings.as_string(lost),
            tf.where(tf.equal(lost, 1), ' record after it is', ' records after it are'),
            ' unreadable (its readable records end at byte ',
            tf.strings.as_string(read),
            ' of ',
            tf.strings.as_string(size),
            ')',
        ]
    )


def read_files(
    files: tf.data.Dataset,
    *,
    skip_bad_records: bool,
    cycle_length: int,
) -> tf.data.Dataset:
    """Interleaves the records of a dataset of `(filename, size)` as `(record, filename)`.

    The interleave is deterministic: its order depends only on the order of `files`.
    """
    return files.interleave(
        lambda filename, size: read_file(filename, size, skip_bad_records=skip_bad_records),
        cycle_length=cycle_length,
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )

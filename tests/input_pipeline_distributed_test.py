"""Exact evaluation through tf.distribute: MirroredStrategy over two logical CPUs.

The split (1,001 examples) does not divide into the global batch (2 replicas x 64), so
the last step is padded. Every example must reach exactly one replica exactly once,
both replicas must run the same number of full batches, and the weighted count summed
by the strategy must be 1,001. The strategy needs its two devices before TensorFlow
starts, so it runs in a process of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
import tensorflow as tf

from input_pipeline import formats
from input_pipeline import writer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_EXAMPLES = 1001
PER_REPLICA_BATCH = 64

SCRIPT = r"""
import json, sys
import tensorflow as tf

cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, sys.argv[1])
from input_pipeline import dataset
from input_pipeline import preprocessing

files, num_examples, per_replica = sys.argv[4:], int(sys.argv[2]), int(sys.argv[3])
strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
global_batch_size = per_replica * strategy.num_replicas_in_sync


def dataset_fn(context):
    return dataset.eval_dataset(
        files,
        preprocessing.EvalPreprocessing(preprocessing.Records(num_classes=num_examples), 8),
        batch_size=context.get_per_replica_batch_size(global_batch_size),
        num_examples=num_examples,
        input_context=context,
    )


@tf.function
def count(images, labels, weights):
    # What the trainer's eval step sums: examples, weighted.
    return tf.reduce_sum(weights)


distributed = strategy.distribute_datasets_from_function(dataset_fn)
steps = dataset.eval_steps(num_examples, global_batch_size)
labels_seen = [[] for _ in range(strategy.num_replicas_in_sync)]
total = 0.0
iterator = iter(distributed)
for _ in range(steps):
    batch = next(iterator)
    total += float(strategy.reduce('SUM', strategy.run(count, args=batch), axis=None))
    labels, weights = batch[1], batch[2]
    for replica, (label, weight) in enumerate(
        zip(strategy.experimental_local_results(labels), strategy.experimental_local_results(weights))
    ):
        assert label.shape == (per_replica,), label.shape
        labels_seen[replica].append([int(l) for l, w in zip(label.numpy(), weight.numpy()) if w == 1])
leftover = next(iterator, None)
print(json.dumps({
    'replicas': strategy.num_replicas_in_sync,
    'steps': steps,
    'total': total,
    'labels': labels_seen,
    'exhausted': leftover is None,
}))
"""


@pytest.mark.slow
def test_every_example_evaluated_once_on_two_replicas(tmp_path):
    photo = skimage.data.astronaut()
    examples = []
    for index in range(NUM_EXAMPLES):
        top, left = divmod(index, 60)
        patch = np.ascontiguousarray(photo[top * 8 : top * 8 + 8, left * 8 : left * 8 + 8])
        examples.append(writer.Example(encoded=tf.io.encode_jpeg(patch).numpy(), label=index + 1))
    writer.write_tfrecords(examples, str(tmp_path), 'validation', 3)
    files = formats.list_files(str(tmp_path), 'validation')

    output = subprocess.run(
        [sys.executable, '-c', SCRIPT, ROOT, str(NUM_EXAMPLES), str(PER_REPLICA_BATCH), *files],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'},
    )
    assert output.returncode == 0, output.stderr[-3000:]
    result = json.loads(output.stdout.strip().splitlines()[-1])

    assert result['replicas'] == 2
    assert result['steps'] == 8  # ceil(1001 / 128)
    assert result['exhausted']  # no replica has a batch more than the other
    assert result['total'] == NUM_EXAMPLES
    per_replica = [sorted(label for batch in seen for label in batch) for seen in result['labels']]
    assert all(len(batches) == 8 for batches in result['labels'])
    assert sorted(per_replica[0] + per_replica[1]) == list(range(NUM_EXAMPLES))
    # Both replicas did real work: the records are dealt out, not all sent to one.
    assert min(len(labels) for labels in per_replica) > 400

"""Tests of trainer/run_data.py: the training split's size, in process."""

import os

import tensorflow as tf

from input_pipeline import writer
from trainer import run_data
from trainer.config import RunConfig


def _examples(count):
    jpeg = tf.io.encode_jpeg(tf.zeros([8, 8, 3], tf.uint8)).numpy()
    return [writer.Example(encoded=jpeg, label=1 + i % 2) for i in range(count)]


def test_1024_train_shards_of_another_dataset_are_counted(tmp_path):
    # The 1024-shard layout alone once meant ImageNet: another dataset written so (here
    # 2 records a shard) trained with ImageNet's 1,281,167-image epoch, silently.
    folder = str(tmp_path)
    writer.write_tfrecords(_examples(2048), folder, 'train', 1024)
    writer.write_tfrecords(_examples(4), folder, 'validation', 1)
    config = RunConfig(dataset_dir=folder, model_dir=os.path.join(folder, 'run'), num_classes=2)
    data = run_data.RunData(config, tf.distribute.get_strategy())
    assert (data.num_train, data.num_eval) == (2048, 4)


def test_a_shard_of_imagenets_size_keeps_the_known_total(tmp_path):
    files = []
    for index, count in enumerate((1251, 1)):
        folder = str(tmp_path / str(index))
        writer.write_tfrecords(_examples(count), folder, 'train', 1)
        files += tf.io.gfile.glob(os.path.join(folder, 'train-*'))
    # What one shard holds decides; the other 1,023 are not read.
    assert run_data._count_train(files[:1] * 1024, False) == 1281167  # pylint: disable=protected-access
    assert run_data._count_train(files[1:] * 1024, False) == 1024  # pylint: disable=protected-access

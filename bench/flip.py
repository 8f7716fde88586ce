"""Where and how to flip the train crop: CPU time per image of five ways, on the same crops.

  python bench/flip.py [--repeats=15]

The train kernel (window sampling, fused decode-and-crop, bilinear resize) with:

- none: no flip at all, the floor of the four;
- axis_tensor: `tf.reverse` of the uint8 window with a tensor-valued axis list (`[]` or
  `[1]`), the way the pipeline flipped until issue 22: no control flow, but the reverse
  kernel runs on every image, flipped or not;
- cond_window: `tf.cond` around a static `tf.reverse(window, [1])`, before the resize;
- cond_output: `tf.cond` around a static reverse of the uint8 output, after the resize
  and the rounding (bilinear resizing commutes with the flip, so the images are those
  of cond_window up to float rounding in the resize weights, well under one pixel value
  before rounding);
- gather_output: no control flow: the output's columns gathered in reversed or in
  their own order (`tf.gather` with indices picked by `tf.where`), one pass either way.

All five end in uint8, the pipeline's output, on the same JPEGs (bench/input_pipeline.py's
ImageNet-sized photos) and the same seeds. The rounds are interleaved and the figures are
medians over repeats; CPU time (all threads of this process) per image is the steadier
figure on a shared machine. The last line is `RESULT {json}`.
"""

from __future__ import annotations

import gc
import importlib.util
import itertools
import json
import os
import statistics
import sys
import time

import tensorflow as tf
import argparse

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from input_pipeline import augment  # noqa: E402


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--image_size', type=int, default=224, help='Output side in pixels.')
    parser.add_argument('--batch_size', type=int, default=64, help='Images per batch.')
    parser.add_argument('--repeats', type=int, default=15, help='Timed rounds.')
    parser.add_argument(
        '--batches_per_repeat', type=int, default=24, help='Batches per variant and round.'
    )
    return parser.parse_args()


def _photos_module():
    """bench/input_pipeline.py, loaded by path (its name is the package's); its absl
    flags are defined but never parsed here."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'input_pipeline.py')
    spec = importlib.util.spec_from_file_location('bench_input_pipeline', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def variant(how: str, image_size: int):
    def preprocess(index, encoded):
        seed = tf.stack([tf.constant(0, tf.int64), index])
        window = augment.random_crop_window(
            tf.io.extract_jpeg_shape(encoded), tf.zeros([0, 4]), seed
        )
        image = tf.io.decode_and_crop_jpeg(encoded, window, channels=3)
        flip = augment.flip_decision(tf.stack([tf.constant(1, tf.int64), index]))
        if how == 'axis_tensor':
            image = tf.reverse(image, tf.range(1, 1 + tf.cast(flip, tf.int32)))
        elif how == 'cond_window':
            image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
        image = augment.to_uint8(tf.image.resize(image, [image_size, image_size]))
        if how == 'cond_output':
            image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
        elif how == 'gather_output':
            columns = tf.range(image_size)
            image = tf.gather(image, tf.where(flip, image_size - 1 - columns, columns), axis=1)
        return image

    return preprocess


def main():
    FLAGS = _arguments()  # noqa: N806
    jpegs = _photos_module().make_jpegs(256, 0)
    source = tf.data.Dataset.from_tensor_slices(tf.constant(jpegs)).repeat().enumerate()
    names = ('none', 'axis_tensor', 'cond_window', 'cond_output', 'gather_output')
    pipelines = {
        name: source.map(variant(name, FLAGS.image_size), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(FLAGS.batch_size)
        .prefetch(tf.data.AUTOTUNE)
        for name in names
    }
    images = FLAGS.batches_per_repeat * FLAGS.batch_size
    cpu = {name: [] for name in names}
    speed = {name: [] for name in names}
    for repeat in range(FLAGS.repeats):
        for name, data in pipelines.items():
            iterator = iter(data)
            for _ in itertools.islice(iterator, 6):
                pass
            wall, used = time.perf_counter(), time.process_time()
            for _ in itertools.islice(iterator, FLAGS.batches_per_repeat):
                pass
            speed[name].append(images / (time.perf_counter() - wall))
            cpu[name].append((time.process_time() - used) / images * 1e6)
            del iterator
            gc.collect()
        print(
            f'repeat {repeat + 1}/{FLAGS.repeats}: '
            + ', '.join(f'{name} {cpu[name][-1]:.0f}' for name in names)
            + ' CPU us per image',
            flush=True,
        )
    median_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    for name in names:
        print(
            f'{name:12s} median {median_cpu[name]:6.0f} CPU us per image '
            f'(range {min(cpu[name]):.0f}-{max(cpu[name]):.0f}), '
            f'{statistics.median(speed[name]):6.0f} images/s'
        )
    result = {
        'cpu_us_per_image': {name: round(value) for name, value in median_cpu.items()},
        'flip_cost_us': {name: round(median_cpu[name] - median_cpu['none']) for name in names[1:]},
        'images_per_s': {name: round(statistics.median(speed[name])) for name in names},
        'repeats': FLAGS.repeats,
        'image_size': FLAGS.image_size,
        'tensorflow': tf.__version__,
    }
    print('RESULT ' + json.dumps(result))


if __name__ == '__main__':
    main()

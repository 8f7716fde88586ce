"""Images per second of the input pipelines, against a naive pipeline, the limit and the floor.

  python bench/input_pipeline.py [--image_size=224 --batch_size=64 --bfloat16=true]

These train-time pipelines run side by side, on the same ImageNet-sized JPEGs and the
same crop-window distribution:

- ours: `input_pipeline.dataset.train_dataset` exactly as the trainer builds it, from
  TFRecord shards (held in the page cache): parse, check, Inception crop, flip, batch,
  as uint8 pixels (the train step normalises them: see `step_normalize_us_per_image`);
- naive: the textbook tf.data pipeline, a parallel map of full `decode_jpeg`, then
  crop and bilinear resize, then batch (default tf.data settings), from JPEG bytes in
  memory; its images are float32, as the resize returns them. `naive_cast` rounds
  them to uint8 as ours does, which spares it three quarters of the bytes to batch:
  the like-for-like comparison;
- limit: `decode_and_crop_jpeg` of the crop window, bilinear resize to the output
  size, rounded to uint8 (ours' output), and nothing else, from JPEG bytes in memory:
  the least work that gives a train batch of the right shape and dtype from these
  windows, so the honest bound for ours (`vs_limit`, target at least 0.9);
- floor: `decode_and_crop_jpeg` of crop windows and nothing else, from JPEG bytes in
  memory: the bare cost of decoding the pixels a crop needs. It skips the resize that
  every pipeline must do, so no pipeline can reach it (`vs_floor` is kept as a figure,
  not a target).
- model_garden: the TensorFlow Model Garden's ImageNet classification parser
  (`official.vision.dataloaders.classification_input`, tf-models-official: its
  Inception crop, flip, resize, normalise, cast) on the same TFRecords as ours, as a
  peer; only where that package imports. It pins its own TensorFlow, so it is timed
  in a separate environment (`RESULT`'s `tensorflow` says which); where it does not
  import, a one-line note is printed and `RESULT` has `"model_garden": "not
  installed"`.

Another, `kernel`, runs our per-example kernels (window sampling, fused decode-crop,
flip, resize, normalise, cast) on the same in-memory bytes as naive and floor, without
what neither of them does (TFRecord reading and parsing, shuffling, checks): it shows
the kernels' own cost next to theirs.

The windows of naive, limit and floor come from our own sampler
(`augment.random_crop_window`, the paper's area and aspect ranges), one per image and
repeat; ours (and Model Garden) draw their own from the same distribution. The JPEGs
are real photos shipped with scikit-image and scikit-learn, cut and resized to
ImageNet's typical sizes (500x375 and its kin) and encoded at quality 90 with 4:2:0
chroma, as Flickr served them.

Each repeat times every pipeline in turn (interleaved, so that load from other
processes falls on all of them alike), each on a fresh iterator past its start-up
batches, alone in the process; the figures are medians over repeats. CPU time per
image (all threads of this process) is printed too: it is the steadier figure on a
shared machine. The evaluation pipeline (`eval_dataset`: central crop, resize, pad,
as uint8) is timed the same way, against its own limit, `eval_limit`: the central
window's fused decode, the resize and the rounding, from JPEG bytes in memory
(`eval_vs_limit`, target at least 0.9).

Normalisation moved from the host to the train step (`trainer/step.model_input`),
where an accelerator does it for free. Here, honestly accounted, the step's added
cost on this CPU is timed too: `step_normalize_us_per_image`, the CPU time per image
of `model_input` on a uint8 batch (bfloat16 out by default), and
`vs_limit_with_step_on_cpu`, ours' rate had the host's cores also paid for it.

The last line is `RESULT {json}`: `vs_naive` (ours over naive, target at least 1.5),
`vs_limit` (ours over limit, target at least 0.9), and `images_per_second_per_core`:
ours divided by the cores this process may run on (`os.sched_getaffinity`, which
honours taskset and cgroup cpusets, unlike `os.cpu_count`), the figure to multiply by a
host's cores when sizing it for an accelerator (`limit_images_per_second_per_core` is
the limit's).
"""

from __future__ import annotations

import gc
import io
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import skimage.data
import tensorflow as tf
from absl import app
from absl import flags
from PIL import Image
from sklearn import datasets as sklearn_datasets

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from input_pipeline import augment  # noqa: E402
from input_pipeline import dataset  # noqa: E402
from input_pipeline import formats  # noqa: E402
from input_pipeline import preprocessing  # noqa: E402
from input_pipeline import writer  # noqa: E402

flags.DEFINE_integer('image_size', 224, 'Output side in pixels.')
flags.DEFINE_integer('batch_size', 64, 'Images per batch.')
flags.DEFINE_bool(
    'bfloat16', True, 'bf16 model input from the step (the trainer default), else float32.'
)
flags.DEFINE_integer('num_images', 256, 'Distinct JPEGs, cached in memory.')
flags.DEFINE_integer('repeats', 7, 'Timed rounds; each times every pipeline once.')
flags.DEFINE_integer('batches_per_repeat', 16, 'Batches timed per pipeline and round.')
flags.DEFINE_integer(
    'warmup_batches', 8, 'Batches drained before each timing (start-up, autotuning).'
)
flags.DEFINE_integer('seed', 0, 'Seed of the images, windows and pipeline.')
FLAGS = flags.FLAGS

# Typical ImageNet sizes (height, width): most photos came from Flickr at 500 pixels on
# the long side.
_SIZES = ((375, 500), (333, 500), (500, 375), (500, 333), (500, 500))
_QUALITY = 90


def _photos() -> list[np.ndarray]:
    """The colour photos that scikit-learn and scikit-image ship (no download)."""
    photos = list(sklearn_datasets.load_sample_images().images)
    photos += [
        skimage.data.astronaut(),
        skimage.data.chelsea(),
        skimage.data.coffee(),
        skimage.data.rocket(),
        skimage.data.hubble_deep_field(),
    ]
    return photos


def make_jpegs(count: int, seed: int) -> list[bytes]:
    """`count` distinct JPEGs: random cuts of the photos at ImageNet sizes, quality 90."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    jpegs = []
    for index in range(count):
        photo = photos[index % len(photos)]
        height, width = _SIZES[index % len(_SIZES)]
        # A cut of 60-100% of the photo's side with the target's aspect ratio.
        fraction = rng.uniform(0.6, 1.0)
        cut_w = min(photo.shape[1], int(photo.shape[0] * width / height)) * fraction
        cut_h = cut_w * height / width
        top = rng.uniform(0, photo.shape[0] - cut_h)
        left = rng.uniform(0, photo.shape[1] - cut_w)
        picture = Image.fromarray(photo).resize(
            (width, height), Image.LANCZOS, box=(left, top, left + cut_w, top + cut_h)
        )
        buffer = io.BytesIO()
        picture.save(buffer, 'JPEG', quality=_QUALITY)
        jpegs.append(buffer.getvalue())
    return jpegs


def crop_windows(jpegs: list[bytes], rounds: int, seed: int) -> np.ndarray:
    """`rounds` Inception crop windows per image, from the train pipeline's sampler."""
    windows = []
    for round_index in range(rounds):
        for index, jpeg in enumerate(jpegs):
            shape = tf.io.extract_jpeg_shape(jpeg)
            window = augment.random_crop_window(
                shape, tf.zeros([0, 4]), tf.constant([seed, round_index * len(jpegs) + index])
            )
            windows.append(window.numpy())
    return np.array(windows, np.int32)


def naive_pipeline(jpegs, windows, image_size, batch_size, rounded=False) -> tf.data.Dataset:
    """Full decode, then crop and resize: the pipeline most tutorials write.

    Its images are float32, as `tf.image.resize` returns them; `rounded`, they are
    rounded to uint8 (the same output as ours, without flips).
    """

    def preprocess(encoded, window):
        image = tf.io.decode_jpeg(encoded, channels=3)
        image = tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])
        image = tf.image.resize(image, [image_size, image_size])
        return augment.to_uint8(image) if rounded else image

    source = tf.data.Dataset.from_tensor_slices(
        (tf.constant(jpegs * _rounds(windows, jpegs)), windows)
    )
    data = source.repeat().map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def floor_pipeline(jpegs, windows, batch_size) -> tf.data.Dataset:
    """Decodes each window and keeps only its shape: the cost of the decode alone."""

    def decode_window(encoded, window):
        return tf.shape(tf.io.decode_and_crop_jpeg(encoded, window, channels=3))

    source = tf.data.Dataset.from_tensor_slices(
        (tf.constant(jpegs * _rounds(windows, jpegs)), windows)
    )
    data = source.repeat().map(decode_window, num_parallel_calls=tf.data.AUTOTUNE)
    # Batching the shapes only spares the consumer a Python step per image.
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def limit_pipeline(jpegs, windows, image_size, batch_size) -> tf.data.Dataset:
    """Fused decode-crop, bilinear resize, rounding: the least a train pipeline must do.

    The same windows as naive and floor, and ours' output (uint8). Without flips,
    window sampling, TFRecords or shuffling, which ours adds, so ours can only come
    near it.
    """

    def preprocess(encoded, window):
        image = tf.io.decode_and_crop_jpeg(encoded, window, channels=3)
        image = tf.image.resize(image, [image_size, image_size], method='bilinear')
        return augment.to_uint8(image)

    source = tf.data.Dataset.from_tensor_slices(
        (tf.constant(jpegs * _rounds(windows, jpegs)), windows)
    )
    data = source.repeat().map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def eval_limit_pipeline(jpegs, image_size, batch_size) -> tf.data.Dataset:
    """The central window's fused decode, the resize and the rounding: eval's limit."""

    def preprocess(encoded):
        window = augment.central_crop_window(
            tf.io.extract_jpeg_shape(encoded), augment.CENTER_CROP_FRACTION
        )
        image = tf.io.decode_and_crop_jpeg(encoded, window, channels=3)
        image = tf.image.resize(image, [image_size, image_size], method='bilinear')
        return augment.to_uint8(image)

    data = tf.data.Dataset.from_tensor_slices(tf.constant(jpegs)).repeat()
    data = data.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def step_normalize_us(image_size: int, batch_size: int, dtype, repeats: int) -> float:
    """CPU microseconds per image of the train step's `model_input` on a uint8 batch."""
    from trainer.engine import step as step_lib  # noqa: PLC0415

    images = tf.cast(
        tf.random.stateless_uniform(
            [batch_size, image_size, image_size, 3], [0, 0], 0, 256, dtype=tf.int32
        ),
        tf.uint8,
    )
    # The normalised batch is returned as it is (a handle, not a copy): what the step
    # hands its model.
    normalise = tf.function(lambda pixels: step_lib.model_input(pixels, dtype))
    normalise(images)
    times = []
    for _ in range(repeats):
        used = time.process_time()
        for _ in range(8):
            normalise(images)
        times.append((time.process_time() - used) / (8 * batch_size) * 1e6)
    return statistics.median(times)


def model_garden_pipeline(files, image_size, batch_size, dtype) -> tf.data.Dataset | None:
    """Model Garden's train parser on our TFRecords, or None where it does not import.

    Built as its `InputReader` builds it for ImageNet: the records of all files
    interleaved, shuffled, `Decoder().decode` then `Parser.parse_fn(is_training=True)`
    in a parallel map (Inception crop, flip, bilinear resize, normalise, cast), batched
    with the remainder dropped. Its crop windows are its own (the same area range).
    """
    try:
        from official.vision.dataloaders import classification_input  # noqa: PLC0415
    except ImportError as error:
        print(f'model_garden: tf-models-official does not import here ({error}); peer skipped')
        return None
    decoder = classification_input.Decoder()
    parser = classification_input.Parser(
        output_size=[image_size, image_size], num_classes=1000, dtype=dtype.name
    )
    parse = parser.parse_fn(is_training=True)
    data = tf.data.Dataset.from_tensor_slices(files).repeat()
    data = data.interleave(
        tf.data.TFRecordDataset,
        cycle_length=len(files),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    )
    data = data.shuffle(1000, seed=FLAGS.seed)
    data = data.map(
        lambda record: parse(decoder.decode(record)), num_parallel_calls=tf.data.AUTOTUNE
    )
    return data.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _model_garden_version() -> str:
    from importlib import metadata  # noqa: PLC0415

    try:
        return 'tf-models-official ' + metadata.version('tf-models-official')
    except metadata.PackageNotFoundError:  # Imported from a source tree.
        return 'official (source tree)'


def usable_cores() -> int:
    """Cores this process may run on: its affinity mask, not the machine's count."""
    return len(os.sched_getaffinity(0))


def kernel_pipeline(jpegs, image_size, batch_size, dtype, seed) -> tf.data.Dataset:
    """Our per-example kernels alone, on the in-memory JPEGs naive and floor read.

    The train pipeline less what these two do not do either: reading and parsing
    TFRecords, shuffling, checks. Crop windows are sampled inside, as in training.
    """

    def preprocess(index, encoded):
        crop_seed = tf.stack([tf.constant(seed, tf.int64), 2 * index])
        flip_seed = tf.stack([tf.constant(seed, tf.int64), 2 * index + 1])
        image = augment.decode_and_random_crop(
            encoded,
            tf.zeros([0, 4]),
            crop_seed,
            image_size=image_size,
            flip=augment.flip_decision(flip_seed),
            jpeg_only=True,
        )
        return image

    source = tf.data.Dataset.from_tensor_slices(tf.constant(jpegs)).repeat().enumerate()
    data = source.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _rounds(windows: np.ndarray, jpegs: list[bytes]) -> int:
    return len(windows) // len(jpegs)


def write_records(jpegs: list[bytes], folder: str) -> list[str]:
    examples = [
        writer.Example(encoded=jpeg, label=1 + index % 1000) for index, jpeg in enumerate(jpegs)
    ]
    writer.write_tfrecords(examples, folder, 'train', 4)
    return formats.list_files(folder, 'train')


def time_batches(iterator, batch_size: int, warmup: int, count: int) -> tuple[float, float]:
    """(images per second, CPU microseconds per image) over `count` batches."""
    for _ in itertools.islice(iterator, warmup):
        pass
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in itertools.islice(iterator, count):
        pass
    images = count * batch_size
    return images / (time.perf_counter() - wall), (time.process_time() - cpu) / images * 1e6


def main(argv):
    del argv
    image_size, batch_size = FLAGS.image_size, FLAGS.batch_size
    dtype = tf.bfloat16 if FLAGS.bfloat16 else tf.float32
    jpegs = make_jpegs(FLAGS.num_images, FLAGS.seed)
    windows = crop_windows(jpegs, rounds=4, seed=FLAGS.seed)
    kilobytes = np.mean([len(jpeg) for jpeg in jpegs]) / 1024
    scale = np.mean(np.minimum(windows[:, 2], windows[:, 3]) >= 2 * image_size)
    print(
        f'{len(jpegs)} JPEGs, {kilobytes:.0f} KB on average; {len(windows)} windows, '
        f'{np.mean(windows[:, 2] * windows[:, 3]) / 1e3:.0f}k pixels on average, '
        f'{scale:.1%} of them at least twice the output'
    )
    with tempfile.TemporaryDirectory() as folder:
        files = write_records(jpegs, folder)
        records = preprocessing.Records(num_classes=1000)
        pipelines = {
            'ours': dataset.train_dataset(
                files,
                preprocessing.TrainPreprocessing(records, image_size=image_size),
                batch_size=batch_size,
                seed=FLAGS.seed,
                # As the trainer sets it; the epoch re-reads the files, as an epoch of a
                # dataset larger than its shuffle buffer would read on.
                batches_per_epoch=100000,
            ),
            'kernel': kernel_pipeline(jpegs, image_size, batch_size, dtype, FLAGS.seed),
            'naive': naive_pipeline(jpegs, windows, image_size, batch_size),
            'naive_cast': naive_pipeline(jpegs, windows, image_size, batch_size, rounded=True),
            'limit': limit_pipeline(jpegs, windows, image_size, batch_size),
            'floor': floor_pipeline(jpegs, windows, batch_size),
            'eval': dataset.eval_dataset(
                # The same shards eight times over: long passes, few restarts.
                files * 8,
                preprocessing.EvalPreprocessing(records, image_size=image_size),
                batch_size=batch_size,
                num_examples=8 * len(jpegs),
            ).repeat(),
            'eval_limit': eval_limit_pipeline(jpegs, image_size, batch_size),
        }
        model_garden = model_garden_pipeline(files, image_size, batch_size, dtype)
        if model_garden is not None:
            pipelines['model_garden'] = model_garden
        speeds = {name: [] for name in pipelines}
        cpu = {name: [] for name in pipelines}
        for repeat in range(FLAGS.repeats):
            for name, data in pipelines.items():
                # A fresh iterator, dropped after timing: a live one would keep working
                # (and filling its buffers) while the others are timed.
                iterator = iter(data)
                images_per_s, cpu_us = time_batches(
                    iterator, batch_size, FLAGS.warmup_batches, FLAGS.batches_per_repeat
                )
                del iterator
                gc.collect()
                speeds[name].append(images_per_s)
                cpu[name].append(cpu_us)
            print(
                f'repeat {repeat + 1}/{FLAGS.repeats}: '
                + ', '.join(f'{name} {speeds[name][-1]:.0f}' for name in pipelines)
                + ' images/s',
                flush=True,
            )
    median = {name: statistics.median(values) for name, values in speeds.items()}
    median_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    for name in pipelines:
        print(
            f'{name:10s} median {median[name]:7.0f} images/s '
            f'(range {min(speeds[name]):.0f}-{max(speeds[name]):.0f}), '
            f'{median_cpu[name]:6.0f} CPU us per image'
        )
    cores = usable_cores()
    step_us = step_normalize_us(image_size, batch_size, dtype, FLAGS.repeats)
    print(f'train step normalisation (model_input, {dtype.name}): {step_us:.0f} CPU us per image')
    # Ours' rate had the same cores also normalised each image: the time per image
    # across the cores grows by the step's CPU time shared over them.
    with_step = 1 / (1 / median['ours'] + step_us * 1e-6 / cores)
    result = {
        'train_images_per_s': round(median['ours'], 1),
        'images_per_second_per_core': round(median['ours'] / cores, 1),
        'vs_naive': round(median['ours'] / median['naive'], 3),
        'vs_limit': round(median['ours'] / median['limit'], 3),
        'vs_floor': round(median['ours'] / median['floor'], 3),
        'limit_images_per_second_per_core': round(median['limit'] / cores, 1),
        'eval_images_per_s': round(median['eval'], 1),
        'eval_limit_images_per_s': round(median['eval_limit'], 1),
        'eval_vs_limit': round(median['eval'] / median['eval_limit'], 3),
        'step_normalize_us_per_image': round(step_us, 1),
        'vs_limit_with_step_on_cpu': round(with_step / median['limit'], 3),
        'kernel_images_per_s': round(median['kernel'], 1),
        'kernel_vs_naive': round(median['kernel'] / median['naive'], 3),
        'kernel_vs_floor': round(median['kernel'] / median['floor'], 3),
        'naive_images_per_s': round(median['naive'], 1),
        'naive_cast_images_per_s': round(median['naive_cast'], 1),
        'vs_naive_cast': round(median['ours'] / median['naive_cast'], 3),
        'limit_images_per_s': round(median['limit'], 1),
        'floor_images_per_s': round(median['floor'], 1),
        'cpu_us_per_image': {name: round(value) for name, value in median_cpu.items()},
        'cpu_vs_naive': round(median_cpu['naive'] / median_cpu['ours'], 3),
        'cpu_vs_limit': round(median_cpu['limit'] / median_cpu['ours'], 3),
        'cpu_vs_floor': round(median_cpu['floor'] / median_cpu['ours'], 3),
        'image_size': image_size,
        'batch_size': batch_size,
        'dtype': dtype.name,
        'repeats': FLAGS.repeats,
        'cpus': os.cpu_count(),
        'usable_cores': cores,
        'machine': platform.machine(),
        'tensorflow': tf.__version__,
    }
    if 'model_garden' in median:
        result.update(
            model_garden=_model_garden_version(),
            model_garden_images_per_s=round(median['model_garden'], 1),
            vs_model_garden=round(median['ours'] / median['model_garden'], 3),
        )
    else:
        result['model_garden'] = 'not installed'
    print('RESULT ' + json.dumps(result))


if __name__ == '__main__':
    app.run(main)

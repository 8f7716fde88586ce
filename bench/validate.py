"""Speed and memory of the dataset validator (`input_pipeline/validate.py`) at scale.

  python bench/validate.py [--images=20000] [--workers=1,2] [--keep=DIR]

Writes `--images` photo-like JPEGs (random sizes of 200 to 500 pixels a side; smooth
colour noise with a little grain, quality 90, so that they compress as photos do, not
as flat or white-noise images) into a temporary folder, as a class-folder tree (100
classes, 10% of each in `val/`) and as TFRecord shards of the same images
(`writer.write_tfrecords`, the slim layout). Writing them is not timed.

Then it runs `python -m input_pipeline.validate` on each, once per `--workers` count,
each run a process of its own under a small parent that reads, when it ends, the
largest resident set of the validator and its workers (`RUSAGE_CHILDREN` `ru_maxrss`:
the biggest single process, not their sum) and their CPU time. It reports images per
second of wall time per worker, images per CPU second (the steadier figure on a shared
machine), the peak RSS, and the time 1,281,167 images (ImageNet's train split) would
take one core at that rate. The last line is `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGENET_TRAIN = 1_281_167
CLASSES = 100
VALIDATION_FRACTION = 0.1
TRAIN_SHARDS, VALIDATION_SHARDS = 16, 2

# Runs the validator and prints its children's peak RSS (KiB) and CPU seconds as JSON.
_MEASURE = """
import json, resource, subprocess, sys, time
start = time.time()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({'code': code, 'wall_s': time.time() - start, 'max_rss_kib': usage.ru_maxrss,
                  'cpu_s': usage.ru_utime + usage.ru_stime}))
"""


def photo(seed: int) -> tuple[bytes, int, int]:
    """A photo-like JPEG: smooth colour fields (noise upsampled 16x) plus grain."""
    rng = np.random.default_rng(seed)
    height, width = (int(n) for n in rng.integers(200, 501, size=2))
    coarse = rng.integers(0, 256, size=(height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
    grain = rng.normal(0, 6, size=smooth.shape)
    pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, 'JPEG', quality=90)
    return buffer.getvalue(), height, width


def _write_one(job: tuple[int, str]) -> tuple[int, int, int, str]:
    seed, path = job
    data, height, width = photo(seed)
    with open(path, 'wb') as stream:
        stream.write(data)
    return seed, height, width, path


def write_tree(root: str, images: int) -> list[tuple[str, int, str, int, int]]:
    """`root/train/<class>/` and `root/val/<class>/`; returns (split, label, path, h, w)."""
    jobs, where = [], {}
    for index in range(images):
        label = index % CLASSES
        split = 'val' if (index // CLASSES) % round(1 / VALIDATION_FRACTION) == 0 else 'train'
        folder = os.path.join(root, split, f'class{label:03d}')
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f'image{index:07d}.JPEG')
        jobs.append((index, path))
        where[index] = (split, label)
    with multiprocessing.get_context('fork').Pool(os.cpu_count()) as pool:
        written = pool.map(_write_one, jobs, chunksize=64)
    return [(*where[seed], path, height, width) for seed, height, width, path in written]


def write_records(images: list, output_dir: str) -> None:
    """The same images as slim-layout TFRecords (labels 1.., synset = folder name)."""
    sys.path.insert(0, ROOT)
    from input_pipeline import writer

    for split, name, shards in (
        ('train', 'train', TRAIN_SHARDS),
        ('val', 'validation', VALIDATION_SHARDS),
    ):
        chosen = [image for image in images if image[0] == split]
        random.Random(0).shuffle(chosen)

        def examples(chosen=chosen):
            for _, label, path, height, width in chosen:
                with open(path, 'rb') as stream:
                    data = stream.read()
                synset = f'class{label:03d}'
                yield writer.Example(data, label + 1, synset, synset, height, width)

        writer.write_tfrecords(examples(), output_dir, name, shards, num_examples=len(chosen))


def measure(dataset_dir: str, workers: int, report_path: str) -> dict:
    """One validator run in a process of its own: wall, CPU, peak RSS, its report."""
    command = [
        sys.executable, '-c', _MEASURE, sys.executable, '-m', 'input_pipeline.validate',
        f'--dataset_dir={dataset_dir}', f'--num_workers={workers}', f'--json={report_path}',
    ]  # fmt: skip
    output = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    figures = json.loads(output.stdout.strip().splitlines()[-1])
    with open(report_path) as stream:
        report = json.load(stream)
    images = report['images']
    per_core = images / figures['wall_s'] / workers
    return {
        'workers': workers,
        'exit_code': figures['code'],
        'images': images,
        'errors': sum(report['error_counts'].values()),
        'wall_s': round(figures['wall_s'], 1),
        'images_per_s_per_core': round(per_core, 1),
        'images_per_cpu_s': round(images / figures['cpu_s'], 1),
        'peak_rss_mib': round(figures['max_rss_kib'] / 1024, 1),
        'imagenet_train_hours_per_core': round(IMAGENET_TRAIN / per_core / 3600, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--images', type=int, default=20000)
    parser.add_argument('--workers', default='1,2', help='Comma-separated worker counts.')
    parser.add_argument('--keep', help='Write the data here and keep it (default: a temp dir).')
    args = parser.parse_args()
    root = args.keep or tempfile.mkdtemp(prefix='validate_bench_')
    try:
        started = time.time()
        images = write_tree(os.path.join(root, 'folders'), args.images)
        write_records(images, os.path.join(root, 'records'))
        sizes = [os.path.getsize(image[2]) for image in images]
        print(
            f'wrote {len(images):,} JPEGs (mean {np.mean(sizes) / 1024:.0f} KiB) as folders '
            f'and TFRecords in {time.time() - started:.0f} s (not timed)',
            flush=True,
        )
        runs = {}
        for form in ('folders', 'records'):
            for workers in (int(n) for n in args.workers.split(',')):
                run = measure(os.path.join(root, form), workers, os.path.join(root, 'report.json'))
                runs[f'{form}_{workers}'] = run
                print(f'{form:8s} {json.dumps(run)}', flush=True)
        cores = len(os.sched_getaffinity(0))
        print('RESULT ' + json.dumps({'images': len(images), 'cores': cores, 'runs': runs}))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    main()

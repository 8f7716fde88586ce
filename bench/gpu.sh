#!/usr/bin/env bash
# DenseNet-121 training throughput on one GPU: bf16, 224x224, batch 64, 128 and 256 per
# replica, without and with XLA (--jit_compile), through our loop (steps_per_loop 25).
#
#   bash bench/gpu.sh            # the full run; most of its time goes to XLA compiles
#   STEPS=25 REPEATS=2 BATCHES="64 128" bash bench/gpu.sh   # a shorter run
#
# Needs TensorFlow with CUDA on the machine (pip install "tensorflow[and-cuda]" .).
# Each measurement is a fresh process (bench/train_step.py --parts=loop) on a synthetic
# batch, so the input pipeline is out of the figure. Prints a Markdown table for the
# README and, last, `RESULT {json}` with images/s per batch and XLA setting.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
batches="${BATCHES:-64 128 256}"
steps="${STEPS:-100}"
repeats="${REPEATS:-3}"
out="$(mktemp -d)"

"$python" - <<'PY'
import tensorflow as tf
gpus = tf.config.list_physical_devices('GPU')
print('TensorFlow', tf.__version__, 'GPUs:', [tf.config.experimental.get_device_details(g).get('device_name', g.name) for g in gpus])
if not gpus:
    raise SystemExit('bench/gpu.sh: no GPU visible to TensorFlow')
PY

for batch in $batches; do
    "$python" bench/train_step.py --parts=loop --model=densenet121 --image_size=224 \
        --precision=bfloat16 --batch_size="$batch" --steps="$steps" --repeats="$repeats" \
        --steps_per_loop=25 | tee "$out/batch_$batch.txt"
done

"$python" - "$out" $batches <<'PY'
import json, sys
folder, batches = sys.argv[1], sys.argv[2:]
rows, result = [], {'model': 'densenet121', 'precision': 'bfloat16', 'image_size': 224}
for batch in batches:
    line = [l for l in open(f'{folder}/batch_{batch}.txt') if l.startswith('RESULT ')][-1]
    figures = json.loads(line[len('RESULT '):])
    plain, xla = figures['ours_loop_images_per_second'], figures['ours_xla_images_per_second']
    result[f'batch_{batch}'] = {'images_per_second': plain, 'xla_images_per_second': xla}
    rows.append(f'| {batch} | {plain:.0f} | {xla:.0f} | {xla / plain:.2f}x |')
print('| batch | images/s | images/s with XLA | XLA speed-up |')
print('| --- | --- | --- | --- |')
print('\n'.join(rows))
print('RESULT ' + json.dumps(result))
PY

#!/usr/bin/env bash
# DenseNet-121 training on one GPU, planned for about 10 minutes on an H100 or H200 (not
# yet timed on one: most of it is tracing and XLA compiles, one per child process; the
# stages print their seconds and RESULT has the total, so trim with the knobs below):
#
#   1. throughput: bf16, 224x224, batch 64, 128 and 256 per replica, without and with
#      XLA (--jit_compile), our loop (steps_per_loop 25) against Keras `model.fit` at
#      the same batch and steps_per_execution=25, in turns in one process per batch
#      and XLA setting (bench/train_step.py --parts=throughput,xla);
#   2. memory: the largest batch whose train steps run without running out of device
#      memory, plain and --memory_efficient (doubling from MEM_START to MEM_LIMIT by
#      default, 1024 to 8192; MEM_TOLERANCE=0.25 adds a bisection to within 25%, at one
#      more try each; one short process per try: bench/train_step.py --parts=max_batch);
#   3. pipeline: the real input pipeline from TFRecords on this host's cores
#      (bench/input_pipeline.py: images/s, and per core), next to the model's appetite
#      (its images/s from stage 1): can this host feed this GPU?
#   4. train: a TRAIN_STEPS-step run of main.py on synthetic data that must lower the
#      loss and write a checkpoint, then a second run to RESUME_STEPS steps in the same
#      folder that must resume from that checkpoint's step.
#   5. sizes: fast.cfg's time claim. Our loop's images/s at each of SIZES (default 160
#      192 224: fast.cfg's training sizes and the seed's), batch FAST_BATCH (fast.cfg's
#      128), without and with XLA (bench/train_step.py --parts=loop); the table turns
#      them into seconds per ImageNet epoch (1,281,167 images) and into fast.cfg's 16
#      epochs against imagenet.cfg's 90 at 224 px, training only. Alone, in minutes:
#      STAGES=sizes bash bench/gpu.sh
#
#   bash bench/gpu.sh                                        # all of it
#   STEPS=25 REPEATS=2 BATCHES="64 128" XLA=0 bash bench/gpu.sh   # a shorter run
#   STAGES="throughput train" bash bench/gpu.sh              # some stages only
#
# Knobs (environment): STAGES, BATCHES, XLA ("0 1": without and with), FIT (0: our loop
# only), STEPS (per timed window), REPEATS (windows), STEPS_PER_LOOP, MEM_START,
# MEM_LIMIT, MEM_TOLERANCE, PIPE_ARGS (extra bench/input_pipeline.py flags), TRAIN_BATCH,
# TRAIN_STEPS, RESUME_STEPS, LOG_EVERY, SIZES, FAST_BATCH, MODEL, IMAGE_SIZE, NUM_CLASSES, PRECISION,
# PYTHON, OUT (the folder for the stages' logs; a fresh temporary one by default).
#
# GPU_SH_ALLOW_CPU=1 skips the GPU check, to test the script itself on a CPU at tiny
# sizes (every stage, the table and RESULT, in about 3 minutes on 2 cores):
#
#   GPU_SH_ALLOW_CPU=1 MODEL=densenet_bc_10_4 NUM_CLASSES=10 IMAGE_SIZE=32 BATCHES="8 16" \
#     STEPS=4 REPEATS=1 STEPS_PER_LOOP=2 MEM_START=8 MEM_LIMIT=16 TRAIN_BATCH=8 \
#     PIPE_ARGS="--num_images=16 --repeats=1 --batches_per_repeat=2 --warmup_batches=1" \
#     TRAIN_STEPS=20 RESUME_STEPS=30 LOG_EVERY=5 SIZES="16 32" FAST_BATCH=8 bash bench/gpu.sh
#
# Needs TensorFlow with CUDA on the machine (pip install "tensorflow[and-cuda]" .) and,
# for the pipeline stage, scikit-image (its sample photos): pip install scikit-image.
# Without a GPU it stops at once with one line on stderr and exit status 1. Each stage
# that fails is named on stderr; the script still runs the others (a GPU's time is
# dear), then exits 1. Prints a Markdown table for the README and, last,
# `RESULT {json}`.
set -uo pipefail
if [[ "${GPU_SH_ALLOW_CPU:-0}" != 1 ]]; then
    # Before anything slow: nvidia-smi answers in milliseconds, TensorFlow in seconds.
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
        echo 'bench/gpu.sh: no GPU visible (nvidia-smi lists none); it measures GPU training' >&2
        exit 1
    fi
fi
cd "$(dirname "$0")/.." || exit 1
python="${PYTHON:-python3}"
stages="${STAGES:-throughput memory pipeline train sizes}"
model="${MODEL:-densenet121}"
image_size="${IMAGE_SIZE:-224}"
num_classes="${NUM_CLASSES:-1000}"
precision="${PRECISION:-bfloat16}"
batches="${BATCHES:-64 128 256}"
xla="${XLA:-0 1}"
fit="${FIT:-1}"
steps="${STEPS:-30}"
repeats="${REPEATS:-2}"
steps_per_loop="${STEPS_PER_LOOP:-25}"
mem_start="${MEM_START:-1024}"
mem_limit="${MEM_LIMIT:-8192}"
mem_tolerance="${MEM_TOLERANCE:-1.0}"
pipe_args="${PIPE_ARGS:---repeats=3}"
train_batch="${TRAIN_BATCH:-64}"
train_steps="${TRAIN_STEPS:-200}"
resume_steps="${RESUME_STEPS:-250}"
log_every="${LOG_EVERY:-25}"
sizes="${SIZES:-160 192 224}"
fast_batch="${FAST_BATCH:-128}"
out="${OUT:-$(mktemp -d)}"
mkdir -p "$out"
started=$SECONDS
failed=()

"$python" - "${GPU_SH_ALLOW_CPU:-0}" <<'PY' || exit 1
import os, sys
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import tensorflow as tf
gpus = tf.config.list_physical_devices('GPU')
names = [tf.config.experimental.get_device_details(g).get('device_name', g.name) for g in gpus]
print('TensorFlow', tf.__version__, 'GPUs:', names, flush=True)
if not gpus and sys.argv[1] != '1':
    sys.exit('bench/gpu.sh: no GPU visible to TensorFlow (CPU-only build? CUDA_VISIBLE_DEVICES?)')
PY
if [[ " $stages " == *' pipeline '* ]]; then
    "$python" -c 'import skimage, sklearn, PIL' 2>/dev/null || {
        echo 'bench/gpu.sh: the pipeline stage needs scikit-image (pip install' \
            'scikit-image), or leave it out of STAGES' >&2
        exit 1
    }
fi
echo "bench/gpu.sh: stages: $stages; logs in $out"

# stage NAME COMMAND...: runs COMMAND, its output in $out/NAME.txt and on the console,
# where its RESULT line is renamed: the script's own is the only one, and the last.
stage() {
    local name="$1" start=$SECONDS
    shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$out/$name.txt" | sed -u 's/^RESULT /  result: /'
    local status=${PIPESTATUS[0]}
    echo "== $name: $((SECONDS - start)) s, exit status $status"
    echo "$((SECONDS - start))" >"$out/$name.seconds"
    if [[ $status != 0 ]]; then
        failed+=("$name")
        echo "bench/gpu.sh: stage $name failed (exit status $status; log $out/$name.txt)" >&2
    fi
}

model_flags=(--model="$model" --image_size="$image_size" --num_classes="$num_classes"
    --precision="$precision")
contenders=ours_loop
[[ "$fit" == 1 ]] && contenders=ours_loop,fit_spe
parts=()
for setting in $xla; do
    [[ "$setting" == 0 ]] && parts+=(throughput)
    [[ "$setting" == 1 ]] && parts+=(xla)
done
parts_flag=$(IFS=,; echo "${parts[*]}")

if [[ " $stages " == *' throughput '* && -n "$parts_flag" ]]; then
    for batch in $batches; do
        stage "throughput_$batch" "$python" bench/train_step.py "${model_flags[@]}" \
            --parts="$parts_flag" --contenders="$contenders" --batch_size="$batch" \
            --steps="$steps" --repeats="$repeats" --steps_per_loop="$steps_per_loop"
    done
fi
if [[ " $stages " == *' memory '* ]]; then
    stage memory "$python" bench/train_step.py "${model_flags[@]}" --parts=max_batch \
        --max_batch_start="$mem_start" --max_batch_limit="$mem_limit" \
        --max_batch_tolerance="$mem_tolerance"
fi
if [[ " $stages " == *' pipeline '* ]]; then
    bfloat16=false
    [[ "$precision" == bfloat16 ]] && bfloat16=true
    # shellcheck disable=SC2086  # PIPE_ARGS is a list of flags.
    stage pipeline "$python" bench/input_pipeline.py --image_size="$image_size" \
        --batch_size="$train_batch" --bfloat16="$bfloat16" $pipe_args
fi
if [[ " $stages " == *' train '* ]]; then
    run_flags=("${model_flags[@]}" --synthetic_data --model_dir="$out/run"
        --batch_size="$train_batch" --steps_per_loop="$log_every" --log_every_steps="$log_every"
        --checkpoint_every_steps="$train_steps")
    rm -rf "$out/run"
    stage train_first "$python" main.py "${run_flags[@]}" --train_steps="$train_steps"
    stage train_resumed "$python" main.py "${run_flags[@]}" --train_steps="$resume_steps"
    stage train "$python" - "$out" "$train_steps" "$resume_steps" <<'PY'
"""Checks the two main.py runs: the loss fell, and the second resumed from the first."""
import json, math, re, sys

folder, first_steps, last_steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
LOG = re.compile(r'step (\d+)/\d+ .*?: loss (\S+)')


def losses(name):
    with open(f'{folder}/{name}.txt') as stream:
        text = stream.read()
    return text, [(int(step), float(loss)) for step, loss in LOG.findall(text)]


_, first = losses('train_first')
text, second = losses('train_resumed')
resumed = re.search(r'Resumed from \S*ckpt-(\d+)', text)
figures = {
    'first_loss': first[0][1] if first else None,
    'last_loss': first[-1][1] if first else None,
    'last_step': first[-1][0] if first else None,
    'resumed_from_step': int(resumed.group(1)) if resumed else None,
    'resumed_first_loss': second[0][1] if second else None,
    'resumed_last_step': second[-1][0] if second else None,
}
problems = []
if not first or figures['last_step'] != first_steps:
    problems.append(f'the first run did not log step {first_steps}')
elif not all(math.isfinite(loss) for _, loss in first) or not first[-1][1] < first[0][1]:
    problems.append(f'the loss did not fall: {[loss for _, loss in first]}')
if figures['resumed_from_step'] != first_steps:
    problems.append(f'the second run did not resume from ckpt-{first_steps}')
if figures['resumed_last_step'] != last_steps:
    problems.append(f'the second run did not log step {last_steps}')
elif first and not second[0][1] < first[0][1]:
    problems.append('the resumed run starts at the untrained loss: weights not restored?')
figures['ok'] = not problems
print('RESULT ' + json.dumps(figures))
if problems:
    sys.exit('train check: ' + '; '.join(problems))
PY
fi
if [[ " $stages " == *' sizes '* ]]; then
    for size in $sizes; do
        stage "size_$size" "$python" bench/train_step.py --model="$model" --image_size="$size" \
            --num_classes="$num_classes" --precision="$precision" --parts=loop \
            --batch_size="$fast_batch" --steps="$steps" --repeats="$repeats" \
            --steps_per_loop="$steps_per_loop"
    done
fi

"$python" - "$out" "$stages" "$batches" "$((SECONDS - started))" "${failed[*]:-}" "$sizes" <<'PY'
"""The stages' RESULT lines as one Markdown table and one RESULT line."""
import json, os, sys

folder, stages, batches, seconds, failed, sizes = sys.argv[1:7]


def figures(name):
    try:
        with open(f'{folder}/{name}.txt') as stream:
            lines = [line for line in stream if line.startswith('RESULT ')]
    except FileNotFoundError:
        return None
    return json.loads(lines[-1][len('RESULT '):]) if lines else None


def cell(value, form='{:.0f}'):
    return '-' if value is None else form.format(value)


result = {'seconds': int(seconds), 'failed_stages': failed.split()}
pipeline = figures('pipeline')
feed = pipeline and pipeline['train_images_per_s']
rows = []
for batch in batches.split():
    run = figures(f'throughput_{batch}')
    if run is None:
        continue
    keys = ('ours_loop_images_per_second', 'fit_spe_images_per_second', 'vs_fit_spe',
            'ours_xla_images_per_second', 'fit_spe_xla_images_per_second', 'vs_fit_spe_xla')
    ours, fit, vs, ours_xla, fit_xla, vs_xla = (run.get(key) for key in keys)
    speedup = ours_xla / ours if ours and ours_xla else None
    appetite = max(value for value in (ours, ours_xla) if value) if ours or ours_xla else None
    keeps_up = None if not (feed and appetite) else feed >= appetite
    result[f'batch_{batch}'] = {
        'images_per_second': ours, 'fit_spe_images_per_second': fit, 'vs_fit_spe': vs,
        'xla_images_per_second': ours_xla, 'fit_spe_xla_images_per_second': fit_xla,
        'vs_fit_spe_xla': vs_xla, 'xla_speedup': speedup and round(speedup, 3),
        'input_pipeline_keeps_up': keeps_up,
    }
    rows.append(
        f'| {batch} | {cell(ours)} | {cell(fit)} | {cell(vs, "{:.3f}x")} | {cell(ours_xla)} '
        f'| {cell(fit_xla)} | {cell(vs_xla, "{:.3f}x")} | {cell(speedup, "{:.2f}x")} '
        f'| {"-" if keeps_up is None else ("yes" if keeps_up else "no")} |'
    )
any_run = figures(f'throughput_{batches.split()[0]}') if batches.split() else None
if any_run:
    result.update(model=any_run['model'], precision=any_run['precision'],
                  image_size=any_run['image_size'], steps_per_loop=any_run['steps_per_loop'])
    print(f"\n{any_run['model']}, {any_run['precision']}, {any_run['image_size']}x"
          f"{any_run['image_size']}, images/s; fit at steps_per_execution = our steps_per_loop "
          f"({any_run['steps_per_loop']}), in turns in one process\n")
if rows:
    print('| batch | ours | fit | ours/fit | ours, XLA | fit, XLA | ours/fit, XLA | XLA speed-up '
          '| input pipeline keeps up |')
    print('| --- | --- | --- | --- | --- | --- | --- | --- | --- |')
    print('\n'.join(rows))
print('\n| what | figure |\n| --- | --- |')
memory = figures('memory')
if memory:
    for key, label in (('max_batch', 'largest batch'),
                       ('max_batch_memory_efficient', 'largest batch, --memory_efficient')):
        too_big = memory[f'{key}_first_too_big']
        bound = (f'{too_big} does not fit' if too_big
                 else f'the search stopped at {memory["max_batch_limit"]}')
        print(f'| {label} | {memory[key]} ({bound}) |')
        result[key] = memory[key]
        result[f'{key}_first_too_big'] = too_big
if pipeline:
    result['input_pipeline'] = {key: pipeline.get(key) for key in (
        'train_images_per_s', 'images_per_second_per_core', 'usable_cores', 'vs_naive',
        'vs_limit', 'limit_images_per_second_per_core', 'eval_images_per_s', 'eval_vs_limit',
        'step_normalize_us_per_image', 'batch_size', 'image_size', 'dtype')}
    print(f"| input pipeline, {pipeline['usable_cores']} host cores | "
          f"{pipeline['train_images_per_s']:.0f} images/s, "
          f"{pipeline['images_per_second_per_core']:.0f} per core |")
train = figures('train')
if train:
    result['train'] = train
    print(f"| main.py, synthetic data | loss {cell(train['first_loss'], '{:.3f}')} at the first "
          f"log, {cell(train['last_loss'], '{:.3f}')} at step {train['last_step']}; resumed "
          f"from ckpt-{train['resumed_from_step']} to step {train['resumed_last_step']}: "
          f"{'ok' if train['ok'] else 'FAILED'} |")
IMAGENET_TRAIN = 1281167
epoch_seconds = {}
for size in sizes.split():
    run = figures(f'size_{size}')
    if run is None:
        continue
    best = max(value for value in (run.get('ours_loop_images_per_second'),
                                   run.get('ours_xla_images_per_second')) if value)
    epoch_seconds[int(size)] = IMAGENET_TRAIN / best
    print(f'| one ImageNet epoch at {size} px, batch {run["batch_size"]} (best of without and '
          f'with XLA: {best:.0f} images/s) | {epoch_seconds[int(size)] / 60:.1f} min |')
if epoch_seconds:
    result['epoch_seconds_by_size'] = {size: round(s) for size, s in epoch_seconds.items()}
    sys.path.insert(0, '.')
    from trainer import image_sizes  # noqa: E402  (no TensorFlow)
    with open('fast.cfg') as stream:
        cfg = dict(line.strip()[2:].split('=', 1) for line in stream
                   if line.startswith('--') and '=' in line)
    schedule = image_sizes.ImageSizes(
        final=int(cfg['image_size']), smallest=int(cfg['min_image_size']),
        ramp_start=int(cfg['resize_start_epoch']), ramp_end=int(cfg['resize_end_epoch']),
        step=int(cfg['image_size_step']))
    epochs = [schedule.train(epoch) for epoch in range(int(cfg['epochs']))]
    if all(size in epoch_seconds for size in set(epochs)):
        fast = sum(epoch_seconds[size] for size in epochs)
        result['fast_cfg_train_hours'] = round(fast / 3600, 2)
        line = f'| fast.cfg, {len(epochs)} epochs at {sorted(set(epochs))} px, training only | {fast / 3600:.2f} h'
        if 224 in epoch_seconds:
            seed = 90 * epoch_seconds[224]
            result['imagenet_cfg_train_hours_same_batch'] = round(seed / 3600, 2)
            line += f' (90 epochs at 224 px, the same batch: {seed / 3600:.2f} h, {fast / seed:.2f}x)'
        print(line + ' |')
print(f'| wall time | {int(seconds)} s |')
print('RESULT ' + json.dumps(result))
PY
if [[ ${#failed[@]} != 0 ]]; then
    echo "bench/gpu.sh: failed stages: ${failed[*]}" >&2
    exit 1
fi

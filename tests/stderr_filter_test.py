"""TensorFlow's harmless start-up lines stay off the console; nothing else does."""

import concurrent.futures
import re
import subprocess
import sys

import pytest

from main_runs import run_main
from base import stderr_filter

HARMLESS_LINES = [
    'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR',
    'I0000 00:00:1796167088.055860   12927 port.cc:153] oneDNN custom operations are on. '
    'You may see slightly different numerical results',
    'I0000 00:00:1796167088.056265   12927 cudart_stub.cc:31] Could not find cuda drivers on '
    'your machine, GPU will not be used.',
    'E0000 00:00:1796167097.673181   12927 node_def_util.cc:682] NodeDef mentions attribute '
    'use_unbounded_threadpool which is not in the op definition: Op<name=MapDataset>',
    # TensorFlow 2.15's format.
    '2026-12-02 00:25:46.586135: E external/local_xla/xla/stream_executor/cuda/cuda_dnn.cc:9261] '
    'Unable to register cuDNN factory: Attempting to register factory for plugin cuDNN when '
    'one has already been registered',
    '2026-12-02 00:25:48.508457: W tensorflow/compiler/tf2tensorrt/utils/py_utils.cc:38] '
    'TF-TRT Warning: Could not find TensorRT',
    # A failed in-graph data check, told again by the runtime before main.py's line.
    'W0000 00:00:1796519652.345079   14448 local_rendezvous.cc:404] Local rendezvous is '
    'aborting with status: INVALID_ARGUMENT: label out of range: stored label 8',
    '\t [[{{node Assert/Assert}}]]',
]
CUINIT = (
    'E0000 00:00:1796167090.166083   12927 cuda_platform.cc:52] failed call to cuInit: '
    'INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)'
)
REAL_LINES = [
    'E0000 00:00:1796167097.000000   12927 gpu_device.cc:2020] Out of memory while trying '
    'to allocate 9.2GiB',
    'W1201 23:18:15.861682 139651545074560 run.py:367] our own warning',
    'main.py: error: --dataset_dir=/data/imagnet does not exist',
]


def _filtered(lines, nvidia_driver):
    result = subprocess.run(
        [sys.executable, '-c', stderr_filter._FILTER, *stderr_filter.patterns(nvidia_driver)],
        input='\n'.join(lines) + '\n',
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout.splitlines()


def test_filter_drops_only_the_harmless_lines_in_order():
    lines = [HARMLESS_LINES[0], REAL_LINES[0], *HARMLESS_LINES[1:], CUINIT, *REAL_LINES[1:]]
    assert _filtered(lines, nvidia_driver=False) == REAL_LINES
    # With a driver installed, a failing cuInit is a real problem and stays.
    assert _filtered(lines, nvidia_driver=True) == [REAL_LINES[0], CUINIT, *REAL_LINES[1:]]


def _run(env_change, tmp_path):
    args = [
        '--synthetic_data',
        '--model=densenet_bc_10_4',
        '--image_size=16',
        '--num_classes=10',
        '--batch_size=8',
        '--train_steps=2',
        '--export_last_step=false',
        '--steps_per_loop=2',
        f'--model_dir={tmp_path}',
    ]
    return run_main(args, env=env_change, drop_env=('TF_CPP_MIN_LOG_LEVEL',))


@pytest.mark.slow
def test_a_run_starts_with_its_banner_and_the_lines_come_back_on_request(tmp_path):
    harmless = re.compile('|'.join(stderr_filter.patterns(nvidia_driver=False)))
    # The two runs side by side: most of each one's time is start-up.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        quiet_run = pool.submit(_run, {}, tmp_path / 'quiet')
        # TF_CPP_MIN_LOG_LEVEL set: the user chose, nothing is filtered.
        loud_run = pool.submit(_run, {'TF_CPP_MIN_LOG_LEVEL': '0'}, tmp_path / 'loud')
        quiet, loud = quiet_run.result(), loud_run.result()
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    lines = quiet.stderr.splitlines()
    assert not [line for line in lines if harmless.search(line)], quiet.stderr[:3000]
    assert 'Model: densenet_bc_10_4' in lines[0], lines[:3]
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert [line for line in loud.stderr.splitlines() if harmless.search(line)], loud.stderr[:3000]

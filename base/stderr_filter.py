"""Keeps TensorFlow's harmless C++ start-up lines off the console, and nothing else.

A run used to open with a screen of lines that TensorFlow's C++ runtime writes
straight to file descriptor 2, before and around its own logging set-up, which
`TF_CPP_MIN_LOG_LEVEL` does not reach in TensorFlow 2.21:

- `All log messages before absl::InitializeLog() ...`, the oneDNN notice
  (`port.cc`), `Could not find cuda drivers` (`cudart_stub.cc`) and the CPU feature
  notice (`cpu_feature_guard.cc`, two lines): information;
- `failed call to cuInit` (`cuda_platform.cc`), an error line on every machine
  without an NVIDIA driver, from the GPU build of TensorFlow probing for GPUs;
- TensorFlow 2.15's `Unable to register cuDNN/cuFFT/cuBLAS factory` error lines (its
  GPU plugins register twice as the module loads) and `TF-TRT Warning: Could not find
  TensorRT` (TensorRT is optional);
- `NodeDef mentions attribute use_unbounded_threadpool ...` (`node_def_util.cc`):
  under op determinism (`--deterministic`) tf.data runs a parallel map whose function
  is stateful as a sequential map, and the attribute that only the parallel op knows
  is reported as unknown (TensorFlow's own rewrite, ignored by design);
- `TFRecordDataset buffer_size ...` (`tf_record_dataset_op.cc`) and `oneDNN supports
  DT_INT64 only on platforms with AVX-512` (`util.cc`, an error line for a fallback to
  TensorFlow's own kernel): information;
- `Local rendezvous is aborting with status: ...` (`local_rendezvous.cc`) and the
  `[[{{node ...}}]]` line after it: an op's failure told once more by the C++ runtime,
  as it cancels the ops waiting on it, before Python raises it. The error itself
  reaches the user as main.py's one line (or, for a bug, with its traceback).

`install()` routes descriptor 2 through a small filter process that drops exactly
these lines (the cuInit line only where no NVIDIA driver is installed) and passes
everything else, in order: TensorFlow's real warnings and errors, our log and error
lines. A process of its own, not a thread, so that a crash of the trainer loses
nothing: the filter reads until the last writer is gone. Python's `sys.stderr` goes
to the console directly, so progress bars still see a terminal.

Setting `TF_CPP_MIN_LOG_LEVEL` (to any value, 0 shows everything) turns the filter
off: the user has chosen what TensorFlow prints.
"""

import atexit
import os
import subprocess
import sys

# One regular expression per harmless line (searched, not anchored).
_HARMLESS = (
    r'All log messages before absl::InitializeLog\(\) is called are written to STDERR',
    r'port\.cc:\d+\] oneDNN custom operations are on',
    r'cudart_stub\.cc:\d+\] Could not find cuda drivers',
    r'cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized',
    r'^To enable the following instructions: .*rebuild TensorFlow with the appropriate',
    r'util\.cc:\d+\] oneDNN supports DT_INT64 only on platforms with AVX-512',
    r'Unable to register cu(DNN|FFT|BLAS) factory: Attempting to register factory for '
    r'plugin cu(DNN|FFT|BLAS) when one has already been registered',
    r'TF-TRT Warning: Could not find TensorRT',
    r'node_def_util\.cc:\d+\] NodeDef mentions attribute use_unbounded_threadpool',
    r'tf_record_dataset_op\.cc:\d+\] (TFRecordDataset `buffer_size` is unspecified|'
    r'The default buffer size is)',
    r'local_rendezvous\.cc:\d+\] Local rendezvous is aborting with status',
    r'^\s*\[\[\{\{node [^}]*\}\}\]\]\s*$',
)
_NO_DRIVER_CUINIT = r'cuda_platform\.cc:\d+\] failed call to cuInit'
_NVIDIA_DRIVER = '/proc/driver/nvidia/version'

# The filter process: reads lines on stdin, writes those that match no pattern to
# stdout (the console's standard error). It ignores Ctrl-C and SIGTERM, which reach
# the whole process group: it ends when the trainer closes its end of the pipe.
_FILTER = r"""
import re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
harmless = re.compile('|'.join(sys.argv[1:]))
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    if not harmless.search(line.decode('utf-8', 'replace')):
        out.write(line)
        out.flush()
"""


_installed = None  # The filter process, once `install()` has routed descriptor 2.


def patterns(nvidia_driver: bool) -> tuple:
    """The harmless lines' patterns; the cuInit failure only matters with a driver."""
    return _HARMLESS if nvidia_driver else _HARMLESS + (_NO_DRIVER_CUINIT,)


def install() -> bool:
    """Routes file descriptor 2 through the filter; returns whether it did.

    Call it before TensorFlow is imported. Nothing happens when the user set
    `TF_CPP_MIN_LOG_LEVEL`, or when standard error cannot be duplicated.
    """
    if 'TF_CPP_MIN_LOG_LEVEL' in os.environ:
        return False
    try:
        sys.stderr.flush()
        console = os.dup(2)
    except (OSError, ValueError):
        return False
    read_end, write_end = os.pipe()
    filter_process = subprocess.Popen(
        [sys.executable, '-c', _FILTER, *patterns(os.path.exists(_NVIDIA_DRIVER))],
        stdin=read_end,
        stdout=console,
        close_fds=True,
    )
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    # Python writes to the console directly: line by line, and a terminal stays one.
    sys.stderr = open(console, 'w', buffering=1, encoding='utf-8', errors='backslashreplace')
    from absl import logging  # pylint: disable=g-import-not-at-top

    logging.get_absl_handler().python_handler.stream = sys.stderr

    def finish():
        # The filter ends when the last writer of the pipe is gone: flush what it has.
        try:
            os.close(2)
            filter_process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass

    atexit.register(finish)
    global _installed
    _installed = filter_process
    return True


def print_last(text: str) -> None:
    """Prints `text` on standard error as the program's last line (an error's one line).

    TensorFlow's C++ runtime may still write to descriptor 2 as the program ends (a
    tf.data `local_rendezvous` notice, the `[[{{node Assert}}]]` of a failed check),
    and Python's garbage collection may log warnings about objects it ends (a failed
    restore's "Value in checkpoint could not be found", a hundred lines): after the
    error, all of that is noise that hides it. With the filter installed, the line goes
    through it (after every C++ line already written), then descriptor 2 and Python's
    standard error go to /dev/null. Without it (`TF_CPP_MIN_LOG_LEVEL` set: the user
    asked for everything, or inside a test) the line is simply printed.
    """
    if _installed is None:
        print(text, file=sys.stderr, flush=True)
        return
    sys.stderr.flush()
    os.write(2, (text.rstrip('\n') + '\n').encode('utf-8', 'backslashreplace'))
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # The pipe's last writer is gone: the filter drains it and ends.
    os.close(devnull)
    try:
        _installed.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    sys.stderr = open(os.devnull, 'w')
    from absl import logging  # pylint: disable=g-import-not-at-top

    logging.get_absl_handler().python_handler.stream = sys.stderr

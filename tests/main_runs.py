"""Helpers for tests that run main.py in a process of its own, and compare checkpoints."""

import concurrent.futures
import os
import re
import subprocess
import sys
import threading

import numpy as np
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, 'main.py')

# Runs main.py with CheckpointManager.save patched so that the save of checkpoint
# PAUSE_AT stops after its files are written but before the `checkpoint` state file
# names it (a write callback runs between the two), and says so: a test kills it
# there, in the middle of a checkpoint write.
_PAUSING_LAUNCHER = """
import os, runpy, sys, time
sys.path.insert(0, {root!r})
import tensorflow as tf

PAUSE_AT = int(os.environ['PAUSE_CHECKPOINT_AT'])
original_save = tf.train.CheckpointManager.save

def save(self, checkpoint_number=None, check_interval=True, options=None):
    if checkpoint_number == PAUSE_AT:
        def pause(save_path):
            print('PAUSED IN CHECKPOINT WRITE', save_path, file=sys.stderr, flush=True)
            time.sleep(600)
        options = tf.train.CheckpointOptions(experimental_write_callbacks=[pause])
    return original_save(self, checkpoint_number, check_interval, options)

tf.train.CheckpointManager.save = save
sys.argv = ['main.py', *sys.argv[1:]]
runpy.run_path({main!r}, run_name='__main__')
"""


def write_pausing_launcher(folder) -> str:
    """A script that runs main.py and pauses in the write of checkpoint $PAUSE_CHECKPOINT_AT."""
    path = os.path.join(str(folder), 'pausing_main.py')
    with open(path, 'w') as stream:
        stream.write(_PAUSING_LAUNCHER.format(root=ROOT, main=MAIN))
    return path


def run_main(args, timeout=300, env=None, launcher=None, drop_env=(), check=False):
    """Runs main.py (or a `launcher` script that runs it) to its end.

    Returns the `subprocess.CompletedProcess`. `env` adds to this process's environment,
    `drop_env` names variables to leave out of it; with `check`, a failed run raises
    with the end of its stderr.
    """
    environment = {key: value for key, value in os.environ.items() if key not in drop_env}
    result = subprocess.run(
        [sys.executable, launcher or MAIN, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**environment, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f'main.py {" ".join(args)} failed:\n{result.stderr[-3000:]}')
    return result


# main.py runs that overlap another: most of a short run's time is importing, building
# and tracing, which one core does, so two at once take little longer than one.
_BACKGROUND = concurrent.futures.ThreadPoolExecutor(max_workers=2)


def start_main(args, **kwargs) -> concurrent.futures.Future:
    """`run_main(args, **kwargs)` in a thread: a future of its CompletedProcess."""
    return _BACKGROUND.submit(run_main, args, **kwargs)


def run_mains(runs, **kwargs):
    """`run_main` of each argument list, two at a time; the results in the same order."""
    return [future.result() for future in [start_main(args, **kwargs) for args in runs]]


class Started:
    """A main.py process whose stderr is read line by line as it runs."""

    def __init__(self, args, *, launcher=None, env=None, timeout=300):
        command = [sys.executable, launcher or MAIN, *args]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines = []
        # A hung run fails the test instead of hanging it.
        self._watchdog = threading.Timer(timeout, self.process.kill)
        self._watchdog.start()

    def wait_for(self, pattern):
        """Reads stderr until a line matches `pattern`; returns the match."""
        for line in self.process.stderr:
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f'no line matched {pattern!r}; stderr ends:\n{self.tail()}')

    def finish(self):
        """Reads the rest of stderr and waits; returns the exit status."""
        self.lines.extend(self.process.stderr)
        status = self.process.wait()
        self._watchdog.cancel()
        return status

    def tail(self):
        return ''.join(self.lines[-30:])


def folder_bytes(folder):
    """Relative path -> contents of every file below `folder`: to show it untouched."""
    contents = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            with open(path, 'rb') as stream:
                contents[os.path.relpath(path, folder)] = stream.read()
    return contents


def checkpoint_values(prefix):
    """Every training value in a checkpoint (not the save counter, which counts saves,
    nor the input version it records).

    `prefix` may also be a model_dir: its newest checkpoint.
    """
    if os.path.isdir(os.path.join(prefix, 'checkpoints')):
        prefix = tf.train.latest_checkpoint(os.path.join(prefix, 'checkpoints'))
    reader = tf.train.load_checkpoint(prefix)
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
        if not name.startswith(('save_counter', 'input_version', '_CHECKPOINTABLE_OBJECT_GRAPH'))
    }


def checkpoints(model_dir):
    """Step -> prefix of the checkpoints the state file lists."""
    state = tf.train.get_checkpoint_state(os.path.join(model_dir, 'checkpoints'))
    return {int(path.rsplit('-', 1)[1]): path for path in state.all_model_checkpoint_paths}


def differing_values(prefix_a, prefix_b):
    """The names of the checkpoint values that differ in any bit, and how many there are."""
    a, b = checkpoint_values(prefix_a), checkpoint_values(prefix_b)
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    return [name for name in sorted(a) if not np.array_equal(a[name], b[name])], len(a)


def assert_identical(prefix_a, prefix_b):
    """Every value of two checkpoints is bit-identical."""
    differing, total = differing_values(prefix_a, prefix_b)
    assert total > 50
    assert not differing, (
        f'{len(differing)} of {total} values differ in {prefix_b}: {differing[:5]}'
    )


def events(model_dir, run, plugin=None):
    """{tag: {step: value}} of the summaries in the event files of `run` (`train`, `eval`).

    Read with TensorFlow's record reader, a path of its own beside TensorBoard's; with
    `plugin` ('scalars', 'histograms'), that plugin's summaries only.
    """
    values = {}
    for path in tf.io.gfile.glob(os.path.join(model_dir, 'logs', run, 'events.out.tfevents.*')):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if plugin is None or value.metadata.plugin_data.plugin_name == plugin:
                    values.setdefault(value.tag, {})[event.step] = tf.make_ndarray(value.tensor)
    return values


def variable_name(variable):
    """A variable's name as TensorBoard shows it: Keras 3's path, Keras 2's name less `:0`."""
    return getattr(variable, 'path', None) or variable.name.rsplit(':', 1)[0]

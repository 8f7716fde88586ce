"""Every failure a user can cause ends main.py with one readable line and exit status 1.

Each case is a real `python main.py ...` in a subprocess. The cases start together in
a module fixture, two at a time (most of each one's time is importing TensorFlow), and
each test then checks its own case's result. A case checks the exit status, that the
last line of standard error is `main.py: error: ...` naming the cause, and that no
traceback was printed.
"""

import concurrent.futures
import importlib.util
import os

import pytest

from main_runs import MAIN
from main_runs import ROOT
from main_runs import run_main

pytestmark = pytest.mark.slow

TINY = [
    '--model=densenet_bc_10_4',
    '--image_size=32',
    '--num_classes=10',
    '--bfloat16=false',
    '--batch_size=64',
    '--seed=3',
    '--deterministic',
    '--shuffle_buffer=256',
]


def _write(path, data=b''):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as stream:
        stream.write(data)


# Where habana-tensorflow is installed (the Gaudi stand-in stage of .ci/run) the check
# gets further and names the missing driver; neither kind of machine may abort.
if importlib.util.find_spec('habana_frameworks') is None:
    _GAUDI_FRAGMENTS = ['--device=hpu needs habana-tensorflow', 'run inside a Gaudi container']
else:
    _GAUDI_FRAGMENTS = ['--device=hpu: no Gaudi driver on this machine', '/sys/module/habanalabs']


def _cases(tmp, digits_dir):
    """(name, arguments, environment additions, fragments the error line must hold)."""
    empty = os.path.join(tmp, 'empty')
    os.makedirs(empty)
    unknown = os.path.join(tmp, 'unknown_layout')
    _write(os.path.join(unknown, 'images-00000-of-00001.tar'), b'not a record')
    _write(os.path.join(unknown, 'labels.csv'), b'file,label\n')
    corrupt = os.path.join(tmp, 'corrupt')
    _write(os.path.join(corrupt, 'train-00000-of-00001'), b'\x00' * 100)
    _write(os.path.join(corrupt, 'validation-00000-of-00001'), b'\x00' * 100)
    # A model_dir of a DenseNet-121 at 224 pixels, with a checkpoint.
    other = os.path.join(tmp, 'other_run')
    _write(os.path.join(other, 'checkpoints', 'checkpoint'), b'model_checkpoint_path: "ckpt-5"\n')
    _write(
        os.path.join(other, 'flags.cfg'),
        b'--model=densenet121\n--image_size=224\n--num_classes=10\n',
    )
    # What else a model_dir holds: the refusal must leave all of it as it was.
    _write(os.path.join(other, 'checkpoints', 'ckpt-5.index'), b'\x00index')
    _write(os.path.join(other, 'checkpoints', 'ckpt-5.data-00000-of-00001'), b'\x01' * 64)
    _write(os.path.join(other, 'eval_results.jsonl'), b'{"epoch": 1, "step": 5, "top1": 0.5}\n')
    _write(os.path.join(other, 'logs', 'train', 'events.out.tfevents.1.host'), b'\x02' * 32)
    # A model_dir of the same model, trained without --memory_efficient (flags.cfg
    # as absl writes a false boolean).
    plain = os.path.join(tmp, 'plain_run')
    _write(os.path.join(plain, 'checkpoints', 'checkpoint'), b'model_checkpoint_path: "ckpt-5"\n')
    _write(
        os.path.join(plain, 'flags.cfg'),
        b'--model=densenet_bc_10_4\n--image_size=32\n--num_classes=10\n--nomemory_efficient\n',
    )
    # A checkpoint of the same network for 5 classes, with its optimizer as a run's
    # has: its classifier does not fit a 10-class model. TensorFlow logged a "Value in
    # checkpoint could not be found" line per optimizer slot after the error, as the
    # failed restore was garbage-collected at exit.
    import densenet  # noqa: PLC0415
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    # Another class count now fine-tunes (a fresh classifier); another depth is refused.
    deeper = os.path.join(tmp, 'deeper', 'ckpt-1')
    model = densenet.create_model('densenet_bc_16_4', num_classes=10, image_size=32)
    optimizer = keras.optimizers.SGD(momentum=0.9)
    optimizer.build(model.trainable_variables)
    tf.train.Checkpoint(model=model, optimizer=optimizer).write(deeper)
    model_dir = os.path.join(tmp, 'model')
    data = f'--dataset_dir={digits_dir}'
    cases = [
        (
            'no_dataset_dir',
            [*TINY, f'--model_dir={model_dir}'],
            {},
            ['--dataset_dir is required'],
        ),
        (
            'missing_dataset_dir',
            [*TINY, f'--dataset_dir={tmp}/nowhere', f'--model_dir={model_dir}'],
            {},
            ['--dataset_dir=', 'nowhere', 'does not exist'],
        ),
        (
            'dataset_dir_is_a_file',
            [*TINY, f'--dataset_dir={corrupt}/train-00000-of-00001', f'--model_dir={model_dir}'],
            {},
            [f'--dataset_dir={corrupt}/train-00000-of-00001 is a file, not a folder'],
        ),
        (
            'empty_glob',
            [*TINY, f'--dataset_dir={empty}', f'--model_dir={model_dir}'],
            {},
            [empty],
        ),
        (
            'unknown_layout',
            [*TINY, f'--dataset_dir={unknown}', f'--model_dir={model_dir}'],
            {},
            [unknown],
        ),
        (
            'corrupt_record',
            [*TINY, f'--dataset_dir={corrupt}', f'--model_dir={model_dir}'],
            {},
            [f'TFRecord file {corrupt}/', 'is truncated or corrupt'],
        ),
        (
            'label_out_of_range',
            [*TINY, data, f'--model_dir={model_dir}', '--num_classes=5', '--train_steps=1'],
            {},
            ['label out of range', 'train-0000'],
        ),
        (
            'batch_larger_than_dataset',
            [*TINY, data, f'--model_dir={model_dir}', '--batch_size=4096'],
            {},
            ['--batch_size=4096', 'larger than the 1497 training examples'],
        ),
        (
            'only_eval_with_train_steps',
            [*TINY, data, '--only_eval=x', '--train_steps=5'],
            {},
            ['--only_eval evaluates and exits; it cannot be combined with --train_steps'],
        ),
        (
            'only_eval_missing_checkpoint',
            [*TINY, data, f'--only_eval={tmp}/no_such_run/checkpoints'],
            {},
            ['--only_eval=', 'no_such_run', 'no such checkpoint'],
        ),
        (
            'strategy_against_device',
            [
                *TINY,
                data,
                f'--model_dir={model_dir}',
                '--distribution_strategy=hpu',
                '--device=gpu',
            ],
            {},
            ['--distribution_strategy=hpu cannot run on --device=gpu'],
        ),
        (
            'bad_profile_steps',
            [*TINY, data, f'--model_dir={model_dir}', '--profile_steps=5,2'],
            {},
            ['--profile_steps=5,2 needs 1 <= A <= B'],
        ),
        (
            'unknown_flag_value',
            [*TINY, data, f'--model_dir={model_dir}', '--optimizer=lamb'],
            {},
            ['--optimizer=lamb', 'value should be one of <sgd|'],
        ),
        (
            'bad_tf_config',
            [*TINY, data, f'--model_dir={model_dir}'],
            {'TF_CONFIG': '{"cluster": '},
            ['TF_CONFIG', 'not valid JSON'],
        ),
        (
            'unknown_model',
            ['--synthetic_data', '--model=densenet_121x', f'--model_dir={model_dir}'],
            {},
            ["'densenet_121x'", 'densenet121'],
        ),
        (
            'model_dir_of_another_model',
            [*TINY, data, f'--model_dir={other}'],
            {},
            [
                other,
                '--model=densenet121 --image_size=224',
                'not --model=densenet_bc_10_4 --image_size=32',
            ],
        ),
        (
            'model_dir_of_another_layout',
            [*TINY, data, f'--model_dir={plain}', '--memory_efficient'],
            {},
            [plain, '--memory_efficient=False', 'not --memory_efficient=True'],
        ),
        (
            'init_checkpoint_of_another_model',
            [*TINY, data, f'--model_dir={model_dir}_init', f'--init_checkpoint={deeper}'],
            {},
            [f'{deeper} does not fit --model=densenet_bc_10_4', 'layers not in the model'],
        ),
        (
            'missing_flagfile',
            [f'--flagfile={tmp}/nowhere.cfg'],
            {},
            ['Unable to open flagfile', 'nowhere.cfg'],
        ),
        (
            'missing_habana_module',
            ['--synthetic_data', '--device=hpu', f'--model_dir={model_dir}'],
            {},
            _GAUDI_FRAGMENTS,
        ),
    ]
    # Each case its own --model_dir: two run at a time, and a model_dir takes one trainer.
    return [
        (name, [arg.replace(model_dir, f'{model_dir}_{name}') for arg in args], env, fragments)
        for name, args, env, fragments in cases
    ]


CASE_NAMES = [
    'no_dataset_dir',
    'missing_dataset_dir',
    'dataset_dir_is_a_file',
    'empty_glob',
    'unknown_layout',
    'corrupt_record',
    'label_out_of_range',
    'batch_larger_than_dataset',
    'only_eval_with_train_steps',
    'only_eval_missing_checkpoint',
    'strategy_against_device',
    'bad_profile_steps',
    'unknown_flag_value',
    'bad_tf_config',
    'unknown_model',
    'model_dir_of_another_model',
    'model_dir_of_another_layout',
    'init_checkpoint_of_another_model',
    'missing_flagfile',
    'missing_habana_module',
]


def _run(args, env_extra):
    # As a user runs it: TensorFlow's C++ lines filtered as main.py does by default, so
    # that a line printed after the error (a C++ notice, a warning logged as the
    # program ends) fails the test.
    return run_main(args, env=env_extra, drop_env=('TF_CONFIG', 'TF_CPP_MIN_LOG_LEVEL'))


def _snapshot(folder):
    """Every file's bytes and every folder under `folder`, by relative path."""
    found = {}
    for parent, folders, files in os.walk(folder):
        for name in folders:
            found[os.path.relpath(os.path.join(parent, name), folder)] = 'folder'
        for name in files:
            with open(os.path.join(parent, name), 'rb') as stream:
                found[os.path.relpath(os.path.join(parent, name), folder)] = stream.read()
    return found


# The model_dirs that main.py must refuse, by case.
_FOREIGN_RUNS = {
    'model_dir_of_another_model': 'other_run',
    'model_dir_of_another_layout': 'plain_run',
}


@pytest.fixture(scope='module')
def results(tmp_path_factory):
    """Case name -> (result, fragments, arguments, files of its model_dir changed)."""
    from input_pipeline import digits

    tmp = str(tmp_path_factory.mktemp('errors'))
    digits_dir = os.path.join(tmp, 'digits')
    digits.ensure_digits_dataset(digits_dir)
    cases = _cases(tmp, digits_dir)
    assert [case[0] for case in cases] == CASE_NAMES
    before = {name: _snapshot(os.path.join(tmp, run)) for name, run in _FOREIGN_RUNS.items()}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_run, args, env) for name, args, env, _ in cases}
        outcomes = {name: futures[name].result() for name in futures}
    changed = {}
    for name, run in _FOREIGN_RUNS.items():
        after = _snapshot(os.path.join(tmp, run))
        changed[name] = sorted(
            path
            for path in set(before[name]) | set(after)
            if before[name].get(path) != after.get(path)
        )
    return {
        name: (outcomes[name], fragments, args, changed.get(name))
        for name, args, _, fragments in cases
    }


@pytest.mark.parametrize('name', CASE_NAMES)
def test_user_error_is_one_readable_line(results, name):
    result, fragments, args, _ = results[name]
    report = f'main.py {" ".join(args)}\nstderr:\n{result.stderr[-3000:]}'
    assert result.returncode == 1, report
    assert 'Traceback' not in result.stderr, report
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('main.py: error: '), report  # The error is the last line.
    assert 'Value in checkpoint could not be found' not in result.stderr, report
    assert 'Local rendezvous is aborting' not in result.stderr, report  # The error, again.
    assert '[[{{node ' not in result.stderr, report
    for fragment in fragments:
        assert fragment in last, f'{fragment!r} not in {last!r}\n{report}'


@pytest.mark.parametrize('name', sorted(_FOREIGN_RUNS))
def test_a_refused_model_dir_is_left_byte_identical(results, name):
    # Refused before anything in it changes: flags.cfg, checkpoints, results and logs.
    result, _, _, changed = results[name]
    assert result.returncode == 1, result.stderr[-3000:]
    assert changed == [], f'main.py changed {changed} in the model_dir it refused'


# Runs main.py with a bug planted in the train step: a ValueError raised while the step
# is traced, the kind of error main.py once reported as `main.py: error: in user code:`.
_BUGGY_LAUNCHER = """
import runpy, sys
sys.path.insert(0, {root!r})
from trainer.engine import step

def broken(labels, logits, label_smoothing=0.0):
    raise ValueError('planted bug: shapes (3,) and (4,) are incompatible')

step.cross_entropy_loss = broken
sys.argv = ['main.py', *sys.argv[1:]]
runpy.run_path({main!r}, run_name='__main__')
"""


def test_internal_error_shows_its_traceback_and_says_it_is_a_bug(tmp_path):
    launcher = tmp_path / 'buggy_main.py'
    launcher.write_text(_BUGGY_LAUNCHER.format(root=ROOT, main=MAIN))
    result = run_main(
        [*TINY, '--synthetic_data', '--train_steps=1', f'--model_dir={tmp_path / "model"}'],
        launcher=str(launcher),
        env={'TF_CPP_MIN_LOG_LEVEL': '2'},
    )
    report = result.stderr[-4000:]
    assert result.returncode == 2, report
    assert 'Traceback (most recent call last)' in result.stderr, report
    assert 'planted bug: shapes (3,) and (4,) are incompatible' in result.stderr, report
    assert 'main.py: error:' not in result.stderr, report
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('main.py: internal error: '), report
    import keras
    import tensorflow as tf

    assert 'a bug in the trainer' in last, last
    assert f'TensorFlow {tf.__version__}' in last and f'Keras {keras.__version__}' in last, last

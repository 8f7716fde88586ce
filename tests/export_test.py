"""Tests of trainer/artifacts/export.py and trainer/tools/predict.py: an export classifies a real photo
exactly as the trainer's evaluation does, in a process that knows nothing of this project,
through `saved_model_cli` (which loads it as TensorFlow Serving does) and through
`python -m trainer.tools.predict`.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from skimage import data as skimage_data

import densenet
from input_pipeline import formats
from in_process import run_main_in_process
from input_pipeline import writer
from base import errors
from trainer.artifacts import export
from trainer.tools import predict
from trainer.engine import step as step_lib
import pipelines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = 32
CROP = 0.875
NAMES = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', '']

# Loads the export with TensorFlow alone, from a folder outside the repository, and
# classifies the photo through each signature: its bytes, its decoded pixels, and the
# eval pipeline's normalised floats.
_FRESH_PROCESS = """
import json, sys
import numpy as np
import tensorflow as tf

export_dir, photo, images = sys.argv[1:]
loaded = tf.saved_model.load(export_dir)
encoded = open(photo, 'rb').read()
signatures = loaded.signatures
results = {
    'bytes': signatures['serving_default'](image_bytes=tf.constant([encoded])),
    'uint8': signatures['serving_uint8'](images=tf.io.decode_jpeg(encoded, channels=3)[None]),
    'images': signatures['serving_images'](images=tf.constant(np.load(images))),
}
print(json.dumps({
    'project_modules': sorted(
        name for name in sys.modules if name.split('.')[0] in ('trainer', 'densenet', 'input_pipeline')
    ),
    'signatures': sorted(signatures),
    'inputs': {
        name: {key: [spec.dtype.name, spec.shape.as_list()]
               for key, spec in signature.structured_input_signature[1].items()}
        for name, signature in signatures.items()
    },
    'class_names': [name.decode() for name in loaded.class_names.numpy()],
    'outputs': {
        name: {key: value.numpy().tolist() for key, value in result.items() if key != 'top5_names'}
        for name, result in results.items()
    },
    'top5_names': {
        name: [label.decode() for label in result['top5_names'].numpy()[0]]
        for name, result in results.items()
    },
}))
"""


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """An export of a tiny random DenseNet, a photo, and the trainer's eval of the photo."""
    folder = tmp_path_factory.mktemp('export')
    keras.utils.set_random_seed(7)
    model = densenet.create_model('densenet_bc_10_4', num_classes=10, image_size=IMAGE_SIZE)
    path = export.export_saved_model(
        model,
        str(folder / 'saves' / 'epoch_001'),
        image_size=IMAGE_SIZE,
        crop_fraction=CROP,
        class_names=NAMES,
    )
    photo = str(folder / 'chelsea.jpg')
    encoded = tf.io.encode_jpeg(skimage_data.chelsea(), quality=90).numpy()
    with open(photo, 'wb') as stream:
        stream.write(encoded)
    # The trainer's evaluation path: the photo as a validation record, read by the
    # eval pipeline, classified by the Keras model.
    writer.write_tfrecords(
        [writer.Example(encoded=encoded, label=1)], str(folder / 'data'), 'validation', 1
    )
    images, _, _ = next(
        iter(
            pipelines.evaluate(
                formats.list_files(str(folder / 'data'), 'validation'),
                batch_size=1,
                image_size=IMAGE_SIZE,
                num_classes=10,
                num_examples=1,
                crop_fraction=CROP,
            )
        )
    )
    # As the eval step feeds the model (and the export's serving_images takes them).
    images = step_lib.model_input(images, tf.float32)
    np.save(folder / 'images.npy', images.numpy())
    probabilities = tf.nn.softmax(model(images, training=False)).numpy()[0]
    return {
        'path': path,
        'photo': photo,
        'encoded': encoded,
        'images': str(folder / 'images.npy'),
        'eval_images': images,
        'probabilities': probabilities,
        'folder': str(folder),
        'model': model,
    }


def _top5(exported):
    """The trainer's evaluation's top-5 classes of the photo, checked to be well apart.

    The paths compared here compute the same float32 logits, possibly in other orders;
    classes whose probabilities differed by rounding alone could swap places.
    """
    expected = exported['probabilities']
    top6 = np.sort(expected)[::-1][:6]
    assert np.all(np.diff(-top6) > 1e-4), top6
    return [int(index) for index in np.argsort(-expected)[:5]]


def _predict_lines(exported):
    """What `python -m trainer.tools.predict` must print for the photo."""
    expected = exported['probabilities']
    return [exported['photo']] + [
        f'  {rank}. {expected[index]:7.4f}  {index:4d}  {NAMES[index]}'.rstrip()
        for rank, index in enumerate(_top5(exported), 1)
    ]


@pytest.fixture(scope='module')
def predicted(exported):
    """The lines `python -m trainer.tools.predict` prints for the photo, in a process of its own."""
    result = subprocess.run(
        [
            sys.executable,
            '-m',
            'trainer.tools.predict',
            f'--model={exported["folder"]}',  # A model_dir: its newest export is used.
            exported['photo'],
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()


@pytest.mark.slow
def test_export_in_a_fresh_process_classifies_as_the_trainer_evaluates(exported, tmp_path):
    script = tmp_path / 'load_export.py'
    script.write_text(_FRESH_PROCESS)
    env = {key: value for key, value in os.environ.items() if key != 'PYTHONPATH'}
    result = subprocess.run(
        [sys.executable, str(script), exported['path'], exported['photo'], exported['images']],
        cwd=str(tmp_path),  # Outside the repository: the project cannot be imported.
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out['project_modules'] == []
    assert out['signatures'] == ['serving_default', 'serving_images', 'serving_uint8']
    assert out['inputs'] == {
        'serving_default': {'image_bytes': ['string', [None]]},
        'serving_uint8': {'images': ['uint8', [None, None, None, 3]]},
        'serving_images': {'images': ['float32', [None, IMAGE_SIZE, IMAGE_SIZE, 3]]},
    }
    assert out['class_names'] == NAMES
    expected = exported['probabilities']
    assert len(set(np.round(expected, 6))) > 5  # Distinct values: the comparison means something.
    top5 = _top5(exported)
    # Decoding the whole photo gives the eval's pixels here (see serve_uint8 in
    # trainer/artifacts/export.py for when its window's edge columns differ a little).
    for signature in ('bytes', 'uint8', 'images'):
        outputs = out['outputs'][signature]
        assert sorted(outputs) == sorted(set(export.OUTPUTS) - {'top5_names'})
        probabilities = np.array(outputs['probabilities'][0])
        np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(
            np.array(outputs['logits'][0]) - np.array(outputs['logits'][0]).mean(),
            np.log(expected) - np.log(expected).mean(),
            atol=1e-4,
        )
        assert outputs['top5_classes'][0] == top5, signature
        np.testing.assert_allclose(outputs['top5_probabilities'][0], expected[top5], rtol=1e-5)
        assert out['top5_names'][signature] == [NAMES[i] for i in top5]


@pytest.mark.slow
def test_predict_prints_top5_with_names(exported, predicted):
    assert predicted == _predict_lines(exported)


def _saved_model_cli():
    """The `saved_model_cli` that ships with TensorFlow, as a command."""
    script = os.path.join(os.path.dirname(sys.executable), 'saved_model_cli')
    if os.path.exists(script):
        return [script]
    return [sys.executable, '-m', 'tensorflow.python.tools.saved_model_cli']


def _parse_saved_model_cli(stdout: str) -> dict:
    """`saved_model_cli run`'s printed outputs ("Result for output key NAME:" then a
    NumPy array, over one or more lines) as {name: list of the first row's values}."""
    parts = re.split(r'^Result for output key (\w+):$', stdout, flags=re.MULTILINE)
    outputs = {}
    for name, text in zip(parts[1::2], parts[2::2]):
        if name == 'top5_names':
            outputs[name] = re.findall(r"b'([^']*)'", text)
        elif name == 'top5_classes':
            outputs[name] = [int(value) for value in re.findall(r'-?\d+', text)]
        else:
            outputs[name] = [
                float(value) for value in re.findall(r'-?\d+\.?\d*(?:e[-+]?\d+)?', text)
            ]
    return outputs


@pytest.mark.slow
def test_saved_model_cli_run_classifies_as_predict_and_the_trainer(exported, predicted, tmp_path):
    # TensorFlow Serving's way of loading: the graph and its checkpoint, in a session,
    # through the default signature. The README shows the same two steps.
    npy = tmp_path / 'photo.npy'
    np.save(npy, np.array([exported['encoded']], dtype=object))
    result = subprocess.run(
        _saved_model_cli()
        + [
            'run',
            f'--dir={exported["path"]}',
            '--tag_set=serve',
            '--signature_def=serving_default',
            f'--inputs=image_bytes={npy}',
        ],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = _parse_saved_model_cli(result.stdout)
    assert sorted(outputs) == sorted(export.OUTPUTS), result.stdout
    top5 = _top5(exported)
    expected = exported['probabilities']
    # The trainer's evaluation path.
    assert outputs['top5_classes'] == top5, result.stdout
    assert outputs['top5_names'] == [NAMES[i] for i in top5]
    np.testing.assert_allclose(outputs['probabilities'], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(outputs['top5_probabilities'], expected[top5], rtol=1e-5)
    # trainer.tools.predict's printed ranks: the same classes, names and probabilities.
    printed = [line.split(None, 3) for line in predicted[1:]]
    assert [int(fields[2]) for fields in printed] == outputs['top5_classes']
    assert [fields[3] if len(fields) > 3 else '' for fields in printed] == outputs['top5_names']
    np.testing.assert_allclose(
        [float(fields[1]) for fields in printed], outputs['top5_probabilities'], atol=5e-5
    )


def test_exports_of_the_previous_layout_still_load(exported, tmp_path):
    # Before `serving_images`, an export took float images in `serving_default` and
    # encoded ones in `serving_bytes`: the same functions under those names.
    module = export._Serving(
        exported['model'], image_size=IMAGE_SIZE, crop_fraction=CROP, class_names=NAMES
    )
    old = str(tmp_path / 'old_export')
    tf.saved_model.save(
        module,
        old,
        signatures={'serving_default': module.serve_images, 'serving_bytes': module.serve_bytes},
    )
    for path in (exported['path'], old):
        # What `main.py --only_eval` evaluates with.
        predict_fn, image_size = export.load_predict_fn(path)
        assert image_size == IMAGE_SIZE
        np.testing.assert_allclose(
            tf.nn.softmax(predict_fn(exported['eval_images'])).numpy()[0],
            exported['probabilities'],
            rtol=1e-5,
            atol=1e-7,
        )
        assert predict.predict(path, [exported['photo']]) == _predict_lines(exported)


def test_a_saved_model_without_the_signatures_is_refused_in_one_line(tmp_path, capsys):
    module = tf.Module()
    module.f = tf.function(
        lambda x: {'y': x * 2}, input_signature=[tf.TensorSpec([None], tf.float32, name='x')]
    )
    path = str(tmp_path / 'other')
    tf.saved_model.save(module, path, signatures={'serving_default': module.f})
    with pytest.raises(errors.UserError, match='has no signature that takes float32 images'):
        export.load_predict_fn(path)
    assert predict.main([f'--model={path}', str(tmp_path / 'any.jpg')]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'predict: error: {path} has no signature that takes encoded images')
    assert err.count('\n') == 1


def test_export_names_sort_in_epoch_order():
    # Epochs trained, cut off (not rounded) to four decimals: the last step of an
    # epoch sorts before the next epoch's end, never after it.
    names = [export.export_name(step, 23) for step in (22, 23, 35, 45, 46)]
    assert names == ['epoch_000.9565', 'epoch_001', 'epoch_001.5217', 'epoch_001.9565', 'epoch_002']
    assert sorted(names, key=export._epoch_order) == names  # pylint: disable=protected-access
    assert export.export_name(1, 20019) == 'epoch_000.0000'
    assert all(export.COMPLETE_NAME.fullmatch(name) for name in names)


def test_predict_errors_are_one_line(exported, tmp_path, capsys):
    missing = str(tmp_path / 'missing.jpg')
    assert predict.main([f'--model={exported["path"]}', missing]) == 1
    assert capsys.readouterr().err == (
        f'predict: error: cannot read {missing}: No such file or directory\n'
    )
    not_image = tmp_path / 'notes.jpg'
    not_image.write_text('not an image')
    assert predict.main([f'--model={exported["path"]}', str(not_image)]) == 1
    assert capsys.readouterr().err == f'predict: error: {not_image} is not a JPEG or PNG image\n'
    assert predict.main([f'--model={tmp_path}', exported['photo']]) == 1
    assert 'is neither a SavedModel nor a model_dir' in capsys.readouterr().err
    partial = str(tmp_path / 'saves' / 'epoch_001.partial')
    shutil.copytree(exported['path'], partial)
    assert predict.main([f'--model={tmp_path}', exported['photo']]) == 1
    assert capsys.readouterr().err == (
        f'predict: error: --model={tmp_path} is neither a SavedModel nor a model_dir with a '
        'complete export in saves/ (only unfinished ones: epoch_001.partial)\n'
    )
    assert predict.main([f'--model={partial}', exported['photo']]) == 1
    assert capsys.readouterr().err == (
        f'predict: error: --model={partial} is an unfinished export (a run stopped while '
        'writing or replacing it); give a complete saves/epoch_NNN, or the model_dir\n'
    )


def test_nonfinite_model_is_not_exported(tmp_path):
    model = densenet.create_model('densenet_bc_10_4', num_classes=10, image_size=IMAGE_SIZE)
    bias = model.get_layer('predictions').bias
    bias.assign(tf.fill(bias.shape, float('inf')))
    with pytest.raises(ValueError, match='predictions/bias is not finite: not exported'):
        export.export_saved_model(model, str(tmp_path / 'epoch_001'), image_size=IMAGE_SIZE)
    assert not os.path.exists(tmp_path / 'epoch_001')


def _plant_unfinished(exported, saves):
    """What a kill leaves: a newer export half written, and one set aside to be replaced."""
    partial = os.path.join(saves, 'epoch_002.partial')
    shutil.copytree(exported['path'], partial)
    data = os.path.join(partial, 'variables', 'variables.data-00000-of-00001')
    with open(data, 'r+b') as stream:
        stream.truncate(os.path.getsize(data) // 2)
    shutil.copytree(exported['path'], os.path.join(saves, 'epoch_003.old'))
    return partial


@pytest.mark.slow
def test_last_step_exports_and_unfinished_exports_are_never_read(exported, digits_dir, tmp_path):
    """A run ending inside an epoch exports its last step; `.partial` and `.old` exports
    (a run killed while writing or replacing one) are never read, and a run's start
    removes them, naming them."""
    model_dir = str(tmp_path / 'run')
    saves = os.path.join(model_dir, 'saves')
    partial = _plant_unfinished(exported, saves)
    model = ['--model=densenet_bc_10_4', f'--image_size={IMAGE_SIZE}', '--num_classes=10']
    evaluated = run_main_in_process(
        [*model, f'--dataset_dir={digits_dir}', f'--only_eval={partial}']
    )
    assert evaluated.returncode == 1
    assert evaluated.stderr.strip().splitlines()[-1] == (
        f'main.py: error: --only_eval={partial} is an unfinished export (a run stopped while '
        'writing or replacing it; the next training start removes it): give a complete '
        'saves/epoch_NNN'
    )

    run = run_main_in_process(
        [
            *model,
            '--bfloat16=false',
            '--batch_size=256',  # 1,497 digits: 5 steps an epoch, so step 6 ends inside one.
            '--steps_per_loop=5',
            '--log_every_steps=5',
            '--shuffle_buffer=256',
            '--train_steps=6',
            f'--dataset_dir={digits_dir}',
            f'--model_dir={model_dir}',
        ],
        check=True,
    )
    for name in ('epoch_002.partial', 'epoch_003.old'):
        assert f'Removed {os.path.join(saves, name)}: an unfinished export' in run.stderr
    assert sorted(os.listdir(saves)) == ['epoch_001', 'epoch_001.2000']
    assert export.find_export(model_dir) == os.path.join(saves, 'epoch_001.2000')

    partial = _plant_unfinished(exported, saves)
    assert export.find_export(model_dir) == os.path.join(saves, 'epoch_001.2000')
    assert predict.main([f'--model={partial}', exported['photo']]) == 1


def test_eval_and_serving_inputs_are_keras_densenet_preprocess_input(exported):
    # Keras' ImageNet DenseNet weights were trained on `densenet.preprocess_input`
    # ('torch' mode: x / 255, minus ImageNet's mean, over its std); a model fine-tuned
    # from them must see the same inputs in evaluation and serving. Keras' function is
    # the reference, applied to the same decoded, cropped pixels.
    from keras.applications import densenet as keras_densenet  # noqa: PLC0415

    from input_pipeline import augment  # noqa: PLC0415

    pixels = augment.decode_and_center_crop(
        exported['encoded'], image_size=IMAGE_SIZE, crop_fraction=CROP
    ).numpy()
    want = keras_densenet.preprocess_input(pixels.copy()[None])
    np.testing.assert_allclose(exported['eval_images'].numpy(), want, rtol=0, atol=2e-6)
    loaded = tf.saved_model.load(exported['path'])
    serving = loaded.signatures['serving_default']
    served = serving(image_bytes=tf.constant([exported['encoded']]))['logits']
    reference = exported['model'](want, training=False).numpy()
    np.testing.assert_allclose(served.numpy(), reference, rtol=0, atol=1e-5)

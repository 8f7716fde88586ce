"""Tests of trainer/export.py and trainer/predict.py: an export classifies a real photo
exactly as the trainer's evaluation does, in a process that knows nothing of this project.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from skimage import data as skimage_data

import densenet
from input_pipeline import dataset as datasets
from input_pipeline import writer
from trainer import export
from trainer import predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = 32
CROP = 0.875
NAMES = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', '']

# Loads the export with TensorFlow alone, from a folder outside the repository, and
# classifies the photo through both signatures.
_FRESH_PROCESS = """
import json, sys
import numpy as np
import tensorflow as tf

export_dir, photo, images = sys.argv[1:]
loaded = tf.saved_model.load(export_dir)
by_bytes = loaded.signatures['serving_bytes'](image_bytes=tf.constant([open(photo, 'rb').read()]))
by_images = loaded.signatures['serving_default'](images=tf.constant(np.load(images)))
print(json.dumps({
    'project_modules': sorted(
        name for name in sys.modules if name.split('.')[0] in ('trainer', 'densenet', 'input_pipeline')
    ),
    'class_names': [name.decode() for name in loaded.class_names.numpy()],
    'bytes': {key: value.numpy().tolist() for key, value in by_bytes.items() if key != 'top5_names'},
    'top5_names': [name.decode() for name in by_bytes['top5_names'].numpy()[0]],
    'images': {key: value.numpy().tolist() for key, value in by_images.items() if key != 'top5_names'},
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
            datasets.eval_dataset(
                datasets.list_files(str(folder / 'data'), 'validation'),
                batch_size=1,
                image_size=IMAGE_SIZE,
                num_classes=10,
                num_examples=1,
                crop_fraction=CROP,
            )
        )
    )
    np.save(folder / 'images.npy', images.numpy())
    probabilities = tf.nn.softmax(model(images, training=False)).numpy()[0]
    return {
        'path': path,
        'photo': photo,
        'images': str(folder / 'images.npy'),
        'probabilities': probabilities,
        'folder': str(folder),
    }


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
    assert out['class_names'] == NAMES
    expected = exported['probabilities']
    assert len(set(np.round(expected, 6))) > 5  # Distinct values: the comparison means something.
    for signature in ('bytes', 'images'):
        outputs = out[signature]
        probabilities = np.array(outputs['probabilities'][0])
        np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(
            np.array(outputs['logits'][0]) - np.array(outputs['logits'][0]).mean(),
            np.log(expected) - np.log(expected).mean(),
            atol=1e-4,
        )
        top5 = list(np.argsort(-expected)[:5])
        assert outputs['top5_classes'][0] == top5
        np.testing.assert_allclose(outputs['top5_probabilities'][0], expected[top5], rtol=1e-5)
    assert out['top5_names'] == [NAMES[i] for i in top5]


def test_predict_prints_top5_with_names(exported):
    result = subprocess.run(
        [
            sys.executable,
            '-m',
            'trainer.predict',
            f'--model={exported["folder"]}',  # A model_dir: its newest export is used.
            exported['photo'],
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = exported['probabilities']
    top5 = np.argsort(-expected)[:5]
    lines = result.stdout.strip().splitlines()
    assert lines[0] == exported['photo']
    assert lines[1:] == [
        f'  {rank}. {expected[index]:7.4f}  {index:4d}  {NAMES[index]}'.rstrip()
        for rank, index in enumerate(top5, 1)
    ], result.stdout


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


def test_nonfinite_model_is_not_exported(tmp_path):
    model = densenet.create_model('densenet_bc_10_4', num_classes=10, image_size=IMAGE_SIZE)
    bias = model.get_layer('predictions').bias
    bias.assign(tf.fill(bias.shape, float('inf')))
    with pytest.raises(ValueError, match='predictions/bias is not finite: not exported'):
        export.export_saved_model(model, str(tmp_path / 'epoch_001'), image_size=IMAGE_SIZE)
    assert not os.path.exists(tmp_path / 'epoch_001')

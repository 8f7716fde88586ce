"""Parses ImageNet TFRecords and decodes their images to RGB.

The records follow the Inception / TF-slim `build_imagenet_data.py` layout (the TPU
`imagenet_to_gcs.py` script writes the same keys). We parse them with our own feature
spec rather than a dataset library so that the trainer controls two things a library
hides: the label check, which must name the file that holds a bad label, and the JPEG
bytes, which `augment.py` decodes only inside the crop window.
"""

from __future__ import annotations

import tensorflow as tf

FEATURES = {
    'image/encoded': tf.io.FixedLenFeature([], tf.string),
    # 1..1000 in the slim and TPU layouts; 0 is unused (it was "background").
    'image/class/label': tf.io.FixedLenFeature([], tf.int64),
    'image/class/synset': tf.io.FixedLenFeature([], tf.string, default_value=''),
    'image/class/text': tf.io.FixedLenFeature([], tf.string, default_value=''),
    # Informational only: the decoder reads the true size from the JPEG header.
    'image/height': tf.io.FixedLenFeature([], tf.int64, default_value=0),
    'image/width': tf.io.FixedLenFeature([], tf.int64, default_value=0),
    # Human-annotated boxes (fractions of the image), present on some train images.
    'image/object/bbox/xmin': tf.io.VarLenFeature(tf.float32),
    'image/object/bbox/ymin': tf.io.VarLenFeature(tf.float32),
    'image/object/bbox/xmax': tf.io.VarLenFeature(tf.float32),
    'image/object/bbox/ymax': tf.io.VarLenFeature(tf.float32),
}


def parse_record(
    serialized: tf.Tensor,
    filename: tf.Tensor | str,
    *,
    label_offset: int = 1,
    num_classes: int = 1000,
) -> dict[str, tf.Tensor]:
    """Parses one serialized `tf.train.Example` in the slim ImageNet layout.

    A label outside `[0, num_classes)` after the offset fails the pipeline instead of
    being clipped or wrapped: a wrong offset or a mismatched `num_classes` would
    otherwise train a model on silently wrong targets (or crash later inside the loss
    with no hint of which file is at fault).

    Args:
      serialized: scalar string tensor, one record.
      filename: scalar string, the file the record came from; it only appears in the
        error message of a bad label.
      label_offset: subtracted from the stored label (1 for the slim and TPU layouts,
        whose labels run 1..1000; 0 for layouts with 0-based labels).
      num_classes: number of classes the model predicts.

    Returns:
      A dict with `encoded` (scalar string, the image bytes), `label` (int32, 0-based),
      `bbox` (float32 `[N, 4]` as (ymin, xmin, ymax, xmax), N may be 0), `synset` and
      `text` (scalar strings, empty when absent).

    Raises:
      tf.errors.InvalidArgumentError: when the label is out of range (at run time: inside
        `tf.data` the error surfaces from the iterator). The message contains
        "label out of range", the stored label and the file name.
    """
    features = tf.io.parse_single_example(serialized, FEATURES)
    stored_label = features['image/class/label']
    label = stored_label - label_offset
    in_range = tf.logical_and(label >= 0, label < num_classes)
    check = tf.debugging.Assert(
        in_range,
        [
            'label out of range: stored label',
            stored_label,
            f'minus label_offset {label_offset} is not in [0, {num_classes}); file',
            filename,
        ],
    )
    with tf.control_dependencies([check]):
        label = tf.identity(label)

    def coordinate(name: str) -> tf.Tensor:
        return tf.sparse.to_dense(features[f'image/object/bbox/{name}'])

    # The order (ymin, xmin, ymax, xmax) is the one tf.image's box ops expect.
    bbox = tf.stack(
        [coordinate('ymin'), coordinate('xmin'), coordinate('ymax'), coordinate('xmax')],
        axis=-1,
    )
    return {
        'encoded': features['image/encoded'],
        'label': tf.cast(label, tf.int32),
        'bbox': tf.reshape(bbox, [-1, 4]),
        'synset': features['image/class/synset'],
        'text': features['image/class/text'],
    }


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes a whole image to RGB, whatever its colour model.

    ImageNet's JPEGs include grayscale and CMYK images, and one train image is a PNG
    under a `.JPEG` name. `channels=3` makes libjpeg convert grayscale and CMYK to RGB;
    `is_jpeg` sends anything else to the PNG decoder.

    Args:
      encoded: scalar string tensor, JPEG or PNG bytes.

    Returns:
      uint8 tensor `[height, width, 3]`.
    """
    return tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3),
        lambda: tf.io.decode_png(encoded, channels=3),
    )

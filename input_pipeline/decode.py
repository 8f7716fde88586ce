"""Parses ImageNet TFRecords and checks their labels and image bytes.

The records follow one of the schemas of `formats.py` (the Inception / TF-slim keys,
which the TPU `imagenet_to_gcs.py` script also writes, or TFDS's `image`/`label`). We
parse them with our own feature spec rather than a dataset library so that the trainer
controls two things a library hides: the checks, which must name the file that holds a
bad label or a bad image, and the JPEG bytes, which `augment.py` decodes only inside the
crop window.
"""

from __future__ import annotations

import tensorflow as tf

from input_pipeline import formats

_BOX_KEYS = tuple(f'image/object/bbox/{name}' for name in ('ymin', 'xmin', 'ymax', 'xmax'))

# The leading bytes of the formats `as_jpeg` reads besides JPEG (`is_jpeg` knows it).
_SIGNATURES = (b'\x89PNG\r\n\x1a\n', b'GIF87a', b'GIF89a', b'BM')
# What `tf.io.is_jpeg` looks for: the start-of-image marker and the next marker's 0xFF.
_JPEG_START = b'\xff\xd8\xff'
# JPEG's end-of-image marker. Entropy-coded data never contains it (0xFF is stuffed
# there), so a JPEG that does not end with it was cut short, or has data appended.
_JPEG_END = b'\xff\xd9'
# A 1x1 black PNG: what `as_jpeg` decodes and re-encodes in place of a JPEG.
_BLANK_PNG = (
    b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00'
    b'\x00\x00\x90wS\xde\x00\x00\x00\x0cIDAT\x08\x99c```\x00\x00\x00\x04\x00\x01\xa3\n\x15'
    b'\xe3\x00\x00\x00\x00IEND\xaeB`\x82'
)
# Near-lossless (no chroma subsampling): a re-encoded image differs by a level or two.
_REENCODE_QUALITY = 100


def check_labels(
    labels: tf.Tensor,
    stored_labels: tf.Tensor,
    filenames: tf.Tensor,
    *,
    label_offset: int,
    num_classes: int,
) -> tf.Tensor:
    """Returns `labels` once all are in `[0, num_classes)`; otherwise fails, naming a file.

    A label outside the range fails the pipeline instead of being clipped or wrapped: a
    wrong `label_offset` (1 for the slim and TPU layouts, whose labels run 1..1000; 0
    for 0-based ones) or a mismatched `num_classes` would otherwise train a model on
    silently wrong targets, or crash later inside the loss with no hint of the file.

    Works on one label or a batch: a batch costs one check instead of one per example.

    Raises:
      tf.errors.InvalidArgumentError: (at run time) with "label out of range", the first
        bad stored label and its file in the message.
    """
    in_range = tf.logical_and(labels >= 0, labels < num_classes)
    first_bad = tf.argmin(tf.reshape(tf.cast(in_range, tf.int32), [-1]))
    message = tf.strings.join(
        [
            'label out of range: stored label ',
            tf.strings.as_string(tf.reshape(stored_labels, [-1])[first_bad]),
            f' minus label_offset {label_offset} is not in [0, {num_classes}) in file ',
            tf.reshape(filenames, [-1])[first_bad],
        ]
    )
    check = tf.debugging.Assert(tf.reduce_all(in_range), [message])
    with tf.control_dependencies([check]):
        return tf.identity(labels)


def parse_records(
    serialized: tf.Tensor, *, schema: formats.RecordSchema = formats.SLIM_SCHEMA
) -> dict[str, tf.Tensor]:
    """Parses a batch of serialized `tf.train.Example`s in one op.

    The train and eval pipelines parse (and check) records a batch at a time before
    decoding them one by one: one op for a batch costs less than one per record.

    Args:
      serialized: string `[B]`.
      schema: the record keys.

    Returns:
      `encoded` (string `[B]`), `stored_label` (int64 `[B]`, as stored: 1..1000 in
      the slim and TPU layouts) and `bbox` (a float32 RaggedTensor `[B, None, 4]` of
      (ymin, xmin, ymax, xmax): the human-annotated boxes some train images have, as
      fractions of the image; empty rows without boxes).
    """
    spec = {
        schema.image_key: tf.io.FixedLenFeature([], tf.string),
        schema.label_key: tf.io.FixedLenFeature([], tf.int64),
    }
    if schema.has_boxes:
        spec.update({key: tf.io.RaggedFeature(tf.float32) for key in _BOX_KEYS})
    features = tf.io.parse_example(serialized, spec)
    if schema.has_boxes:
        bbox = tf.stack([features[key] for key in _BOX_KEYS], axis=-1)
    else:
        size = tf.shape(serialized, out_type=tf.int64)[0]
        bbox = tf.RaggedTensor.from_row_lengths(tf.zeros([0, 4]), tf.zeros([size], tf.int64))
    return {
        'encoded': features[schema.image_key],
        'stored_label': features[schema.label_key],
        'bbox': bbox,
    }


def image_problem(encoded: tf.Tensor) -> tf.Tensor:
    """Says cheaply, without decoding, what is wrong with images' bytes ('' if nothing).

    Catches what decoders report without naming the record: bytes of no image format
    at all (an HTML error page saved as .JPEG, an empty file) and JPEGs cut short (a
    partial download), which lack the end-of-image marker. A JPEG with data appended
    after its end (some cameras append a second image or a video) looks the same and
    is refused too: re-encode such images, or read them with `skip_bad_records`, which
    does not call this (and skips only what fails to decode).

    Args:
      encoded: string tensor of any shape (one image, or a batch).

    Returns:
      String tensor of the same shape: '' for a readable image, else a description.
    """
    head = tf.strings.substr(encoded, 0, 8)
    is_jpeg = tf.strings.substr(head, 0, 3) == _JPEG_START
    known = tf.reduce_any(
        [tf.strings.substr(head, 0, len(signature)) == signature for signature in _SIGNATURES],
        axis=0,
    )
    start = tf.maximum(tf.strings.length(encoded) - 2, 0)
    end = tf.strings.substr(encoded, start, tf.fill(tf.shape(start), 2))
    return tf.where(
        tf.logical_not(tf.logical_or(is_jpeg, known)),
        'not a JPEG, PNG, GIF or BMP image',
        tf.where(
            tf.logical_and(is_jpeg, tf.not_equal(end, _JPEG_END)),
            'a JPEG without its end marker (cut short, or with data appended)',
            '',
        ),
    )


def check_image(encoded: tf.Tensor, filename: tf.Tensor | str) -> tf.Tensor:
    """Returns `encoded` once `image_problem` finds nothing; otherwise fails naming the file.

    Works on one image or a batch (with a file name per image).

    Raises:
      tf.errors.InvalidArgumentError: (at run time) "undecodable image in FILE: ...".
    """
    problem = tf.reshape(image_problem(encoded), [-1])
    first_bad = tf.argmax(tf.cast(problem != '', tf.int32))
    filename = tf.reshape(tf.broadcast_to(filename, tf.shape(encoded)), [-1])
    message = tf.strings.join(
        ['undecodable image in ', filename[first_bad], ': ', problem[first_bad]]
    )
    check = tf.debugging.Assert(tf.reduce_all(tf.equal(problem, '')), [message])
    with tf.control_dependencies([check]):
        return tf.identity(encoded)


def as_jpeg(encoded: tf.Tensor) -> tf.Tensor:
    """Returns JPEG bytes: `encoded` itself, or a PNG, GIF or BMP decoded and re-encoded.

    No control flow: every call decodes and re-encodes an image, a 1x1 PNG standing in
    when `encoded` already is a JPEG, which costs less than a `tf.cond` in tf.data.

    Args:
      encoded: scalar string tensor.

    Returns:
      Scalar string tensor of JPEG bytes.
    """
    is_jpeg = tf.io.is_jpeg(encoded)
    other = tf.io.decode_image(
        tf.where(is_jpeg, _BLANK_PNG, encoded), channels=3, expand_animations=False
    )
    reencoded = tf.io.encode_jpeg(other, quality=_REENCODE_QUALITY, chroma_downsampling=False)
    return tf.where(is_jpeg, encoded, reencoded)


def as_jpeg_batch(encoded: tf.Tensor) -> tf.Tensor:
    """`as_jpeg` of a batch, for one check when all are JPEGs (nearly always)."""
    return tf.cond(
        tf.reduce_all(tf.strings.substr(encoded, 0, 3) == _JPEG_START),
        lambda: encoded,
        lambda: tf.map_fn(as_jpeg, encoded),
    )

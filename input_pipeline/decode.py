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

# The most pixels an image's header may declare; a larger image is refused, named,
# before it is decoded. ILSVRC2012's photos are mostly a few hundred pixels a side and
# none comes near 10000x10000, nor do most cameras' photos; the cap is below what
# TensorFlow's JPEG decoder refuses by itself (2**29 bytes of output, 179 megapixels in
# RGB) with an error that names no file, and below what a corrupt header made it
# allocate (a 632-byte JPEG declaring 13000x13000 decoded as 507 MB of grey).
MAX_IMAGE_PIXELS = 100_000_000

# Entropy-coded JPEG data spends at least one bit on every 8x8 block of the
# full-resolution component: each block has a Huffman-coded DC difference (a code of
# one bit at least) in baseline and progressive JPEGs alike. Fewer bytes than that
# cannot hold the image the header declares: libjpeg "decodes" such data with its
# warning "Corrupt JPEG data: premature end of data segment" and fills what is missing
# with grey, which TensorFlow's decoder accepts without a word. (Arithmetic-coded
# JPEGs, which hardly any software writes, can be smaller and are refused too.)
_BITS_PER_BLOCK = 1

# Header bytes read for the size of a PNG (IHDR), GIF (screen) or BMP (DIB header).
_HEADER_BYTES = 26

# A `parse_records` label that no record holds: the record has no label at all.
MISSING_LABEL = -(2**63)


def check_labels(
    labels: tf.Tensor,
    stored_labels: tf.Tensor,
    filenames: tf.Tensor,
    *,
    label_offset: int,
    num_classes: int,
    label_key: str = formats.SLIM_SCHEMA.label_key,
) -> tf.Tensor:
    """Returns `labels` once all are in `[0, num_classes)`; otherwise fails, naming a file.

    A label outside the range fails the pipeline instead of being clipped or wrapped: a
    wrong `label_offset` (1 for the slim and TPU layouts, whose labels run 1..1000; 0
    for 0-based ones) or a mismatched `num_classes` would otherwise train a model on
    silently wrong targets, or crash later inside the loss with no hint of the file.

    A record without a label (`parse_records` gives it `MISSING_LABEL`) fails the same
    way, named as such: TensorFlow's own parser would fail on it without naming the file.

    Works on one label or a batch: a batch costs one check instead of one per example.

    Raises:
      tf.errors.InvalidArgumentError: (at run time) with "label out of range" (the first
        bad stored label) or "label missing", and the file, in the message.
    """
    missing = tf.equal(stored_labels, MISSING_LABEL)
    in_range = tf.logical_and(labels >= 0, labels < num_classes)
    in_range = tf.logical_and(in_range, tf.logical_not(missing))
    first_bad = tf.argmin(tf.reshape(tf.cast(in_range, tf.int32), [-1]))
    filename = tf.reshape(filenames, [-1])[first_bad]
    message = tf.where(
        tf.reshape(missing, [-1])[first_bad],
        tf.strings.join(['label missing: a record in file ', filename, f' has no {label_key}']),
        tf.strings.join(
            [
                'label out of range: stored label ',
                tf.strings.as_string(tf.reshape(stored_labels, [-1])[first_bad]),
                f' minus label_offset {label_offset} is not in [0, {num_classes}) in file ',
                filename,
            ]
        ),
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
      `encoded` (string `[B]`, '' when missing), `stored_label` (int64 `[B]`, as
      stored: 1..1000 in the slim and TPU layouts; `MISSING_LABEL` when missing) and `bbox` (a float32 RaggedTensor `[B, None, 4]` of
      (ymin, xmin, ymax, xmax): the human-annotated boxes some train images have, as
      fractions of the image; empty rows without boxes).
    """
    # Defaults instead of TensorFlow's error, which names no file: a record without an
    # image gets no bytes (`image_problem` names it) and one without a label gets
    # `MISSING_LABEL` (`check_labels` names it).
    spec = {
        schema.image_key: tf.io.FixedLenFeature([], tf.string, default_value=''),
        schema.label_key: tf.io.FixedLenFeature([], tf.int64, default_value=MISSING_LABEL),
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
    at all (an HTML error page saved as .JPEG, an empty file), JPEGs cut short (a
    partial download), which lack the end-of-image marker, and PNGs, GIFs and BMPs
    whose header declares more than `MAX_IMAGE_PIXELS` (`header_problem`; a JPEG's
    size is `jpeg_problem`'s, checked per image before it is decoded). A JPEG with data appended
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
        tf.equal(encoded, ''),
        'no image (the record holds no image bytes)',
        tf.where(
            tf.logical_not(tf.logical_or(is_jpeg, known)),
            'not a JPEG, PNG, GIF or BMP image',
            tf.where(
                tf.logical_and(is_jpeg, tf.not_equal(end, _JPEG_END)),
                'a JPEG without its end marker (cut short, or with data appended)',
                header_problem(encoded),
            ),
        ),
    )


def _too_many_pixels(width: tf.Tensor, height: tf.Tensor) -> tf.Tensor:
    """The description of an image of `width` x `height` above `MAX_IMAGE_PIXELS`, or ''."""
    return tf.where(
        width * height > MAX_IMAGE_PIXELS,
        tf.strings.join(
            [
                'its header declares ',
                tf.strings.as_string(width),
                'x',
                tf.strings.as_string(height),
                (
                    f' pixels, more than the {MAX_IMAGE_PIXELS:,} the input pipeline decodes '
                    '(a corrupt header, or an image to scale down)'
                ),
            ]
        ),
        '',
    )


def header_problem(encoded: tf.Tensor) -> tf.Tensor:
    """Says from its header whether a PNG, GIF or BMP is too large to decode ('' if not).

    These formats keep their size at fixed offsets, so a batch costs a few ops; JPEGs,
    whose size follows a variable run of segments, are `jpeg_problem`'s. They are
    decoded whole (`as_jpeg`), so the size must be checked before that.

    Args:
      encoded: string tensor of any shape.

    Returns:
      String tensor of the same shape: '' or a description.
    """
    head = tf.strings.join([tf.strings.substr(encoded, 0, _HEADER_BYTES), '\0' * _HEADER_BYTES])
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(head, 0, _HEADER_BYTES), tf.uint8), tf.int64)

    def number(first: int, count: int, *, big_endian: bool = False) -> tf.Tensor:
        places = range(count)[::-1] if big_endian else range(count)
        return sum(raw[..., first + i] * 256**place for i, place in zip(range(count), places))

    png = number(16, 4, big_endian=True), number(20, 4, big_endian=True)
    gif = number(6, 2), number(8, 2)
    # Windows BMPs: int32 sizes, the height negative for top-down rows; OS/2's
    # 12-byte header: 16-bit sizes.
    core = tf.equal(number(14, 4), 12)
    bmp_height = number(22, 4)
    bmp_height = tf.abs(tf.where(bmp_height >= 2**31, bmp_height - 2**32, bmp_height))
    bmp = (
        tf.where(core, number(18, 2), number(18, 4)),
        tf.where(core, number(20, 2), bmp_height),
    )
    first = tf.strings.substr(encoded, 0, 8)
    width, height = tf.zeros_like(png[0]), tf.zeros_like(png[0])
    for signature, (format_width, format_height) in (
        (_SIGNATURES[0], png),
        (_SIGNATURES[1], gif),
        (_SIGNATURES[2], gif),
        (_SIGNATURES[3], bmp),
    ):
        matches = tf.equal(tf.strings.substr(first, 0, len(signature)), signature)
        width = tf.where(matches, format_width, width)
        height = tf.where(matches, format_height, height)
    return _too_many_pixels(width, height)


def jpeg_problem(jpeg: tf.Tensor) -> tf.Tensor:
    """Says from its header and size, without decoding, what is wrong with a JPEG ('' if nothing).

    Two things a decoder would not report, or not with the record's name: a size above
    `MAX_IMAGE_PIXELS` (TensorFlow refuses above ~179 megapixels without naming the
    file, and below that decodes whatever a corrupt header declares), and fewer bytes
    than the declared size needs (`_BITS_PER_BLOCK`): libjpeg fills the missing data
    with grey after its warning "Corrupt JPEG data: premature end of data segment".
    What this cannot see: data damaged inside an image of plausible length, which
    decodes with that same warning (TensorFlow's decoder offers no way to make it an
    error; the builder, `build_imagenet.py`, catches it there).

    Args:
      jpeg: scalar string tensor, a JPEG (`as_jpeg`).

    Returns:
      Scalar string tensor: '' or a description.
    """
    shape = tf.io.extract_jpeg_shape(jpeg, output_type=tf.int32)
    height, width = tf.cast(shape[0], tf.int64), tf.cast(shape[1], tf.int64)
    blocks = ((height + 7) // 8) * ((width + 7) // 8)
    size = tf.cast(tf.strings.length(jpeg), tf.int64)
    too_short = tf.strings.join(
        [
            'a JPEG of ',
            tf.strings.as_string(size),
            ' bytes cannot hold the ',
            tf.strings.as_string(width),
            'x',
            tf.strings.as_string(height),
            ' pixels its header declares (corrupt data, which would decode as grey)',
        ]
    )
    return tf.where(
        width * height > MAX_IMAGE_PIXELS,
        _too_many_pixels(width, height),
        tf.where(size * 8 < blocks * _BITS_PER_BLOCK, too_short, ''),
    )


def _checked(data: tf.Tensor, problem: tf.Tensor, filename: tf.Tensor | str) -> tf.Tensor:
    message = tf.strings.join(['undecodable image in ', filename, ': ', problem])
    check = tf.debugging.Assert(tf.equal(problem, ''), [message])
    with tf.control_dependencies([check]):
        return tf.identity(data)


def check_jpeg(jpeg: tf.Tensor, filename: tf.Tensor | str) -> tf.Tensor:
    """Returns `jpeg` once `jpeg_problem` finds nothing; otherwise fails naming the file.

    One image: the pipelines call it just before the image is decoded (with
    `skip_bad_records` the failure drops the example, which is counted).

    Raises:
      tf.errors.InvalidArgumentError: (at run time) "undecodable image in FILE: ...".
    """
    return _checked(jpeg, jpeg_problem(jpeg), filename)


def check_header(encoded: tf.Tensor, filename: tf.Tensor | str) -> tf.Tensor:
    """Returns one image's bytes once `header_problem` finds nothing; else fails naming the file.

    For `skip_bad_records`, which does not call `check_image`: before `as_jpeg`
    decodes a PNG, GIF or BMP whole.
    """
    return _checked(encoded, header_problem(encoded), filename)


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

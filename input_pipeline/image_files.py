"""Image files on disk: which files are images, where their bytes are, and the one rule
by which a builder turns an image into the JPEG bytes a record holds.

Both builders use it, the ImageNet one (`build_imagenet.py`) and the class-folder one
(`build_folders.py`, and `writer.write_from_folders` for small in-process sets such as
the demo's digits), and so does the dataset validator (`validate.py`), so that what
the validator calls an image, a damaged image or a re-encoded one is what a build does.

The rule (`encoded_jpeg`), as TF-slim's `build_imagenet_data.py` has it: every image is
decoded once; greyscale and colour JPEGs are kept byte for byte; CMYK JPEGs and every
other format (PNG, BMP, GIF: one ImageNet train "JPEG" is a PNG) are re-encoded as RGB
JPEGs at quality `REENCODE_QUALITY`; an image that does not decode, that decodes only
with libjpeg's warning that data was lost, or that the trainer would refuse
(`decode.image_problem`, `decode.jpeg_problem`) is refused with its name.

TensorFlow is imported only inside the functions that decode, so that a builder's
main process can list sources and start workers without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import tempfile
from collections.abc import Iterator

# File names taken as images (compared lower-case): what `tf.io.decode_image` reads.
IMAGE_EXTENSIONS = ('.jpeg', '.jpg', '.png', '.bmp', '.gif')

# Quality of a re-encoded image: high enough that the trainer's own JPEG decoding and
# augmentation, not the re-encoding, dominate what the model sees.
REENCODE_QUALITY = 95

# libjpeg's warnings that data is missing and was filled in (jerror.h: JWRN_HIT_MARKER,
# JWRN_JPEG_EOF, JWRN_HUFF_BAD_CODE, JWRN_MUST_RESYNC). Others are harmless and pass:
# "Corrupt JPEG data: N extraneous bytes before marker" (JWRN_EXTRANEOUS_DATA), which a
# few ILSVRC2012 train images are known to print, decodes every pixel.
LIBJPEG_DATA_LOST = (
    'premature end of data segment',
    'Premature end of JPEG file',
    'bad Huffman code',
    'instead of RST',
)


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one image's bytes are: a file, or a byte range of a tar file.

    Attributes:
      path: the image file, or the tar file holding it.
      offset: start of the image's bytes in `path` (0 for a plain file).
      size: number of bytes (-1: the whole file).
      name: the image's file name, such as `n01440764_10026.JPEG`.
      synset: its class (an ImageNet synset, or a class folder's name).
    """

    path: str
    offset: int
    size: int
    name: str
    synset: str

    @property
    def where(self) -> str:
        """How messages name the image: its file, or the tar and the member."""
        return self.path if self.size < 0 else f'{self.path}:{self.name}'

    def read(self) -> bytes:
        with open(self.path, 'rb') as stream:
            stream.seek(self.offset)
            return stream.read(self.size)


def is_image_name(name: str) -> bool:
    """Whether a file name is one of `IMAGE_EXTENSIONS` (hidden files never are)."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith('.')


def class_folders(path: str) -> list[str]:
    """The class folders of `path`, sorted by name (hidden folders left out)."""
    return sorted(
        name
        for name in os.listdir(path)
        if not name.startswith('.') and os.path.isdir(os.path.join(path, name))
    )


def class_folder_sources(path: str) -> list[Source]:
    """The images of `path/<class>/`, one folder per class, in (class, file name) order."""
    sources = []
    for synset in class_folders(path):
        folder = os.path.join(path, synset)
        for name in sorted(os.listdir(folder)):
            if is_image_name(name):
                sources.append(Source(os.path.join(folder, name), 0, -1, name, synset))
    return sources


@contextlib.contextmanager
def libjpeg_warnings() -> Iterator[list[str]]:
    """Collects libjpeg's warnings of lost data, printed on file descriptor 2 while decoding.

    libjpeg reports damaged data it can work around ("Corrupt JPEG data: premature end
    of data segment", "Premature end of JPEG file") as a warning printed to stderr and
    fills the gap with grey; TensorFlow's decoder then succeeds. Decoding under this
    context reads those warnings, so that the caller can refuse the image. Whatever else
    appeared there is passed on to stderr.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        lines: list[str] = []
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors='replace').splitlines():
                if any(warning in line for warning in LIBJPEG_DATA_LOST):
                    lines.append(line)
                elif line.strip():
                    print(line, file=sys.stderr)


def encoded_jpeg(data: bytes, name: str) -> tuple[bytes, int, int]:
    """JPEG bytes of an image and its (height, width); CMYK and non-JPEG images re-encoded.

    The image is refused, with `name`, when it does not decode, when libjpeg warns of
    damaged data while decoding it (`libjpeg_warnings`), or when the trainer's checks
    would refuse it (`decode.image_problem`, `decode.jpeg_problem`: a size beyond
    `decode.MAX_IMAGE_PIXELS`, too few bytes for the declared size), so that a shard
    never holds an image that training would stop on, skip, or learn from as grey.

    Raises:
      ValueError: naming the image and what is wrong with it.
    """
    import tensorflow as tf  # noqa: PLC0415  (see the module's docstring)

    from input_pipeline import decode  # noqa: PLC0415
    from base import errors  # noqa: PLC0415  (its one_line drops TensorFlow's op names)

    try:
        problem = decode.image_problem(data).numpy().decode()
        # A JPEG that decodes without a warning although it lacks its end marker has
        # data appended after its image: it is re-encoded, as the trainer would refuse it.
        appended = bool(problem) and bool(tf.io.is_jpeg(data)) and 'end marker' in problem
        if not problem and tf.io.is_jpeg(data):
            problem = decode.jpeg_problem(data).numpy().decode()
        if problem and not appended:
            raise ValueError(f'{name} is refused: {problem}')
        # Decoding verifies the whole image, as TF-slim's builder does.
        with libjpeg_warnings() as warnings:
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
        if warnings:
            raise ValueError(f'{name} is refused: libjpeg says {warnings[0]!r} (damaged data)')
        if (
            not appended
            and tf.io.is_jpeg(data)
            and int(tf.io.extract_jpeg_shape(data, output_type=tf.int32)[2]) != 4
        ):
            return data, int(image.shape[0]), int(image.shape[1])
    except tf.errors.OpError as error:
        raise ValueError(f'{name} does not decode: {errors.one_line(error)}') from error
    height, width = int(image.shape[0]), int(image.shape[1])
    return tf.io.encode_jpeg(image, quality=REENCODE_QUALITY).numpy(), height, width

"""The one image reader: a locator (a file, or a byte range inside a tar) -> bounded bytes -> 8-bit RGB.

Reads are bounded (regular files only, at most MAX_IMAGE_BYTES) and PIL's decompression-bomb limit stays in force.
Every PIL mode becomes the RGB a CLIP model sees, without the silent clipping of `Image.convert("RGB")`:

`convert("RGB")` clips 16-bit and 32-bit grey (`I;16`, `I`) at 255, so a 16-bit PNG turns white, and maps float
grey (`F`) in [0, 1] to black; it also drops transparency, leaving whatever colour the transparent pixels store.
Here high-bit-depth grey is rescaled to 8 bits, float grey in [0, 1] is stretched to [0, 255], and transparent
images (`RGBA`, `LA`, `PA`, `P` or `L`/`RGB` with a transparent colour) are composited over white, as most
image-text pipelines do. CMYK uses PIL's multiplicative conversion (R = (255 - C)(255 - K) / 255); embedded ICC
profiles are not applied.
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from clipsim import fileio
from clipsim.errors import DataError

Locator = str | os.PathLike | tuple[str, int, int]
# PIL refuses images over 2 x MAX_IMAGE_PIXELS (~179 M px, its decompression-bomb limit); an uncompressed RGB file of
# that size is 537 MB, so no image PIL would decode is larger, and no read of an image path can grow without bound.
MAX_IMAGE_BYTES = 600_000_000

WHITE = (255, 255, 255, 255)
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
SIXTEEN_BIT = 257  # 65535 / 255: 16-bit grey to 8-bit keeps black at 0 and white at 255


def to_rgb(image: Image.Image) -> Image.Image:
    """A new 8-bit RGB image showing what `image` shows, whatever its mode.

    Args:
        image: an opened PIL image of any mode ('1', 'L', 'P', 'RGB', 'RGBA', 'LA', 'PA', 'CMYK', 'YCbCr',
            'I;16*', 'I', 'F', ...).

    Returns:
        An RGB image of the same size (never `image` itself, so the caller may close the file).

    Raises:
        ValueError / OSError: PIL cannot convert the mode (e.g. LAB without a colour profile).
    """
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":  # I: 16-bit PNG/TIFF grey in some PIL versions; wider values clip
        grey = np.clip(np.asarray(image, dtype=np.float64), 0, 65535) / SIXTEEN_BIT
        return _grey(grey)
    if mode == "F":
        grey = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if grey.size and grey.min() >= 0.0 and grey.max() <= 1.0:  # a [0, 1] float image, not [0, 255]
            grey = grey * 255.0
        return _grey(grey)
    if mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")
    return image.convert("RGB")


def _grey(values: np.ndarray) -> Image.Image:
    """(h, w) float grey values in [0, 255] as an RGB image (rounded to the nearest level)."""
    levels = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(levels).convert("RGB")


def split_locator(locator: Locator) -> tuple[str, int, int]:
    """(path, offset, size) of a locator; a plain path gives offset = size = -1."""
    if isinstance(locator, (str, os.PathLike)):
        return os.fspath(locator), -1, -1
    path, offset, size = locator
    return os.fspath(path), int(offset), int(size)


def row_locator(row) -> Locator:
    """The locator of a metadata row (a mapping or Series with `path`, `offset`, `size`)."""
    offset = int(row["offset"]) if "offset" in row else -1
    return (str(row["path"]), offset, int(row["size"])) if offset >= 0 else str(row["path"])


def read_image_bytes(locator: Locator) -> bytes:
    """The encoded bytes of one image: a whole file, or `size` bytes at `offset` inside a tar.

    Raises:
        DataError: the file is missing, unreadable, not a regular file (`/dev/zero`) or over MAX_IMAGE_BYTES, or
            the tar is shorter than the locator says.
    """
    path, offset, size = split_locator(locator)
    if offset >= 0 and not 0 <= size <= MAX_IMAGE_BYTES:
        raise DataError(f"{path}: the image at offset {offset} is said to hold {size:,} bytes (at most "
                        f"{MAX_IMAGE_BYTES:,}); the metadata or the tar header is wrong: re-index the tar")
    limit = 1 << 62 if offset >= 0 else MAX_IMAGE_BYTES  # a tar may be large; the member is bounded above
    with fileio.open_regular(path, limit, "tar shard" if offset >= 0 else "image") as (f, _):
        try:
            if offset < 0:
                return f.read(MAX_IMAGE_BYTES + 1)[:MAX_IMAGE_BYTES]
            f.seek(offset)
            data = f.read(size)
        except OSError as err:
            raise DataError(f"cannot read image {path} ({err}); check that the file exists and is readable") from err
    if len(data) != size:
        raise DataError(
            f"{path}: only {len(data)} of {size} bytes at offset {offset}; the tar changed or is truncated since it "
            "was indexed: re-create it and re-embed the dataset with force"
        )
    return data


def read_image(locator: Locator, crop_border: int = 0) -> Image.Image:
    """Decode one image as 8-bit RGB (any mode: see to_rgb), optionally cutting `crop_border` pixels from every side
    (ObjectNet's frame).

    Raises:
        DataError: unreadable file or bytes that do not decode as an image (names the path and offset), or an
            image too small for the crop.
    """
    data = read_image_bytes(locator)
    buffer = io.BytesIO(data)
    try:
        with Image.open(buffer) as image:
            rgb = to_rgb(image)
    except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
        path, offset, _ = split_locator(locator)
        where = f"{path} at offset {offset}" if offset >= 0 else path
        why = str(err).replace(repr(buffer), "its bytes")  # no memory address: the skipped list is reproducible
        raise DataError(f"image {where} does not decode ({type(err).__name__}: {why}); the file is corrupt") from err
    if crop_border <= 0:
        return rgb
    width, height = rgb.size
    if min(width, height) <= 2 * crop_border:
        raise DataError(f"image {split_locator(locator)[0]} is {width}x{height} px, too small to cut a "
                        f"{crop_border} px border from; remove it or register the dataset without crop_border")
    return rgb.crop((crop_border, crop_border, width - crop_border, height - crop_border))

"""Reading images robustly: every odd file becomes plain 8-bit RGB or a clear error; then the cache's resize.

Real image collections hold odd files: grayscale, CMYK or 16-bit images, transparent PNGs, photos
whose camera stored the orientation in EXIF instead of rotating the pixels, truncated downloads,
files that are not images at all, and the occasional "decompression bomb" (a few kilobytes that
claim to be a gigapixel image). :func:`load_image_rgb` turns every usable file into a plain 8-bit
RGB image and every unusable one into a :class:`BadImageError` naming the file and the reason, so
callers can report it, skip it and count it::

    >>> try:
    ...     image = load_image_rgb("train2017/000000000009.jpg")   # doctest: +SKIP
    ... except BadImageError as e:
    ...     print(e)
    train2017/000000000009.jpg: truncated or corrupt image data (OSError: image file is truncated)

Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` must stay False (this module never changes it): with
it, a truncated file would be returned half grey instead of being reported.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Decompression-bomb limit, checked from the header before any pixel is decoded. COCO's largest
# images are 640 x 640 (0.4 MP); 64 MP leaves room for any real photo while a forged header
# cannot make us allocate gigabytes. Pillow's own global limit (Image.MAX_IMAGE_PIXELS) is not
# relied on: any other code may change it.
MAX_IMAGE_PIXELS = 64_000_000

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class BadImageError(Exception):
    """An image file that cannot be used; ``str(e)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class TooManyPixelsError(BadImageError):
    """An image whose header claims more pixels than the limit (a decompression bomb); nothing was decoded."""


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    """16-bit grayscale (``I;16*``, or ``I`` holding 16-bit values) to 8-bit ``L``, scaled.

    Pillow's own ``convert("L")`` clips at 255 instead of scaling, turning most 16-bit images white.
    Example: 0 -> 0, 257 -> 1, 65535 -> 255.
    """
    values = np.asarray(image).astype(np.int64)  # (H, W)
    scaled = (np.clip(values, 0, 65535) + 128) // 257  # (H, W), rounded to nearest
    return Image.fromarray(scaled.astype(np.uint8), mode="L")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any decoded image to a new 8-bit RGB image; transparency is composited on white."""
    if image.mode in _SIXTEEN_BIT_MODES:
        image = _sixteen_bit_to_l(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode == "F":
        raise ValueError("32-bit float images have no standard value range")
    return image.convert("RGB")


def load_image_rgb(path: str | os.PathLike, draft_size: int | None = None) -> Image.Image:
    """Open and fully decode an image file; returns an 8-bit RGB image, upright.

    Handles EXIF orientation, grayscale (``L``, ``LA``, ``1``), palette (``P``, with or without
    transparency), ``CMYK``, alpha (composited on white) and 16-bit images (``I;16``, ``I``: scaled
    so that 65535 becomes 255). With ``draft_size``, a JPEG may be decoded directly at 1/2, 1/4 or
    1/8 scale while its shorter side stays >= ``draft_size`` -- several times faster when the image
    is about to be shrunk to that size anyway.

    Raises BadImageError (naming the path) for a missing or empty file, a file that is not an
    image, truncated or corrupt data, and a header claiming more than MAX_IMAGE_PIXELS pixels
    (:class:`TooManyPixelsError`).
    """
    path = Path(path)
    if not path.exists():
        raise BadImageError(path, "file not found")
    if not path.is_file():
        raise BadImageError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise BadImageError(path, "empty file (0 bytes)")
    return _decode(path, path, draft_size, MAX_IMAGE_PIXELS)


def image_from_bytes(data: bytes, name: str, draft_size: int | None = None,
                     max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """:func:`load_image_rgb` for an image held in memory (a download); ``name`` (its URL) names it in errors.

    The header's width x height is checked against ``max_pixels`` before any pixel is decoded.
    """
    if not data:
        raise BadImageError(name, "empty file (0 bytes)")
    return _decode(io.BytesIO(data), name, draft_size, max_pixels)


def _decode(source, name, draft_size: int | None, max_pixels: int) -> Image.Image:
    """Decode ``source`` (a path or a binary file object) to RGB; errors name ``name``."""
    try:
        image = Image.open(source)
    except Image.DecompressionBombError as e:
        raise TooManyPixelsError(name, f"decompression bomb ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        # Pillow names an in-memory file by its object's repr: say what it means instead
        detail = "no known image format" if isinstance(e, UnidentifiedImageError) and not isinstance(source, Path) else e
        raise BadImageError(name, f"not a recognised image ({type(e).__name__}: {detail})") from e
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise TooManyPixelsError(name, f"decompression bomb: {width} x {height} = {width * height} pixels "
                                           f"exceeds the limit of {max_pixels}")
        if width == 0 or height == 0:
            raise BadImageError(name, f"empty image ({width} x {height})")
        try:
            if draft_size is not None and image.format == "JPEG":
                image.draft(None, (draft_size, draft_size))
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
        except Exception as e:
            # Decoders of untrusted bytes raise many types (OSError "image file is truncated",
            # SyntaxError "broken PNG file", ValueError, EOFError, struct.error, zlib.error, ...);
            # every one of them means the same thing here: this file cannot be used.
            raise BadImageError(name, f"truncated or corrupt image data ({type(e).__name__}: {e})") from e
        try:
            return _to_rgb(image)
        except ValueError as e:
            raise BadImageError(name, f"cannot convert mode {image.mode} to RGB ({e})") from e


def resize_and_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """(size, size, 3) uint8: scale the shorter side to ``size`` (bicubic, antialiased), centre crop.

    Only the centred square that survives the crop is resampled (Pillow's ``box`` argument), which
    is the same result as resizing the whole image first, for less work. Example: a 640 x 480 image
    and ``size=64`` -> the middle 480 x 480 square resized to 64 x 64.
    """
    if img.mode != "RGB":
        raise ValueError(f"expected an RGB image (use load_image_rgb), got mode {img.mode}")
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    width, height = img.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    square = img.resize((size, size), Image.BICUBIC, box=(left, top, left + side, top + side))
    return np.asarray(square, dtype=np.uint8).copy()  # (size, size, 3)

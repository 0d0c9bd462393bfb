"""Drawing a shapes scene: the background, then each object, supersampled and box-filtered down.

:func:`render_scene` draws at ``SUPERSAMPLE`` times the size and shrinks with a box filter, a cheap
anti-aliasing; :func:`encode_jpeg` stores the result as a JPEG, like COCO's images.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
from PIL import Image, ImageDraw

from captioner.data.shapes_scene import Background, Scene

SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down: cheap anti-aliasing


JPEG_QUALITY = 95


def _background_pixels(bg: Background, size: int) -> np.ndarray:
    """(size, size, 3) uint8 background."""
    a = np.array(bg.colour_a, dtype=np.float32)  # (3,)
    b = np.array(bg.colour_b, dtype=np.float32)  # (3,)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)  # (S,)
    if bg.kind == "gradient":
        if bg.direction == "horizontal":
            t = np.broadcast_to(ramp[None, :], (size, size))  # (S, S)
        elif bg.direction == "vertical":
            t = np.broadcast_to(ramp[:, None], (size, size))  # (S, S)
        else:
            t = (ramp[None, :] + ramp[:, None]) / 2  # (S, S)
        pixels = a + (b - a) * t[..., None]  # (S, S, 3)
    else:
        pixels = np.broadcast_to(a, (size, size, 3))  # (S, S, 3)
    if bg.kind == "noise":
        # Grey grain from random.Random's bytes: reproducible on any platform and numpy version.
        raw = np.frombuffer(random.Random(bg.noise_seed).randbytes(size * size), dtype=np.uint8)  # (S*S,)
        grain = (raw.reshape(size, size).astype(np.float32) / 127.5 - 1.0) * bg.noise  # (S, S)
        pixels = pixels + grain[..., None]  # (S, S, 3)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Polygon vertices of a shape inside the circle of radius ``r`` (sizes chosen so that the
    shapes cover similar areas)."""
    if shape == "square":
        h = 0.68 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.72 * r, cy), (cx, cy + r), (cx - 0.72 * r, cy)]
    if shape == "triangle":
        angles = (-90, 30, 150)
        return [(cx + r * math.cos(math.radians(t)), cy + r * math.sin(math.radians(t))) for t in angles]
    if shape == "star":
        return [(cx + rr * math.cos(math.radians(-90 + 36 * i)), cy + rr * math.sin(math.radians(-90 + 36 * i)))
                for i, rr in enumerate([r, 0.48 * r] * 5)]
    raise ValueError(f"unknown shape {shape!r}")


def render_scene(scene: Scene) -> Image.Image:
    """The scene as an RGB image of ``scene.image_size`` pixels.

    The background is made at the final size and blown up with nearest-neighbour, the shapes are
    drawn at SUPERSAMPLE x and the whole canvas is box-filtered down: the background comes back
    exactly, and the shapes' edges are anti-aliased.
    """
    size, k = scene.image_size, SUPERSAMPLE
    canvas = Image.fromarray(_background_pixels(scene.background, size)).resize((size * k, size * k), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for o in scene.objects:
        cx, cy, r = o.cx * k, o.cy * k, o.radius * k
        if o.shape == "circle":
            draw.ellipse([cx - 0.8 * r, cy - 0.8 * r, cx + 0.8 * r, cy + 0.8 * r], fill=o.rgb)
        else:
            draw.polygon(_outline(o.shape, cx, cy, r), fill=o.rgb)
    return canvas.reduce(k)


def encode_jpeg(image: Image.Image) -> bytes:
    """JPEG bytes like COCO's, but without chroma subsampling: at 64 px a small shape is only 13-16
    pixels wide, and 4:2:0 would smear its colour into the background."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buffer.getvalue()

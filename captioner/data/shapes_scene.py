"""The synthetic *shapes* dataset's scenes: what is drawn, where, and what the words of a caption mean.

Every image shows one to four non-overlapping objects. An object has a shape (circle, square,
triangle, diamond, star), a colour (red, green, blue, yellow, purple, orange) and a size class
(small, large); the background is a light plain colour, a light gradient ("shaded") or light grain
("speckled"). Each image gets five different captions, written from the *scene description* (never
from pixels, ``shapes_captions.py``), so every caption is true by construction::

    >>> scene = scene_for(seed=0, split="train", index=0, image_size=64)
    >>> [(o.size, o.colour, o.shape) for o in scene.objects], scene.background.kind
    ([('small', 'green', 'triangle'), ('small', 'red', 'diamond')], 'noise')
    >>> from captioner.data.shapes_captions import captions_for
    >>> captions_for(seed=0, split="train", index=0, image_size=64)[2:]
    ['Two shapes on a speckled background.', 'The diamond is above the triangle.', 'All the shapes are small.']

The words mean exactly this (image coordinates, y grows downwards; ``r`` is an object's radius,
the shape lies inside the circle of radius ``r`` around its centre ``(cx, cy)``):

- "a red circle" : at least one such object; "one"/"two"/... red circles : exactly that many;
  "the red circle" : exactly one object fits the description.
- A is "to the left of" B : ``A.cx + A.r < B.cx - B.r`` (A lies wholly left of B);
  "to the right of", "above" (``A.cy + A.r < B.cy - B.r``) and "below" likewise.
- "on the left" : ``cx + r < S/2`` (wholly in the left half of the S x S image); "on the right",
  "at the top", "at the bottom" likewise; "in the top left" etc. : both; "in the middle" : the centre
  lies within 0.1 S of the image centre on both axes.

Objects never overlap (their circles stay ``MIN_GAP * S`` apart), so no caption is falsified by
one shape hiding another. A model that ignores the image can learn the grammar of the captions
but not which colours, shapes, counts and relations a given image has.

A scene is a pure function of ``(seed, split, index, image_size)`` (:func:`scene_for`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

SHAPES = ("circle", "square", "triangle", "diamond", "star")


COLOURS = {
    "red": (215, 35, 35),
    "green": (35, 155, 50),
    "blue": (35, 75, 215),
    "yellow": (235, 195, 20),
    "purple": (135, 50, 175),
    "orange": (240, 125, 20),
}


# Radius as a fraction of the image side. The gap between the classes keeps "small" and "large"
# visibly different even after the per-object jitter. At 64 px a small shape is 13-16 px wide, about
# two 8-px ViT patches: a ViT learns colours from far smaller shapes, but hardly their outlines.
SIZES = {"small": (0.098, 0.126), "large": (0.182, 0.224)}


# Background kind -> the word captions use for it.
BACKGROUNDS = {"plain": "plain", "gradient": "shaded", "noise": "speckled"}


MAX_OBJECTS = 4


MIN_GAP = 0.04  # between two objects' circles, fraction of the image side


BORDER = 0.03  # between an object's circle and the image border, fraction of the image side


MIDDLE = 0.1  # "in the middle": centre within this fraction of the side from the image centre


SPLITS = ("train", "val", "test", "unlabeled")


# Image ids are SPLIT_INDEX * ID_STRIDE + index + 1: unique across splits, and an image's id (hence
# its file name) does not depend on the sizes of the other splits.
ID_STRIDE = 1_000_000


_REGIONS = ("on the left", "on the right", "at the top", "at the bottom", "in the top left",
            "in the top right", "in the bottom left", "in the bottom right", "in the middle")


_RELATIONS = ("to the left of", "to the right of", "above", "below")


@dataclass(frozen=True)
class SceneObject:
    """One shape. ``cx, cy, radius`` are in pixels of the final image; the shape lies inside the
    circle of ``radius`` around ``(cx, cy)``. ``rgb`` is the drawn colour (the named colour, jittered)."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    radius: float
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Background:
    """``kind`` in BACKGROUNDS; a gradient runs from ``colour_a`` to ``colour_b`` along ``direction``
    ("horizontal", "vertical" or "diagonal"); grain has amplitude ``noise`` and seed ``noise_seed``."""

    kind: str
    colour_a: tuple[int, int, int]
    colour_b: tuple[int, int, int]
    direction: str
    noise: float
    noise_seed: int


@dataclass(frozen=True)
class Scene:
    """Everything an image shows; both the pixels and the captions are computed from it."""

    image_size: int
    background: Background
    objects: tuple[SceneObject, ...]


def is_left_of(a: SceneObject, b: SceneObject) -> bool:
    """True when ``a`` lies wholly to the left of ``b`` (no overlap of their extents along x)."""
    return a.cx + a.radius < b.cx - b.radius


def is_above(a: SceneObject, b: SceneObject) -> bool:
    """True when ``a`` lies wholly above ``b`` (image y grows downwards)."""
    return a.cy + a.radius < b.cy - b.radius


def relations(a: SceneObject, b: SceneObject) -> list[str]:
    """The relation phrases that hold for "``a`` <phrase> ``b``", e.g. ``["to the left of", "above"]``."""
    holds = (is_left_of(a, b), is_left_of(b, a), is_above(a, b), is_above(b, a))
    return [phrase for phrase, ok in zip(_RELATIONS, holds) if ok]


def regions(obj: SceneObject, image_size: int) -> list[str]:
    """The position phrases that hold for ``obj``, e.g. ``["on the left", "at the top", "in the top left"]``."""
    half = image_size / 2
    left, right = obj.cx + obj.radius < half, obj.cx - obj.radius > half
    top, bottom = obj.cy + obj.radius < half, obj.cy - obj.radius > half
    middle = abs(obj.cx - half) < MIDDLE * image_size and abs(obj.cy - half) < MIDDLE * image_size
    holds = (left, right, top, bottom, top and left, top and right, bottom and left, bottom and right, middle)
    return [phrase for phrase, ok in zip(_REGIONS, holds) if ok]


def _light_colour(rng: random.Random) -> tuple[int, int, int]:
    """A light, weakly tinted colour: every channel stays far from the saturated object colours."""
    grey = rng.randint(205, 245)
    return tuple(min(255, max(0, grey + rng.randint(-12, 12))) for _ in range(3))


def _sample_background(rng: random.Random) -> Background:
    kind = rng.choice(tuple(BACKGROUNDS))
    return Background(kind=kind, colour_a=_light_colour(rng), colour_b=_light_colour(rng),
                      direction=rng.choice(("horizontal", "vertical", "diagonal")),
                      noise=rng.uniform(6.0, 12.0), noise_seed=rng.getrandbits(32))


def _place(rng: random.Random, radius: float, placed: list[SceneObject], size: int) -> tuple[float, float] | None:
    """A centre for a new object of ``radius`` that keeps clear of the border and of ``placed``."""
    lo, hi = radius + BORDER * size, size - radius - BORDER * size
    for _ in range(50):
        cx, cy = rng.uniform(lo, hi), rng.uniform(lo, hi)
        if all(math.hypot(cx - o.cx, cy - o.cy) >= radius + o.radius + MIN_GAP * size for o in placed):
            return cx, cy
    return None


def sample_scene(rng: random.Random, image_size: int) -> Scene:
    """Draw a random scene: 1..MAX_OBJECTS objects with uniform shape, colour and size class."""
    background = _sample_background(rng)
    n = rng.randint(1, MAX_OBJECTS)
    # Rejection sampling: four large shapes occasionally leave no room for the last one; then the
    # whole layout is drawn again (deterministically, from the same rng).
    for _ in range(1000):
        placed: list[SceneObject] = []
        for _ in range(n):
            shape, colour, size = rng.choice(SHAPES), rng.choice(tuple(COLOURS)), rng.choice(tuple(SIZES))
            radius = rng.uniform(*SIZES[size]) * image_size
            centre = _place(rng, radius, placed, image_size)
            if centre is None:
                break
            rgb = tuple(min(255, max(0, c + rng.randint(-12, 12))) for c in COLOURS[colour])
            placed.append(SceneObject(shape, colour, size, centre[0], centre[1], radius, rgb))
        if len(placed) == n:
            return Scene(image_size, background, tuple(placed))
    raise RuntimeError(f"could not place {n} objects in a {image_size} px image")


def image_id_for(split: str, index: int) -> int:
    """``image_id_for("val", 0) -> 1000001``: unique across splits, 1-based like COCO's."""
    return SPLITS.index(split) * ID_STRIDE + index + 1


def scene_for(seed: int, split: str, index: int, image_size: int) -> Scene:
    """The scene of image ``index`` of ``split`` (a pure function of its arguments)."""
    return sample_scene(random.Random(f"shapes/scene/{seed}/{split}/{index}"), image_size)

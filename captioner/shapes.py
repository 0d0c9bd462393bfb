"""The synthetic *shapes* dataset: coloured shapes on light backgrounds, in the MS COCO 2017 layout.

Every image shows one to four non-overlapping objects. An object has a shape (circle, square,
triangle, diamond, star), a colour (red, green, blue, yellow, purple, orange) and a size class
(small, large); the background is a light plain colour, a light gradient ("shaded") or light grain
("speckled"). Each image gets five different captions, written from the *scene description* (never
from pixels), so every caption is true by construction::

    >>> scene = scene_for(seed=0, split="train", index=0, image_size=64)
    >>> [(o.size, o.colour, o.shape) for o in scene.objects], scene.background.kind
    ([('small', 'green', 'triangle'), ('small', 'red', 'diamond')], 'noise')
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

:func:`generate_shapes_dataset` writes the COCO layout (``train2017/``, ``val2017/``,
``test2017/``, ``annotations/captions_train2017.json``, ...). Everything is a pure function of
``(seed, split, index, image_size)``, so a rerun after an interruption regenerates exactly the
missing files and skips the complete ones.
"""

from __future__ import annotations

import io
import json
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from captioner.fileio import atomic_write_bytes

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
# two 8-px ViT patches: format 1 drew every shape 1.4x smaller (9-12 px), and the quickstart's ViT then
# learned colours but hardly any shapes (README, "Results on the shapes dataset").
SIZES = {"small": (0.098, 0.126), "large": (0.182, 0.224)}
# Background kind -> the word captions use for it.
BACKGROUNDS = {"plain": "plain", "gradient": "shaded", "noise": "speckled"}
MAX_OBJECTS = 4
MIN_GAP = 0.04  # between two objects' circles, fraction of the image side
BORDER = 0.03  # between an object's circle and the image border, fraction of the image side
MIDDLE = 0.1  # "in the middle": centre within this fraction of the side from the image centre
CAPTIONS_PER_IMAGE = 5
SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down: cheap anti-aliasing
JPEG_QUALITY = 95

SPLITS = ("train", "val", "test", "unlabeled")
CAPTIONED_SPLITS = ("train", "val")
# Image ids are SPLIT_INDEX * ID_STRIDE + index + 1: unique across splits, and an image's id (hence
# its file name) does not depend on the sizes of the other splits.
ID_STRIDE = 1_000_000
PARAMS_FILE = "shapes_params.json"
FORMAT_VERSION = 2  # bump when the drawing or the captions change, so old folders are not reused

_NUMBERS = ("zero", "one", "two", "three", "four")
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


# ----------------------------------------------------------------------------------------------
# Geometry: the meaning of the spatial words.

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


# ----------------------------------------------------------------------------------------------
# Sampling a scene.

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


# ----------------------------------------------------------------------------------------------
# Drawing.

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


# ----------------------------------------------------------------------------------------------
# Captions.

def _article(phrase: str) -> str:
    """``"orange star" -> "an orange star"``, ``"red star" -> "a red star"``."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _plural(noun: str, count: int) -> str:
    return noun if count == 1 else noun + "s"


def _join(items: list[str]) -> str:
    """``["a", "b", "c"] -> "a, b and c"``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _phrase(o: SceneObject, detail: tuple[str, ...]) -> str:
    """``detail`` picks the words: ``("size", "colour", "shape") -> "small red circle"``,
    ``("colour",) -> "red shape"``."""
    words = [o.size] if "size" in detail else []
    words += [o.colour] if "colour" in detail else []
    return " ".join(words + [o.shape if "shape" in detail else "shape"])


# With "a"/"an" any description that fits the object is true, however many others it also fits.
_DETAILS = (("colour", "shape"), ("size", "colour", "shape"), ("shape",), ("size", "shape"), ("colour",))
# With "the" the description must fit one object only; the shortest such one is used.
_UNIQUE_DETAILS = (("shape",), ("colour",), ("colour", "shape"), ("size", "shape"), ("size", "colour"),
                   ("size", "colour", "shape"))


def _fits(o: SceneObject, ref: SceneObject, detail: tuple[str, ...]) -> bool:
    return all(getattr(o, attr) == getattr(ref, attr) for attr in detail)


def _unique_detail(o: SceneObject, scene: Scene) -> tuple[str, ...] | None:
    """The shortest description that fits ``o`` and no other object (``None`` for identical twins)."""
    for detail in _UNIQUE_DETAILS:
        if sum(_fits(other, o, detail) for other in scene.objects) == 1:
            return detail
    return None


def _inventory(counts: Counter, noun: Callable[[str, int], str], numbers: bool) -> list[str]:
    """``Counter({"red": 2, "blue": 1})`` -> ``["two red shapes", "one blue shape"]``: largest groups
    first, ties alphabetical; a group of one is "one ..." with ``numbers``, else "a ..."/"an ..."."""
    groups = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [f"{_NUMBERS[count]} {noun(key, count)}" if numbers or count > 1 else _article(noun(key, count))
            for key, count in groups]


def _inventory_captions(items: list[str], scene: Scene) -> list[str]:
    """Sentences around an inventory; "there is"/"there are" only where the agreement is natural."""
    text = _join(items)
    captions = [f"{text} in the picture"]
    if len(text.split()) <= 10:
        captions.append(f"{text} on a {BACKGROUNDS[scene.background.kind]} background")
    if not items[0].startswith(("a ", "an ", "one ")):
        captions.append(f"there are {text}")
    elif len(items) == 1:
        captions.append(f"there is {text}")
    return captions


def _count_captions(scene: Scene, rng: random.Random) -> list[str]:
    n, bg = len(scene.objects), BACKGROUNDS[scene.background.kind]
    if n == 1:
        return [f"a single shape on a {bg} background", "there is only one shape in the picture",
                "an image with just one object"]
    word = _NUMBERS[n]
    return [f"{word} shapes on a {bg} background", f"there are {word} shapes in the picture",
            f"an image with {word} objects", f"a picture of {word} shapes"]


def _colour_captions(scene: Scene, rng: random.Random) -> list[str]:
    counts = Counter(o.colour for o in scene.objects)
    return _inventory_captions(_inventory(counts, lambda c, k: f"{c} {_plural('shape', k)}", True), scene)


def _shape_captions(scene: Scene, rng: random.Random) -> list[str]:
    return _inventory_captions(_inventory(Counter(o.shape for o in scene.objects), _plural, False), scene)


def _size_captions(scene: Scene, rng: random.Random) -> list[str]:
    counts = Counter(o.size for o in scene.objects)
    captions = _inventory_captions(_inventory(counts, lambda s, k: f"{s} {_plural('shape', k)}", True), scene)
    if len(scene.objects) > 1 and len(counts) == 1:
        captions.append(f"all the shapes are {scene.objects[0].size}")
    return captions


def _list_captions(scene: Scene, rng: random.Random) -> list[str]:
    # Three or four fully described objects would make captions of 16 words or more; drop the sizes then.
    detail = ("colour", "shape") if len(scene.objects) >= 3 else ("size", "colour", "shape")
    # Listed from left to right, so that the order of the words is something the image shows.
    text = _join([_article(_phrase(o, detail)) for o in sorted(scene.objects, key=lambda o: o.cx)])
    captions = [text, f"a picture of {text}", f"{text} in the picture"]
    if len(scene.objects) <= 2:
        captions.append(f"{text} on a {BACKGROUNDS[scene.background.kind]} background")
    return captions


def _single_captions(scene: Scene, rng: random.Random) -> list[str]:
    o = rng.choice(scene.objects)
    np_ = _article(_phrase(o, rng.choice(_DETAILS)))
    return [f"there is {np_} in the picture", f"the picture shows {np_}",
            f"{np_} on a {BACKGROUNDS[scene.background.kind]} background"]


def _position_captions(scene: Scene, rng: random.Random) -> list[str]:
    placed = [(o, regions(o, scene.image_size)) for o in scene.objects]
    placed = [(o, where) for o, where in placed if where]
    if not placed:
        return []
    o, where = rng.choice(placed)
    region = rng.choice(where)
    np_ = _article(_phrase(o, rng.choice(_DETAILS)))
    captions = [f"there is {np_} {region}", f"{np_} {region}"]
    unique = _unique_detail(o, scene)
    if unique is not None:
        captions.append(f"the {_phrase(o, unique)} is {region}")
    return captions


def _relation_captions(scene: Scene, rng: random.Random) -> list[str]:
    pairs = [(a, b, rel) for a in scene.objects for b in scene.objects if a is not b for rel in relations(a, b)]
    if not pairs:
        return []
    a, b, rel = rng.choice(pairs)
    np_a, np_b = (_article(_phrase(o, rng.choice(_DETAILS))) for o in (a, b))
    captions = [f"{np_a} {rel} {np_b}", f"there is {np_a} {rel} {np_b}"]
    ua, ub = _unique_detail(a, scene), _unique_detail(b, scene)
    if ua is not None and ub is not None:
        captions.append(f"the {_phrase(a, ua)} is {rel} the {_phrase(b, ub)}")
    return captions


def _attribute_captions(scene: Scene, rng: random.Random) -> list[str]:
    """Captions that bind an attribute to an object, e.g. "the circle is red", "all the shapes are stars"."""
    captions = []
    for o in scene.objects:
        unique = _unique_detail(o, scene)
        if unique is None:
            continue
        subject = f"the {_phrase(o, unique)} is"
        if "colour" not in unique:
            captions.append(f"{subject} {o.colour}")
        if "size" not in unique:
            captions.append(f"{subject} {o.size}")
        if "shape" not in unique:
            captions.append(f"{subject} {_article(o.shape)}")
    if len(scene.objects) > 1:
        every = "both shapes are" if len(scene.objects) == 2 else "all the shapes are"
        if len({o.colour for o in scene.objects}) == 1:
            captions.append(f"{every} {scene.objects[0].colour}")
        if len({o.shape for o in scene.objects}) == 1:
            captions.append(f"{every} {scene.objects[0].shape}s")
    return captions


# Each family maps (scene, rng) to candidate captions (lower case, no full stop); not all need the rng.
_FAMILIES = (_count_captions, _colour_captions, _shape_captions, _size_captions, _list_captions,
             _single_captions, _position_captions, _relation_captions, _attribute_captions)


# Captions of every image that describe the whole scene, as COCO's annotators do: two wordings of
# the list of all objects. Without this anchor the five captions would each describe a different
# aspect, no two would share wording, and BLEU against them would reward a generic guess as much as
# a caption that looks at the image.
WHOLE_SCENE_CAPTIONS = 2


def describe_scene(scene: Scene, rng: random.Random, n: int = CAPTIONS_PER_IMAGE) -> list[str]:
    """``n`` different true captions of ``scene``, as sentences ("A red circle above a blue square.").

    The first ``WHOLE_SCENE_CAPTIONS`` list every object (two wordings). Then every caption family
    (counts, colours, shapes, sizes, one object, a position, a relation between two objects, an
    attribute) proposes candidates; families are visited in random order and each gives one caption
    per round, so the remaining captions of an image usually come from different families.
    """
    whole = _list_captions(scene, rng)
    chosen: list[str] = [whole.pop(rng.randrange(len(whole))) for _ in range(WHOLE_SCENE_CAPTIONS)]
    families = [family(scene, rng) for family in _FAMILIES if family is not _list_captions]
    rng.shuffle(families)
    while len(chosen) < n and any(families):
        for candidates in families:
            if candidates and len(chosen) < n:
                text = candidates.pop(rng.randrange(len(candidates)))
                if text not in chosen:
                    chosen.append(text)
    if len(chosen) < n:
        raise RuntimeError(f"only {len(chosen)} distinct captions for {scene}")
    return [text[0].upper() + text[1:] + "." for text in chosen]


# ----------------------------------------------------------------------------------------------
# Per-image determinism: everything about image `index` of `split` comes from its own rng.

def image_id_for(split: str, index: int) -> int:
    """``image_id_for("val", 0) -> 1000001``: unique across splits, 1-based like COCO's."""
    return SPLITS.index(split) * ID_STRIDE + index + 1


def scene_for(seed: int, split: str, index: int, image_size: int) -> Scene:
    """The scene of image ``index`` of ``split`` (a pure function of its arguments)."""
    return sample_scene(random.Random(f"shapes/scene/{seed}/{split}/{index}"), image_size)


def _caption_rng(seed: int, split: str, index: int) -> random.Random:
    # A stream of its own, so that changing the captions never changes the images.
    return random.Random(f"shapes/captions/{seed}/{split}/{index}")


def captions_for(seed: int, split: str, index: int, image_size: int) -> list[str]:
    """The five captions of image ``index`` of ``split`` (a pure function of its arguments)."""
    return describe_scene(scene_for(seed, split, index, image_size), _caption_rng(seed, split, index))


# ----------------------------------------------------------------------------------------------
# Writing the COCO layout.

def _info(seed: int, image_size: int) -> dict:
    # A fixed date: the files must be byte-identical for the same seed.
    return {"description": f"Synthetic shapes dataset (seed {seed}, {image_size} px) in the COCO 2017 layout",
            "url": "", "version": str(FORMAT_VERSION), "year": 2017, "contributor": "captioner.shapes",
            "date_created": "2017/09/01"}


_LICENSES = [{"id": 1, "name": "Generated by captioner.shapes; free to use", "url": ""}]


def _check_params(root: Path, seed: int, image_size: int) -> None:
    """Refuse to mix images of different seeds, sizes or generator versions in one folder."""
    params = {"format_version": FORMAT_VERSION, "seed": seed, "image_size": image_size}
    stamp = root / PARAMS_FILE
    if stamp.exists():
        found = json.loads(stamp.read_text())
        if found != params:
            raise ValueError(f"{root} holds a shapes dataset made with {found}, not {params}; "
                             "choose another folder or delete this one")
        return
    existing = [name for name in [f"{s}2017" for s in SPLITS] + ["annotations"] if (root / name).exists()]
    if existing:
        raise ValueError(f"{root} already has {', '.join(existing)} but no {PARAMS_FILE}: it is not a shapes "
                         "dataset folder (a COCO copy?); choose another folder")
    atomic_write_bytes(stamp, json.dumps(params).encode())


def generate_shapes_dataset(root: str | Path, n_train: int = 4000, n_val: int = 500, n_test: int = 500,
                            n_unlabeled: int = 0, image_size: int = 64, seed: int = 0,
                            progress: Callable[[int], object] | None = None) -> dict[str, int]:
    """Write the shapes dataset under ``root`` in the COCO 2017 layout; returns images per split.

    Layout: ``{train,val,test}2017/*.jpg`` (and ``unlabeled2017/`` when ``n_unlabeled > 0``),
    named ``f"{image_id:012d}.jpg"``; ``annotations/captions_{train,val}2017.json`` (COCO schema:
    ``info, licenses, images[{id, file_name, width, height, ...}], annotations[{id, image_id,
    caption}]``; caption ``id = 10 * image_id + k``); ``annotations/image_info_test2017.json``
    (and ``image_info_unlabeled2017.json``), images only. Plus ``shapes_params.json`` recording
    the seed and size, so that a rerun with other ones is refused instead of mixing images.

    Each file is written under a temporary name and renamed when complete, so an image that exists
    is complete: a rerun skips it and draws only what is missing. ``progress(1)`` is called per image.

    Example::

        >>> generate_shapes_dataset("data/shapes", n_train=8, n_val=2, n_test=2)   # doctest: +SKIP
        {'train': 8, 'val': 2, 'test': 2, 'unlabeled': 0}
    """
    counts = {"train": n_train, "val": n_val, "test": n_test, "unlabeled": n_unlabeled}
    for split, n in counts.items():
        if not isinstance(n, int) or not 0 <= n < ID_STRIDE:
            raise ValueError(f"n_{split} must be an integer in [0, {ID_STRIDE}), got {n!r}")
    if not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size must be an integer >= 32 (smaller shapes are unreadable), got {image_size!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _check_params(root, seed, image_size)
    (root / "annotations").mkdir(exist_ok=True)
    for split, n in counts.items():
        if split == "unlabeled" and n == 0:
            continue
        image_dir = root / f"{split}2017"
        image_dir.mkdir(exist_ok=True)
        images, annotations = [], []
        for index in range(n):
            image_id = image_id_for(split, index)
            file_name = f"{image_id:012d}.jpg"
            scene = scene_for(seed, split, index, image_size)
            if not (image_dir / file_name).exists():
                # No fsync per image: thousands of fsyncs would dominate the run, and the rename
                # already guarantees that an interrupted run leaves no half-written image.
                atomic_write_bytes(image_dir / file_name, encode_jpeg(render_scene(scene)), fsync=False)
            images.append({"license": 1, "file_name": file_name, "coco_url": "", "height": image_size,
                           "width": image_size, "date_captured": "2017-09-01 00:00:00", "flickr_url": "",
                           "id": image_id})
            if split in CAPTIONED_SPLITS:
                for k, caption in enumerate(describe_scene(scene, _caption_rng(seed, split, index))):
                    annotations.append({"image_id": image_id, "id": 10 * image_id + k, "caption": caption})
            if progress is not None:
                progress(1)
        document = {"info": _info(seed, image_size), "licenses": _LICENSES, "images": images}
        if split in CAPTIONED_SPLITS:
            document["annotations"] = annotations
            name = f"captions_{split}2017.json"
        else:
            name = f"image_info_{split}2017.json"
        atomic_write_bytes(root / "annotations" / name, json.dumps(document).encode())
    return counts

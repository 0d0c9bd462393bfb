"""Writing the captions of a shapes scene: five different true sentences per image.

:func:`describe_scene` picks caption *families* (counts, colours, shapes, sizes, lists, positions,
relations, attributes and whole-scene descriptions) and writes each from the scene description, never
from pixels; the words mean exactly what ``shapes_scene.py`` defines. :func:`captions_for` gives an
image's captions from ``(seed, split, index, image_size)``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

from captioner.data.shapes_scene import (
    BACKGROUNDS,
    Scene,
    SceneObject,
    regions,
    relations,
    scene_for,
)

CAPTIONS_PER_IMAGE = 5


_NUMBERS = ("zero", "one", "two", "three", "four")


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


def caption_rng(seed: int, split: str, index: int) -> random.Random:
    # A stream of its own, so that changing the captions never changes the images.
    return random.Random(f"shapes/captions/{seed}/{split}/{index}")


def captions_for(seed: int, split: str, index: int, image_size: int) -> list[str]:
    """The five captions of image ``index`` of ``split`` (a pure function of its arguments)."""
    return describe_scene(scene_for(seed, split, index, image_size), caption_rng(seed, split, index))

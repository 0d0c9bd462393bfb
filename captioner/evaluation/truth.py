"""Is a shapes caption true? Its claims, checked against the scene the generator drew.

BLEU and CIDEr-D count the words a caption shares with the references; on the shapes data the
project can do better and check what the caption *says*, because it generated every scene and
defined every word (``captioner/data/shapes_scene.py``). The scene is not read back from the
references: it is recomputed from the dataset's seed (:func:`shapes_scenes`).

A caption is parsed into statements (``shapes_parser.py``), and each statement gives one or more
*claims* of a kind:

- ``count``: exactly n objects fit ("two red shapes", "three shapes", "both shapes are ...");
- ``object``: at least one fits ("a red circle"), or exactly one ("the red circle");
- ``colour``, ``shape``, ``size``: an object has it ("the circle is red", "all the shapes are small",
  and each object of a whole-scene list: "a red circle and a blue square" says there are exactly two
  objects, the one on the left red and a circle, the other blue and a square);
- ``position`` ("a red circle on the left"), ``relation`` ("the star is above the square"),
  ``background`` ("on a speckled background").

A whole-scene list names the objects from left to right, where "left of" means what it means
everywhere in the project: wholly to the left (:func:`~captioner.data.shapes_scene.is_left_of`). Two
objects that overlap along x, one above the other, have no left-to-right order, so the list may name
them either way round (:func:`list_alignment`); the generator happens to write them by their centres.

A claim about "the X" is false when X does not single out one object. A caption is *true in full*
when it was parsed and all its claims hold; a caption the parser refuses counts as not true, and
its claims are not counted (there are none to count), so :func:`truth_scores` reports the
unparsed share beside the claims.

>>> from captioner.data.shapes_scene import scene_for
>>> scene = scene_for(seed=0, split="train", index=0, image_size=64)  # a small green triangle, a small red diamond
>>> [(c.kind, c.holds) for c in check_caption("The diamond is above the triangle.", scene).claims]
[('object', True), ('object', True), ('relation', True)]
>>> check_caption("Two green shapes.", scene).true, check_caption("Two green.", scene).true
(False, None)
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from captioner.data.shapes import PARAMS_FILE
from captioner.data.shapes_captions import captions_for
from captioner.data.shapes_scene import (
    ID_STRIDE,
    SPLITS,
    Scene,
    SceneObject,
    is_left_of,
    regions,
    relations,
    scene_for,
)
from captioner.evaluation.shapes_parser import (
    Exists,
    HasAttribute,
    InRegion,
    NounPhrase,
    OnBackground,
    Related,
    SceneList,
    Statement,
    UnparsedCaption,
    parse_caption,
)

KINDS = ("count", "object", "colour", "shape", "size", "position", "relation", "background")
LIST_ATTRIBUTES = ("colour", "shape")  # scored object by object for whole-scene captions
N_UNPARSED_EXAMPLES = 5  # refused captions quoted in the scores


@dataclass(frozen=True)
class Claim:
    """One thing a caption says: its ``kind`` (one of KINDS), in words, and whether the scene bears it out."""

    kind: str
    says: str
    holds: bool


@dataclass(frozen=True)
class Verdict:
    """A caption checked: its claims, or the parser's ``refusal`` (then ``claims`` is None)."""

    claims: tuple[Claim, ...] | None
    refusal: str | None = None
    scene_list: SceneList | None = None  # set for whole-scene captions

    @property
    def true(self) -> bool | None:
        """All claims hold; None when the caption was not parsed."""
        return None if self.claims is None else all(c.holds for c in self.claims)


def _referents(phrase: NounPhrase, scene: Scene) -> list[SceneObject]:
    """The objects a phrase may be about: every object it fits, and for "the X" the one X or none."""
    fitting = [o for o in scene.objects if phrase.description.fits(o)]
    return fitting if not phrase.definite or len(fitting) == 1 else []


def left_to_right_orders(objects: Sequence[SceneObject]) -> list[tuple[SceneObject, ...]]:
    """Every order of ``objects`` that lists no object after one it lies wholly to the left of.

    The order by centres comes first. Objects that overlap along x can come either way round:
    three objects side by side have one order; two of them one above the other, two.
    """
    by_centre = sorted(objects, key=lambda o: o.cx)
    return [order for order in itertools.permutations(by_centre)
            if not any(is_left_of(later, earlier)
                       for i, earlier in enumerate(order) for later in order[i + 1:])]


def _matches(items: Sequence, order: Sequence[SceneObject]) -> int:
    """How many of the items' attributes hold when item k is read as ``order[k]``."""
    return sum(getattr(item, attribute) == getattr(obj, attribute)
               for item, obj in zip(items, order)
               for attribute in ("size", "colour", "shape") if getattr(item, attribute) is not None)


def list_alignment(items: Sequence, scene: Scene) -> list[SceneObject | None]:
    """The object each item of a whole-scene list is about (None past the last object).

    Among the left-to-right orders of the scene (:func:`left_to_right_orders`), the one under which
    most of the items' attributes hold, the order by centres on a tie. A list that names two objects
    one above the other in either order is then true, one that swaps two objects side by side is not.
    """
    order = max(left_to_right_orders(scene.objects), key=lambda order: _matches(items, order))  # first of the best
    return [order[k] if k < len(order) else None for k in range(len(items))]


def _list_claims(items: Sequence, scene: Scene) -> list[Claim]:
    """A whole-scene list: the number of objects, and item k against the k-th object from the left."""
    aligned = list_alignment(items, scene)
    claims = [Claim("count", f"exactly {len(items)} shapes", len(items) == len(scene.objects))]
    for k, (item, obj) in enumerate(zip(items, aligned)):
        for attribute in ("size", "colour", "shape"):
            value = getattr(item, attribute)
            if value is not None:
                claims.append(Claim(attribute, f"shape {k + 1} from the left is {value}",
                                    obj is not None and getattr(obj, attribute) == value))
    return claims


def claims_of(statement: Statement, scene: Scene) -> list[Claim]:
    """The claims of one statement, each checked against ``scene``."""
    size = scene.image_size
    match statement:
        case Exists(phrase):
            n = len([o for o in scene.objects if phrase.description.fits(o)])
            if phrase.definite:
                return [Claim("object", f"{phrase} (exactly one fits)", n == 1)]
            if phrase.count is None:
                return [Claim("object", str(phrase), n >= 1)]
            return [Claim("count", str(phrase), n == phrase.count)]
        case HasAttribute(subject, attribute, value):
            objects = scene.objects if subject is None else _referents(subject, scene)
            who = "every shape" if subject is None else str(subject)
            return [Claim(attribute, f"{who} is {value}",
                          bool(objects) and all(getattr(o, attribute) == value for o in objects))]
        case InRegion(phrase, region):
            return [Claim("position", f"{phrase} {region}",
                          any(region in regions(o, size) for o in _referents(phrase, scene)))]
        case Related(a, relation, b):
            holds = any(x is not y and relation in relations(x, y)
                        for x in _referents(a, scene) for y in _referents(b, scene))
            return [Claim("relation", f"{a} {relation} {b}", holds)]
        case OnBackground(kind):
            return [Claim("background", f"a {kind} background", scene.background.kind == kind)]
        case SceneList(items):
            return _list_claims(items, scene)
    raise TypeError(f"not a statement: {statement!r}")


def check_caption(text: str, scene: Scene) -> Verdict:
    """Parse ``text`` and check every claim against ``scene``; a refusal is a Verdict too."""
    try:
        statements = parse_caption(text)
    except UnparsedCaption as e:
        return Verdict(None, refusal=str(e))
    claims = tuple(claim for statement in statements for claim in claims_of(statement, scene))
    scene_list = next((s for s in statements if isinstance(s, SceneList)), None)
    return Verdict(claims, scene_list=scene_list)


def _share(hits: int, total: int) -> float | None:
    return hits / total if total else None


def truth_scores(captions: Mapping[int, str], scenes: Mapping[int, Scene]) -> dict:
    """Score ``{image_id: caption}`` against ``{image_id: scene}``; returns a JSON-ready dict.

    ``claims_true``: the share of the parsed captions' claims that hold; ``captions_true``: the share
    of all captions true in full (unparsed ones count as not true); ``unparsed``: the share refused;
    ``by_kind``: claims and the share true per kind; ``whole_scene``: for the captions that list the
    whole scene, the share true in full and the accuracy of the object count and, object by object
    from the left (:func:`list_alignment`), of each attribute (an object the list leaves out, or an
    item with no object, counts as wrong).
    """
    verdicts = {image_id: check_caption(text, scenes[image_id]) for image_id, text in captions.items()}
    claims = [c for v in verdicts.values() if v.claims is not None for c in v.claims]
    refused = {captions[i]: v.refusal for i, v in verdicts.items() if v.claims is None}
    listed = [(v, scenes[i]) for i, v in verdicts.items() if v.scene_list is not None]
    positions = sum(max(len(v.scene_list.items), len(s.objects)) for v, s in listed)
    attribute_hits = {attribute: 0 for attribute in LIST_ATTRIBUTES}
    for verdict, scene in listed:
        for item, obj in zip(verdict.scene_list.items, list_alignment(verdict.scene_list.items, scene)):
            for attribute in LIST_ATTRIBUTES:
                attribute_hits[attribute] += obj is not None and getattr(item, attribute) == getattr(obj, attribute)
    return {
        "n_captions": len(verdicts),
        "claims_true": _share(sum(c.holds for c in claims), len(claims)),
        "captions_true": _share(sum(v.true is True for v in verdicts.values()), len(verdicts)),
        "unparsed": _share(sum(v.claims is None for v in verdicts.values()), len(verdicts)),
        "n_claims": len(claims),
        "by_kind": {kind: {"claims": n, "true": _share(sum(c.holds for c in claims if c.kind == kind), n)}
                    for kind in KINDS if (n := sum(c.kind == kind for c in claims))},
        "whole_scene": {
            "n_captions": len(listed),
            "true": _share(sum(v.true for v, _ in listed), len(listed)),
            "count": _share(sum(len(v.scene_list.items) == len(s.objects) for v, s in listed), len(listed)),
            **{f"{attribute}s": _share(attribute_hits[attribute], positions) for attribute in LIST_ATTRIBUTES},
        },
        "unparsed_examples": [{"caption": text, "refusal": why} for text, why in refused.items()][:N_UNPARSED_EXAMPLES],
    }


def split_and_index(image_id: int) -> tuple[str, int]:
    """The inverse of ``shapes_scene.image_id_for``: ``1000001 -> ("val", 0)``."""
    split, index = divmod(image_id - 1, ID_STRIDE)
    if image_id < 1 or split >= len(SPLITS):
        raise ValueError(f"{image_id} is not a shapes image id")
    return SPLITS[split], index


def shapes_scenes(processed_dir: str | Path, image_ids: Sequence[int],
                  references: Mapping[int, Sequence[str]] | None = None) -> dict[int, Scene] | None:
    """The scenes of ``image_ids`` of a processed folder, or None when it is not a shapes dataset.

    The seed and image size come from ``shapes_params.json`` in the raw folder that process_coco.py
    generated (``<data-dir>/raw``, beside ``processed/``, else the ``coco_dir`` its meta.json names).
    ``references`` (``{image_id: captions}``) are checked to be the captions the generator writes for
    those scenes, so a wrong seed or folder is an error rather than a silently wrong score.
    """
    processed_dir = Path(processed_dir)
    meta = json.loads((processed_dir / "meta.json").read_text(encoding="utf-8"))
    if meta.get("source") != "shapes":
        return None
    candidates = [processed_dir.parent / "raw", Path(meta.get("coco_dir", ""))]
    params_path = next((folder / PARAMS_FILE for folder in candidates if (folder / PARAMS_FILE).is_file()), None)
    if params_path is None:
        raise FileNotFoundError(f"{PARAMS_FILE} not found in {' or '.join(str(c) for c in candidates)}: the truth "
                                f"score needs the shapes dataset's seed; rerun process_coco.py to regenerate it")
    params = json.loads(params_path.read_text(encoding="utf-8"))
    seed, image_size = params["seed"], params["image_size"]
    scenes = {int(i): scene_for(seed, *split_and_index(int(i)), image_size) for i in image_ids}
    for image_id, refs in (references or {}).items():
        if refs and list(refs) != captions_for(seed, *split_and_index(image_id), image_size):
            raise ValueError(f"the references of image {image_id} are not the captions of the scene that {params_path} "
                             f"(seed {seed}, {image_size} px) describes: {processed_dir} was made from other data")
    return scenes

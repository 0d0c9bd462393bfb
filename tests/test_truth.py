"""The truth score: references are true, swapped words are caught, the blind baseline scores what
brute force says, and text outside the grammar is refused."""

import doctest
import itertools
import json
import re

import pytest

from captioner.data import shapes_scene
from captioner.data.shapes import generate_shapes_dataset
from captioner.data.shapes_captions import captions_for
from captioner.data.shapes_scene import (
    COLOURS,
    SHAPES,
    SIZES,
    Background,
    Scene,
    SceneObject,
    image_id_for,
    scene_for,
)
from captioner.evaluation import shapes_parser, truth
from captioner.evaluation.blind_baseline import choose_blind_caption
from captioner.evaluation.shapes_parser import REGIONS, RELATIONS, SceneList, UnparsedCaption, parse_caption
from captioner.evaluation.truth import check_caption, shapes_scenes, split_and_index, truth_scores

SEED, SIZE = 0, 64
INDICES = range(300)


@pytest.fixture(scope="module")
def references():
    """[(caption, scene)] for the five references of 300 train and 300 val images."""
    pairs = []
    for split in ("train", "val"):
        for index in INDICES:
            scene = scene_for(SEED, split, index, SIZE)
            pairs += [(caption, scene) for caption in captions_for(SEED, split, index, SIZE)]
    return pairs


def word_swaps(caption, old, new):
    """``caption`` with each single occurrence of the word ``old`` replaced by ``new``, one at a time."""
    words = caption.rstrip(".").split(" ")
    return [" ".join(words[:i] + [new] + words[i + 1:]) for i, w in enumerate(words) if w.lower() == old]


def test_docstrings():
    for module in (shapes_parser, truth):
        failed, attempted = doctest.testmod(module)
        assert attempted >= 2 and failed == 0


def test_every_reference_is_true(references):
    scores = truth_scores({i: c for i, (c, _) in enumerate(references)}, dict(enumerate(s for _, s in references)))
    assert scores["unparsed"] == 0 and scores["claims_true"] == 1 and scores["captions_true"] == 1
    assert scores["n_claims"] > 3 * len(references)
    assert set(scores["by_kind"]) == set(truth.KINDS)  # every kind of claim was made and checked
    whole = scores["whole_scene"]
    assert whole["n_captions"] > len(references) / 4  # two whole-scene captions per image of 2+ objects
    assert whole["true"] == whole["count"] == whole["colours"] == whole["shapes"] == 1


def test_a_generated_split_is_true_against_the_scenes_of_its_seed(tmp_path):
    raw, processed = tmp_path / "raw", tmp_path / "processed"
    generate_shapes_dataset(raw, n_train=2, n_val=40, n_test=3, image_size=48, seed=7)
    processed.mkdir()
    (processed / "meta.json").write_text(json.dumps({"source": "shapes", "coco_dir": "elsewhere"}))
    document = json.loads((raw / "annotations" / "captions_val2017.json").read_text())
    refs = {}
    for a in document["annotations"]:
        refs.setdefault(a["image_id"], []).append(a["caption"])
    scenes = shapes_scenes(processed, list(refs), refs)
    assert scenes[image_id_for("val", 5)] == scene_for(7, "val", 5, 48)
    for caption_index in range(5):
        scores = truth_scores({i: captions[caption_index] for i, captions in refs.items()}, scenes)
        assert scores["captions_true"] == 1 and scores["n_captions"] == 40

    (raw / "shapes_params.json").write_text(json.dumps({"format_version": 2, "seed": 8, "image_size": 48}))
    with pytest.raises(ValueError, match="seed 8"):  # the references say: not seed 8's scenes
        shapes_scenes(processed, list(refs), refs)
    (raw / "shapes_params.json").unlink()
    with pytest.raises(FileNotFoundError, match="shapes_params.json"):
        shapes_scenes(processed, list(refs))
    (processed / "meta.json").write_text(json.dumps({"source": "coco", "coco_dir": str(raw)}))
    assert shapes_scenes(processed, list(refs)) is None  # COCO: no scenes, no truth score


def test_image_ids_map_back_to_split_and_index():
    for split in shapes_scene.SPLITS:
        for index in (0, 1, 499, 999_998):
            assert split_and_index(image_id_for(split, index)) == (split, index)
    for bad in (0, -3, len(shapes_scene.SPLITS) * shapes_scene.ID_STRIDE + 1):
        with pytest.raises(ValueError):
            split_and_index(bad)


def test_the_parser_knows_the_generators_phrases():
    assert set(REGIONS) == set(shapes_scene._REGIONS) and set(RELATIONS) == set(shapes_scene._RELATIONS)


def test_an_absent_colour_shape_or_size_makes_a_reference_false(references):
    # Every colour, shape or size word of a caption claims an object that has it; swapped for one
    # that no object of the scene has, the caption cannot be true.
    caught = 0
    for caption, scene in references:
        for attribute, values in (("colour", COLOURS), ("shape", SHAPES), ("size", SIZES)):
            present = {getattr(o, attribute) for o in scene.objects}
            absent = sorted(set(values) - present)
            for old in present:
                forms = [(old, absent[0])] if absent else []
                if attribute == "shape" and absent:
                    forms.append((old + "s", absent[0] + "s"))
                for old_word, new_word in forms:
                    for mutated in word_swaps(caption, old_word, new_word):
                        verdict = check_caption(mutated, scene)
                        assert verdict.true is False, (caption, mutated, verdict)
                        caught += 1
    assert caught > 2 * len(references)


def test_a_wrong_count_makes_a_reference_false(references):
    caught = 0
    for caption, scene in references:
        for old, new in (("two", "three"), ("three", "four"), ("four", "two")):
            for mutated in word_swaps(caption, old, new):
                assert check_caption(mutated, scene).true is False, (caption, mutated)
                caught += 1
    assert caught > len(references) / 10


def may_be_listed_as(descriptions, scene):
    """Brute force: a whole-scene list of ``descriptions`` ((size or None, colour, shape), in the
    order listed) is true of ``scene`` when it names every object and some arrangement of the objects
    fits the descriptions one by one without putting an object after one that lies wholly to its
    left (the project's "to the left of")."""
    if len(descriptions) != len(scene.objects):
        return False
    for arrangement in itertools.permutations(scene.objects):
        fits = all((size is None or size == o.size) and colour == o.colour and shape == o.shape
                   for (size, colour, shape), o in zip(descriptions, arrangement))
        leftward = any(wholly_left(later, earlier)
                       for i, earlier in enumerate(arrangement) for later in arrangement[i + 1:])
        if fits and not leftward:
            return True
    return False


def test_a_whole_scene_list_in_another_order_is_false_unless_the_objects_overlap_along_x(references):
    caught, either_way = 0, 0
    for caption, scene in references:
        statements = parse_caption(caption)
        if not isinstance(statements[0], SceneList):
            continue
        items = statements[0].items  # from the left
        backwards = [("an " if str(d)[0] in "aeiou" else "a ") + str(d) for d in reversed(items)]
        mutated = ", ".join(backwards[:-1]) + " and " + backwards[-1]
        expected = may_be_listed_as([(d.size, d.colour, d.shape) for d in reversed(items)], scene)
        assert check_caption(mutated, scene).true is expected, (caption, mutated)
        caught += not expected
        either_way += expected and [str(d) for d in items] != [str(d) for d in reversed(items)]
    assert caught > 500
    assert either_way > 5  # objects one above the other occur, and either order is true of them


# ---- relations and positions, against brute force by the docstring's formulas ------------------

def fits(words, obj):
    return all(w in (obj.size, obj.colour, obj.shape, "shape") for w in words.split())


def wholly_left(a, b):
    return a.cx + a.radius < b.cx - b.radius


def wholly_above(a, b):
    return a.cy + a.radius < b.cy - b.radius


BRUTE_RELATIONS = {"to the left of": wholly_left, "to the right of": lambda a, b: wholly_left(b, a),
                   "above": wholly_above, "below": lambda a, b: wholly_above(b, a)}


def in_region(o, region, s):
    left, right = o.cx + o.radius < s / 2, o.cx - o.radius > s / 2
    top, bottom = o.cy + o.radius < s / 2, o.cy - o.radius > s / 2
    middle = abs(o.cx - s / 2) < 0.1 * s and abs(o.cy - s / 2) < 0.1 * s
    return {"on the left": left, "on the right": right, "at the top": top, "at the bottom": bottom,
            "in the top left": top and left, "in the top right": top and right, "in the bottom left": bottom and left,
            "in the bottom right": bottom and right, "in the middle": middle}[region]


def brute_force(caption, scene):
    """True/False for a relation or position caption, computed without the parser; None for others."""
    text = caption.lower().rstrip(".")
    rel, reg = "|".join(BRUTE_RELATIONS), "|".join(REGIONS)
    if m := re.fullmatch(rf"(?:there is )?an? (.+?) ({rel}) an? (.+)", text):
        return any(a is not b and BRUTE_RELATIONS[m[2]](a, b) for a in scene.objects for b in scene.objects
                   if fits(m[1], a) and fits(m[3], b))
    if m := re.fullmatch(rf"the (.+?) is ({rel}) the (.+)", text):
        a = [o for o in scene.objects if fits(m[1], o)]
        b = [o for o in scene.objects if fits(m[3], o)]
        return len(a) == 1 and len(b) == 1 and BRUTE_RELATIONS[m[2]](a[0], b[0])
    if m := re.fullmatch(rf"(?:there is )?an? (.+?) ({reg})", text):
        return any(fits(m[1], o) and in_region(o, m[2], scene.image_size) for o in scene.objects)
    if m := re.fullmatch(rf"the (.+?) is ({reg})", text):
        a = [o for o in scene.objects if fits(m[1], o)]
        return len(a) == 1 and in_region(a[0], m[2], scene.image_size)
    return None


OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below",
            "below": "above"}
PLACE = re.compile(r"\b(" + "|".join(sorted([*REGIONS, *RELATIONS], key=len, reverse=True)) + r")\b")


def test_every_other_relation_or_position_agrees_with_brute_force(references):
    checked = false = 0
    for caption, scene in references:
        text = caption.lower().rstrip(".")
        assert brute_force(text, scene) in (None, True)
        for match in PLACE.finditer(text):
            group = RELATIONS if match[1] in RELATIONS else REGIONS
            for new in group:
                mutated = text[: match.start()] + new + text[match.end():]
                expected = brute_force(mutated, scene)
                assert expected is not None and check_caption(mutated, scene).true is expected, (caption, mutated)
                if text.startswith("the ") and new == OPPOSITE.get(match[1]) and " is " + new + " the " in mutated:
                    assert expected is False  # "the A is left of the B" and "... right of ..." cannot both hold
                checked += 1
                false += not expected
    assert checked > 1000 and false > checked / 2


# ---- the blind baseline -------------------------------------------------------------------------

ADJECTIVES = "|".join([*SIZES, *COLOURS])
INVENTORY_ITEM = re.compile(rf"\b(an?|one|two|three|four) (?:({ADJECTIVES}) )?(\w+?)s?\b")
NUMBER = {"one": 1, "two": 2, "three": 3, "four": 4}


def test_the_blind_baseline_scores_what_brute_force_counts():
    train = [captions_for(SEED, "train", i, SIZE) for i in range(800)]
    caption = choose_blind_caption(train, n_heldout=300).caption
    # The blind caption is an inventory, e.g. "two small shapes and one large shape in the picture" or
    # (here) "a circle a diamond a star and a triangle in the picture": each item claims exactly n
    # objects of a size, colour or shape, or with "a" at least one. Brute force counts them per scene.
    items = INVENTORY_ITEM.findall(caption)
    assert len(items) >= 2 and caption.endswith("in the picture"), caption
    scenes = {image_id_for("val", i): scene_for(SEED, "val", i, SIZE) for i in range(500)}
    claims = []
    for scene in scenes.values():
        counts = [sum(word in ("", o.size, o.colour) and noun in ("shape", o.shape) for o in scene.objects)
                  for _, word, noun in items]
        claims.append([n >= 1 if quantity in ("a", "an") else n == NUMBER[quantity]
                       for (quantity, _, _), n in zip(items, counts)])
    scores = truth_scores(dict.fromkeys(scenes, caption), scenes)
    assert scores["unparsed"] == 0 and scores["n_claims"] == len(items) * len(scenes)
    assert scores["claims_true"] == pytest.approx(sum(map(sum, claims)) / scores["n_claims"])
    assert scores["captions_true"] == pytest.approx(sum(map(all, claims)) / len(scenes))
    assert 0 < scores["captions_true"] < 0.5 and 0.2 < scores["claims_true"] < 0.8  # low: the same for every image
    assert scores["whole_scene"]["n_captions"] == 0 and scores["whole_scene"]["count"] is None


# ---- whole-scene accuracies, by hand --------------------------------------------------------------

def object_at(x, colour, shape, size="small"):
    return SceneObject(shape, colour, size, cx=x, cy=32.0, radius=7.0, rgb=(0, 0, 0))


def test_whole_scene_accuracies_go_object_by_object_from_the_left():
    background = Background("plain", (230, 230, 230), (230, 230, 230), "horizontal", 0.0, 0)
    # drawn right to left on purpose: the captions list them from the left
    scene = Scene(64, background, (object_at(50.0, "blue", "square"), object_at(30.0, "green", "star"),
                                   object_at(10.0, "red", "circle")))
    captions = {
        1: "A red circle, a green star and a blue square.",  # right
        2: "A red circle, a green circle and a blue square.",  # one shape wrong
        3: "A red circle and a green star.",  # the blue square left out: count wrong, 2 of 3 right
        4: "A red circle, a green star, a blue square and a red star.",  # one too many: 3 of 4 right
        5: "Three shapes in the picture.",  # not a whole-scene list
    }
    scores = truth_scores(captions, dict.fromkeys(captions, scene))
    whole = scores["whole_scene"]
    assert whole["n_captions"] == 4 and whole["true"] == 1 / 4 and whole["count"] == 2 / 4
    positions = 3 + 3 + 3 + 4
    assert whole["colours"] == pytest.approx((3 + 3 + 2 + 3) / positions)
    assert whole["shapes"] == pytest.approx((3 + 2 + 2 + 3) / positions)
    assert scores["captions_true"] == 2 / 5


def test_objects_one_above_the_other_may_be_listed_either_way():
    background = Background("plain", (230, 230, 230), (230, 230, 230), "horizontal", 0.0, 0)
    red_circle = SceneObject("circle", "red", "small", cx=20.0, cy=15.0, radius=7.0, rgb=(0, 0, 0))
    blue_square = SceneObject("square", "blue", "small", cx=22.0, cy=45.0, radius=7.0, rgb=(0, 0, 0))  # below it, x overlaps
    scene = Scene(64, background, (object_at(50.0, "green", "star"), blue_square, red_circle))
    captions = {
        1: "A red circle, a blue square and a green star.",  # by centres
        2: "A blue square, a red circle and a green star.",  # the stacked pair the other way round: true too
        3: "A green star, a red circle and a blue square.",  # the star is wholly right of both: false
        4: "A blue square, a red star and a green star.",  # read as the second order: one shape wrong
    }
    verdicts = {i: check_caption(c, scene).true for i, c in captions.items()}
    assert verdicts == {1: True, 2: True, 3: False, 4: False}
    whole = truth_scores(captions, dict.fromkeys(captions, scene))["whole_scene"]
    assert whole["true"] == 2 / 4 and whole["count"] == 1
    # caption 3 at best reads "red circle" as the red circle (the order square, circle, star): 1 of 3
    assert whole["colours"] == pytest.approx((3 + 3 + 1 + 3) / 12)
    assert whole["shapes"] == pytest.approx((3 + 3 + 1 + 2) / 12)


def test_the_needs_exactly_one_object_to_fit():
    background = Background("plain", (230, 230, 230), (230, 230, 230), "horizontal", 0.0, 0)
    scene = Scene(64, background, (object_at(10.0, "red", "circle"), object_at(30.0, "red", "circle"),
                                   object_at(50.0, "blue", "square", "large")))
    verdicts = {text: check_caption(text, scene) for text in (
        "The red circle is on the left.",  # two red circles: "the red circle" refers to none
        "The circle is to the left of the square.",
        "The circle is red.",
        "The square is to the right of the circle.",
        "The blue shape is large.", "The square is on the right.", "A red circle on the left.",
        "A circle to the left of a square.", "Two red circles and one blue square in the picture.")}
    assert [v.true for v in verdicts.values()] == [False] * 4 + [True] * 5
    assert [(c.kind, c.holds) for c in verdicts["The circle is red."].claims] == [("object", False), ("colour", False)]


# ---- what the parser refuses, and how refusals are counted ------------------------------------------

REFUSED = [
    "", ".", "red circle", "a red", "a circle is red", "two circle", "one circles", "the circles are red",
    "a red circle, a blue square",  # a list without "and"
    "a red circle and a blue square on the left",  # a position needs one object
    "a red circle above two blue squares", "a purple dog", "a red circle. a blue square", "a red circle ,",
    "the red circle is the blue square", "a red circle in the picture on a plain background",
    "a red small circle", "all the shapes are star", "both shapes are a circle", "there is",
    "a red circle and a blue square and a green star", "a red circle to the left of",
]


@pytest.mark.parametrize("text", REFUSED)
def test_text_outside_the_grammar_is_refused(text):
    with pytest.raises(UnparsedCaption):
        parse_caption(text)


def test_refused_captions_count_as_not_true_and_add_no_claims():
    scene = scene_for(SEED, "val", 0, SIZE)
    true_caption = captions_for(SEED, "val", 0, SIZE)[0]
    verdict = check_caption("a red circle ,", scene)
    assert verdict.true is None and verdict.claims is None and "found" in verdict.refusal
    alone = truth_scores({1: true_caption}, {1: scene})
    scores = truth_scores({1: true_caption, 2: "a red circle ,", 3: ""}, dict.fromkeys((1, 2, 3), scene))
    assert scores["unparsed"] == 2 / 3 and scores["captions_true"] == 1 / 3
    assert scores["n_claims"] == alone["n_claims"] and scores["claims_true"] == 1
    assert [e["caption"] for e in scores["unparsed_examples"]] == ["a red circle ,", ""]


def test_spacing_case_and_missing_commas_do_not_change_a_verdict(references):
    for caption, scene in references[:500]:
        spaced = re.sub(r"([,.])", r" \1", caption.lower())  # "a red circle , a blue square ."
        bare = re.sub(r"[,.]", "", caption)  # the PTB tokenizer drops punctuation
        expected = check_caption(caption, scene).claims
        assert check_caption(spaced, scene).claims == expected and check_caption(bare, scene).claims == expected

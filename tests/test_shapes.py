"""The shapes dataset: true captions, visible objects, determinism, resume, and the COCO schema."""

import hashlib
import io
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.data.shapes import generate_shapes_dataset
from captioner.data.shapes_captions import captions_for
from captioner.data.shapes_draw import encode_jpeg, render_scene
from captioner.data.shapes_scene import BACKGROUNDS, COLOURS, SHAPES, SIZES, Scene, image_id_for, relations, scene_for

# ------------------------------------------------------------------------------------------------
# An independent reader of the captions: it parses every phrase that makes a claim and checks the
# claim against the scene with the geometry rules documented in captioner/data/shapes_scene.py.

COLOURS = sorted(COLOURS)
SIZES = sorted(SIZES)
NOUNS = {s: s for s in SHAPES} | {s + "s": s for s in SHAPES}
NOUNS |= {w: None for w in ("shape", "shapes", "object", "objects")}
DETS = ("a single", "an", "a", "the", "one", "two", "three", "four", "both")
NUMBER = {"one": 1, "two": 2, "three": 3, "four": 4}
REGIONS = ("in the top left", "in the top right", "in the bottom left", "in the bottom right",
           "on the left", "on the right", "at the top", "at the bottom", "in the middle")
RELS = ("to the left of", "to the right of", "above", "below")
BG_WORDS = {"plain": "plain", "shaded": "gradient", "speckled": "noise"}
VOCAB = set(COLOURS) | set(SIZES) | set(NOUNS) | set(BG_WORDS) | set(" ".join(DETS + REGIONS + RELS).split())
VOCAB |= set("there is are in picture image with just only of on background shows and all".split())

_alt = "|".join
NP = rf"(?<![a-z])(?:{_alt(DETS)}) (?:(?:{_alt(SIZES)}) )?(?:(?:{_alt(COLOURS)}) )?(?:{_alt(NOUNS)})(?![a-z])"
NP_PARTS = re.compile(rf"({_alt(DETS)}) (?:({_alt(SIZES)}) )?(?:({_alt(COLOURS)}) )?({_alt(NOUNS)})")
RELATION = re.compile(rf"(?P<a>{NP}) (?:is )?(?P<rel>{_alt(RELS)}) (?P<b>{NP})")
REGION = re.compile(rf"(?P<a>{NP}) (?:is )?(?P<where>{_alt(REGIONS)})")
PREDICATE = re.compile(rf"(?P<a>{NP}) is (?:an? (?P<shape>{_alt(SHAPES)})|(?P<adj>{_alt(COLOURS + SIZES)}))$")
ALL = re.compile(rf"(?:all the|both) shapes are (?P<w>{_alt(COLOURS + SIZES + [s + 's' for s in SHAPES])})")
BACKGROUND = re.compile(rf"on an? ({_alt(BG_WORDS)}) background")


def referents(np_text, scene):
    """(determiner, plural noun?, objects the noun phrase describes)."""
    det, size, colour, noun = NP_PARTS.fullmatch(np_text).groups()
    objs = [o for o in scene.objects
            if (size is None or o.size == size) and (colour is None or o.colour == colour)
            and (NOUNS[noun] is None or o.shape == NOUNS[noun])]
    return det, noun.endswith("s") and NOUNS[noun] != noun, objs


def left_of(a, b):
    return a.cx + a.radius < b.cx - b.radius


def above(a, b):
    return a.cy + a.radius < b.cy - b.radius


REL_TEST = {"to the left of": left_of, "to the right of": lambda a, b: left_of(b, a),
            "above": above, "below": lambda a, b: above(b, a)}


def in_region(o, where, size):
    half, tests = size / 2, []
    for word in where.split():
        tests.append({"left": o.cx + o.radius < half, "right": o.cx - o.radius > half,
                      "top": o.cy + o.radius < half, "bottom": o.cy - o.radius > half,
                      "middle": abs(o.cx - half) < 0.1 * size and abs(o.cy - half) < 0.1 * size}.get(word, True))
    return all(tests)


def caption_errors(caption, scene):
    """Every false or unchecked claim in ``caption`` about ``scene`` (empty list: all true)."""
    errors = []
    if not (caption[0].isupper() and caption.endswith(".")):
        errors.append("not a sentence")
    text = caption[:-1].lower().replace(",", "")
    words = text.split()
    errors += [f"unknown word {w!r}" for w in words if w not in VOCAB]
    covered = []  # character spans of the text whose claims were checked
    for m in re.finditer(NP, text):
        det, plural, objs = referents(m.group(), scene)
        covered.append(m.span())
        if det in NUMBER and len(objs) != NUMBER[det]:
            errors.append(f"{m.group()!r}: there are {len(objs)}")
        if det in ("a", "an") and not objs:
            errors.append(f"{m.group()!r}: there is none")
        if det == "a single" and len(objs) != 1:
            errors.append(f"{m.group()!r}: there are {len(objs)}")
        if det == "the" and not plural and len(objs) != 1:
            errors.append(f"{m.group()!r}: {len(objs)} objects fit, not exactly one")
        if det == "both" and not (len(objs) == 2 == len(scene.objects)):
            errors.append(f"{m.group()!r}: not two objects")
        if det in ("a", "an") and (det == "an") != (m.group().split()[1][0] in "aeiou"):
            errors.append(f"{m.group()!r}: wrong article")
    for m in RELATION.finditer(text):
        _, _, xs = referents(m["a"], scene)
        _, _, ys = referents(m["b"], scene)
        if not any(x is not y and REL_TEST[m["rel"]](x, y) for x in xs for y in ys):
            errors.append(f"relation {m.group()!r} does not hold")
    for m in REGION.finditer(text):
        _, _, xs = referents(m["a"], scene)
        if not any(in_region(x, m["where"], scene.image_size) for x in xs):
            errors.append(f"position {m.group()!r} does not hold")
    for m in PREDICATE.finditer(text):
        _, _, xs = referents(m["a"], scene)
        covered.append(m.span())
        value = m["shape"] or m["adj"]
        if len(xs) != 1 or value not in (xs[0].shape, xs[0].colour, xs[0].size):
            errors.append(f"attribute {m.group()!r} does not hold")
    for m in ALL.finditer(text):
        covered.append(m.span())
        if not all(m["w"] in (o.colour, o.size, o.shape + "s") for o in scene.objects):
            errors.append(f"{m.group()!r} does not hold")
    for m in BACKGROUND.finditer(text):
        covered.append(m.span())
        if BG_WORDS[m.group(1)] != scene.background.kind:
            errors.append(f"background {m.group(1)!r} but it is {scene.background.kind}")
    # Every word that names a property must sit inside a phrase whose claim was checked above.
    for m in re.finditer(rf"(?<![a-z])({_alt(COLOURS + SIZES + list(NOUNS) + list(BG_WORDS))})(?![a-z])", text):
        if not any(a <= m.start() and m.end() <= b for a, b in covered):
            errors.append(f"unchecked word {m.group()!r}")
    return errors


# ------------------------------------------------------------------------------------------------
# Captions and scenes.

def test_every_caption_is_true_of_its_scene():
    families = Counter()
    for seed in (0, 1):
        for index in range(300):
            scene = scene_for(seed, "train", index, 64)
            captions = captions_for(seed, "train", index, 64)
            assert len(captions) == 5 and len(set(captions)) == 5
            for caption in captions:
                assert caption_errors(caption, scene) == [], (caption, scene)
                families.update(k for k in ("to the left of", "to the right of", "above", "below",
                                            "on the left", "at the top", " is a ", "all the", "background")
                                if k in caption.lower())
    # The checker saw every kind of claim, so the test above really covered them.
    assert all(families[k] >= 10 for k in ("to the left of", "to the right of", "above", "below",
                                          "on the left", "at the top", " is a ", "background")), families
    assert families["all the"] >= 1


def test_checker_rejects_false_captions():
    scene = next(s for s in (scene_for(0, "train", i, 64) for i in range(200))
                 if len(s.objects) == 2 and relations(s.objects[0], s.objects[1])
                 and s.objects[0].colour != s.objects[1].colour)
    a, b = scene.objects
    rel = relations(a, b)[0]
    opposite = {"to the left of": "to the right of", "to the right of": "to the left of",
                "above": "below", "below": "above"}[rel]
    absent = next(c for c in COLOURS if c not in (a.colour, b.colour))
    true_caption = f"A {a.colour} {a.shape} {rel} a {b.colour} {b.shape}."
    assert caption_errors(true_caption, scene) == []
    for false in (f"A {a.colour} {a.shape} {opposite} a {b.colour} {b.shape}.",
                  f"A {absent} {a.shape} in the picture.",
                  "Three shapes on a plain background.",
                  f"Two {a.colour} shapes in the picture.",
                  f"All the shapes are {absent}.",
                  f"The {a.colour} shape is {absent}.",
                  f"There is a {a.colour} shape and a hat."):
        assert caption_errors(false, scene), false


def test_captions_are_mostly_short_and_varied():
    captions = [c for i in range(400) for c in captions_for(3, "val", i, 64)]
    lengths = [len(c.split()) for c in captions]
    assert max(lengths) <= 17 and min(lengths) >= 4
    assert np.mean([5 <= n <= 15 for n in lengths]) > 0.8
    # No sentence dominates: a model that ignores the image cannot do well by always saying it.
    assert Counter(captions).most_common(1)[0][1] < 0.03 * len(captions)


def test_scenes_cover_the_attribute_space_and_never_overlap():
    scenes = [scene_for(0, "train", i, 64) for i in range(400)]
    objects = [o for s in scenes for o in s.objects]
    assert {o.shape for o in objects} == set(SHAPES)
    assert {o.colour for o in objects} == set(COLOURS)
    assert {o.size for o in objects} == {"small", "large"}
    assert {len(s.objects) for s in scenes} == {1, 2, 3, 4}
    assert {s.background.kind for s in scenes} == set(BACKGROUNDS)
    for s in scenes:
        for o in s.objects:
            assert o.radius <= o.cx <= 64 - o.radius and o.radius <= o.cy <= 64 - o.radius
        for i, a in enumerate(s.objects):
            for b in s.objects[i + 1:]:
                assert np.hypot(a.cx - b.cx, a.cy - b.cy) > a.radius + b.radius


def test_every_object_is_drawn_visibly_in_its_colour():
    for index in range(60):
        scene = scene_for(0, "train", index, 64)
        pixels = np.asarray(render_scene(scene)).astype(int)  # (64, 64, 3)
        decoded = np.asarray(Image.open(io.BytesIO(encode_jpeg(render_scene(scene)))))
        background = np.asarray(render_scene(Scene(64, scene.background, ()))).astype(int)
        assert pixels.shape == (64, 64, 3)
        for o in scene.objects:
            y, x = int(o.cy), int(o.cx)
            assert tuple(pixels[y, x]) == o.rgb, (o, pixels[y, x])
            assert np.abs(decoded[y, x].astype(int) - o.rgb).max() <= 40  # still that colour after JPEG
            assert np.linalg.norm(background[y, x] - np.array(o.rgb)) > 80  # contrasts with the background
        assert background.min() >= 170  # light backgrounds only


# ------------------------------------------------------------------------------------------------
# The dataset on disk.

SMALL = dict(n_train=10, n_val=4, n_test=3, n_unlabeled=2, image_size=48)


def snapshot(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_another_seed_different_ones(tmp_path):
    calls = []
    counts = generate_shapes_dataset(tmp_path / "a", seed=5, progress=calls.append, **SMALL)
    generate_shapes_dataset(tmp_path / "b", seed=5, **SMALL)
    generate_shapes_dataset(tmp_path / "c", seed=6, **SMALL)
    assert counts == {"train": 10, "val": 4, "test": 3, "unlabeled": 2}
    assert sum(calls) == 19
    a, b, c = (snapshot(tmp_path / d) for d in "abc")
    assert len(a) == 19 + 4 + 1  # images, four JSON files, shapes_params.json
    assert a == b
    assert a.keys() == c.keys()
    differing = [name for name in a if a[name] != c[name]]
    assert "annotations/captions_train2017.json" in differing
    assert sum(name.endswith(".jpg") for name in differing) == 19


def test_coco_schema(tmp_path):
    generate_shapes_dataset(tmp_path, seed=0, **SMALL)
    ann = tmp_path / "annotations"
    assert sorted(p.name for p in ann.iterdir()) == ["captions_test2017.json", "captions_train2017.json",
                                                     "captions_val2017.json", "image_info_unlabeled2017.json"]
    all_image_ids, all_caption_ids = [], []
    for name, split, n in (("captions_train2017", "train", 10), ("captions_val2017", "val", 4),
                           ("captions_test2017", "test", 3), ("image_info_unlabeled2017", "unlabeled", 2)):
        doc = json.loads((ann / f"{name}.json").read_text())
        assert {"info", "licenses", "images"} <= doc.keys()
        assert isinstance(doc["info"], dict) and isinstance(doc["licenses"], list)
        assert len(doc["images"]) == n
        for img in doc["images"]:
            assert isinstance(img["id"], int) and isinstance(img["file_name"], str)
            assert img["file_name"] == f"{img['id']:012d}.jpg"
            with Image.open(tmp_path / f"{split}2017" / img["file_name"]) as im:
                assert im.format == "JPEG" and im.mode == "RGB"
                assert (im.width, im.height) == (img["width"], img["height"]) == (48, 48)
            all_image_ids.append(img["id"])
        if split in ("train", "val", "test"):
            ids = {img["id"] for img in doc["images"]}
            per_image = Counter(a["image_id"] for a in doc["annotations"])
            assert set(per_image) == ids and set(per_image.values()) == {5}
            for a in doc["annotations"]:
                assert isinstance(a["id"], int) and isinstance(a["caption"], str) and a["caption"]
                all_caption_ids.append(a["id"])
        else:
            assert "annotations" not in doc
    assert len(set(all_image_ids)) == len(all_image_ids) == 19
    assert len(set(all_caption_ids)) == len(all_caption_ids) == 85
    # every image folder holds exactly the images its JSON lists (n_unlabeled=2: unlabeled2017/ too)
    for name, split in (("captions_train2017", "train"), ("captions_val2017", "val"),
                        ("captions_test2017", "test"), ("image_info_unlabeled2017", "unlabeled")):
        listed = sorted(img["file_name"] for img in json.loads((ann / f"{name}.json").read_text())["images"])
        folder = tmp_path / f"{split}2017"
        assert folder.is_dir(), f"{folder} is missing"
        assert sorted(p.name for p in folder.iterdir()) == listed


def test_no_unlabeled_split_without_unlabeled_images(tmp_path):
    generate_shapes_dataset(tmp_path, seed=0, **{**SMALL, "n_unlabeled": 0})
    assert not (tmp_path / "unlabeled2017").exists()
    assert not (tmp_path / "annotations" / "image_info_unlabeled2017.json").exists()
    assert len(list((tmp_path / "test2017").iterdir())) == SMALL["n_test"]


def test_captions_in_the_json_match_the_scenes(tmp_path):
    generate_shapes_dataset(tmp_path, seed=2, **SMALL)
    doc = json.loads((tmp_path / "annotations" / "captions_val2017.json").read_text())
    for img in doc["images"]:
        index = img["id"] - image_id_for("val", 0)
        scene = scene_for(2, "val", index, 48)
        captions = [a["caption"] for a in doc["annotations"] if a["image_id"] == img["id"]]
        assert captions == captions_for(2, "val", index, 48)
        assert all(caption_errors(c, scene) == [] for c in captions)
        assert np.array_equal(np.asarray(Image.open(tmp_path / "val2017" / img["file_name"])),
                              np.asarray(Image.open(io.BytesIO(
                                  encode_jpeg(render_scene(scene))))))


# sha256 over the relative path and bytes of every file of generate_shapes_dataset(n_train=6, n_val=3,
# n_test=2, image_size=48, seed=3) but the test split's annotation file, taken from the generator as it
# was before the test split had captions: its images and the train and val files must not change.
TRAIN_VAL_AND_IMAGES_SHA256 = "e06a2aa1470d06ffba745b2fc980488deccc23b31ff9529fadd356efabfd9da5"


def test_test_captions_leave_train_val_and_images_byte_identical(tmp_path):
    generate_shapes_dataset(tmp_path, n_train=6, n_val=3, n_test=2, image_size=48, seed=3)
    digest = hashlib.sha256()
    for path in sorted(tmp_path.rglob("*")):
        if path.is_file() and path.name != "captions_test2017.json":
            digest.update(str(path.relative_to(tmp_path)).encode())
            digest.update(path.read_bytes())
    assert digest.hexdigest() == TRAIN_VAL_AND_IMAGES_SHA256
    test = json.loads((tmp_path / "annotations" / "captions_test2017.json").read_text())
    for img in test["images"]:
        index = img["id"] - image_id_for("test", 0)
        assert [a["caption"] for a in test["annotations"] if a["image_id"] == img["id"]] == \
            captions_for(3, "test", index, 48)


def test_an_old_folder_gets_test_captions_and_loses_its_images_only_file(tmp_path):
    generate_shapes_dataset(tmp_path, n_train=2, n_val=1, n_test=1, image_size=48)
    (tmp_path / "annotations" / "captions_test2017.json").rename(tmp_path / "annotations" / "image_info_test2017.json")
    generate_shapes_dataset(tmp_path, n_train=2, n_val=1, n_test=1, image_size=48)
    assert sorted(p.name for p in (tmp_path / "annotations").iterdir()) == [
        "captions_test2017.json", "captions_train2017.json", "captions_val2017.json"]


def test_rerun_regenerates_only_what_is_missing(tmp_path):
    generate_shapes_dataset(tmp_path, seed=1, **SMALL)
    before = snapshot(tmp_path)
    kept = tmp_path / "train2017" / "000000000001.jpg"
    kept_stat = kept.stat()
    for name in ("train2017/000000000003.jpg", "train2017/000000000010.jpg", "test2017/000002000002.jpg",
                 "annotations/captions_val2017.json"):
        (tmp_path / name).unlink()
    generate_shapes_dataset(tmp_path, seed=1, **SMALL)
    assert snapshot(tmp_path) == before
    assert kept.stat().st_mtime_ns == kept_stat.st_mtime_ns and kept.stat().st_ino == kept_stat.st_ino
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no temporary files left behind


def test_rerun_with_other_parameters_is_refused(tmp_path):
    generate_shapes_dataset(tmp_path, seed=1, **SMALL)
    with pytest.raises(ValueError, match="seed"):
        generate_shapes_dataset(tmp_path, seed=2, **SMALL)
    coco_like = tmp_path / "coco"
    (coco_like / "train2017").mkdir(parents=True)
    with pytest.raises(ValueError, match="not a shapes dataset"):
        generate_shapes_dataset(coco_like, **SMALL)
    with pytest.raises(ValueError, match="image_size"):
        generate_shapes_dataset(tmp_path / "tiny", image_size=8)

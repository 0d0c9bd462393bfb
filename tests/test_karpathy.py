"""Karpathy's split files and Flickr8k's text files, written here in their real formats with malformed
entries, through process_coco.py, one training step of each protocol preset, and evaluate.py on test."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

import evaluate
import process_coco
import train_captioner
from captioner.config import CaptionerRunConfig, load_config
from captioner.data.coco_annotations import (
    DUPLICATE_CAPTION_ID,
    DUPLICATE_IMAGE_ID,
    EMPTY_CAPTION,
    MALFORMED_CAPTION_ENTRY,
    MALFORMED_IMAGE_ENTRY,
    MISSING_IMAGE,
    NO_CAPTIONS,
    AnnotationError,
    SkipLog,
)
from captioner.data.karpathy import (
    IMAGE_IN_TWO_SPLITS,
    MALFORMED_LINE,
    UNKNOWN_SPLIT,
    UNLISTED_IMAGE,
    read_flickr8k,
    read_karpathy,
)
from captioner.data.processed import read_split

WORDS = "a man dog cat red blue runs sits on the grass street ball with near".split()


def write_jpeg(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path, format="JPEG")


def captions_of(seed, n=5):
    rng = np.random.default_rng(1000 + seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 9)))).capitalize() + " ." for _ in range(n)]


def karpathy_entry(imgid, split, name, cocoid=None, filepath=None, captions=None):
    """One images[] entry exactly as in Karpathy's files (COCO's have filepath and cocoid too)."""
    captions = captions_of(imgid) if captions is None else captions
    entry = {"sentids": [10 * imgid + k for k in range(len(captions))], "imgid": imgid,
             "sentences": [{"tokens": c.lower().rstrip(" .").split(), "raw": c, "imgid": imgid,
                            "sentid": 10 * imgid + k} for k, c in enumerate(captions)],
             "split": split, "filename": name}
    if filepath is not None:
        entry["filepath"] = filepath
    if cocoid is not None:
        entry["cocoid"] = cocoid
    return entry


def write_karpathy_coco(root):
    """dataset_coco.json with 6 train, 2 restval, 2 val and 2 test images and one of each malformed entry;
    images under root/images/{train2014,val2014}. Returns the expected {split: [cocoid, ...]}."""
    images = []
    layout = [("train", "train2014")] * 6 + [("restval", "val2014")] * 2 + [("val", "val2014")] * 2 + \
        [("test", "val2014")] * 2
    for i, (split, folder) in enumerate(layout):
        cocoid = 500 + 7 * i
        name = f"COCO_{folder}_{cocoid:012d}.jpg"
        images.append(karpathy_entry(i, split, name, cocoid=cocoid, filepath=folder))
        write_jpeg(root / "images" / folder / name, i)
    images[0]["sentences"][1]["raw"] = "   "  # an empty caption: skipped, the other four kept
    images[1]["sentences"][2] = {"tokens": ["x"], "imgid": 1, "sentid": 12}  # no raw: skipped
    images += [
        {"imgid": 90, "split": "train", "sentences": []},  # no filename, no cocoid: malformed
        karpathy_entry(91, "holdout", "COCO_val2014_000000000991.jpg", cocoid=991, filepath="val2014"),
        karpathy_entry(92, "train", "COCO_train2014_again.jpg", cocoid=500, filepath="train2014"),  # duplicate id
        karpathy_entry(93, "val", "COCO_val2014_000000000993.jpg", cocoid=993, filepath="val2014",
                       captions=["", " "]),  # no usable caption
        karpathy_entry(94, "test", "COCO_val2014_000000000994.jpg", cocoid=994, filepath="val2014"),  # no file
    ]
    (root / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    ids = [500 + 7 * i for i in range(12)]
    return {"train": ids[:8], "val": ids[8:10], "test": ids[10:12] + [994]}


def write_karpathy_flickr(root, dataset, n_train=6):
    """dataset_flickr8k.json / dataset_flickr30k.json: no filepath, no cocoid, imgid as the id."""
    images = []
    for i, split in enumerate(["train"] * n_train + ["val"] * 2 + ["test"] * 2):
        name = f"{1000 + i}_{i:04x}.jpg"
        images.append(karpathy_entry(i, split, name))
        write_jpeg(root / "images" / name, i)
    images.append("not an object")
    (root / f"dataset_{dataset}.json").write_text(json.dumps({"images": images, "dataset": dataset}))


def write_flickr8k(root):
    """Flickr8k_text/ (Flickr8k.token.txt and the three split files) and Flicker8k_Dataset/, with bad lines."""
    text, images = root / "Flickr8k_text", root / "Flicker8k_Dataset"
    text.mkdir(parents=True)
    names = [f"{3000 + i}_{i:06x}.jpg" for i in range(10)]
    lines = []
    for i, name in enumerate(names):
        write_jpeg(images / name, i)
        lines += [f"{name}#{k}\t{caption}" for k, caption in enumerate(captions_of(i))]
    lines += [
        "no tab here at all",  # malformed
        f"{names[0]}#x\tA caption with a bad index .",  # malformed: #x
        f"{names[1]}#3\tThe same caption number again .",  # duplicate of name#3
        f"{names[2]}#5\t   ",  # empty caption
        "2258277193_586949ec62.jpg.1#0\tA dog in the snow .",  # the real file's oddity: an image in no split
        "2258277193_586949ec62.jpg.1#1\tA dog runs .",
        "",
    ]
    (text / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (text / "Flickr_8k.trainImages.txt").write_text("\n".join(names[:6] + ["4000_nocaptions.jpg"]) + "\n")
    (text / "Flickr_8k.devImages.txt").write_text("\n".join(names[6:8] + [names[0]]) + "\n")  # names[0] twice
    (text / "Flickr_8k.testImages.txt").write_text("\n".join(names[8:10]) + "\n")
    return names


def counts(meta):
    return {split: (c["images"], c["captions"]) for split, c in meta["splits"].items()}


# ---------------------------------------------------------------- the readers


def test_karpathy_coco_splits_restval_and_every_skip_reason(tmp_path):
    expected = write_karpathy_coco(tmp_path)
    skips = SkipLog()
    splits, info = read_karpathy(tmp_path / "dataset_coco.json", tmp_path / "images", skips)
    by_name = {s.name: s for s in splits}
    assert info == {"dataset": "coco", "restval": {"images": 2, "into": "train"}}
    assert {name: s.image_ids for name, s in by_name.items()} == expected
    train = by_name["train"]
    assert train.file_names[0] == "train2014/COCO_train2014_000000000500.jpg"
    assert train.file_names[6] == "val2014/COCO_val2014_000000000542.jpg"  # restval, from val2014
    assert len(train.captions[0]) == 4 and len(train.captions[1]) == 4 and len(train.captions[2]) == 5
    assert by_name["test"].captions[0] == captions_of(10)  # test keeps its references, stripped
    assert skips.counts() == {EMPTY_CAPTION: 3, MALFORMED_CAPTION_ENTRY: 1, MALFORMED_IMAGE_ENTRY: 1,
                              UNKNOWN_SPLIT: 1, DUPLICATE_IMAGE_ID: 1, NO_CAPTIONS: 1}
    assert [s.image_ids for s in read_karpathy(tmp_path / "dataset_coco.json", tmp_path / "images", SkipLog(),
                                               restval="skip")[0]][0] == expected["train"][:6]


def test_flickr8k_text_files_and_every_skip_reason(tmp_path):
    names = write_flickr8k(tmp_path)
    skips = SkipLog()
    splits = read_flickr8k(tmp_path / "Flickr8k_text", tmp_path / "Flicker8k_Dataset", skips)
    by_name = {s.name: s for s in splits}
    assert {n: s.file_names for n, s in by_name.items()} == {"train": names[:6], "val": names[6:8],
                                                            "test": names[8:10]}
    listed = sorted(names + ["4000_nocaptions.jpg"])
    assert by_name["val"].image_ids == [listed.index(n) for n in names[6:8]]  # ids: sorted positions
    assert by_name["train"].captions[1] == [c.strip() for c in captions_of(1)]  # the duplicate #3 not added
    assert skips.counts() == {MALFORMED_LINE: 2, DUPLICATE_CAPTION_ID: 1, EMPTY_CAPTION: 1, UNLISTED_IMAGE: 1,
                              IMAGE_IN_TWO_SPLITS: 1, NO_CAPTIONS: 1}
    unlisted = next(e for e in skips.items if e["reason"] == UNLISTED_IMAGE)
    assert "2258277193_586949ec62.jpg.1 (2 captions)" in unlisted["item"]


def test_unreadable_files_are_errors_naming_them(tmp_path):
    (tmp_path / "dataset_coco.json").write_text('{"images": [')
    with pytest.raises(AnnotationError, match="dataset_coco.json: not valid JSON"):
        read_karpathy(tmp_path / "dataset_coco.json", tmp_path, SkipLog())
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": [karpathy_entry(0, "test", "a.jpg")]}))
    with pytest.raises(AnnotationError, match="no usable train image"):
        read_karpathy(tmp_path / "dataset_coco.json", tmp_path, SkipLog())
    with pytest.raises(AnnotationError, match="Flickr8k.token.txt: cannot read"):
        read_flickr8k(tmp_path, tmp_path, SkipLog())


def test_the_source_options_are_checked(capsys):
    assert process_coco.parse_args(["--karpathy-file", "d.json", "--image-dir", "i"]).source == "karpathy"
    assert process_coco.parse_args(["--flickr8k-dir", "t", "--image-dir", "i"]).source == "flickr8k"
    for argv, message in ((["--karpathy-file", "d.json"], "need --image-dir"),
                          (["--source", "karpathy", "--image-dir", "i"], "needs --karpathy-file"),
                          (["--karpathy-file", "d.json", "--flickr8k-dir", "t", "--image-dir", "i"], "give one"),
                          (["--image-dir", "i"], "need --image-dir")):
        with pytest.raises(SystemExit):
            process_coco.parse_args(argv)
        assert message in capsys.readouterr().err


# ---------------------------------------------------------------- end to end

TINY = ["--set", "train.epochs=1", "--set", "data.batch_size=30", "--set", "data.num_workers=0",
        "--set", "decoder.width=16", "--set", "decoder.depth=1", "--set", "decoder.heads=2",
        "--set", "eval.beam_size=2", "--set", "eval.max_len=8", "--set", "eval.select_images=0",
        "--set", "train.compile=false", "--set", "train.precision=fp32", "--set", "train.log_every=1"]


@pytest.fixture(scope="module")
def tiny_encoder_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp("encoder") / "encoder.yaml"
    path.write_text(yaml.safe_dump({"model": {"image_size": 32, "patch_size": 8, "width": 16, "depth": 1,
                                              "heads": 2}}))
    return path


@pytest.mark.parametrize("fmt, preset", [
    ("karpathy_coco", "configs/coco_karpathy_captioner.yaml"),
    ("karpathy_flickr8k", "configs/flickr8k_captioner.yaml"),
    ("karpathy_flickr30k", "configs/flickr30k_captioner.yaml"),
    ("flickr8k_text", "configs/flickr8k_captioner.yaml"),
])
def test_process_train_one_step_and_evaluate_on_test(tmp_path, fmt, preset, tiny_encoder_yaml, capsys):
    if fmt == "karpathy_coco":
        write_karpathy_coco(tmp_path)
        source = ["--karpathy-file", str(tmp_path / "dataset_coco.json"), "--image-dir", str(tmp_path / "images")]
    elif fmt == "flickr8k_text":
        write_flickr8k(tmp_path)
        source = ["--flickr8k-dir", str(tmp_path / "Flickr8k_text"), "--image-dir", str(tmp_path / "Flicker8k_Dataset")]
    else:
        dataset = fmt.removeprefix("karpathy_")
        write_karpathy_flickr(tmp_path, dataset)
        source = ["--karpathy-file", str(tmp_path / f"dataset_{dataset}.json"), "--image-dir", str(tmp_path / "images")]
    data = tmp_path / "data"
    meta = process_coco.main([*source, "--data-dir", str(data), "--image-size", "32", "--vocab-size", "90",
                              "--workers", "1", "--no-progress"])
    assert meta["source"] == fmt.split("_")[0]
    if fmt == "karpathy_coco":
        assert counts(meta) == {"train": (8, 38), "val": (2, 10), "test": (2, 10)}
        missing = [e for e in meta["skipped"] if e["reason"] == MISSING_IMAGE]
        assert len(missing) == 1 and "COCO_val2014_000000000994.jpg" in missing[0]["item"]  # named
        assert "missing image file" in capsys.readouterr().out
    elif fmt == "flickr8k_text":
        assert counts(meta) == {"train": (6, 30), "val": (2, 10), "test": (2, 10)}
    else:
        assert counts(meta) == {"train": (6, 30), "val": (2, 10), "test": (2, 10)}
    test, images = read_split(data / "processed", "test")
    assert images.shape == (2, 32, 32, 3) and all(len(c) == 5 for c in test["captions"])

    cfg = load_config(CaptionerRunConfig, preset)  # the preset as written loads
    assert cfg.data.processed_dir == {"karpathy_coco": "data/coco_karpathy/processed",
                                      "karpathy_flickr30k": "data/flickr30k/processed"}.get(fmt, "data/flickr8k/processed")
    assert cfg.eval.select_by == "CIDEr-D"
    history = train_captioner.main(["--config", preset, *TINY, "--set", f"data.processed_dir={data / 'processed'}",
                                    "--set", f"run_dir={tmp_path / 'run'}", "--set", f"encoder_config={tiny_encoder_yaml}",
                                    "--device", "cpu", "--no-progress"])
    assert len(history) == 1 and history[0]["step"] == 1  # one training step: 30 captions of 6 or 8 images
    assert history[0]["val_scores"]["n_images"] == 2 and "captions_true" not in history[0]["val_scores"]
    summary = evaluate.main(["-c", str(tmp_path / "run" / "checkpoint_best.pt"), "--split", "test", "--device", "cpu",
                             "--no-progress"])
    assert summary["split"] == "test" and summary["model"]["n_images"] == 2
    assert 0 <= summary["model"]["ROUGE-L"] <= 1 and summary["truth"] is None

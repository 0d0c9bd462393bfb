"""The WIT reader: a shard written here (never real data) becomes the same processed caches as COCO."""

import base64
import gzip
import io
import json

import numpy as np
from PIL import Image

import process_coco
from captioner.data.coco_annotations import SkipLog
from captioner.data.processed import read_split
from captioner.data.wit import BAD_BASE64, BROKEN_JSON, NO_CAPTION, read_wit_shard, wit_captions


def png_b64(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def line(caption, b64, url="https://upload.wikimedia.org/x.png"):
    features = [{"language": "en", "caption_reference_description": caption}, {"language": "fr"}]
    return json.dumps({"image_url": url, "b64_bytes": b64, "wit_features": features})


def write_shard(path):
    """Lines: undecodable image, good (red), broken JSON, no caption, bad base64, good (green), good (blue)."""
    lines = [
        line("a picture that is not one", base64.b64encode(b"not an image at all").decode()),
        line("a red square", png_b64((255, 0, 0))),
        '{"image_url": "https://x/broken.jpg", "b64_bytes": ',
        line("  ", png_b64((0, 0, 0))),
        line("a square with broken bytes", "aGVsbG8h$$$"),  # "hello!" and stray characters
        line("a green square", png_b64((0, 255, 0))),
        line("a blue square", png_b64((0, 0, 255))),
    ]
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def test_wit_captions_keep_distinct_non_empty_ones():
    record = {"wit_features": [{"caption_reference_description": "A dome."}, {},
                               {"caption_reference_description": " "}, {"caption_reference_description": "A dome."}]}
    assert wit_captions(record) == ["A dome."]


def test_reader_skips_and_counts_bad_lines(tmp_path):
    write_shard(tmp_path / "shard.json.gz")
    skips = SkipLog()
    good = list(read_wit_shard(tmp_path / "shard.json.gz", skips))
    assert [captions for _, captions, _ in good] == [["a picture that is not one"], ["a red square"],
                                                    ["a green square"], ["a blue square"]]
    assert skips.counts() == {BROKEN_JSON: 1, NO_CAPTION: 1, BAD_BASE64: 1}
    assert [entry["item"].rsplit(":", 1)[1] for entry in skips.items] == ["3", "4", "5"]  # the line numbers


def test_process_coco_turns_a_shard_into_processed_caches(tmp_path):
    write_shard(tmp_path / "shard.json.gz")
    meta = process_coco.main(["--wit-files", str(tmp_path / "shard.json.gz"), "--wit-val-every", "2",
                              "--data-dir", str(tmp_path / "wit"), "--image-size", "16", "--vocab-size", "40",
                              "--workers", "1", "--no-progress"])
    # good lines 1..4 by id: 1 (undecodable) and 3 train, 2 and 4 val; the undecodable image is skipped
    assert meta["source"] == "wit" and meta["splits"]["train"] == {"images": 1, "captions": 1}
    assert meta["splits"]["val"] == {"images": 2, "captions": 2}
    assert sum(meta["skipped_counts"].values()) == 4 and meta["skipped_counts"][NO_CAPTION] == 1
    record, images = read_split(tmp_path / "wit" / "processed", "val")
    assert record["captions"] == [["a red square"], ["a blue square"]]
    assert images.shape == (2, 16, 16, 3)
    assert np.abs(images[0].astype(int) - [255, 0, 0]).max() <= 2  # the red square, resized

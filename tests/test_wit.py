"""The WIT reader: a shard written here (never real data) becomes the same processed caches as COCO."""

import base64
import gzip
import io
import json

import numpy as np
import pytest
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


def test_base64_wrapped_over_lines_is_read(tmp_path):
    png = png_b64((255, 0, 0))
    wrapped = "\n".join(png[i : i + 76] for i in range(0, len(png), 76)) + "\n"  # MIME's 76-character lines
    assert "\n" in wrapped.strip()
    with gzip.open(tmp_path / "shard.json.gz", "wt", encoding="utf-8") as f:
        stray = wrapped[:80] + "*" + wrapped[80:]
        f.write(line("a red square", wrapped) + "\n" + line("stray characters", stray) + "\n")
    skips = SkipLog()
    good = list(read_wit_shard(tmp_path / "shard.json.gz", skips))
    assert [(captions, data) for _, captions, data in good] == [(["a red square"], base64.b64decode(png))]
    assert skips.counts() == {BAD_BASE64: 1}  # whitespace is dropped, anything else still refused


def test_a_file_that_is_not_gzip_is_named_as_such_before_any_work(tmp_path):
    write_shard(tmp_path / "good.json.gz")
    (tmp_path / "plain.json").write_text(line("a red square", png_b64((255, 0, 0))) + "\n")
    with pytest.raises(ValueError, match=r"plain\.json: not a gzip file"):
        list(read_wit_shard(tmp_path / "plain.json", SkipLog()))
    with pytest.raises(ValueError, match=r"plain\.json: not a gzip file"):
        process_coco.main(["--wit-files", str(tmp_path / "good.json.gz"), str(tmp_path / "plain.json"),
                           "--data-dir", str(tmp_path / "wit"), "--image-size", "16", "--vocab-size", "40",
                           "--workers", "1", "--no-progress"])
    assert not list((tmp_path / "wit").rglob("*.png"))  # no image of the good shard written first


def test_a_truncated_shard_keeps_the_lines_before_the_cut_and_counts_the_cut(tmp_path):
    rng = np.random.default_rng(0)
    lines = [line(f"picture {i}", base64.b64encode(rng.bytes(3000)).decode()) for i in range(40)]
    whole = gzip.compress(("\n".join(lines) + "\n").encode())
    (tmp_path / "cut.json.gz").write_bytes(whole[: len(whole) // 2])  # random bytes barely compress: ~20 lines
    skips = SkipLog()
    good = list(read_wit_shard(tmp_path / "cut.json.gz", skips))
    assert 5 <= len(good) < 40
    assert [captions for _, captions, _ in good] == [[f"picture {i}"] for i in range(len(good))]
    assert skips.counts() == {BROKEN_JSON: 1} and skips.items[0]["item"].endswith("(the gzip stream ends early)")

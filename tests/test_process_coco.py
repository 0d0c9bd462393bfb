"""process_coco.py end to end: shapes, a hand-made miniature COCO folder full of bad input, resume."""

import io
import json
import struct
import urllib.parse
import zipfile
import zlib

import numpy as np
import pytest
from http_server import FileServer
from PIL import Image

import process_coco
from captioner.cli import run_script
from captioner.data import image_cache
from captioner.data.coco_annotations import (
    BAD_IMAGE,
    DUPLICATE_CAPTION_ID,
    DUPLICATE_IMAGE_ID,
    EMPTY_CAPTION,
    MALFORMED_CAPTION_ENTRY,
    MALFORMED_IMAGE_ENTRY,
    MISSING_IMAGE,
    NO_CAPTIONS,
    UNKNOWN_IMAGE_ID,
    AnnotationError,
)
from captioner.data.loaders import caption_loader
from captioner.data.processed import read_split
from captioner.text.normalize import normalize_text
from captioner.text.tokenizers import load_tokenizer

S = 16  # cache resolution of the miniature COCO folder


def run(*argv):
    return process_coco.main([*map(str, argv), "--no-progress"])


# --------------------------------------------------------------------------------------------------
# Shapes, end to end
# --------------------------------------------------------------------------------------------------


def test_shapes_end_to_end_then_rerun_is_up_to_date(tmp_path, capsys):
    args = ["--data-dir", tmp_path, "--n-train", 12, "--n-val", 4, "--n-test", 3, "--n-unlabeled", 2,
            "--vocab-size", 80, "--workers", 2]
    meta = run(*args)
    processed = tmp_path / "processed"
    assert meta["splits"] == {"train": {"images": 12, "captions": 60}, "val": {"images": 4, "captions": 20},
                              "test": {"images": 3, "captions": 15}, "unlabeled": {"images": 2, "captions": 0}}
    assert meta["skipped_counts"] == {} and meta["image_size"] == 64 and meta["tokenizer"] == "bpe"
    assert json.loads((processed / "meta.json").read_text()) == meta
    assert not list(processed.rglob("*.partial"))

    record, images = read_split(processed, "train")
    assert images.shape == (12, 64, 64, 3) and images.dtype == np.uint8
    assert images.std() > 10  # real pictures, not zeros
    # The cache holds the generated images, row for row.
    first = np.asarray(Image.open(tmp_path / "raw" / "train2017" / record["file_names"][0]).convert("RGB"))
    assert np.abs(images[0].astype(int) - first).mean() < 2
    tokenizer = load_tokenizer(processed / "tokenizer.txt")
    for captions, tokens in zip(record["captions"], record["tokens"]):
        assert len(captions) == 5
        for caption, ids in zip(captions, tokens):
            assert tokenizer.decode(ids) == " ".join(normalize_text(caption))

    batch = next(iter(caption_loader(processed, "train", 8, shuffle=True, max_len=12)))
    assert batch["images"].shape[1:] == (3, 64, 64) and batch["tokens"].shape[0] == 8

    capsys.readouterr()
    mtime = (processed / "train_images.npy").stat().st_mtime_ns
    run(*args)
    out = capsys.readouterr().out
    assert "tokenizer: up to date" in out and out.count("images up to date, captions up to date") == 4
    assert (processed / "train_images.npy").stat().st_mtime_ns == mtime

    # Other options redo exactly what depends on them; a split that is gone is removed.
    run("--data-dir", tmp_path, "--n-train", 12, "--n-val", 4, "--n-test", 3, "--vocab-size", 80,
        "--workers", 1, "--tokenizer", "wordpiece")
    out = capsys.readouterr().out
    assert "wordpiece" in out and out.count("images up to date, ") == 3 and "captions tokenized" in out
    assert not (processed / "unlabeled_images.npy").exists()
    assert load_tokenizer(processed / "tokenizer.txt").kind == "wordpiece"


def test_a_new_tokenizer_format_retrains_the_tokenizer_and_retokenizes(tmp_path, capsys, monkeypatch):
    """A processed folder made by an older tokenizer version is not 'up to date': its tokenizer file
    could not be read any more, so the rerun that the error message asks for must redo it."""
    args = ["--data-dir", tmp_path, "--n-train", 6, "--n-val", 2, "--n-test", 1, "--vocab-size", 60]
    run(*args)
    capsys.readouterr()
    monkeypatch.setattr(process_coco, "TOKENIZER_VERSION", "v-next")
    run(*args)
    out = capsys.readouterr().out
    assert "tokenizer: up to date" not in out and out.count("captions tokenized") == 3


# --------------------------------------------------------------------------------------------------
# A miniature COCO folder with every kind of bad input
# --------------------------------------------------------------------------------------------------


def jpeg(colour=(200, 30, 30), size=(24, 20), mode="RGB", **save_kwargs):
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, "JPEG", **save_kwargs)
    return buffer.getvalue()


def noise_jpeg():
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def png(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def png_bomb(width=20_000, height=20_000):
    """A PNG whose header claims 400 megapixels, in a few dozen bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def exif_rotated():
    """Stored 32 x 16, red left half and blue right half, with EXIF "rotate 90 degrees clockwise"."""
    pixels = np.zeros((16, 32, 3), dtype=np.uint8)
    pixels[:, :16] = (255, 0, 0)
    pixels[:, 16:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    return buffer.getvalue()


def odd_images():
    """{file name: bytes} of images that are odd but usable."""
    grey16 = Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16))
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))  # fully transparent: white on compositing
    return {
        "cmyk.jpg": jpeg((0, 255, 255, 0), mode="CMYK"),
        "grey.jpg": jpeg(128, mode="L"),
        "rgba.png": png(rgba),
        "palette.png": png(Image.new("RGB", (20, 20), (0, 200, 0)).convert("P", palette=Image.Palette.ADAPTIVE)),
        "grey16.png": png(grey16),
        "rotated.jpg": exif_rotated(),
    }


def bad_images():
    """{file name: bytes} of files that are not usable images."""
    whole = noise_jpeg()
    return {
        "corrupt.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8,
        "truncated.jpg": whole[: len(whole) * 2 // 3],
        "empty.jpg": b"",
        "bomb.png": png_bomb(),
    }


def write_split(root, folder, annotation_file, images, annotations=None, extra_images=()):
    """Write image files and a COCO annotation file; ``images`` is [(id, file name, bytes or None)]."""
    (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    entries = []
    for image_id, name, data in images:
        if data is not None:
            (root / folder / name).write_bytes(data)
        entries.append({"id": image_id, "file_name": name, "width": 20, "height": 20})
    document = {"info": {}, "images": entries + list(extra_images)}
    if annotations is not None:
        document["annotations"] = annotations
    (root / "annotations" / annotation_file).write_text(json.dumps(document))


def captions_for(images, first_id):
    anns, next_id = [], first_id
    for image_id, name, _ in images:
        for k in range(2):
            anns.append({"id": next_id, "image_id": image_id, "caption": f"A picture called {name} number {k}."})
            next_id += 1
    return anns


@pytest.fixture
def mini_coco(tmp_path):
    """A COCO 2017 folder whose train split has one of every bad-input kind; returns (root, expected)."""
    root = tmp_path / "coco"
    good = [(1, "good1.jpg", jpeg()), (2, "good2.jpg", jpeg((10, 200, 10)))]
    odd = [(10 + i, name, data) for i, (name, data) in enumerate(odd_images().items())]
    bad = [(20 + i, name, data) for i, (name, data) in enumerate(bad_images().items())]
    missing = [(30, "missing.jpg", None)]
    no_caption = (40, "lonely.jpg", jpeg())
    train = good + odd + bad + missing
    annotations = captions_for(train, first_id=100) + [
        {"id": 900, "image_id": 1},  # missing caption
        {"id": 100, "image_id": 2, "caption": "A duplicate id."},
        {"id": 901, "image_id": 2, "caption": "   "},
        {"id": 902, "image_id": 999, "caption": "An image nobody listed."},
    ]
    write_split(root, "train2017", "captions_train2017.json", train + [no_caption], annotations,
                extra_images=[{"id": 50}, {"id": 1, "file_name": "again.jpg"}])
    val = [(60, "v1.jpg", jpeg()), (61, "v2.jpg", jpeg((0, 0, 250)))]
    write_split(root, "val2017", "captions_val2017.json", val, captions_for(val, first_id=500))
    write_split(root, "test2017", "image_info_test2017.json", [(70, "t1.jpg", jpeg())])
    expected_train_ids = sorted(image_id for image_id, _, _ in good + odd)
    return root, expected_train_ids


def process_mini(root, tmp_path, *extra):
    return run("--source", "coco", "--coco-dir", root, "--data-dir", tmp_path / "out", "--image-size", S,
               "--vocab-size", 60, "--workers", 1, *extra)


def test_every_bad_input_kind_is_skipped_counted_and_dropped_consistently(mini_coco, tmp_path, capsys):
    root, expected_train_ids = mini_coco
    meta = process_mini(root, tmp_path)
    assert meta["skipped_counts"] == {
        MALFORMED_IMAGE_ENTRY: 1,
        DUPLICATE_IMAGE_ID: 1,
        MALFORMED_CAPTION_ENTRY: 1,
        DUPLICATE_CAPTION_ID: 1,
        EMPTY_CAPTION: 1,
        UNKNOWN_IMAGE_ID: 1,
        NO_CAPTIONS: 1,
        MISSING_IMAGE: 1,
        BAD_IMAGE: 4,
    }
    bad_items = " ".join(e["item"] for e in meta["skipped"] if e["reason"] == BAD_IMAGE)
    for name in bad_images():
        assert str(root / "train2017" / name) in bad_items  # each reported with its path
    out = capsys.readouterr().out
    assert "skipped 12 items" in out and "decompression bomb" in out and "missing.jpg" in out

    processed = tmp_path / "out" / "processed"
    record, images = read_split(processed, "train")
    assert record["image_ids"] == expected_train_ids
    assert images.shape == (len(expected_train_ids), S, S, 3)
    assert meta["splits"]["train"] == {"images": 8, "captions": 16}
    by_name = dict(zip(record["file_names"], images))
    for name, captions in zip(record["file_names"], record["captions"]):
        assert captions == [f"A picture called {name} number {k}." for k in range(2)]
    assert np.all(np.abs(by_name["grey.jpg"].astype(int) - 128) <= 2)
    assert np.all(by_name["rgba.png"] == 255)  # transparent -> white
    assert np.all(by_name["grey16.png"] == 255)  # 16-bit scaled, not clipped
    assert np.all(np.abs(by_name["palette.png"].astype(int) - (0, 200, 0)) <= 2)
    cmyk = by_name["cmyk.jpg"].reshape(-1, 3).mean(0)
    assert cmyk[0] > 200 and cmyk[1] < 60 and cmyk[2] < 60  # CMYK (0, 255, 255, 0) is red
    rotated = by_name["rotated.jpg"].astype(int)  # upright: red on top, blue below
    assert rotated[2, S // 2, 0] > 200 and rotated[-3, S // 2, 2] > 200
    assert read_split(processed, "test")[0]["image_ids"] == [70]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"images": []}', "missing the top-level key 'annotations'"),
    ('[1, 2]', "expected a JSON object"),
])
def test_unreadable_annotation_file_stops_with_a_message_naming_it(mini_coco, tmp_path, capsys, content, message):
    root, _ = mini_coco
    path = root / "annotations" / "captions_val2017.json"
    path.write_text(content)
    argv = ["--source", "coco", "--coco-dir", str(root), "--data-dir", str(tmp_path / "out"), "--no-progress"]
    with pytest.raises(SystemExit) as info:
        run_script(process_coco.main, argv)
    assert info.value.code != 0
    err = capsys.readouterr().err
    assert str(path) in err and message in err


def test_missing_required_annotation_file_is_named(mini_coco, tmp_path):
    root, _ = mini_coco
    (root / "annotations" / "captions_train2017.json").unlink()
    with pytest.raises(AnnotationError, match="captions_train2017.json: annotation file not found"):
        process_mini(root, tmp_path)


# --------------------------------------------------------------------------------------------------
# Interrupted runs
# --------------------------------------------------------------------------------------------------


def test_interrupted_run_leaves_nothing_that_looks_finished_and_a_rerun_completes(mini_coco, tmp_path, monkeypatch):
    root, expected_train_ids = mini_coco
    processed = tmp_path / "out" / "processed"
    real = image_cache.load_and_resize
    calls = []

    def interrupted_in_val(path, size):
        calls.append(path)
        if "val2017" in str(path):
            raise KeyboardInterrupt  # Ctrl-C while the val images are being resized
        return real(path, size)

    monkeypatch.setattr(image_cache, "load_and_resize", interrupted_in_val)
    with pytest.raises(SystemExit, match="interrupted"):
        process_mini(root, tmp_path)
    assert not (processed / "meta.json").exists()
    assert not (processed / "val_images.npy").exists() and not (processed / "val.json").exists()
    assert (processed / "val_images.npy.partial").exists()
    assert (processed / "train_images.npy").exists() and (processed / "train.json").exists()
    with pytest.raises(FileNotFoundError, match="interrupted"):
        read_split(processed, "train")  # the folder is not complete, so the loaders refuse it
    train_mtime = (processed / "train_images.npy").stat().st_mtime_ns

    def counting(path, size):
        calls.append(path)
        return real(path, size)

    calls.clear()
    monkeypatch.setattr(image_cache, "load_and_resize", counting)
    meta = process_mini(root, tmp_path)
    assert {p.split("/")[-2] for p in calls} == {"val2017", "test2017"}  # train was not redone
    assert (processed / "train_images.npy").stat().st_mtime_ns == train_mtime
    assert meta["splits"]["val"] == {"images": 2, "captions": 4}
    assert meta["skipped_counts"][BAD_IMAGE] == 4  # remembered from the first run's stamp
    assert read_split(processed, "train")[0]["image_ids"] == expected_train_ids
    assert not list(processed.rglob("*.partial"))


def test_changed_image_size_or_changed_image_redoes_the_cache(mini_coco, tmp_path, capsys):
    root, _ = mini_coco
    process_mini(root, tmp_path)
    processed = tmp_path / "out" / "processed"
    run("--source", "coco", "--coco-dir", root, "--data-dir", tmp_path / "out", "--image-size", 8,
        "--vocab-size", 60, "--workers", 1)
    assert read_split(processed, "val")[1].shape == (2, 8, 8, 3)
    (root / "val2017" / "v1.jpg").write_bytes(jpeg((255, 255, 255), size=(30, 20)))
    capsys.readouterr()
    run("--source", "coco", "--coco-dir", root, "--data-dir", tmp_path / "out", "--image-size", 8,
        "--vocab-size", 60, "--workers", 1)
    out = capsys.readouterr().out
    assert "val: 2 images resized" in out and "train: images up to date" in out
    assert read_split(processed, "val")[1][0].min() > 240


# --------------------------------------------------------------------------------------------------
# --source coco: download a miniature COCO from a local server, then process it
# --------------------------------------------------------------------------------------------------


def zip_bytes(members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def mini_coco_archives():
    """{zip name: bytes} laid out like the real COCO 2017 archives, a few images each."""
    def images(first_id, n):
        return [(first_id + i, f"{first_id + i:012d}.jpg", jpeg((40 * i, 100, 200))) for i in range(n)]

    def info(split_images, annotations=None):
        document = {"info": {}, "images": [{"id": i, "file_name": name} for i, name, _ in split_images]}
        if annotations is not None:
            document["annotations"] = annotations
        return json.dumps(document)

    splits = {"train": images(1, 4), "val": images(100, 2), "test": images(200, 2), "unlabeled": images(300, 3)}
    archives = {f"{split}2017.zip": zip_bytes({f"{split}2017/{name}": data for _, name, data in split_images})
                for split, split_images in splits.items()}
    archives["annotations_trainval2017.zip"] = zip_bytes({
        "annotations/captions_train2017.json": info(splits["train"], captions_for(splits["train"], 1)),
        "annotations/captions_val2017.json": info(splits["val"], captions_for(splits["val"], 100)),
    })
    archives["image_info_test2017.zip"] = zip_bytes({"annotations/image_info_test2017.json": info(splits["test"])})
    archives["image_info_unlabeled2017.zip"] = zip_bytes(
        {"annotations/image_info_unlabeled2017.json": info(splits["unlabeled"])})
    return archives


def test_source_coco_downloads_from_a_local_server_and_processes(tmp_path, monkeypatch):
    archives = mini_coco_archives()
    files = [remote._replace(size=len(archives[remote.name])) for remote in process_coco.COCO_FILES]
    assert {remote.name for remote in files} == set(archives)
    monkeypatch.setattr(process_coco, "COCO_FILES", files)
    served = {urllib.parse.urlsplit(remote.url).path: archives[remote.name] for remote in files}
    half = len(archives["val2017.zip"]) // 2
    cut = {urllib.parse.urlsplit(r.url).path: [half] for r in files if r.name == "val2017.zip"}
    with FileServer(served, cuts=cut) as server:
        argv = ["--source", "coco", "--base-url", server.url(), "--data-dir", tmp_path, "--image-size", S,
                "--vocab-size", 60, "--workers", 1]
        meta = run(*argv)
        assert meta["splits"] == {"train": {"images": 4, "captions": 8}, "val": {"images": 2, "captions": 4},
                                  "test": {"images": 2, "captions": 0}, "unlabeled": {"images": 3, "captions": 0}}
        assert meta["skipped_counts"] == {}
        assert any(r is not None for _, r in server.requests)  # the cut transfer resumed with a Range
        n_requests = len(server.requests)
        run(*argv)  # a rerun downloads nothing
        assert len(server.requests) == n_requests
    record, images = read_split(tmp_path / "processed", "unlabeled")
    assert record["image_ids"] == [300, 301, 302] and images.shape == (3, S, S, 3)
    assert (tmp_path / "raw" / "train2017" / "000000000001.jpg").is_file()


def test_failed_download_stops_with_a_message_naming_the_file(tmp_path, monkeypatch):
    archives = mini_coco_archives()
    files = [remote._replace(size=len(archives[remote.name])) for remote in process_coco.COCO_FILES]
    monkeypatch.setattr(process_coco, "COCO_FILES", files)
    served = {urllib.parse.urlsplit(r.url).path: archives[r.name] for r in files if r.name != "test2017.zip"}
    with FileServer(served) as server:
        with pytest.raises(SystemExit, match="test2017.zip") as info:
            run("--source", "coco", "--base-url", server.url(), "--data-dir", tmp_path, "--workers", 1)
    assert "rerun the same command" in str(info.value.code)
    assert not (tmp_path / "processed" / "meta.json").exists()


def test_coco_dir_means_coco_and_contradicting_it_is_refused(capsys):
    assert process_coco.parse_args([]).source == "shapes"
    assert process_coco.parse_args(["--coco-dir", "somewhere"]).source == "coco"
    assert process_coco.parse_args(["--base-url", "http://127.0.0.1:1"]).source == "coco"
    with pytest.raises(SystemExit) as stop:
        process_coco.parse_args(["--source", "shapes", "--coco-dir", "somewhere"])
    assert stop.value.code == 2
    assert "--coco-dir names COCO data" in capsys.readouterr().err

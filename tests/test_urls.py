"""URL–caption lists: the reader, the fetcher against a local server with every fault, and the pre-download."""

import gzip
import io
import json
import time

import numpy as np
import pytest
from PIL import Image
from url_server import UrlServer

import process_coco
from captioner.data.coco_annotations import SkipLog
from captioner.data.image_io import TooManyPixelsError, image_from_bytes
from captioner.data.processed import read_split
from captioner.data.url_fetch import (
    CONNECTION_FAILED,
    HTTP_4XX,
    HTTP_404,
    HTTP_5XX,
    NOT_AN_IMAGE,
    NOT_HTTP,
    REDIRECT_LOOP,
    TIMEOUT,
    TOO_MANY_BYTES,
    TOO_MANY_PIXELS,
    TRUNCATED,
    WRONG_CONTENT_TYPE,
    FetchSettings,
    UrlFetcher,
    cache_key,
)
from captioner.data.urls import BROKEN_LINE, NO_CAPTION, NO_URL, UrlListError, read_url_list

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}


def png(colour, size=(40, 30)):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


# Each fault path with the reason a fetch must give it (written here, not taken from the code's tables)
FAULT_REASONS = {
    "/fault/404": HTTP_404,
    "/fault/403": HTTP_4XX,
    "/fault/500": HTTP_5XX,
    "/fault/stall": TIMEOUT,
    "/fault/drip": TIMEOUT,
    "/fault/truncated": TRUNCATED,
    "/fault/notimage": NOT_AN_IMAGE,
    "/fault/text": WRONG_CONTENT_TYPE,
    "/fault/wrongtype/red.png": WRONG_CONTENT_TYPE,
    "/fault/huge": TOO_MANY_BYTES,
    "/fault/bomb": TOO_MANY_PIXELS,
    "/fault/loop": REDIRECT_LOOP,
}
# Faults that end well: retried, waited for, followed
RECOVERED = {"/fault/flaky/green.png": "green", "/fault/slow/blue.png": "blue", "/fault/redirect/white.png": "white"}
SETTINGS = FetchSettings(timeout=0.6, retries=1, backoff=0.0, max_bytes=500_000, concurrency=8)


@pytest.fixture()
def server():
    with UrlServer({f"/{name}.png": png(rgb) for name, rgb in COLOURS.items()}, slow=0.2,
                   huge_bytes=600_000) as s:
        yield s


# ---- the reader ---------------------------------------------------------------------------------------

def test_reader_reads_tsv_csv_and_gzipped_json_lines_alike(tmp_path):
    (tmp_path / "a.tsv").write_text('url\tcaption\nhttp://h/1.jpg\ta "quoted" dog\nhttp://h/2.jpg\ta cat\n')
    (tmp_path / "a.csv").write_text('caption,url\n"a ""quoted"" dog",http://h/1.jpg\n"a cat, sitting",http://h/2.jpg\n')
    with gzip.open(tmp_path / "list.txt", "wt") as f:  # gzip known by its bytes, JSON lines by the first line
        f.write('{"URL": "http://h/1.jpg", "TEXT": "a dog"}\n\n{"URL": "http://h/2.jpg", "TEXT": "a cat"}\n')
    skips = SkipLog()
    tsv = read_url_list(tmp_path / "a.tsv", skips)
    csv = read_url_list(tmp_path / "a.csv", skips)
    jsonl = read_url_list(tmp_path / "list.txt", skips, url_column="URL", caption_column="TEXT")
    assert [(i.url, i.captions) for i in tsv] == [("http://h/1.jpg", ['a "quoted" dog']), ("http://h/2.jpg", ["a cat"])]
    assert [(i.url, i.captions) for i in csv] == [("http://h/1.jpg", ['a "quoted" dog']),
                                                  ("http://h/2.jpg", ["a cat, sitting"])]
    assert [(i.url, i.captions) for i in jsonl] == [("http://h/1.jpg", ["a dog"]), ("http://h/2.jpg", ["a cat"])]
    assert jsonl[1].where == f"{tmp_path / 'list.txt'}:3" and skips.items == []


def test_reader_without_a_header_takes_column_numbers_and_groups_captions_of_one_url(tmp_path):
    (tmp_path / "cc3m.tsv").write_text("a dog\thttp://h/1.jpg\na cat\thttp://h/2.jpg\nthe same dog\thttp://h/1.jpg\n")
    items = read_url_list(tmp_path / "cc3m.tsv", SkipLog(), url_column="1", caption_column="0")
    assert [(i.url, i.captions) for i in items] == [("http://h/1.jpg", ["a dog", "the same dog"]),
                                                    ("http://h/2.jpg", ["a cat"])]


def test_reader_counts_bad_lines_with_their_numbers(tmp_path):
    lines = ['{"url": "http://h/1.jpg", "caption": "good"}', '{"url": "http://h/2.jpg", "caption": ',
             '{"url": "file:///etc/passwd", "caption": "no"}', '{"url": "http://h/3.jpg", "caption": "  "}',
             '["not", "an", "object"]', '{"caption": "no url"}', '{"url": "http://h/4.jpg", "caption": "good"}']
    (tmp_path / "l.jsonl").write_text("\n".join(lines) + "\n")
    skips = SkipLog()
    items = read_url_list(tmp_path / "l.jsonl", skips)
    assert [i.url for i in items] == ["http://h/1.jpg", "http://h/4.jpg"]
    where = f"{tmp_path / 'l.jsonl'}:"
    assert [(e["reason"], e["item"].removeprefix(where).split(" ")[0]) for e in skips.items] == [
        (BROKEN_LINE, "2"), (NO_URL, "3"), (NO_CAPTION, "4"), (BROKEN_LINE, "5"), (NO_URL, "6")]


def test_reader_errors_name_the_file(tmp_path):
    (tmp_path / "a.csv").write_text("link,text\nhttp://h/1.jpg,a dog\n")
    with pytest.raises(UrlListError, match=r"a\.csv:1: the header row has no column 'url' \(it has 'link', 'text'\)"):
        read_url_list(tmp_path / "a.csv", SkipLog())
    (tmp_path / "b.tsv").write_bytes(b"url\tcaption\nhttp://h/1.jpg\ta \xff dog\n")
    with pytest.raises(UrlListError, match=r"b\.tsv: not UTF-8"):
        read_url_list(tmp_path / "b.tsv", SkipLog())
    (tmp_path / "c.tsv.gz").write_bytes(gzip.compress(b"url\tcaption\n" + b"http://h/1.jpg\ta dog\n" * 200)[:60])
    with pytest.raises(UrlListError, match=r"c\.tsv\.gz: the gzip stream is cut short"):
        read_url_list(tmp_path / "c.tsv.gz", SkipLog())
    with pytest.raises(FileNotFoundError, match="d.tsv: URL list not found"):
        read_url_list(tmp_path / "d.tsv", SkipLog())


# ---- the fetcher ------------------------------------------------------------------------------------

def test_every_fault_is_counted_by_its_reason_and_the_good_images_arrive_in_order(server):
    paths = ["/red.png", *FAULT_REASONS, *RECOVERED, "/green.png"]
    start = time.monotonic()
    results = list(UrlFetcher(SETTINGS).fetch_all(server.url(p) for p in paths))
    seconds = time.monotonic() - start
    assert [r.url for r in results] == [server.url(p) for p in paths]  # one result per URL, in order
    reasons = {p: r.reason for p, r in zip(paths, results)}
    assert reasons == {"/red.png": None, **FAULT_REASONS, **{p: None for p in RECOVERED}, "/green.png": None}
    colours = {p: r.image.getpixel((5, 5)) for p, r in zip(paths, results) if r.reason is None}
    assert colours == {"/red.png": COLOURS["red"], "/green.png": COLOURS["green"],
                       **{p: COLOURS[c] for p, c in RECOVERED.items()}}
    assert server.count("/fault/500") == 2 and server.count("/fault/flaky/green.png") == 2  # retried once
    assert server.count("/fault/404") == 1 and server.count("/fault/403") == 1  # a 404 or 403 is final
    # stall and drip: two attempts of 0.6 s each at most (plus a stalled read's own 0.6 s), in parallel
    assert seconds < 4, seconds


def test_a_refused_connection_and_urls_that_cannot_be_sent_are_counted():
    fetcher = UrlFetcher(FetchSettings(timeout=1, retries=0))
    assert fetcher.fetch("http://127.0.0.1:9/x.png").reason == CONNECTION_FAILED  # the discard port: nothing listens
    for url in ("file:///etc/passwd", "http://[::1/x.png", "http://127.0.0.1:x/a.png"):
        assert fetcher.fetch(url).reason == NOT_HTTP, url


def test_a_url_with_spaces_and_accents_is_sent_percent_encoded():
    with UrlServer({"/caf%C3%A9%20noir.png": png(COLOURS["blue"])}) as s:
        result = UrlFetcher(SETTINGS).fetch(s.url("/café noir.png"))
    assert result.reason is None and result.image.getpixel((0, 0)) == COLOURS["blue"]


def test_a_redirect_chain_longer_than_the_limit_is_a_loop(server):
    fetcher = UrlFetcher(FetchSettings(max_redirects=0))
    assert fetcher.fetch(server.url("/fault/redirect/red.png")).reason == REDIRECT_LOOP
    assert UrlFetcher(FetchSettings(max_redirects=1)).fetch(server.url("/fault/redirect/red.png")).reason is None


def test_the_pixel_limit_is_checked_from_the_header_before_decoding():
    with pytest.raises(TooManyPixelsError, match="40 x 30 = 1200 pixels exceeds the limit of 1199"):
        image_from_bytes(png((1, 2, 3)), "http://h/x.png", max_pixels=1199)
    assert image_from_bytes(png((1, 2, 3)), "http://h/x.png", max_pixels=1200).size == (40, 30)


def test_the_cache_serves_a_url_once_fetched_without_the_server(tmp_path):
    with UrlServer({"/red.png": png(COLOURS["red"])}) as s:
        url = s.url("/red.png")
        first = UrlFetcher(SETTINGS, cache_dir=tmp_path / "cache").fetch(url)
        missing = UrlFetcher(SETTINGS, cache_dir=tmp_path / "cache").fetch(s.url("/fault/404"))
    key = cache_key(url)
    assert (tmp_path / "cache" / key[:2] / key).read_bytes() == first.data and not first.from_cache
    assert missing.reason == HTTP_404 and len(list((tmp_path / "cache").rglob("*"))) == 2  # one folder, one file
    again = UrlFetcher(SETTINGS, cache_dir=tmp_path / "cache").fetch(url)  # the server is gone
    assert again.from_cache and again.reason is None and again.image.getpixel((0, 0)) == COLOURS["red"]


# ---- process_coco.py --source urls ----------------------------------------------------------------------

def write_list(path, server, n_good=12):
    """n_good coloured squares (captions name the colour), then every fault, as JSON lines."""
    names = list(COLOURS)
    lines = [{"url": server.url(f"/{names[i % 4]}.png?{i}"), "caption": f"a {names[i % 4]} picture"}
             for i in range(n_good)]
    lines += [{"url": server.url(p), "caption": f"fault {p}"} for p in FAULT_REASONS]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture()
def query_server():
    """Serves each colour under any query string too (the list's URLs differ, the pictures repeat)."""
    images = {f"/{name}.png{query}": png(rgb) for query in ["", *(f"?{i}" for i in range(40))]
              for name, rgb in COLOURS.items()}
    with UrlServer(images, huge_bytes=600_000) as s:
        yield s


def test_pre_download_writes_the_coco_layout_and_a_rerun_fetches_only_what_is_missing(tmp_path, query_server):
    write_list(tmp_path / "list.jsonl", query_server)
    argv = ["--url-file", str(tmp_path / "list.jsonl"), "--data-dir", str(tmp_path / "urls"), "--image-size", "16",
            "--vocab-size", "40", "--url-val-every", "4", "--fetch-timeout", "0.6", "--fetch-retries", "0",
            "--max-image-bytes", "500000", "--workers", "1", "--no-progress"]
    meta = process_coco.main(argv)
    faults = {reason: list(FAULT_REASONS.values()).count(reason) for reason in FAULT_REASONS.values()}
    assert meta["source"] == "urls" and meta["skipped_counts"] == faults
    # list images 1..12 are good: 4, 8 and 12 go to val; the faults (13..23) are missing from both splits
    assert meta["splits"]["train"] == {"images": 9, "captions": 9} and meta["splits"]["val"]["images"] == 3
    annotations = json.loads((tmp_path / "urls" / "raw" / "annotations" / "captions_val2017.json").read_text())
    assert [image["id"] for image in annotations["images"]] == [4, 8, 12]
    assert [a["caption"] for a in annotations["annotations"]] == ["a white picture"] * 3  # ids 4, 8, 12: i = 3, 7, 11
    record, images = read_split(tmp_path / "urls" / "processed", "val")
    assert images.shape == (3, 16, 16, 3) and np.abs(images.astype(int) - 255).max() <= 2

    before = list(query_server.requests)
    again = process_coco.main(argv)
    asked = query_server.requests[len(before):]
    assert sorted(asked) == sorted([*FAULT_REASONS, "/fault/loop2"])  # the failures alone, each once again
    assert again["skipped_counts"] == faults and again["splits"] == meta["splits"]

    # an edited list: image 4 (val) is another URL now, and a blue picture, so it is fetched again
    lines = (tmp_path / "list.jsonl").read_text().splitlines()
    lines[3] = json.dumps({"url": query_server.url("/blue.png?3"), "caption": "a blue picture"})
    (tmp_path / "list.jsonl").write_text("\n".join(lines) + "\n")
    before = len(query_server.requests)
    process_coco.main(argv)
    assert "/blue.png?3" in query_server.requests[before:]
    record, images = read_split(tmp_path / "urls" / "processed", "val")
    assert record["captions"][0] == ["a blue picture"] and tuple(images[0, 8, 8]) == (0, 0, 255)

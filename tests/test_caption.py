"""caption.py on image files (bad ones reported, exit status, --json, --top K, --attention) and its
web server over real HTTP on 127.0.0.1 (captions, every refusal, 20 concurrent uploads)."""

import base64
import http.client
import io
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from tiny_checkpoints import save_untrained_captioner

import caption
from captioner.cli import run_script
from captioner.config import (
    CaptionDecoderConfig,
    CaptionerRunConfig,
    DataConfig,
    EvalConfig,
    ViTConfig,
)
from captioner.data.image_cache import build_image_cache
from captioner.evaluation.own_images import ImageCaptioner, cache_size_of
from captioner.serve.server import CaptionRequestHandler, CaptionServer
from captioner.text.tokenizers import EOS_ID, PAD_ID, SOS_ID, train_tokenizer

VIT = ViTConfig(image_size=32, patch_size=8, width=16, depth=1, heads=2)  # a 4 x 4 patch grid
DECODER = CaptionDecoderConfig(width=16, depth=1, heads=2, dropout=0.0)
CACHE_SIZE = 40  # the "training cache" is larger than the ViT's input, as COCO's (256 -> 224)
CAPTIONS = ["a red circle above a blue square.", "a green triangle left of a small red star.",
            "two purple squares on a speckled background.", "a large blue star below a yellow circle."]
UPLOAD_LIMIT = 64 * 1024
REPO = Path(__file__).resolve().parent.parent


def make_tiny_checkpoint(folder):
    """A random-weight captioner checkpoint in train_captioner.py's format (architecture, config and
    tokenizer inside), whose processed data folder holds only a meta.json with a 40 px cache size."""
    processed = folder / "processed"
    processed.mkdir(parents=True, exist_ok=True)
    (processed / "meta.json").write_text(json.dumps({"image_size": CACHE_SIZE}), encoding="utf-8")
    tokenizer = train_tokenizer("bpe", CAPTIONS, 60)
    cfg = CaptionerRunConfig(run_dir=str(folder), decoder=DECODER,
                             data=DataConfig(processed_dir=str(processed), max_caption_len=12),
                             eval=EvalConfig(beam_size=3, alpha=0.6, max_len=7))
    torch.manual_seed(0)
    return save_untrained_captioner(folder / "checkpoint1.pt", VIT, DECODER, cfg, tokenizer.to_text(),
                                    tokenizer.vocab_size, max_len=12)


def draw_image(path, colour, size=(56, 44), fmt=None):
    """A small scene: a coloured disc and a square on gray."""
    image = Image.new("RGB", size, (200, 200, 200))
    draw = ImageDraw.Draw(image)
    draw.ellipse((4, 4, 24, 24), fill=colour)
    draw.rectangle((30, 18, 50, 38), fill=(20, 20, 200))
    image.save(path, format=fmt)
    return path


def png_bytes(colour=(220, 30, 30)):
    buffer = io.BytesIO()
    draw_image(buffer, colour, fmt="PNG")
    return buffer.getvalue()


def bomb_png(width=100_000, height=100_000):
    """A PNG header claiming width x height pixels, a few dozen bytes (as in test_image_io.py)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("caption"))


@pytest.fixture(scope="module")
def captioner(checkpoint):
    return ImageCaptioner.from_checkpoint(checkpoint, torch.device("cpu"))


@pytest.fixture()
def pictures(tmp_path):
    """A folder of two good images, a note (not an image suffix: ignored) and three bad image files."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    draw_image(folder / "b_red.png", (220, 30, 30))
    draw_image(folder / "a_green.jpg", (30, 200, 30))
    (folder / "notes.txt").write_text("not a picture")
    (folder / "c_text.jpg").write_text("this is not a JPEG")
    (folder / "d_truncated.png").write_bytes(png_bytes()[:120])
    (folder / "e_bomb.png").write_bytes(bomb_png())
    return folder


# ---------------------------------------------------------------- the command on files


def test_images_are_preprocessed_as_the_training_cache(captioner, tmp_path):
    photo = draw_image(tmp_path / "photo.jpg", (250, 120, 0), size=(90, 60))
    cache = tmp_path / "cache.npy"
    assert build_image_cache([photo], cache, CACHE_SIZE) == []  # what process_coco.py stores
    assert captioner.image_size == CACHE_SIZE  # the cache size of the processed folder in the checkpoint's config
    assert np.array_equal(captioner.load(photo), np.load(cache)[0])
    assert cache_size_of(tmp_path) is None  # no meta.json: the ViT's own size is used instead


def test_files_and_folders_bad_ones_reported_the_others_captioned(checkpoint, captioner, pictures, capsys):
    missing = pictures.parent / "missing.png"
    records = caption.main(["-c", str(checkpoint), str(pictures), str(missing), "--batch-size", "2",
                            "--no-progress"])
    out, err = capsys.readouterr()
    names = ["a_green.jpg", "b_red.png", "c_text.jpg", "d_truncated.png", "e_bomb.png"]
    assert [r["path"] for r in records] == [str(pictures / n) for n in names] + [str(missing)]  # sorted, no .txt
    reasons = {r["path"].rsplit("/", 1)[-1]: r.get("error") for r in records}
    assert reasons["c_text.jpg"].startswith("not a recognised image")
    assert reasons["d_truncated.png"].startswith(("truncated or corrupt", "not a recognised image"))
    assert reasons["e_bomb.png"].startswith("decompression bomb")
    assert reasons["missing.png"] == "file not found"
    for name, reason in reasons.items():
        if reason:
            assert any(line.startswith("skipped ") and name in line and reason in line for line in err.splitlines())

    # the good ones: exactly what the model's own beam search gives for the preprocessed image
    images = [captioner.load(pictures / "a_green.jpg"), captioner.load(pictures / "b_red.png")]
    x = captioner.transform(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2))
    tokens, scores = captioner.model.generate(x, SOS_ID, EOS_ID, PAD_ID, 7, beam_size=3, alpha=0.6)
    for record, row, score in zip(records[:2], tokens.tolist(), scores.tolist()):
        assert record["caption"] == captioner.tokenizer.decode(row)
        assert record["score"] == pytest.approx(score, abs=1e-4)
        assert f"{record['path']}: {record['caption']}" in out.splitlines()
    assert "captioned 2 of 6 images" in err and "beam 3, alpha 0.6, max_len 7" in err


def test_exit_status_is_non_zero_only_when_nothing_was_captioned(checkpoint, pictures, tmp_path, capsys):
    bad = [str(pictures / n) for n in ("c_text.jpg", "d_truncated.png", "e_bomb.png")]
    with pytest.raises(SystemExit) as exit_info:
        run_script(caption.main, ["-c", str(checkpoint), *bad, "--no-progress"])
    assert exit_info.value.code == 2
    assert "error: no image could be captioned (3 skipped" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        run_script(caption.main, ["-c", str(checkpoint), str(empty), "--no-progress"])
    assert exit_info.value.code == 2
    assert f"skipped {empty}: no image files in this folder" in capsys.readouterr().err

    run_script(caption.main, ["-c", str(checkpoint), *bad, str(pictures / "b_red.png"), "--no-progress"])  # status 0


def test_json_output_and_top_k_beams_with_sorted_scores(checkpoint, pictures, capsys):
    caption.main(["-c", str(checkpoint), str(pictures), "--json", "--top", "3", "--no-progress"])
    records = json.loads(capsys.readouterr().out)  # stdout is exactly one JSON document
    good = [r for r in records if "caption" in r]
    assert len(good) == 2 and len(records) == 5
    for record in good:
        scores = [b["score"] for b in record["beams"]]
        assert len(record["beams"]) == 3 and scores == sorted(scores, reverse=True)
        assert (record["caption"], record["score"]) == (record["beams"][0]["caption"], scores[0])
        assert all(np.isfinite(scores)) and len({b["caption"] for b in record["beams"]}) == 3
    assert all(set(r) == {"path", "error"} for r in records if "caption" not in r)

    # --top K larger than the checkpoint's beam (3): the beam grows to K; with an explicit smaller --beam: refused
    caption.main(["-c", str(checkpoint), str(pictures / "b_red.png"), "--json", "--top", "5", "--no-progress"])
    (record,) = json.loads(capsys.readouterr().out)
    assert len(record["beams"]) == 5
    with pytest.raises(SystemExit):
        run_script(caption.main, ["-c", str(checkpoint), str(pictures), "--top", "4", "--beam", "2"])
    assert "top must be between 1 and the beam size (2)" in capsys.readouterr().err


def test_text_output_of_top_k(checkpoint, pictures, capsys):
    caption.main(["-c", str(checkpoint), str(pictures / "b_red.png"), "--top", "2", "--beam", "4", "--no-progress"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(pictures / "b_red.png")
    assert [line.split()[0] for line in lines[1:]] == ["1", "2"]
    assert float(lines[1].split()[1]) >= float(lines[2].split()[1])


def test_attention_pictures_one_per_image(checkpoint, pictures, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    draw_image(other / "b_red.png", (10, 10, 10))  # the same name as pictures/b_red.png
    out_dir = tmp_path / "attention"
    records = caption.main(["-c", str(checkpoint), str(pictures), str(other), "--attention", str(out_dir),
                            "--no-progress"])
    good = [r for r in records if "caption" in r]
    assert [r["attention"] for r in good] == [str(out_dir / n) for n in ("a_green.png", "b_red.png", "b_red_2.png")]
    for record in good:
        n_words = len(record["caption"].split())
        with Image.open(record["attention"]) as picture:  # the image and one panel per word, 40 px enlarged 4x
            assert picture.format == "PNG"
            assert picture.width == 2 + min(8, 1 + n_words) * (160 + 2)
            assert picture.height == -(-(1 + n_words) // 8) * (14 + 2 + 160 + 2)


def test_bad_arguments(checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        caption.main(["-c", str(checkpoint)])  # neither paths nor --serve
    assert exit_info.value.code == 2 and "--serve" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least 1"):
        caption.main(["-c", str(checkpoint), "x.png", "--batch-size", "0"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_captions(checkpoint, pictures):
    arguments = ["-c", str(checkpoint), str(pictures), "--top", "3", "--no-progress", "--precision", "fp32"]
    on_cpu = caption.main(arguments + ["--device", "cpu"])
    on_cuda = caption.main(arguments + ["--device", "cuda"])
    assert [r.get("caption") for r in on_cuda] == [r.get("caption") for r in on_cpu]
    for a, b in zip(on_cuda, on_cpu):
        if "caption" in a:
            assert [x["score"] for x in a["beams"]] == pytest.approx([x["score"] for x in b["beams"]], abs=1e-3)


# ---------------------------------------------------------------- the web server


class Server:
    """A CaptionServer on 127.0.0.1 at a free port, serving in a thread, with its log in memory."""

    def __init__(self, captioner, **bounds):
        self.log = io.StringIO()
        self.httpd = CaptionServer(captioner, "127.0.0.1", 0, max_upload_bytes=UPLOAD_LIMIT, log=self.log, **bounds)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def request(self, method, path, body=None, headers=None):
        """``(status, JSON or bytes)`` of one request."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        is_json = response.getheader("Content-Type") == "application/json"
        return response.status, json.loads(data) if is_json else data

    def raw(self, data: bytes, hang_up: bool = True) -> bytes:
        """Send bytes as they are, return the whole answer (for requests http.client will not send).
        ``hang_up``: then close the sending side, as a client whose upload was cut off."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            s.sendall(data)
            if hang_up:
                s.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture()
def server(captioner):
    running = Server(captioner)
    yield running
    running.close()


BOUNDARY = "pytestBoundary7MA4YWxkTrZu0gW"


def multipart(fields, boundary=BOUNDARY, close=True):
    """A multipart/form-data body: ``fields`` maps a name to bytes (a file) or str (a text field)."""
    body = b""
    for name, value in fields.items():
        if isinstance(value, bytes):
            head = f'Content-Disposition: form-data; name="{name}"; filename="{name}.png"\r\nContent-Type: image/png'
        else:
            head, value = f'Content-Disposition: form-data; name="{name}"', value.encode()
        body += f"--{boundary}\r\n{head}\r\n\r\n".encode() + value + b"\r\n"
    return body + (f"--{boundary}--\r\n".encode() if close else b"")


def upload(server, image: bytes, **fields):
    body = multipart({"image": image, **fields})
    return server.request("POST", "/caption", body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})


def test_serve_command_binds_localhost_and_stops_on_ctrl_c(checkpoint, pictures):
    command = [sys.executable, "caption.py", "-c", str(checkpoint), "--serve", "--port", "0"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = process.stdout.readline()  # "serving the captioner on http://127.0.0.1:PORT/ ..."
        url = re.search(r"http://127\.0\.0\.1:(\d+)/", first)
        assert url, first
        connection = http.client.HTTPConnection("127.0.0.1", int(url.group(1)), timeout=30)
        body = multipart({"image": (pictures / "b_red.png").read_bytes()})
        connection.request("POST", "/caption", body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read())["caption"]
        connection.close()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=120)  # generous: a loaded CI machine
        except subprocess.TimeoutExpired:
            process.kill()  # never leave a server behind
            process.communicate()
            raise
    assert process.returncode == 0
    assert " POST /caption 200 " in err and err.rstrip().endswith("stopped")


def test_page_is_served_from_memory_and_nothing_else(server):
    status, page = server.request("GET", "/")
    assert status == 200 and b'<input type="file" id="file"' in page and b'value="3"' in page  # the default beam
    assert b"__BEAM__" not in page
    for path in ("/page.html", "/captioner/serve/page.html", "/../caption.py", "/etc/passwd", "/caption"):
        status, answer = server.request("GET", path)
        assert status == 404 and "not found" in answer["error"]


def test_upload_returns_the_caption_beams_and_heat_maps(server, captioner, tmp_path):
    image = png_bytes()
    (tmp_path / "upload.png").write_bytes(image)
    status, answer = upload(server, image)
    assert status == 200

    # the same as captioning the image directly, through the same loader
    expected = captioner.caption([captioner.load(tmp_path / "upload.png")], top=3, attention=True)[0]
    assert answer["caption"] == expected.caption and answer["beam_size"] == 3 and answer["alpha"] == 0.6
    assert [b["caption"] for b in answer["beams"]] == [h.caption for h in expected.beams]
    scores = [b["score"] for b in answer["beams"]]
    assert scores == sorted(scores, reverse=True) and scores[0] == answer["score"]
    for beam, hypothesis in zip(answer["beams"], expected.beams):
        assert [w["word"] for w in beam["words"]] == hypothesis.words
        for word in beam["words"]:  # a heat map at the size the model saw, not the plain image
            picture = decode_png(word["heat"])
            assert picture.size == (CACHE_SIZE, CACHE_SIZE) and word["heat"] != answer["image"]
    assert decode_png(answer["image"]).size == (CACHE_SIZE, CACHE_SIZE)

    # the JSON form, and the beam a request asks for
    document = json.dumps({"image": base64.b64encode(image).decode(), "beam": 1})
    status, single = server.request("POST", "/caption", document, {"Content-Type": "application/json"})
    assert status == 200 and single["beam_size"] == 1 and len(single["beams"]) == 1
    status, five = upload(server, image, beam="5")
    assert status == 200 and len(five["beams"]) == 5


def decode_png(data_url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert data_url.startswith(prefix)
    with Image.open(io.BytesIO(base64.b64decode(data_url[len(prefix):]))) as picture:
        assert picture.format == "PNG"
        return picture.convert("RGB")


MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def test_every_bad_request_gets_its_4xx_and_the_server_keeps_serving(server, monkeypatch):
    good = png_bytes()
    cases = [  # (what, content type, body, status, words of the message)
        ("over the size limit", MULTIPART, multipart({"image": good + b"\0" * UPLOAD_LIMIT}), 413, "limit"),
        ("not an image", MULTIPART, multipart({"image": b"%PDF-1.4 hello"}), 415, "image.png: not a recognised image"),
        ("truncated image", MULTIPART, multipart({"image": good[:200]}), 400, "truncated or corrupt"),
        ("decompression bomb", MULTIPART, multipart({"image": bomb_png()}), 413, "decompression bomb"),
        ("wrong content type", "text/plain", good, 415, "unsupported Content-Type"),
        ("no content type", None, good, 400, "missing Content-Type"),
        ("no boundary", "multipart/form-data", multipart({"image": good}), 400, "boundary"),
        ("unclosed multipart", MULTIPART, multipart({"image": good}, close=False), 400, "closing boundary"),
        ("foreign boundary", MULTIPART, multipart({"image": good}, boundary="other"), 400, "boundary never occurs"),
        ("no image field", MULTIPART, multipart({"picture": good}), 400, "no 'image' file field"),
        ("bad beam", MULTIPART, multipart({"image": good, "beam": "0"}), 400, "beam must be"),
        ("too large a beam", MULTIPART, multipart({"image": good, "beam": "11"}), 400, "beam must be"),
        ("empty body", MULTIPART, b"", 400, "empty body"),
        ("bad JSON", "application/json", b'{"image": ', 400, "malformed JSON"),
        ("JSON without image", "application/json", b'{"picture": "x"}', 400, "must be an object"),
        ("JSON bad base64", "application/json", b'{"image": "not base64!"}', 400, "not valid base64"),
        ("JSON float beam", "application/json",
         json.dumps({"image": base64.b64encode(good).decode(), "beam": 2.5}).encode(), 400, "beam must be"),
    ]
    for what, content_type, body, expected_status, message in cases:
        headers = {"Content-Type": content_type} if content_type else {}
        status, answer = server.request("POST", "/caption", body, headers)
        assert (status, message in answer["error"]) == (expected_status, True), (what, answer)
        assert "caption_upload_" not in answer["error"]  # the server's temporary file is never named
        assert upload(server, good)[0] == 200, f"the server stopped serving after: {what}"

    status, answer = server.request("POST", "/elsewhere", multipart({"image": good}), {"Content-Type": MULTIPART})
    assert status == 404
    no_length = server.raw(b"POST /caption HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n\r\n")
    assert no_length.startswith(b"HTTP/1.0 411 ") and b"missing Content-Length" in no_length
    bad_length = server.raw(b"POST /caption HTTP/1.1\r\nHost: x\r\nContent-Length: 1_0\r\n\r\n0123456789")
    assert bad_length.startswith(b"HTTP/1.0 400 ") and b"bad Content-Length" in bad_length
    partial = (f"POST /caption HTTP/1.1\r\nHost: x\r\nContent-Type: {MULTIPART}\r\nContent-Length: 5000\r\n\r\n"
               f"--{BOUNDARY}\r\n").encode()
    cut = server.raw(partial)  # the client hangs up mid-body
    assert cut.startswith(b"HTTP/1.0 400 ") and b"the body ended after" in cut
    monkeypatch.setattr(CaptionRequestHandler, "timeout", 0.5)
    stalled = server.raw(partial, hang_up=False)  # the client stops sending but keeps the connection open
    assert stalled.startswith(b"HTTP/1.0 408 ") and b"did not arrive within 0.5 s" in stalled
    monkeypatch.undo()
    not_http = server.raw(b"GET / NOT-HTTP\r\n\r\n")  # refused by http.server itself, in JSON too
    assert not_http.startswith(b"HTTP/1.0 400 ") and b'{"error": "Bad request version' in not_http
    assert upload(server, good)[0] == 200

    # one log line per request: client, method, path, status, size, time, and the caption or the error
    expected_lines = 2 * len(cases) + 7
    for _ in range(100):  # a handler logs just after it answers: wait for the last one
        lines = server.log.getvalue().splitlines()
        if len(lines) >= expected_lines:
            break
        time.sleep(0.02)
    assert len(lines) == expected_lines
    assert all(line.startswith("127.0.0.1 ") for line in lines)
    assert any(" POST /caption 413 " in line and "limit" in line for line in lines)
    assert sum(" POST /caption 200 " in line for line in lines) == len(cases) + 1


def counting_threads(function, most: list[int], pause_s: float = 0.01):
    """``function`` wrapped so that ``most[0]`` records the most threads ever inside it at once (each
    call pauses ``pause_s`` first, so that overlapping calls do overlap)."""
    inside, guard = [0], threading.Lock()

    def counted(*args, **kwargs):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(pause_s)
        try:
            return function(*args, **kwargs)
        finally:
            with guard:
                inside[0] -= 1

    return counted


def test_twenty_concurrent_uploads_get_the_captions_of_one_by_one(server):
    colours = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (200, 200, 30), (20, 20, 20)]
    images = [png_bytes(colours[i % len(colours)]) for i in range(20)]
    one_by_one = [upload(server, image) for image in images[: len(colours)]]
    assert all(status == 200 for status, _ in one_by_one)

    captioner = server.httpd.captioner
    most = [0]
    captioner.caption = counting_threads(captioner.caption, most)
    try:
        with ThreadPoolExecutor(20) as pool:
            together = list(pool.map(lambda image: upload(server, image), images))
    finally:
        del captioner.caption
    assert most[0] == 1  # the lock: never two threads in the model
    for i, (status, answer) in enumerate(together):
        expected = one_by_one[i % len(colours)][1]
        assert status == 200
        assert [(b["caption"], b["score"]) for b in answer["beams"]] == \
               [(b["caption"], b["score"]) for b in expected["beams"]]
    assert upload(server, images[0])[0] == 200

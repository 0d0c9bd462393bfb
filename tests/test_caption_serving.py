"""caption.py and its web server beyond the happy path: a Show-and-Tell checkpoint, a retrieval
checkpoint, every method and malformed header refused in JSON, the bounds on connections, slow
clients and decoding, and the command's argument checks."""

import http.client
import json
import os
import runpy
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from test_caption import (
    CACHE_SIZE,
    CAPTIONS,
    MULTIPART,
    REPO,
    VIT,
    Server,
    counting_threads,
    draw_image,
    multipart,
    png_bytes,
    upload,
)
from tiny_checkpoints import save_untrained_captioner, save_untrained_retrieval, write_processed_train_split

import caption
import captioner.evaluation.caption_bank as caption_bank
import captioner.serve.server as server_module
from captioner.config import (
    CaptionDecoderConfig,
    CaptionerRunConfig,
    ContrastiveConfig,
    DataConfig,
    EvalConfig,
    LSTMDecoderConfig,
    RetrievalEvalConfig,
    RetrievalRunConfig,
    TextEncoderConfig,
)
from captioner.evaluation.caption_bank import CaptionRetriever, bank_path
from captioner.evaluation.own_images import ImageCaptioner
from captioner.text.tokenizers import EOS_ID, SOS_ID, train_tokenizer

BANK = [["a red circle above a blue square.", "a red circle over a blue square."],
        ["a green triangle left of a small red star.", "a red circle above a blue square."],  # a repeat
        ["two purple squares on a speckled background."], ["a large blue star below a yellow circle."]]


def make_show_and_tell_checkpoint(folder):
    """test_caption's tiny checkpoint with a Show-and-Tell LSTM decoder (no attention) instead."""
    processed = folder / "processed"
    processed.mkdir(parents=True, exist_ok=True)
    (processed / "meta.json").write_text(json.dumps({"image_size": CACHE_SIZE}), encoding="utf-8")
    tokenizer = train_tokenizer("bpe", CAPTIONS, 60)
    decoder = CaptionDecoderConfig(width=16, depth=1, heads=2)
    cfg = CaptionerRunConfig(run_dir=str(folder), decoder_kind="lstm", decoder=decoder,
                             lstm=LSTMDecoderConfig(embed_dim=8, hidden=16, attention_dim=8),
                             data=DataConfig(processed_dir=str(processed), max_caption_len=12),
                             eval=EvalConfig(beam_size=3, alpha=0.6, max_len=7))
    torch.manual_seed(0)
    return save_untrained_captioner(folder / "checkpoint1.pt", VIT, decoder, cfg, tokenizer.to_text(),
                                    tokenizer.vocab_size, max_len=12)


def make_retrieval_checkpoint(folder):
    """An untrained retrieval checkpoint whose processed training split holds the BANK captions."""
    tokenizer = train_tokenizer("bpe", [c for captions in BANK for c in captions], 60)
    processed = write_processed_train_split(folder / "processed", BANK, tokenizer, CACHE_SIZE)
    cfg = RetrievalRunConfig(run_dir=str(folder), data=DataConfig(processed_dir=str(processed), max_caption_len=48),
                             text=TextEncoderConfig(width=16, depth=1, heads=2),
                             contrastive=ContrastiveConfig(embed_dim=8), eval=RetrievalEvalConfig(top_k=3))
    torch.manual_seed(0)
    return save_untrained_retrieval(folder / "checkpoint1.pt", VIT, cfg, tokenizer.to_text(), tokenizer.vocab_size)


@pytest.fixture(scope="module")
def show_and_tell(tmp_path_factory):
    return make_show_and_tell_checkpoint(tmp_path_factory.mktemp("show_and_tell"))


@pytest.fixture()
def retrieval_checkpoint(tmp_path):
    return make_retrieval_checkpoint(tmp_path / "retrieval")


def serving(captioner, **bounds):
    """test_caption's Server, with the server's bounds (connections, decoding, deadline) set."""
    return Server(captioner, **bounds)


@pytest.fixture()
def server(show_and_tell):
    running = serving(ImageCaptioner.from_checkpoint(show_and_tell, torch.device("cpu")))
    yield running
    running.close()


# ---------------------------------------------------------------- Show and Tell on the page


def test_a_decoder_without_attention_sends_its_caption_and_says_there_are_no_maps(server, tmp_path):
    status, answer = upload(server, png_bytes())
    assert status == 200
    assert answer["attention"] is False  # the page shows each beam's caption as text, and no hover hint
    (tmp_path / "u.png").write_bytes(png_bytes())
    captioner = server.httpd.captioner
    expected = captioner.caption([captioner.load(tmp_path / "u.png")], top=3)[0]
    assert [b["caption"] for b in answer["beams"]] == [h.caption for h in expected.beams]
    assert all(beam["words"] == [] for beam in answer["beams"])


# ---------------------------------------------------------------- refusals, all in JSON


def test_nested_json_and_every_other_method_get_a_json_4xx(server):
    deep = b'{"image": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"  # within the 64 KiB limit
    status, answer = server.request("POST", "/caption", deep, {"Content-Type": "application/json"})
    assert status == 400 and "nested too deeply" in answer["error"]

    for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"):
        status, answer = server.request(method, "/caption", b"x", {"Content-Type": "text/plain"})
        assert status == 405 and f"method {method} not allowed" in answer["error"], method
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("HEAD", "/")
    response = connection.getresponse()
    assert response.status == 405 and response.getheader("Allow") == "GET, POST"
    assert response.getheader("Content-Type") == "application/json" and response.read() == b""  # no body
    connection.close()
    # the raw bytes: HEAD's answer ends with its headers
    head = server.raw(b"HEAD / HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 405 ") and head.endswith(b"\r\n\r\n")

    status, answer = server.request("POST", "/caption", png_bytes(), {"Content-Type": "garbage;;;=="})
    assert status == 415 and "garbage;;;==" in answer["error"] and "text/plain" not in answer["error"]
    status, body = server.request("GET", "/favicon.ico")
    assert status == 204 and body == b""
    too_long = server.raw(b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n")  # http.server's own 414
    assert too_long.startswith(b"HTTP/1.0 414 ") and b'{"error": ' in too_long
    assert upload(server, png_bytes())[0] == 200


# ---------------------------------------------------------------- memory: bounded connections and decoding


def test_a_slow_client_is_dropped_at_the_request_deadline(show_and_tell):
    running = serving(ImageCaptioner.from_checkpoint(show_and_tell, torch.device("cpu")), request_deadline_s=1.0)
    try:
        with socket.create_connection(("127.0.0.1", running.port), timeout=30) as s:
            start = time.monotonic()
            s.sendall(b"GET / HTTP/1.1\r\n")
            dropped = False
            for _ in range(40):  # one header line every 0.2 s: each read arrives well within the 30 s timeout
                try:
                    s.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    dropped = True
                    break
                time.sleep(0.2)
                s.settimeout(0.01)
                try:
                    if s.recv(1) == b"":  # the server closed the connection
                        dropped = True
                        break
                except TimeoutError:
                    pass
                s.settimeout(30)
            assert dropped and time.monotonic() - start < 5
        assert "dropped: its request did not arrive within 1 s" in running.log.getvalue()
        assert upload(running, png_bytes())[0] == 200  # the server serves on

        # a body that trickles in: 408
        body = multipart({"image": png_bytes()})
        head = (f"POST /caption HTTP/1.1\r\nHost: x\r\nContent-Type: {MULTIPART}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", running.port), timeout=30) as s:
            s.sendall(head + body[:100])
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.0 408 ") and b"did not arrive within 1 s" in answer
    finally:
        running.close()


def test_connections_beyond_the_cap_wait_and_decoding_is_bounded(show_and_tell, monkeypatch):
    running = serving(ImageCaptioner.from_checkpoint(show_and_tell, torch.device("cpu")), max_connections=2,
                      decode_slots=1)
    try:
        idle = [socket.create_connection(("127.0.0.1", running.port), timeout=30) for _ in range(2)]
        time.sleep(0.3)
        waiting = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
        answers = []
        thread = threading.Thread(target=lambda: (waiting.request("GET", "/"), answers.append(waiting.getresponse())))
        thread.start()
        thread.join(1.0)
        assert thread.is_alive() and not answers  # both threads are taken: the third connection waits, unread
        idle[0].close()
        thread.join(10)
        assert answers and answers[0].status == 200
        idle[1].close()
        waiting.close()

        most = [0]  # the most uploads decoding at once
        monkeypatch.setattr(server_module, "load_image_bytes", counting_threads(server_module.load_image_bytes, most,
                                                                                pause_s=0.05))
        with ThreadPoolExecutor(6) as pool:
            statuses = [status for status, _ in pool.map(lambda _: upload(running, png_bytes()), range(6))]
        assert statuses == [200] * 6 and most[0] == 1
    finally:
        running.close()


# ---------------------------------------------------------------- the command's arguments and its Ctrl-C


def test_arguments_are_checked_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "maps.txt"
    a_file.write_text("not a folder")
    missing = str(tmp_path / "no_such_checkpoint.pt")  # checked later: these errors come first
    for arguments, message in [
        (["--attention", str(a_file)], f"--attention {a_file}: that is a file"),
        (["--max-len", "0"], "--max-len must be between 1 and 200 tokens, got 0"),
        (["--max-len", "500"], "--max-len must be between 1 and 200 tokens, got 500"),
        (["--cache-size", "0"], "--cache-size must be at least 1, got 0"),
        (["--top", "0"], "--top must be at least 1"),
    ]:
        with pytest.raises(ValueError) as error:
            caption.main(["-c", missing, "x.png", *arguments])
        assert message in str(error.value), arguments
    assert "from 1 to 200" in " ".join(caption.build_parser().format_help().split())


def test_ctrl_c_says_interrupted_without_the_training_scripts_resume_hint(checkpoint_for_cli, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ImageCaptioner, "caption", interrupted)
    monkeypatch.setattr(sys, "argv", ["caption.py", "-c", str(checkpoint_for_cli[0]), str(checkpoint_for_cli[1]),
                                      "--no-progress"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "caption.py"), run_name="__main__")  # the script's own entry point
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert err.strip().endswith("interrupted") and "resume" not in err and "checkpoint" not in err


@pytest.fixture()
def checkpoint_for_cli(show_and_tell, tmp_path):
    return show_and_tell, draw_image(tmp_path / "square.png", (200, 30, 30), size=(48, 48))


def test_dangling_links_are_reported_and_the_centre_crop_is_told(show_and_tell, tmp_path, capsys):
    folder = tmp_path / "pictures"
    folder.mkdir()
    draw_image(folder / "a_square.png", (200, 30, 30), size=(48, 48))
    draw_image(folder / "b_wide.png", (30, 200, 30), size=(90, 60))
    os.symlink(tmp_path / "gone.png", folder / "c_link.png")
    records = caption.main(["-c", str(show_and_tell), str(folder), "--no-progress"])
    err = capsys.readouterr().err
    link = str(folder / "c_link.png")
    assert {"path": link, "error": f"a symbolic link to {tmp_path / 'gone.png'}, which does not exist"} in records
    assert f"skipped {link}: a symbolic link" in err
    kept = {r["path"].rsplit("/", 1)[-1]: r.get("kept") for r in records}
    assert kept["a_square.png"] == 1.0 and kept["b_wide.png"] == pytest.approx(60 / 90, abs=1e-4)
    assert f"note: {folder / 'b_wide.png'}: the centre crop kept the middle 67 % of the longer side" in err
    assert "a_square.png: the centre crop" not in err


def test_the_show_and_tell_checkpoint_captions_on_the_command_line(show_and_tell, tmp_path, capsys):
    image = draw_image(tmp_path / "p.png", (30, 30, 200))
    (record,) = caption.main(["-c", str(show_and_tell), str(image), "--json", "--top", "2", "--no-progress"])
    assert len(record["beams"]) == 2 and record["caption"] == record["beams"][0]["caption"]


# ---------------------------------------------------------------- retrieval: the nearest training captions


def independent_ranking(checkpoint, image_path):
    """The bank's captions ranked for an image, computed here from the model's two towers directly."""
    retriever = CaptionRetriever.from_checkpoint(checkpoint, torch.device("cpu"), "fp32", show=False)
    model, tokenizer_captions = retriever.model, sorted({c for captions in BANK for c in captions})
    from captioner.training.checkpoints import tokenizer_from_text
    from captioner.training.checkpoints import load_checkpoint

    tokenizer = tokenizer_from_text(load_checkpoint(checkpoint)["tokenizer"])
    with torch.no_grad():
        texts = []
        for text in tokenizer_captions:
            ids = torch.tensor([[SOS_ID, *tokenizer.encode(text), EOS_ID]])  # (1, T) no padding
            texts.append(model.encode_texts(ids)[0])
        image = torch.from_numpy(retriever.load(image_path)).permute(2, 0, 1)[None]  # (1, 3, S, S)
        query = model.encode_images(retriever.transform(image))[0]  # (E,)
    similarities = [float(query @ t / (query.norm() * t.norm())) for t in texts]
    return sorted(zip(similarities, tokenizer_captions), reverse=True)


def test_a_retrieval_checkpoint_gives_the_nearest_training_captions(retrieval_checkpoint, tmp_path, capsys,
                                                                    monkeypatch):
    image = draw_image(tmp_path / "photo.png", (220, 30, 30))
    expected = independent_ranking(retrieval_checkpoint, image)
    assert len(expected) == 5  # 6 training captions, one a repeat: the bank holds each text once
    capsys.readouterr()
    (record,) = caption.main(["-c", str(retrieval_checkpoint), str(image), "--json", "--no-progress"])
    err = capsys.readouterr().err
    assert [c["caption"] for c in record["captions"]] == [c for _, c in expected[:3]]  # the checkpoint's top_k = 3
    assert [c["similarity"] for c in record["captions"]] == pytest.approx([s for s, _ in expected[:3]], abs=1e-4)
    assert record["caption"] == expected[0][1] and record["similarity"] == pytest.approx(expected[0][0], abs=1e-4)
    assert "caption bank: 5 distinct training captions, read from" in err  # embedded by independent_ranking

    (record,) = caption.main(["-c", str(retrieval_checkpoint), str(image), "--json", "--top", "5", "--no-progress"])
    assert [c["caption"] for c in record["captions"]] == [c for _, c in expected]
    capsys.readouterr()
    caption.main(["-c", str(retrieval_checkpoint.parent), str(image), "--top", "2", "--no-progress"])  # a run folder
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(image) and [line.split()[0] for line in lines[1:3]] == ["1", "2"]
    assert float(lines[1].split()[1]) == pytest.approx(expected[0][0], abs=1e-4)

    for flag in (["--beam", "2"], ["--max-len", "5"], ["--attention", str(tmp_path / "maps")]):
        with pytest.raises(ValueError, match=f"{flag[0]}: .* is a retrieval checkpoint"):
            caption.main(["-c", str(retrieval_checkpoint), str(image), *flag])


def test_the_caption_bank_is_cached_beside_the_checkpoint_until_its_sources_change(retrieval_checkpoint,
                                                                                  monkeypatch):
    first = CaptionRetriever.from_checkpoint(retrieval_checkpoint, torch.device("cpu"), show=False)
    cached = bank_path(retrieval_checkpoint)
    assert cached.name == "caption_bank_checkpoint1.pt" and cached.is_file()
    assert first.bank_source == f"embedded and saved to {cached}"
    again = CaptionRetriever.from_checkpoint(retrieval_checkpoint, torch.device("cpu"), show=False)
    assert again.bank_source == f"read from {cached}" and torch.equal(again.bank, first.bank)
    assert again.captions == first.captions

    split = retrieval_checkpoint.parent / "processed" / "train.json"
    record = json.loads(split.read_text())
    record["captions"][2] = ["three purple squares on a speckled background."]
    split.write_text(json.dumps(record))  # the training captions changed: the cache is stale
    changed = CaptionRetriever.from_checkpoint(retrieval_checkpoint, torch.device("cpu"), show=False)
    assert changed.bank_source.startswith("embedded") and "three purple squares on a speckled background." in \
        changed.captions

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(caption_bank, "save_checkpoint", read_only)
    os.utime(split)  # stale again; the folder now cannot be written
    in_memory = CaptionRetriever.from_checkpoint(retrieval_checkpoint, torch.device("cpu"), show=False)
    assert in_memory.bank_source.startswith("embedded and kept in memory") and in_memory.bank_size == 5


def test_a_retrieval_checkpoint_without_its_training_split_names_the_folder(retrieval_checkpoint):
    (retrieval_checkpoint.parent / "processed" / "train.json").unlink()
    with pytest.raises(FileNotFoundError, match="train.json is not there"):
        CaptionRetriever.from_checkpoint(retrieval_checkpoint, torch.device("cpu"), show=False)


def test_the_page_serves_a_retrieval_checkpoint(retrieval_checkpoint, tmp_path):
    retriever = CaptionRetriever.from_checkpoint(retrieval_checkpoint, torch.device("cpu"), show=False)
    running = serving(retriever)
    try:
        status, page = running.request("GET", "/")
        assert status == 200 and b"captions shown <input" in page
        status, answer = upload(running, png_bytes(), beam="4")
        assert status == 200 and answer["kind"] == "retrieval" and answer["attention"] is False
        (tmp_path / "u.png").write_bytes(png_bytes())
        expected = retriever.retrieve([retriever.load(tmp_path / "u.png")], 4)[0]
        assert [b["caption"] for b in answer["beams"]] == [h.caption for h in expected.beams]
        assert [b["score"] for b in answer["beams"]] == pytest.approx([h.score for h in expected.beams], abs=1e-4)
        assert answer["bank_size"] == 5 and answer["top_k"] == 4
        assert answer["kept"] == pytest.approx(44 / 56, abs=1e-4)
    finally:
        running.close()


def test_bank_rows_are_unit_vectors_of_the_text_tower(retrieval_checkpoint):
    retriever = CaptionRetriever.from_checkpoint(retrieval_checkpoint, torch.device("cpu"), show=False)
    norms = retriever.bank.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert len(set(retriever.captions)) == len(retriever.captions) == 5
    assert np.isfinite(retriever.bank.numpy()).all()


"""Training from a URL list streamed off a local server with faults (data.source: urls): the captioner and
the retrieval model train, every fault is counted by its reason each epoch, and resume is exact."""

import json

import pytest
import torch
import yaml
from test_urls import COLOURS, FAULT_REASONS, png
from url_server import UrlServer

import process_coco
import train_captioner
import train_retrieval
from captioner.config import ConfigError, UrlDataConfig, ViTConfig, config_to_dict
from captioner.data.url_stream import describe_skips, url_caption_loader

VIT = ViTConfig(image_size=16, patch_size=8, width=16, depth=1, heads=2)
N_GOOD = 28  # + 12 faults = 40 images: 5 blocks of 8, so every image is in every epoch
FETCH = {"source": "urls", "fetch_timeout": 0.6, "fetch_retries": 1, "max_image_bytes": 500_000,
         "fetch_concurrency": 4}


def write_list(path, server, names, faults=()):
    lines = [{"url": server.url(f"/{name}.png?{i}"), "caption": f"a {name} picture"} for i, name in names]
    lines += [{"url": server.url(p), "caption": "a fault"} for p in faults]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The server, a held-out list pre-downloaded for the tokenizer and validation, the streamed list and configs."""
    root = tmp_path_factory.mktemp("url_stream")
    colours = list(COLOURS)
    images = {f"/{c}.png{q}": png(rgb) for q in ["", *(f"?{i}" for i in range(100))] for c, rgb in COLOURS.items()}
    with UrlServer(images, huge_bytes=600_000) as server:
        write_list(root / "held_out.jsonl", server, [(50 + i, colours[i % 4]) for i in range(8)])
        process_coco.main(["--url-file", str(root / "held_out.jsonl"), "--data-dir", str(root / "data"),
                           "--image-size", "16", "--vocab-size", "40", "--url-val-every", "2", "--workers", "1",
                           "--no-progress"])
        write_list(root / "stream.jsonl", server, [(i, colours[i % 4]) for i in range(N_GOOD)], FAULT_REASONS)
        (root / "encoder.yaml").write_text(yaml.safe_dump({"model": config_to_dict(VIT)}))
        data = {"processed_dir": str(root / "data" / "processed"), "batch_size": 8, "max_caption_len": 8,
                "url_file": str(root / "stream.jsonl"), **FETCH}
        train = {"epochs": 2, "lr": 3e-3, "warmup_epochs": 0.5, "log_every": 2}
        (root / "captioner.yaml").write_text(yaml.safe_dump({
            "encoder_config": str(root / "encoder.yaml"), "data": data, "train": train,
            "decoder": {"width": 16, "depth": 1, "heads": 2}, "eval": {"beam_size": 1, "max_len": 6}}))
        (root / "retrieval.yaml").write_text(yaml.safe_dump({
            "encoder_config": str(root / "encoder.yaml"), "data": data, "train": train,
            "text": {"width": 16, "depth": 1, "heads": 2}, "contrastive": {"embed_dim": 8},
            "eval": {"picture_images": 2, "top_k": 1}}))
        yield root, server


EXPECTED_SKIPS = {reason: list(FAULT_REASONS.values()).count(reason) for reason in FAULT_REASONS.values()}


def comparable(history):
    return [{k: v for k, v in h.items() if k not in ("seconds", "captions_per_s", "pairs_per_s")} for h in history]


def captioner(root, name, *extra):
    return train_captioner.main(["--config", str(root / "captioner.yaml"), "--set", f"run_dir={root / name}",
                                 "--no-progress", *extra])


def test_the_captioner_trains_from_the_stream_counts_every_fault_and_resumes_exactly(setup):
    root, server = setup
    straight = captioner(root, "straight")
    assert [h["url_skips"] for h in straight] == [EXPECTED_SKIPS, EXPECTED_SKIPS]  # each epoch meets every fault
    assert all(h["step"] == 5 * (i + 1) for i, h in enumerate(straight))  # 5 blocks, none empty: 5 steps per epoch
    assert straight[-1]["train_loss"] < straight[0]["train_loss"]
    payload = torch.load(root / "straight" / "checkpoint1.pt", weights_only=True)
    assert payload["url_stream"]["epoch"] == 1 and payload["url_stream"]["block"] == 0
    assert payload["url_stream"]["images"] == N_GOOD + len(FAULT_REASONS)

    resumed = train_captioner.main(["-c", str(root / "straight" / "checkpoint1.pt"),
                                    "--set", f"run_dir={root / 'resumed'}", "--no-progress"])
    assert comparable(resumed) == comparable(straight)
    a = torch.load(root / "straight" / "checkpoint2.pt", weights_only=True)["model"]
    b = torch.load(root / "resumed" / "checkpoint2.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_another_list(setup, tmp_path):
    root, server = setup
    captioner(root, "one", "--set", "train.epochs=1")
    lines = (root / "stream.jsonl").read_text().splitlines()
    (tmp_path / "shorter.jsonl").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(ValueError, match="checkpoint1.pt: the run streamed another URL list"):
        train_captioner.main(["-c", str(root / "one" / "checkpoint1.pt"), "--set", f"run_dir={tmp_path / 'x'}",
                              "--set", f"data.url_file={tmp_path / 'shorter.jsonl'}", "--no-progress"])


def test_the_retrieval_model_trains_from_the_stream_with_loader_workers(setup):
    root, server = setup
    run = ["--config", str(root / "retrieval.yaml"), "--set", "train.epochs=1", "--no-progress"]
    in_process = train_retrieval.main([*run, "--set", f"run_dir={root / 'r0'}"])
    workers = train_retrieval.main([*run, "--set", f"run_dir={root / 'r2'}", "--set", "data.num_workers=2"])
    assert in_process[0]["url_skips"] == EXPECTED_SKIPS and in_process[0]["step"] == 5
    assert comparable(workers) == comparable(in_process)  # two workers' pools, the same batches in the same order


def test_the_cache_keeps_an_epoch_of_images_for_the_next(setup):
    root, server = setup
    cache = root / "cache"
    captioner(root, "cached", "--set", "train.epochs=1", "--set", f"data.url_cache_dir={cache}")
    asked = len(server.requests)
    history = captioner(root, "cached2", "--set", "train.epochs=1", "--set", f"data.url_cache_dir={cache}")
    again = server.requests[asked:]
    assert len(list(cache.rglob("*/*"))) == N_GOOD
    assert all(path.startswith("/fault/") for path in again)  # only the failures are asked for again
    assert history[0]["url_skips"] == EXPECTED_SKIPS


def test_describe_skips_lists_the_most_frequent_first():
    assert describe_skips({}) == "none"
    assert describe_skips({"b": 1, "a": 2, "c": 1}) == "2 a; 1 b; 1 c"


def test_a_stream_without_a_list_or_with_length_groups_is_refused():
    with pytest.raises(ConfigError, match="data.url_file: data.source is urls, but no URL list is named"):
        url_caption_loader(UrlDataConfig(source="urls"), tokenizer=None, seed=0)
    with pytest.raises(ConfigError, match="data.group_by_length"):
        url_caption_loader(UrlDataConfig(source="urls", url_file="x.tsv", group_by_length=True), None, 0)

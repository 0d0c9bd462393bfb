"""Published weights in the training script: named weights downloaded from a local server and checked,
train_captioner.py from an official MAE file and from ImageNet ResNet weights, each resumed exactly."""

import hashlib

import numpy as np
import pytest
import torch
import yaml

import evaluate
import train_captioner
import train_encoder
from captioner.evaluation.own_images import ImageCaptioner
from captioner.infra import weights
from captioner.infra.download import DownloadError
from captioner.infra.weights import PublishedWeights, resolve_weights
from captioner.training.checkpoints import CheckpointError, load_checkpoint
from http_server import FileServer
from tiny_checkpoints import (
    TINY_IMAGENET_RESNET,
    official_mae_state,
    saved_bytes,
    tiny_processed_shapes,
    torchvision_resnet_state,
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    tiny_processed_shapes(root / "data")
    (root / "mae_official.pth").write_bytes(saved_bytes({"model": official_mae_state()}))
    resnet = TINY_IMAGENET_RESNET
    config = {
        "data": {"processed_dir": str(root / "data" / "processed"), "batch_size": 10, "max_caption_len": 16},
        "resnet": {"image_size": resnet.image_size, "block": resnet.block, "stem_width": resnet.stem_width,
                   "stem_kernel": resnet.stem_kernel, "stem_pool": resnet.stem_pool, "widths": resnet.widths,
                   "blocks": resnet.blocks},
        "decoder": {"width": 16, "depth": 1, "heads": 2, "dropout": 0.1},
        "unfreeze": {"start_epoch": 1, "decay": 0.5},
        "train": {"epochs": 2, "lr": 3e-3, "warmup_epochs": 0.5, "log_every": 1, "seed": 0},
        "eval": {"beam_size": 2, "max_len": 8, "select_images": 2},
    }
    (root / "captioner.yaml").write_text(yaml.safe_dump(config))
    return root


@pytest.fixture
def server(monkeypatch, tmp_path):
    """A local server holding a tiny torchvision-format ResNet as named weights ``tiny_resnet``, with the
    registry's URLs pointed at it and the cache in tmp_path."""
    data = saved_bytes(torchvision_resnet_state())
    sha = hashlib.sha256(data).hexdigest()
    monkeypatch.setitem(weights.WEIGHTS, "tiny_resnet", PublishedWeights("https://example.invalid/m/tiny-x.pth",
                                                                         "sha256", sha[:8], "resnet"))
    monkeypatch.setitem(weights.WEIGHTS, "tiny_resnet_full", PublishedWeights("https://example.invalid/m/tiny-x.pth",
                                                                              "sha256", sha, "resnet"))
    monkeypatch.setenv("CAPTIONER_WEIGHTS_DIR", str(tmp_path / "cache"))
    with FileServer({"/tiny-x.pth": data, "/resnet101-63fe2227.pth": data}, cuts={"/tiny-x.pth": [100]}) as s:
        monkeypatch.setenv("CAPTIONER_WEIGHTS_URL", s.url("/"))
        yield s, data


def test_named_weights_are_downloaded_resumed_checked_and_cached(server, tmp_path):
    s, data = server
    path = resolve_weights("tiny_resnet", show=False)
    assert path == tmp_path / "cache" / "tiny-x.pth" and path.read_bytes() == data
    assert s.requests[1] == ("/tiny-x.pth", "bytes=100-")  # the cut transfer was resumed
    assert resolve_weights("tiny_resnet", show=False) == path and len(s.requests) == 2  # cached: not fetched again
    path.unlink()
    assert resolve_weights("tiny_resnet_full", show=False).read_bytes() == data  # a full SHA-256 is checked too


def test_a_file_whose_digest_differs_is_refused_and_deleted(server, tmp_path):
    """The real registry entry for resnet101, served the wrong bytes: its published prefix does not match."""
    with pytest.raises(DownloadError, match="published one starts with 63fe2227; the download was deleted"):
        resolve_weights("resnet101", show=False)
    assert list((tmp_path / "cache").iterdir()) == []


def comparable(history):
    return [{k: v for k, v in h.items() if k not in ("seconds", "captions_per_s")} for h in history]


def train_and_resume(workdir, name, *args):
    """Two epochs straight, and the second again from checkpoint1.pt: the same history and weights."""
    base = ["--config", str(workdir / "captioner.yaml"), "--no-progress"]
    straight = train_captioner.main(base + ["--set", f"run_dir={workdir / name}", *args])
    resumed = train_captioner.main(["-c", str(workdir / name / "checkpoint1.pt"), "--no-progress",
                                    "--set", f"run_dir={workdir / (name + '_resumed')}"])
    assert comparable(resumed) == comparable(straight)
    a = load_checkpoint(workdir / name / "checkpoint2.pt", kind="captioner")
    b = load_checkpoint(workdir / (name + "_resumed") / "checkpoint2.pt", kind="captioner")
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert straight[0]["trainable_groups"] == ["decoder"]  # a pretrained encoder starts frozen and unfreezes
    assert any(g.startswith("encoder_layer") for g in straight[1]["trainable_groups"])  # the top one
    return a


def test_official_mae_file_trains_and_resumes_exactly(workdir):
    payload = train_and_resume(workdir, "mae", "-p", str(workdir / "mae_official.pth"))
    assert payload["vit"]["class_token"] and payload["vit"]["norm_eps"] == 1e-6
    assert payload["vit"]["mean"] == [0.485, 0.456, 0.406]  # the preprocessing travels with the weights
    first = load_checkpoint(workdir / "mae" / "checkpoint1.pt", kind="captioner")["model"]
    expected = official_mae_state()
    torch.testing.assert_close(first["encoder.patch_embed.proj.weight"], expected["patch_embed.proj.weight"])
    # evaluate.py and caption.py rebuild the class-token ViT and its preprocessing from the checkpoint alone
    summary = evaluate.main(["-c", str(workdir / "mae" / "checkpoint2.pt"), "--limit", "2", "--no-progress"])
    assert summary["n_images"] == 2 and summary["files"]["attention"] is not None
    captioner = ImageCaptioner.from_checkpoint(workdir / "mae" / "checkpoint2.pt", torch.device("cpu"), "fp32",
                                               beam_size=2, max_len=6)
    assert captioner.transform.mean == (0.485, 0.456, 0.406) and captioner.transform.size == 32
    assert captioner.caption([np.zeros((40, 40, 3), dtype=np.uint8)], top=1)[0]


def test_resnet_with_named_imagenet_weights_trains_and_resumes_exactly(workdir, server):
    payload = train_and_resume(workdir, "resnet", "--set", "encoder_kind=resnet", "--set",
                               "resnet.weights=tiny_resnet")
    assert payload["pretrained"] == "tiny_resnet"
    first = load_checkpoint(workdir / "resnet" / "checkpoint1.pt", kind="captioner")["model"]
    torch.testing.assert_close(first["encoder.stages.1.0.conv2.0.weight"],  # frozen in epoch 0
                               torchvision_resnet_state()["layer2.0.conv2.weight"])


def test_mae_pretraining_continues_from_official_weights_and_resumes_exactly(workdir):
    """train_encoder.py -p: the official encoder *and* decoder, the architecture taken from the file."""
    sets = [f"data.processed_dir={workdir / 'data' / 'processed'}", "data.batch_size=5", "train.epochs=2",
            "n_reconstructions=2", "mae.decoder_depth=5"]  # the file's decoder depth (1) wins
    base = ["--device", "cpu", "--no-progress", *[a for s in sets for a in ("--set", s)]]
    straight = train_encoder.main(["-p", str(workdir / "mae_official.pth"), "--set",
                                   f"run_dir={workdir / 'enc'}", *base])
    resumed = train_encoder.main(["-c", str(workdir / "enc" / "checkpoint1.pt"), "--device", "cpu", "--no-progress",
                                  "--set", f"run_dir={workdir / 'enc_resumed'}"])
    assert resumed[1]["train_loss"] == straight[1]["train_loss"]
    payload = load_checkpoint(workdir / "enc" / "checkpoint2.pt", kind="mae")
    assert payload["config"]["mae"]["decoder_depth"] == 1 and payload["config"]["model"]["class_token"]
    again = load_checkpoint(workdir / "enc_resumed" / "checkpoint2.pt", kind="mae")
    assert all(torch.equal(again["model"][k], t) for k, t in payload["model"].items())
    # the decoder's weights came from the file: MAE's mask token, before any step
    first = train_encoder.main(["-p", str(workdir / "mae_official.pth"), "--set", f"run_dir={workdir / 'enc0'}",
                                *base, "--set", "train.epochs=1", "--set", "train.lr=0", "--set", "train.min_lr=0"])
    assert len(first) == 1
    zero_lr = load_checkpoint(workdir / "enc0" / "checkpoint1.pt", kind="mae")["model"]
    torch.testing.assert_close(zero_lr["decoder.mask_token"], official_mae_state()["mask_token"])
    # and the captioner starts from the continued encoder, class token and all
    history = train_captioner.main(["--config", str(workdir / "captioner.yaml"), "--no-progress", "-p",
                                    str(workdir / "enc"), "--set", f"run_dir={workdir / 'cap_from_enc'}",
                                    "--set", "train.epochs=1"])
    assert len(history) == 1
    with pytest.raises(CheckpointError, match="trained at 32 pixels; another size"):
        train_captioner.main(["--config", str(workdir / "captioner.yaml"), "--no-progress", "-p", str(workdir / "enc"),
                              "--set", f"run_dir={workdir / 'cap_wrong_size'}", "--set", "vit_image_size=48"])

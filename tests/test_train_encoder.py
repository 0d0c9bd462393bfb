"""train_encoder.py end to end on a tiny processed folder: outputs, exact resume, failures."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.optim.optimizer import register_optimizer_step_pre_hook

import train_encoder
from captioner.data.coco_annotations import SplitData
from captioner.data.processed import FORMAT_VERSION, write_split_json
from captioner.infra.fileio import write_json
from captioner.models.mae import MaskedAutoencoder
from captioner.training.checkpoints import (
    CheckpointError,
    encoder_from_mae_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from captioner.training.log import NonFiniteLossError

CONFIG = str(Path(train_encoder.__file__).parent / "configs" / "shapes_encoder.yaml")
SIZE = 16
TINY = [  # a 16 px ViT with 16 patches: each epoch is 3 steps of 8 images
    "model.image_size=16", "model.patch_size=4", "model.width=16", "model.depth=1", "model.heads=2",
    "mae.decoder_width=8", "mae.decoder_depth=1", "mae.decoder_heads=2",
    "data.batch_size=8", "train.epochs=2", "train.log_every=2", "n_reconstructions=3",
]


def write_split(processed, split, n, rng):
    """A processed image split written with captioner/data/processed.py's own writers: blocks on noise."""
    images = rng.integers(0, 60, size=(n, SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(n):
        y, x = rng.integers(0, SIZE - 6, size=2)
        images[i, y : y + 6, x : x + 6] = rng.integers(100, 256, size=3, dtype=np.uint8)
    np.save(processed / f"{split}_images.npy", images)
    ids = list(range(n))
    data = SplitData(split, processed, ids, [f"{i:012d}.jpg" for i in ids], [[] for _ in ids])
    write_split_json(processed / f"{split}.json", data, [[] for _ in ids], SIZE)


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("processed")
    rng = np.random.default_rng(0)
    write_split(folder, "train", 26, rng)  # 3 full batches of 8; the last 2 images are dropped
    write_split(folder, "val", 5, rng)
    write_json(folder / "meta.json", {"format_version": FORMAT_VERSION})
    return folder


def args(processed, run_dir, *extra):
    sets = TINY + [f"data.processed_dir={processed}", f"run_dir={run_dir}", *extra]
    return ["--config", CONFIG, "--device", "cpu", "--no-progress"] + [a for s in sets for a in ("--set", s)]


@pytest.fixture(scope="module")
def two_epochs(processed, tmp_path_factory):
    """One uninterrupted 2-epoch run shared by the tests that only read its outputs."""
    run_dir = tmp_path_factory.mktemp("run")
    history = train_encoder.main(args(processed, run_dir))
    return run_dir, history


def test_run_writes_checkpoints_pictures_and_log(two_epochs):
    run_dir, history = two_epochs
    assert [h["epoch"] for h in history] == [1, 2] and [h["step"] for h in history] == [3, 6]
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in history)
    payload = torch.load(run_dir / "checkpoint2.pt", weights_only=True)  # plain tensors and data only
    assert payload["kind"] == "mae" and payload["epoch"] == 2 and payload["step"] == 6
    assert payload["config"]["model"]["width"] == 16 and payload["history"] == history
    assert set(payload) >= {"model", "optimizer", "scaler", "rng", "config", "history"}
    for epoch in (1, 2):
        with Image.open(run_dir / f"reconstruction{epoch}.png") as im:
            assert im.format == "PNG" and im.size[1] > 3 * SIZE  # three validation images, one per row
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "loss" in line]
    assert [line["step"] for line in steps] == [2, 5]  # every log_every=2 steps of each 3-step epoch
    assert all({"lr", "items_per_s"} <= set(line) for line in steps)
    assert [line["val_loss"] for line in lines if "val_loss" in line] == [h["val_loss"] for h in history]
    assert not list(run_dir.glob(".*tmp*"))  # atomic writes leave no temporary files


def test_checkpoint_gives_the_pretrained_encoder(two_epochs):
    run_dir, _ = two_epochs
    payload = load_checkpoint(run_dir / "checkpoint2.pt", kind="mae")
    encoder = encoder_from_mae_checkpoint(payload, run_dir / "checkpoint2.pt")
    state = {k.removeprefix("encoder."): v for k, v in payload["model"].items() if k.startswith("encoder.")}
    assert all(torch.equal(encoder.state_dict()[k], v) for k, v in state.items())
    assert encoder(torch.zeros(1, 3, SIZE, SIZE)).shape == (1, 16, 16)


def test_resume_continues_exactly(processed, two_epochs, tmp_path):
    run_dir, history = two_epochs
    torch.manual_seed(1234)  # a different global RNG state: the checkpoint must restore it
    resumed = train_encoder.main(["-c", str(run_dir / "checkpoint1.pt"), "--device", "cpu", "--no-progress",
                                  "--set", f"run_dir={tmp_path}"])
    assert [h["epoch"] for h in resumed] == [1, 2]
    assert resumed[0] == history[0]  # carried over from the checkpoint
    assert resumed[1]["train_loss"] == history[1]["train_loss"]  # bit-identical, not just close
    assert resumed[1]["val_loss"] == history[1]["val_loss"]
    straight = torch.load(run_dir / "checkpoint2.pt", weights_only=True)
    again = torch.load(tmp_path / "checkpoint2.pt", weights_only=True)
    assert again["step"] == straight["step"]
    for name, tensor in straight["model"].items():
        assert torch.equal(again["model"][name], tensor), name
    exp_avg = [s["exp_avg"] for s in straight["optimizer"]["state"].values()]
    assert all(torch.equal(a["exp_avg"], b) for a, b in zip(again["optimizer"]["state"].values(), exp_avg))


def test_images_in_device_memory_train_exactly_as_the_loader(processed, two_epochs, tmp_path):
    _, history = two_epochs
    on_device = train_encoder.main(args(processed, tmp_path, "data.on_device=true"))
    assert [(h["train_loss"], h["val_loss"]) for h in on_device] == [(h["train_loss"], h["val_loss"]) for h in history]


def test_every_epoch_draws_new_crops_and_masks_and_a_repeated_epoch_the_same(processed, tmp_path, monkeypatch):
    """The training generator of epoch e must depend on e (else every epoch repeats the crops, flips and
    masks of epoch 0), and rerunning epoch e after a resume must draw what the uninterrupted run drew."""
    real_mae_loss = train_encoder.mae_loss
    seen = []  # the training generators, one per epoch, in the order they were first used
    first_draws = []  # each one's state before its first draw

    def recording(model, transform, images, generator, num_patches):
        if model.training and all(generator is not g for g in seen):  # a new epoch's generator
            seen.append(generator)
            first_draws.append(generator.get_state().clone())
        return real_mae_loss(model, transform, images, generator, num_patches)

    monkeypatch.setattr(train_encoder, "mae_loss", recording)
    train_encoder.main(args(processed, tmp_path / "straight"))
    epoch0, epoch1 = first_draws
    assert not torch.equal(epoch0, epoch1)  # epoch 1 does not repeat epoch 0's crops and masks
    train_encoder.main(["-c", str(tmp_path / "straight" / "checkpoint1.pt"), "--device", "cpu", "--no-progress",
                        "--set", f"run_dir={tmp_path / 'resumed'}"])
    assert len(first_draws) == 3
    assert torch.equal(first_draws[2], epoch1)  # epoch 1 run again draws exactly what it drew the first time
    # and the draws are the train stream of (seed, epoch), not the validation stream's
    cpu = torch.device("cpu")
    seed = load_checkpoint(tmp_path / "straight" / "checkpoint1.pt", kind="mae")["config"]["train"]["seed"]
    assert not torch.equal(epoch0, train_encoder.seeded_generator(cpu, seed, train_encoder.VALIDATION_STREAM).get_state())


def test_gradients_are_clipped_to_train_grad_clip(processed, tmp_path):
    """Whatever does the clipping, the gradients the optimiser steps with have norm <= train.grad_clip
    (clip_grad_norm_ leaves them just below it); a fresh MAE's gradients are far larger than 1e-3."""
    norms = []

    def grad_norm_before_step(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads)))

    handle = register_optimizer_step_pre_hook(grad_norm_before_step)
    try:
        history = train_encoder.main(args(processed, tmp_path, "train.epochs=1", "train.grad_clip=0.001"))
    finally:
        handle.remove()
    assert len(norms) == history[-1]["step"] == 3
    assert 0.001 * (1 - 1e-3) <= min(norms) <= max(norms) <= 0.001 * (1 + 1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_and_images_in_gpu_memory(processed, tmp_path):
    """train.compile_mode=reduce-overhead (CUDA graphs) with data.on_device: trains, validates, saves."""
    argv = args(processed, tmp_path, "data.on_device=true", "train.compile=true", "train.compile_mode=reduce-overhead")
    history = train_encoder.main([a if a != "cpu" else "cuda" for a in argv])
    assert len(history) == 2 and all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in history)
    assert load_checkpoint(tmp_path / "checkpoint2.pt", kind="mae")["step"] == 6


def test_an_unknown_or_corrupt_checkpoint_is_a_clear_error(processed, two_epochs, tmp_path):
    run_dir, _ = two_epochs
    truncated = tmp_path / "checkpoint1.pt"
    truncated.write_bytes((run_dir / "checkpoint1.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="checkpoint1.pt: not a readable checkpoint"):
        train_encoder.main(["-c", str(truncated), "--device", "cpu"])
    wrong_kind = save_checkpoint(tmp_path / "other.pt", {"kind": "captioner", "config": {}})
    with pytest.raises(CheckpointError, match="'captioner' checkpoint, but a 'mae' checkpoint"):
        train_encoder.main(["-c", str(wrong_kind), "--device", "cpu"])
    with pytest.raises(CheckpointError, match="checkpoint1.pt: the weights do not fit"):
        train_encoder.main(["-c", str(run_dir / "checkpoint1.pt"), "--device", "cpu", "--no-progress",
                            "--set", "model.width=32", "--set", f"run_dir={tmp_path}"])


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(processed, two_epochs, tmp_path, monkeypatch):
    run_dir, _ = two_epochs
    good = tmp_path / "checkpoint1.pt"
    good.write_bytes((run_dir / "checkpoint1.pt").read_bytes())
    before = good.read_bytes()
    real_forward = MaskedAutoencoder.forward
    calls = []

    def poisoned(self, *a, **k):  # the second training step of the resumed epoch (step 4) goes NaN
        loss, pred, mask = real_forward(self, *a, **k)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 2 else loss), pred, mask

    monkeypatch.setattr(MaskedAutoencoder, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match="step 4") as info:
        train_encoder.main(["-c", str(good), "--device", "cpu", "--no-progress", "--set", f"run_dir={tmp_path}"])
    assert info.value.step == 4
    assert good.read_bytes() == before
    assert not (tmp_path / "checkpoint2.pt").exists()


def test_script_errors_exit_cleanly(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        train_encoder.run_script(train_encoder.main, ["-c", str(tmp_path / "missing.pt")])
    assert info.value.code == 2
    assert "missing.pt: no such checkpoint file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        train_encoder.run_script(train_encoder.main, ["--config", CONFIG, "--set", "train.epochs=many", "--set", f"run_dir={tmp_path}"])
    assert info.value.code == 2
    assert "train.epochs: expected an integer" in capsys.readouterr().err
    with pytest.raises(ValueError, match="data.group_by_length is a train_captioner.py setting"):
        train_encoder.main(args(tmp_path, tmp_path / "run", "data.group_by_length=true"))


def test_help_describes_the_options(capsys):
    with pytest.raises(SystemExit) as info:
        train_encoder.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--config", "--set", "--device", "--checkpoint", "configs/shapes_encoder.yaml", "masked autoencoder"):
        assert option in out

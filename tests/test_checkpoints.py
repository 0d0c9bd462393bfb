"""captioner/training/checkpoints.py: atomic checkpoints, RNG states and resuming."""

import random

import numpy as np
import pytest
import torch
from torch import nn

from captioner.training.checkpoints import (
    CheckpointError,
    checkpoint_path,
    load_checkpoint,
    load_state_dict_checked,
    resume_from,
    rng_state,
    save_checkpoint,
    set_rng_state,
    training_state,
)
from captioner.training.devices import make_grad_scaler
from captioner.training.optimizer import make_optimizer

from toy_run import CPU, SINGLE, regression_batches, make_run, train_epoch


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    optimizer, scaler = make_run(model)
    _, step = train_epoch(model, optimizer, scaler, regression_batches(2), 0)
    payload = training_state(model, optimizer, scaler, step, epoch=1, kind="toy", config={"a": 1},
                             history=[{"loss": 0.5}], extra="kept")
    path = save_checkpoint(checkpoint_path(tmp_path / "run", 1), payload)
    assert path.name == "checkpoint1.pt" and sorted(p.name for p in path.parent.iterdir()) == ["checkpoint1.pt"]
    raw = torch.load(path, weights_only=True)
    assert raw["kind"] == "toy" and raw["step"] == 2 and raw["epoch"] == 1 and raw["history"] == [{"loss": 0.5}]
    assert raw["config"] == {"a": 1} and raw["extra"] == "kept"
    after_save = torch.rand(3)  # what the RNG draws next in the saved run

    fresh = nn.Linear(2, 1)
    fresh_optimizer, fresh_scaler = make_run(fresh)
    assert resume_from(None, fresh, fresh_optimizer, fresh_scaler, path, SINGLE) == (0, 0, [])  # a fresh run
    torch.manual_seed(123)
    start_epoch, fresh_step, history = resume_from(load_checkpoint(path, kind="toy"), fresh, fresh_optimizer,
                                                   fresh_scaler, path, SINGLE)
    assert (start_epoch, fresh_step, history) == (1, 2, [{"loss": 0.5}])
    assert torch.equal(torch.rand(3), after_save)  # the RNG states came back too
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)
    assert torch.equal(fresh_optimizer.state_dict()["state"][0]["exp_avg"],
                       optimizer.state_dict()["state"][0]["exp_avg"])
    # both continue identically
    train_epoch(model, optimizer, scaler, regression_batches(2, seed=1), step, epoch=1)
    train_epoch(fresh, fresh_optimizer, fresh_scaler, regression_batches(2, seed=1), fresh_step, epoch=1)
    assert torch.equal(fresh.weight, model.weight)


def test_rng_state_survives_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(torch.load(path, weights_only=True)["rng"])
    got = (random.random(), np.random.rand(), torch.rand(1))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pt: no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pt: not a readable checkpoint"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: not a checkpoint of this project"):
        load_checkpoint(foreign)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": 1, "model": nn.Linear(1, 1)}, pickled)  # a whole module needs unsafe unpickling
    with pytest.raises(CheckpointError, match="pickled.pt: not a readable checkpoint"):
        load_checkpoint(pickled)
    ok = save_checkpoint(tmp_path / "ok.pt", {"kind": "mae"})
    with pytest.raises(CheckpointError, match="'mae' checkpoint, but a 'captioner' checkpoint"):
        load_checkpoint(ok, kind="captioner")
    with pytest.raises(CheckpointError, match="src.pt: the weights do not fit"):
        load_state_dict_checked(nn.Linear(2, 2), nn.Linear(3, 2).state_dict(), "src.pt")


def test_restore_into_a_different_optimiser_is_a_checkpoint_error(tmp_path):
    model = nn.Linear(2, 1)
    optimizer, scaler = make_run(model)
    _, step = train_epoch(model, optimizer, scaler, regression_batches(1), 0)
    payload = training_state(model, optimizer, scaler, step, epoch=1, kind="toy", config={}, history=[])
    other = nn.Linear(2, 1)
    opt = make_optimizer([{"params": [other.weight]}, {"params": [other.bias]}, {"params": []}], 0.1, (0.9, 0.95), CPU)
    with pytest.raises(CheckpointError, match="ck.pt: the optimiser state does not fit"):
        resume_from(payload, other, opt, make_grad_scaler(CPU, "fp32"), "ck.pt", SINGLE)


def test_write_failure_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "checkpoint1.pt", {"kind": "toy", "value": 1})

    def broken_save(obj, f):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"kind": "toy", "value": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["value"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint1.pt"]  # no temporary file left behind


def test_resuming_a_run_without_loss_scaling_under_fp16_starts_a_fresh_scaler():
    """A bf16/fp32 run stores the state of a disabled GradScaler ({}); resuming it with fp16 (an older
    GPU, or --set train.precision=fp16) starts the enabled scaler from its defaults (loading {} into it
    would be a raw RuntimeError)."""
    model = nn.Linear(2, 1)
    optimizer, scaler = make_run(model)
    payload = training_state(model, optimizer, scaler, 0, epoch=1, kind="toy", config={}, history=[])
    assert payload["scaler"] == {}
    fp16_model = nn.Linear(2, 1)
    fp16_optimizer, _ = make_run(fp16_model)
    fp16_scaler = torch.amp.GradScaler("cpu", enabled=True)  # what make_grad_scaler gives for fp16 (on CUDA)
    assert resume_from(payload, fp16_model, fp16_optimizer, fp16_scaler, "ck.pt", SINGLE) == (1, 0, [])
    assert fp16_scaler.is_enabled() and fp16_scaler.get_scale() == 2.0**16  # GradScaler's default initial scale
    assert fp16_scaler.state_dict() == torch.amp.GradScaler("cpu", enabled=True).state_dict()
    assert torch.equal(fp16_model.weight, model.weight)  # the rest of the state was restored


def test_an_fp16_run_resumes_its_loss_scale():
    model = nn.Linear(2, 1)
    optimizer, _ = make_run(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=True)
    payload = training_state(model, optimizer, scaler, 0, epoch=1, kind="toy", config={}, history=[])
    for scaler, scale in ((torch.amp.GradScaler("cpu", enabled=True), 1024.0),
                          (make_grad_scaler(CPU, "fp32"), 1.0)):  # an fp16 run resumed in fp32/bf16: no scaling
        fresh = nn.Linear(2, 1)
        resume_from(payload, fresh, make_run(fresh)[0], scaler, "ck.pt", SINGLE)
        assert scaler.get_scale() == scale

"""The shared machinery of captioner/training/, captioner/config.py and captioner/cli.py."""

import argparse
import json
import random
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from captioner.cli import add_run_arguments, resolve_run_config, run_script
from captioner.config import (
    CaptionerRunConfig,
    ConfigError,
    EncoderRunConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
)
from captioner.infra.compile import maybe_compile
from captioner.training import devices
from captioner.training import log as log_module
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
from captioner.training.devices import (
    autocast,
    make_grad_scaler,
    resolve_device,
    resolve_precision,
    setup_device,
)
from captioner.training.distributed import DistInfo, weighted_mean
from captioner.training.log import JsonlLogger, LossMeter, NonFiniteLossError
from captioner.training.optimizer import make_optimizer, param_groups
from captioner.training.schedule import lr_at_step

CPU = torch.device("cpu")
SINGLE = DistInfo(rank=0, world_size=1, local_rank=0, is_main=True, device=CPU)  # a plain (not torchrun) run

# ---- config -------------------------------------------------------------------------------------


def test_load_config_with_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("run_dir: runs/x\ntrain:\n  lr: 3e-4\n  epochs: 3\nmodel:\n  width: 64\n")
    cfg = load_config(EncoderRunConfig, path, ["train.epochs=5", "mae.norm_pix_loss=false", "splits=[train, unlabeled]"])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)  # YAML reads "3e-4" as a string
    assert cfg.train.epochs == 5 and cfg.model.width == 64 and cfg.model.depth == 6  # defaults fill the rest
    assert cfg.mae.norm_pix_loss is False and cfg.splits == ["train", "unlabeled"]
    assert config_from_dict(EncoderRunConfig, config_to_dict(cfg)) == cfg  # what checkpoints store round-trips


@pytest.mark.parametrize("text, message", [
    ("train:\n  lrr: 1.0\n", "unknown key 'lrr'"),
    ("train:\n  epochs: 2.5\n", "train.epochs: expected an integer"),
    ("train:\n  compile: 1\n", "train.compile: expected true or false"),
    ("train:\n  compile_mode: fast\n", "train.compile_mode: expected one of default, reduce-overhead, max-autotune"),
    ("model: 3\n", "model: expected a mapping"),
    ("splits: train\n", "splits: expected a list"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("train: [unclosed\n", "not valid YAML"),
])
def test_bad_config_files_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(EncoderRunConfig, path)
    assert "bad.yaml" in str(info.value)


def test_bad_overrides_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(EncoderRunConfig, None, ["train.lr"])
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        load_config(EncoderRunConfig, None, ["train.nope=1"])
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(EncoderRunConfig, tmp_path / "absent.yaml")


def test_apply_overrides_does_not_mutate_its_input():
    data = {"train": {"lr": 1.0}}
    out = apply_overrides(data, ["train.lr=2.0", "model.width=8"])
    assert out == {"train": {"lr": 2.0}, "model": {"width": 8}}
    assert data == {"train": {"lr": 1.0}}


def test_optional_and_int_to_float_fields():
    @dataclass
    class Example:
        maybe: int | None = None
        ratio: float = 0.5
        names: list[str] = field(default_factory=list)

    assert config_from_dict(Example, {"maybe": None, "ratio": 1}).ratio == 1.0
    assert config_from_dict(Example, {"maybe": 3}).maybe == 3
    with pytest.raises(ConfigError, match="names\\[1\\]: expected a string"):
        config_from_dict(Example, {"names": ["a", 2]})
    with pytest.raises(ConfigError, match="ratio: expected a number"):
        config_from_dict(Example, {"ratio": True})


# ---- devices, precision, schedule, optimiser ----------------------------------------------------


@pytest.mark.parametrize("amx", [True, False])
def test_cpu_training_takes_bf16_only_on_a_cpu_with_bf16_matrix_units(monkeypatch, tmp_path, amx):
    monkeypatch.setattr(devices, "cpu_has_bf16_matrix_units", lambda: amx)
    assert resolve_precision("auto", CPU, training=True) == ("bf16" if amx else "fp32")
    assert resolve_precision("auto", CPU) == "fp32"
    train = load_config(CaptionerRunConfig, Path(__file__).parents[1] / "configs" / "shapes_captioner.yaml").train
    assert train.precision == "auto"
    assert setup_device("cpu", train, tmp_path / "run")[1] == ("bf16" if amx else "fp32")


def test_the_amx_probe_answers_without_failing():
    assert devices.cpu_has_bf16_matrix_units() in (True, False)


def test_devices_and_precision():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
    assert resolve_precision("auto", CPU) == "fp32"  # inference on a CPU: fp32 on every CPU
    assert resolve_precision("bf16", CPU) == "bf16"
    assert resolve_precision("fp32", CPU, training=True) == "fp32"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("fp8", CPU)
    a = torch.randn(4, 4)
    with autocast(CPU, "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(CPU, "fp32"):
        assert (a @ a).dtype == torch.float32
    assert not make_grad_scaler(CPU, "fp32").is_enabled()
    assert not make_grad_scaler(CPU, "bf16").is_enabled()


def test_lr_schedule_is_warmup_then_cosine():
    lrs = [lr_at_step(s, 1.0, 0.1, 10, 110) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))  # linear warm-up rises
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.55)  # half-way down the cosine: (1.0 + 0.1) / 2
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:111]))  # then never rises
    assert lrs[110] == lrs[119] == 0.1
    assert lr_at_step(0, 1.0, 0.0, 0, 10) == 1.0  # no warm-up


def test_param_groups_exempt_biases_norms_and_tokens():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 4)
            self.norm = nn.LayerNorm(4)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, 4))
            self.pos_embed = nn.Parameter(torch.zeros(1, 3, 4))

    net = Net()
    groups = param_groups(net.named_parameters(), weight_decay=0.05, name="enc")
    decay = [g for g in groups if g["weight_decay"] > 0]
    assert len(decay) == 1 and decay[0]["params"] == [net.linear.weight]
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert no_decay == {id(net.linear.bias), id(net.norm.weight), id(net.norm.bias), id(net.mask_token),
                        id(net.pos_embed)}
    assert all(g["name"] == "enc" for g in groups)  # the key of the group's unfreeze lr multiplier
    assert all(set(g) == {"params", "weight_decay", "name"} for g in groups)  # the scripts set the lr
    only_bias = param_groups([("b", nn.Parameter(torch.zeros(3)))], 0.1)
    assert len(only_bias) == 1 and only_bias[0]["name"] == "all"  # empty groups dropped; the default name


# ---- the training loop's pieces: the loss meter, the validation mean ---------------------------------


class FakeClock:
    """``time.perf_counter`` for LossMeter, advanced by hand, so that items/s has a known value."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(log_module, "time", types.SimpleNamespace(perf_counter=fake.perf_counter, time=lambda: 0.0))
    return fake


def test_loss_meter_windows_epoch_mean_and_throughput(clock):
    meter = LossMeter(CPU)  # created at t = 100 s: the first window starts there
    losses = {10: 1.0, 11: 2.0, 12: 3.0, 13: 4.0, 14: 5.0}  # step -> loss; 8 items per step
    for step in (10, 11):
        meter.add(torch.tensor(losses[step]), step, 8)
    assert meter.window_steps == 2
    clock.now = 102.0
    assert meter.window(12) == pytest.approx((1.5, 8.0))  # (1 + 2) / 2; 16 items in 2 s
    assert meter.window_steps == 0  # the next window starts empty, at t = 102 s
    for step in (12, 13, 14):
        meter.add(torch.tensor(losses[step], requires_grad=True), step, 8)  # a loss with a graph is detached
    clock.now = 106.0
    assert meter.window(15) == pytest.approx((4.0, 6.0))  # (3 + 4 + 5) / 3: steps 12-14 only; 24 items in 4 s
    assert meter.epoch_mean(15) == pytest.approx(3.0)  # (1 + 2 + 3 + 4 + 5) / 5: every step of the epoch
    assert LossMeter(CPU).epoch_mean(0) == 0.0  # an epoch without steps
    clock.now = 107.0
    meter.add(torch.tensor(1.0), 15, 3)
    assert meter.window(16)[1] > 0  # items/s: 3 items in 1 s


def test_non_finite_loss_is_raised_at_the_next_read_naming_the_first_bad_step(clock):
    meter = LossMeter(CPU)
    meter.add(torch.tensor(1.0), 10, 8)
    assert meter.window(11)[0] == 1.0  # finite so far
    meter.add(torch.tensor(float("nan")), 11, 8)  # the first bad step: 11
    meter.add(torch.tensor(float("inf")), 12, 8)  # adding does not read the device, so nothing raises yet
    meter.add(torch.tensor(2.0), 13, 8)
    with pytest.raises(NonFiniteLossError, match="step 11") as info:
        meter.window(14)
    assert info.value.step == 11
    with pytest.raises(NonFiniteLossError) as info:  # the epoch's mean stops there too
        meter.epoch_mean(14)
    assert info.value.step == 11
    with pytest.raises(NonFiniteLossError) as info:
        meter.check_finite(14)
    assert info.value.step == 11


def regression_batches(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.tensor([[2.0], [-1.0]])
    out = []
    for _ in range(n):
        x = torch.randn(8, 2, generator=g)
        out.append({"x": x, "y": x @ w})
    return out


def mse_loss_fn(model, batch):
    return nn.functional.mse_loss(model(batch["x"]), batch["y"]), batch["x"].shape[0]


def make_run(model, lr=0.1):
    """The optimiser and (fp32: disabled) gradient scaler of a toy run, as the scripts build them."""
    return make_optimizer(param_groups(model.named_parameters(), 0.0), lr, (0.9, 0.95), CPU), make_grad_scaler(CPU, "fp32")


def train_epoch(model, optimizer, scaler, batches, step, epoch=0, lr=0.1, log_every=2, logger=None):
    """One epoch of the training scripts' loop (train_encoder.py, section 4) on the CPU in fp32.

    Returns ``(mean training loss, step)``.
    """
    model.train()
    parameters = [p for g in optimizer.param_groups for p in g["params"]]
    meter = LossMeter(CPU)
    for batch in batches:
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(CPU, "fp32"):
            loss, n_items = mse_loss_fn(model, batch)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        meter.add(loss, step, n_items)
        step += 1
        if meter.window_steps == log_every:
            window_loss, items_per_s = meter.window(step)
            if logger:
                logger.log(epoch=epoch, step=step, loss=window_loss, lr=lr, items_per_s=items_per_s)
    return meter.epoch_mean(step), step


@torch.no_grad()
def validation_loss(model, batches) -> float:
    """The scripts' validation mean: losses weighted by their batch's items."""
    model.eval()
    total, count = torch.zeros(()), 0
    for batch in batches:
        loss, n_items = mse_loss_fn(model, batch)
        total += loss * n_items
        count += n_items
    return weighted_mean(total, count, SINGLE)


def test_the_scripts_loop_learns_counts_steps_and_logs(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    optimizer, scaler = make_run(model)
    logger = JsonlLogger(tmp_path / "log.jsonl")
    batches = regression_batches()
    first = validation_loss(model, batches)
    step, losses = 0, []
    for epoch in range(5):
        loss, step = train_epoch(model, optimizer, scaler, batches, step, epoch, logger=logger)
        losses.append(loss)
    assert step == 30
    assert losses[-1] < losses[0] and validation_loss(model, batches) < first / 2
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(2, 31, 2))
    assert lines[0]["epoch"] == 0 and lines[0]["lr"] == 0.1 and lines[0]["items_per_s"] > 0


def test_validation_mean_weights_batches_by_items():
    assert weighted_mean(torch.tensor(1.0 * 1 + 4.0 * 3), 4, SINGLE) == pytest.approx((1.0 * 1 + 4.0 * 3) / 4)
    assert weighted_mean(torch.zeros(()), 0, SINGLE) == 0.0  # no batches
    model = nn.Linear(1, 1)
    validation_loss(model, [{"x": torch.ones(2, 1), "y": torch.zeros(2, 1)}])
    assert not model.training  # evaluation runs in eval mode


# ---- checkpoints --------------------------------------------------------------------------------


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


# ---- cli ----------------------------------------------------------------------------------------


def parse(argv):
    parser = argparse.ArgumentParser()
    add_run_arguments(parser, default_config="configs/x.yaml")
    return parser.parse_args(argv)


def test_resolve_run_config_from_file_or_checkpoint(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 3\n")
    cfg, payload = resolve_run_config(parse(["--config", str(path), "--set", "train.lr=0.5"]), EncoderRunConfig, "mae")
    assert payload is None and cfg.train.epochs == 3 and cfg.train.lr == 0.5
    ckpt = save_checkpoint(tmp_path / "checkpoint3.pt", {"kind": "mae", "config": config_to_dict(cfg)})
    resumed, payload = resolve_run_config(parse(["-c", str(ckpt), "--set", "train.epochs=5"]), EncoderRunConfig, "mae")
    assert payload["kind"] == "mae"
    assert resumed.train.epochs == 5 and resumed.train.lr == 0.5  # stored config + new overrides
    with pytest.raises(CheckpointError, match="'mae' checkpoint, but a 'captioner'"):
        resolve_run_config(parse(["-c", str(ckpt)]), EncoderRunConfig, "captioner")
    assert parse([]).config == "configs/x.yaml" and parse([]).device == "auto"


def test_run_script_turns_expected_errors_into_exit_status_2(capsys):
    def failing(argv):
        raise ConfigError("bad.yaml: unknown key 'x'")

    with pytest.raises(SystemExit) as info:
        run_script(failing, [])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: bad.yaml: unknown key 'x'"
    with pytest.raises(SystemExit) as info:
        run_script(lambda argv: (_ for _ in ()).throw(NonFiniteLossError(7)), [])
    assert info.value.code == 2 and "step 7" in capsys.readouterr().err


# ---- edge cases of resuming, configs and compiling ---------------------------------------------------


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


def test_a_checkpoint_without_a_stored_config_is_a_checkpoint_error(tmp_path):
    ckpt = save_checkpoint(tmp_path / "checkpoint1.pt", {"kind": "mae", "model": {}})
    with pytest.raises(CheckpointError, match="checkpoint1.pt"):
        resolve_run_config(parse(["-c", str(ckpt)]), EncoderRunConfig, "mae")


def test_compile_modes_are_checked_even_without_compiling():
    model = nn.Linear(2, 2)
    assert maybe_compile(model, False, mode="reduce-overhead") is model
    with pytest.raises(ValueError, match="unknown train.compile_mode 'fast'"):
        maybe_compile(model, False, mode="fast")

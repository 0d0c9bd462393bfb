"""captioner/training/distributed.py and torchrun training: two processes on 127.0.0.1 (gloo) against one.

Starting processes costs seconds on a small machine (DDP alone imports torch._dynamo), so every
two-process scenario runs in one start of two workers (the ``two_processes`` fixture): each sets
the variables torchrun would set, runs the scenarios in turn and saves what it saw; the tests then
compare that with single-process references computed here. The workers are spawned, not forked:
by the time this module runs, earlier tests have started threads (HTTP servers, a browser driver),
and a fork taken while one of them holds a lock can leave a worker waiting on it forever.
"""

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import process_coco
import train_captioner
import train_encoder
from captioner.config import (
    CaptionDecoderConfig,
    TrainConfig,
    UnfreezeConfig,
    ViTConfig,
)
from captioner.data.loaders import EpochBatchSampler
from captioner.models.captioner import build_captioner, teacher_forcing_loss
from captioner.training.checkpoints import (
    load_checkpoint,
    resume_from,
    save_checkpoint,
    training_state,
)
from captioner.training.devices import make_grad_scaler
from captioner.training.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup,
    init_distributed,
    launched_by_torchrun,
    rng_states_by_rank,
    weighted_mean,
    wrap_ddp,
)
from captioner.training.log import JsonlLogger, LossMeter, NonFiniteLossError
from captioner.training.optimizer import make_optimizer, param_groups
from captioner.training.schedule import lr_at_step
from captioner.training.unfreeze import set_trainable, unfreeze_schedule

WORLD = 2
TIMEOUT_S = 120
BATCH = 8  # the single process's batch; each of the two processes takes BATCH // WORLD
N_SAMPLES = 16  # two steps per epoch
STEPS_PER_EPOCH = N_SAMPLES // BATCH
CPU = torch.device("cpu")
SINGLE = DistInfo(rank=0, world_size=1, local_rank=0, is_main=True, device=CPU)  # a plain (not torchrun) run
TOY_TRAIN = TrainConfig(epochs=2, lr=0.05, min_lr=0.01, warmup_epochs=0.0, log_every=1, grad_clip=1.0)
CONFIGS = Path(train_encoder.__file__).parent / "configs"
TINY_ENCODER = [  # a 32 px ViT with 16 patches; 16 training images, 4 per process and step: 2 steps per epoch
    "model.image_size=32", "model.patch_size=8", "model.width=16", "model.depth=1", "model.heads=2",
    "mae.decoder_width=8", "mae.decoder_depth=1", "mae.decoder_heads=2", "data.batch_size=4",
    "train.log_every=1", "n_reconstructions=2",
]
TINY_CNN_LSTM = [  # the ladder's ResNet + Show-Attend-Tell row, shrunk: batch norm and the attention term under DDP
    "data.batch_size=20", "resnet.image_size=32", "resnet.stem_width=8", "resnet.widths=[8, 16]",
    "resnet.blocks=[1, 1]", "lstm.embed_dim=8", "lstm.hidden=16", "lstm.attention_dim=8", "train.log_every=1",
    "eval.select_images=2", "eval.beam_size=2", "eval.max_len=6",
]
TINY_CAPTIONER = [  # 20 captions = 4 images and their 5 captions per process and step: 2 steps per epoch
    "data.batch_size=20", "decoder.width=16", "decoder.depth=1", "decoder.heads=2", "decoder.dropout=0.1",
    "unfreeze.start_epoch=1", "train.log_every=1", "eval.select_images=2", "eval.beam_size=2", "eval.max_len=6",
]


# ---- helpers: the scripts' command lines, and the toy regression both sides train ------------------


def script_args(config: str, workdir: Path, *sets: str) -> list[str]:
    """A training script's command line on the tiny processed data, CPU, no progress bars."""
    sets = (f"data.processed_dir={workdir / 'data' / 'processed'}",) + sets
    overrides = [a for s in sets for a in ("--set", s)]
    return ["--config", str(CONFIGS / config), "--device", "cpu", "--no-progress"] + overrides


def toy_model(seed: int) -> nn.Module:
    """A float64 MLP (so that 2 x B/2 and 1 x B agree to ~1e-12, not float32's ~1e-6)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def toy_batches(epoch: int, batch_size: int, num_replicas: int = 1, rank: int = 0, n: int = N_SAMPLES,
                drop_last: bool = True) -> list[dict]:
    """Epoch ``epoch``'s batches of a fixed regression set, in EpochBatchSampler's (seed, epoch) order."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=generator, dtype=torch.float64)  # (n, 3)
    y = torch.sin(x.sum(1, keepdim=True))  # (n, 1)
    sampler = EpochBatchSampler(n, batch_size, shuffle=True, seed=0, drop_last=drop_last,
                                num_replicas=num_replicas, rank=rank)
    sampler.set_epoch(epoch)
    return [{"x": x[idx], "y": y[idx]} for idx in sampler]


def mse_loss(model, batch):
    return nn.functional.mse_loss(model(batch["x"]), batch["y"]), batch["x"].shape[0]


@dataclass
class ToyRun:
    """What a training script holds for the toy model: the plain module (what checkpoints store), what
    runs (DDP-wrapped under two processes), the optimiser, the (fp32: disabled) scaler, the step."""

    model: nn.Module
    train_model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    info: DistInfo
    run_dir: Path
    step: int = 0

    def state(self, epoch: int, **extra) -> dict:
        return training_state(self.model, self.optimizer, self.scaler, self.step, epoch, "toy", {}, [], **extra)


def toy_run(model, train_model, run_dir, info=SINGLE) -> ToyRun:
    optimizer = make_optimizer(param_groups(model.named_parameters(), 0.05), TOY_TRAIN.lr, (0.9, 0.95), CPU)
    return ToyRun(model, train_model, optimizer, make_grad_scaler(CPU, "fp32"), info, Path(run_dir))


def train_epoch(run: ToyRun, batches, loss_fn, epoch: int) -> float:
    """One epoch of the scripts' training loop (train_encoder.py, section 4) with TOY_TRAIN's schedule.

    [distributed] The losses are averaged over the processes (LossMeter with ``all_reduce_mean``),
    and only rank 0 writes ``run_dir/log.jsonl``. Returns the epoch's mean loss.
    """
    total_steps = TOY_TRAIN.epochs * STEPS_PER_EPOCH
    warmup_steps = round(TOY_TRAIN.warmup_epochs * STEPS_PER_EPOCH)
    meter = LossMeter(CPU, all_reduce_mean if run.info.distributed else None)
    logger = JsonlLogger(run.run_dir / "log.jsonl") if run.info.is_main else None
    parameters = [p for group in run.optimizer.param_groups for p in group["params"]]
    run.train_model.train()
    for batch in batches:
        lr = lr_at_step(run.step, TOY_TRAIN.lr, TOY_TRAIN.min_lr, warmup_steps, total_steps)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        loss, n_items = loss_fn(run.train_model, batch)
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, TOY_TRAIN.grad_clip)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.optimizer.zero_grad(set_to_none=True)
        meter.add(loss, run.step, n_items)
        run.step += 1
        if meter.window_steps == TOY_TRAIN.log_every:
            window_loss, items_per_s = meter.window(run.step)
            if logger:
                logger.log(epoch=epoch, step=run.step, loss=window_loss, lr=lr, items_per_s=items_per_s)
    return meter.epoch_mean(run.step)


@torch.no_grad()
def validation_loss(run: ToyRun, batches) -> float:
    """The scripts' validation mean: losses weighted by items, [distributed] over every process's share."""
    run.train_model.eval()
    total, count = torch.zeros((), dtype=torch.float64), 0
    for batch in batches:
        loss, n_items = mse_loss(run.train_model, batch)
        total += loss * n_items
        count += n_items
    return weighted_mean(total, count, run.info)


def single_process_run(run_dir, epochs, resume=None) -> ToyRun:
    """The reference: one process, batch BATCH; returns the run after ``epochs`` (from ``resume`` on)."""
    model = toy_model(0)
    run = toy_run(model, model, run_dir)
    start, run.step, _ = resume_from(resume, model, run.optimizer, run.scaler, "checkpoint", SINGLE)
    for epoch in range(start, epochs):
        train_epoch(run, toy_batches(epoch, BATCH), mse_loss, epoch)
    return run


def parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def without_timing(history: list[dict]) -> list[dict]:
    """A script's history without its wall-clock fields."""
    return [{k: v for k, v in h.items() if k not in ("seconds", "images_per_s", "captions_per_s")} for h in history]


def single_process_payload(payload: dict) -> dict:
    """A two-process checkpoint as one process would have saved the same state: rank 0's RNG states,
    no per-rank list. Checks first that the checkpoint's own RNG states are rank 0's."""
    by_rank = payload["rng_by_rank"]
    assert len(by_rank) == WORLD
    assert torch.equal(payload["rng"]["torch"], by_rank[0]["torch"])  # written by rank 0
    assert not torch.equal(by_rank[0]["torch"], by_rank[1]["torch"])  # the processes' dropout streams differ
    single = {k: v for k, v in payload.items() if k != "rng_by_rank"}
    single["rng"] = by_rank[0]
    return single


# ---- what each of the two processes does ---------------------------------------------------------


def _worker(rank: int, ports: list[int], workdir: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    seen = {"info": info, "launched": launched_by_torchrun()}
    seen["mean"] = all_reduce_mean(torch.tensor([1.0 + 2.0 * rank]))  # 1 and 3 -> 2
    seen["broadcast"] = broadcast_object({"from": rank}, info)
    seen.update(_toy_scenarios(info, workdir))
    seen.update(_unfreeze_scenario(info))
    cleanup()

    # The scripts as torchrun would start them: each joins (and leaves) a process group of its own.
    os.environ["MASTER_PORT"] = str(ports[1])
    seen["encoder_history"] = train_encoder.main(
        script_args("shapes_encoder.yaml", workdir, *TINY_ENCODER, f"run_dir={workdir / 'encoder'}", "train.epochs=1"))
    # the captioner on that encoder: its one layer is unfrozen in epoch 2, so DDP is re-wrapped then.
    # Every process builds the checkpoint payload (training_state) after each epoch: record this
    # process's own weights there, to compare the two processes' copies.
    os.environ["MASTER_PORT"] = str(ports[2])
    seen["captioner_weights"] = []
    real_training_state = train_captioner.training_state

    def recording_training_state(model, *args, **kwargs):
        seen["captioner_weights"].append(parameters(model))
        return real_training_state(model, *args, **kwargs)

    train_captioner.training_state = recording_training_state  # this forked process's module only
    try:
        seen["captioner_history"] = train_captioner.main(
            script_args("shapes_captioner.yaml", workdir, *TINY_CAPTIONER, f"run_dir={workdir / 'captioner'}",
                        "train.epochs=2") + ["-p", str(workdir / "encoder" / "checkpoint1.pt")])
        # a ResNet + attention LSTM from scratch: its weights must stay identical on both processes too, with
        # gradient accumulation (DDP all-reduces once per step, in the second micro-batch's backward)
        os.environ["MASTER_PORT"] = str(ports[3])
        captioner_weights, seen["captioner_weights"] = seen["captioner_weights"], []  # the recorder's list
        seen["cnn_lstm_history"] = train_captioner.main(
            script_args("ladder_resnet_attention_lstm.yaml", workdir, *TINY_CNN_LSTM, f"run_dir={workdir / 'cnn_lstm'}",
                        "train.epochs=1", "train.accumulate_steps=2"))
        seen["cnn_lstm_weights"], seen["captioner_weights"] = seen["captioner_weights"], captioner_weights
    finally:
        train_captioner.training_state = real_training_state
    torch.save(seen, workdir / f"seen{rank}.pt")


def _toy_scenarios(info: DistInfo, workdir: Path) -> dict:
    """One step, one epoch then a checkpoint, and a resumed single-process checkpoint, on B/2 per process."""
    seen = {}
    # One optimisation step. Each process initialises with its own seed (as setup_device does):
    # DDP must copy rank 0's weights, which equal the single process's.
    model = toy_model(info.rank)
    run = toy_run(model, wrap_ddp(model, info), workdir / "toy_step", info)
    seen["step_loss"] = train_epoch(run, toy_batches(0, BATCH // WORLD, WORLD, info.rank)[:1], mse_loss, 0)
    seen["step_params"] = parameters(model)

    # Epoch 0 under DDP, then rank 0 writes the checkpoint from the unwrapped module.
    model = toy_model(info.rank)
    run = toy_run(model, wrap_ddp(model, info), workdir / "toy_ddp", info)
    seen["epoch_loss"] = train_epoch(run, toy_batches(0, BATCH // WORLD, WORLD, info.rank), mse_loss, 0)
    payload = run.state(1, **rng_states_by_rank(info))
    if info.is_main:
        save_checkpoint(workdir / "ddp1.pt", payload)
    barrier()

    # A single-process checkpoint (written before the spawn) resumed under DDP for epoch 1.
    model = toy_model(info.rank)
    run = toy_run(model, wrap_ddp(model, info), workdir / "toy_resumed", info)
    start, run.step, _ = resume_from(load_checkpoint(workdir / "single1.pt"), model, run.optimizer, run.scaler,
                                     "single1.pt", info)
    seen["resumed_start"] = (start, run.step)
    train_epoch(run, toy_batches(start, BATCH // WORLD, WORLD, info.rank), mse_loss, start)
    seen["resumed_params"] = parameters(model)

    # Validation over shares of different sizes (5 samples: 3 on rank 0, 2 on rank 1), weighted by items.
    seen["val_loss"] = validation_loss(run, toy_batches(0, 2, WORLD, info.rank, n=5, drop_last=False))

    # A non-finite loss on rank 1 only must stop rank 0 as well, at the same check.
    def nan_on_rank_1(model, batch):
        loss, n = mse_loss(model, batch)
        return loss * (float("nan") if info.rank == 1 else 1.0), n

    try:
        train_epoch(run, toy_batches(0, BATCH // WORLD, WORLD, info.rank)[:1], nan_on_rank_1, 2)
        seen["nan_error"] = None
    except NonFiniteLossError as e:
        seen["nan_error"] = e.step
    return seen


def _unfreeze_scenario(info: DistInfo) -> dict:
    """The captioner's top encoder layer, frozen in epoch 0 and trainable in epoch 1, under DDP."""
    torch.manual_seed(0)
    vit = ViTConfig(image_size=16, patch_size=8, width=16, depth=2, heads=2)
    raw = build_captioner(vit, CaptionDecoderConfig(width=16, depth=1, heads=2, dropout=0.0), vocab_size=20, max_len=8)
    schedule = UnfreezeConfig(start_epoch=1, decay=0.5)

    def states(epoch):
        return unfreeze_schedule(vit.depth, epoch, schedule.start_epoch, schedule.decay)
    generator = torch.Generator().manual_seed(10 + info.rank)  # each process its own batch
    images = torch.randn(2, 3, 16, 16, generator=generator)  # (U, 3, H, W)
    tokens = torch.randint(4, 20, (4, 6), generator=generator)  # (B, T), no padding
    image_index = torch.tensor([0, 0, 1, 1])  # (B,)
    top, decoder = raw.encoder.transformer.layers[1].ff.fc1.weight, raw.decoder.token_embedding.weight

    def grads(model):
        raw.zero_grad(set_to_none=True)
        teacher_forcing_loss(model, images, tokens, image_index).backward()
        return [None if p.grad is None else p.grad.clone() for p in (top, decoder)]

    seen = {}
    set_trainable(raw, states(0))
    epoch0 = wrap_ddp(raw, info)
    seen["frozen_top_grad"], _ = grads(epoch0)
    set_trainable(raw, states(1))
    local_top, local_decoder = grads(raw)  # this process's own gradients, without DDP
    seen["local_top"], seen["mean_top"] = local_top, all_reduce_mean(local_top)
    seen["mean_decoder"] = all_reduce_mean(local_decoder)
    seen["stale_top"], _ = grads(epoch0)  # the wrapper built while the layer was frozen
    epoch1 = wrap_ddp(raw, info, previous=epoch0)
    seen["rewrapped"] = epoch1 is not epoch0
    seen["kept_when_unchanged"] = wrap_ddp(raw, info, previous=epoch1) is epoch1
    grads(epoch1)
    seen["ddp_top"], seen["ddp_decoder"] = grads(epoch1)  # a second step: DDP finds every trainable parameter used
    return seen


# ---- fixtures ------------------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free on 127.0.0.1 a moment ago."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Tiny processed shapes data and the single-process toy checkpoint after epoch 1."""
    root = tmp_path_factory.mktemp("distributed")
    process_coco.main(["--data-dir", str(root / "data"), "--n-train", "16", "--n-val", "4", "--n-test", "1",
                       "--image-size", "32", "--vocab-size", "60", "--workers", "1", "--no-progress"])
    run = single_process_run(root / "toy_single", epochs=1)
    save_checkpoint(root / "single1.pt", run.state(1))
    return root


@pytest.fixture(scope="module")
def two_processes(workdir):
    """What ranks 0 and 1 saw (see ``_worker``); a worker's exception is raised here with its traceback."""
    workers = mp.start_processes(_worker, args=(free_ports(4), workdir), nprocs=WORLD, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not workers.join(timeout=1):
        if time.monotonic() > deadline:  # a collective that never completes would hang the suite
            for process in workers.processes:
                process.kill()
            pytest.fail(f"the two worker processes did not finish within {TIMEOUT_S} s")
    return [torch.load(workdir / f"seen{rank}.pt", weights_only=False) for rank in range(WORLD)]


# ---- a plain run ---------------------------------------------------------------------------------


def test_a_plain_run_has_one_process_and_no_process_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = init_distributed("cpu")
    assert info == DistInfo(rank=0, world_size=1, local_rank=0, is_main=True, device=torch.device("cpu"))
    assert not torch.distributed.is_initialized()
    model, x = nn.Linear(2, 2), torch.ones(3)
    assert wrap_ddp(model, info) is model and all_reduce_mean(x) is x
    assert broadcast_object([1], info) == [1] and rng_states_by_rank(info) == {}
    barrier()
    cleanup()


def test_rank_zero_draws_what_a_single_process_draws():
    """train_encoder's per-rank streams: rank 0's equals the single process's, rank 1's differs."""
    cpu = torch.device("cpu")

    def draw(*entropy):
        return torch.rand(5, generator=train_encoder.seeded_generator(cpu, *entropy))

    assert torch.equal(draw(7, train_encoder.TRAIN_STREAM, 3, 0), draw(7, train_encoder.TRAIN_STREAM, 3))
    assert not torch.equal(draw(7, train_encoder.TRAIN_STREAM, 3, 1), draw(7, train_encoder.TRAIN_STREAM, 3))
    assert torch.equal(draw(7, train_encoder.VALIDATION_STREAM, 0), draw(7, train_encoder.VALIDATION_STREAM))


# ---- two processes -------------------------------------------------------------------------------


def test_workers_see_torchrun_and_talk(two_processes):
    for rank, seen in enumerate(two_processes):
        assert seen["launched"]
        assert seen["info"] == DistInfo(rank, WORLD, rank, rank == 0, torch.device("cpu"), distributed=True)
        assert seen["mean"].tolist() == [2.0]
        assert seen["broadcast"] == {"from": 0}


def test_one_step_of_two_half_batches_equals_one_step_of_the_whole_batch(two_processes, tmp_path):
    model = toy_model(0)
    loss = train_epoch(toy_run(model, model, tmp_path), toy_batches(0, BATCH)[:1], mse_loss, 0)
    assert parameters(model)["0.weight"].ne(parameters(toy_model(0))["0.weight"]).all()  # the step moved it
    for seen in two_processes:
        assert seen["step_loss"] == pytest.approx(loss, rel=1e-12)  # averaged over the processes
        for name, value in parameters(model).items():
            torch.testing.assert_close(seen["step_params"][name], value, rtol=1e-10, atol=1e-12)


def test_a_ddp_checkpoint_resumes_in_one_process_exactly(two_processes, workdir, tmp_path):
    uninterrupted = single_process_run(tmp_path / "a", epochs=2)
    payload = load_checkpoint(workdir / "ddp1.pt", kind="toy")
    assert set(payload["model"]) == set(toy_model(0).state_dict())  # the unwrapped module: no "module." prefix
    assert len(payload["rng_by_rank"]) == WORLD
    resumed = single_process_run(tmp_path / "b", epochs=2, resume=payload)
    assert resumed.step == uninterrupted.step == 4
    for name, value in parameters(uninterrupted.model).items():
        torch.testing.assert_close(parameters(resumed.model)[name], value, rtol=1e-10, atol=1e-12)
    assert two_processes[0]["epoch_loss"] == two_processes[1]["epoch_loss"]


def test_a_single_process_checkpoint_resumes_under_ddp_exactly(two_processes, tmp_path):
    uninterrupted = single_process_run(tmp_path, epochs=2)
    for seen in two_processes:
        assert seen["resumed_start"] == (1, 2)  # after epoch 1, step 2
        for name, value in parameters(uninterrupted.model).items():
            torch.testing.assert_close(seen["resumed_params"][name], value, rtol=1e-10, atol=1e-12)


def test_validation_weighs_the_processes_by_their_items(two_processes, tmp_path):
    for seen in two_processes:
        model = toy_model(0)
        model.load_state_dict(seen["resumed_params"])
        whole = validation_loss(toy_run(model, model, tmp_path), toy_batches(0, 5, n=5, drop_last=False))
        assert seen["val_loss"] == pytest.approx(whole, rel=1e-12)  # not the mean of the shares' means


def test_a_non_finite_loss_on_one_process_stops_both(two_processes):
    # rank 1's loss at step 4 is NaN; rank 0's is finite but it must not run on into the next all-reduce alone:
    # it stops at the same read, the window after step 4 (log_every=1), and names the step it stopped at, 5
    assert two_processes[1]["nan_error"] == 4
    assert two_processes[0]["nan_error"] == 5


def test_only_rank_zero_logs(two_processes, workdir):
    lines = [json.loads(line) for line in (workdir / "toy_ddp" / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]  # log_every=1: one line per step, not one per process


def test_a_layer_unfrozen_later_receives_averaged_gradients(two_processes):
    ranks = two_processes
    assert all(seen["frozen_top_grad"] is None for seen in ranks)  # frozen in epoch 0: no gradient at all
    assert not torch.allclose(ranks[0]["local_top"], ranks[1]["local_top"])  # the processes' batches differ
    for seen in ranks:
        assert seen["rewrapped"] and seen["kept_when_unchanged"]
        torch.testing.assert_close(seen["ddp_top"], seen["mean_top"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(seen["ddp_decoder"], seen["mean_decoder"], rtol=1e-5, atol=1e-7)
        # the wrapper built while the layer was frozen leaves its gradient unaveraged: why wrap_ddp re-wraps
        torch.testing.assert_close(seen["stale_top"], seen["local_top"])
        assert not torch.allclose(seen["stale_top"], seen["mean_top"])


def test_train_encoder_under_two_processes_resumes_in_one(two_processes, workdir):
    run_dir = workdir / "encoder"
    (record,), (other,) = (seen["encoder_history"] for seen in two_processes)
    assert (record["train_loss"], record["val_loss"]) == (other["train_loss"], other["val_loss"])  # averaged
    assert record["step"] == 2  # 16 images / (2 processes x 4): two steps
    assert sorted(p.name for p in run_dir.glob("checkpoint*.pt")) == ["checkpoint1.pt"]
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    assert len(lines) == 3  # two step lines and the epoch record, from rank 0 only
    weights = load_checkpoint(run_dir / "checkpoint1.pt", kind="mae")["model"]

    history = train_encoder.main(script_args("shapes_encoder.yaml", workdir, *TINY_ENCODER, "train.epochs=2")
                                 + ["-c", str(run_dir / "checkpoint1.pt")])
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["step"] == 2 + 4  # one process with batch 4 takes four steps over 16 images
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in history)
    resumed = load_checkpoint(run_dir / "checkpoint2.pt", kind="mae")
    assert "rng_by_rank" not in resumed and set(resumed["model"]) == set(weights)
    assert any(not torch.equal(resumed["model"][k], weights[k]) for k in weights)  # epoch 2 trained on

    # The reference: what one process does from the same state saved by one process (rank 0's RNG,
    # no per-rank states). Continuing the two-process checkpoint must be exactly that.
    reference_dir = workdir / "encoder_reference"
    single = save_checkpoint(workdir / "encoder_single1.pt",
                             single_process_payload(load_checkpoint(run_dir / "checkpoint1.pt", kind="mae")))
    expected = train_encoder.main(script_args("shapes_encoder.yaml", workdir, *TINY_ENCODER, "train.epochs=2",
                                              f"run_dir={reference_dir}") + ["-c", str(single)])
    assert without_timing(history) == without_timing(expected)
    reference = load_checkpoint(reference_dir / "checkpoint2.pt", kind="mae")
    assert all(torch.equal(resumed["model"][k], reference["model"][k]) for k in weights)


def test_train_captioner_keeps_the_processes_weights_identical_after_an_unfreeze(two_processes):
    """DDP averages the gradients of the parameters trainable when it was built: the encoder layer
    unfrozen in epoch 2 trains on averaged gradients only if train_captioner.py re-wraps the model
    that epoch. Otherwise each process steps it with its own gradient and the copies drift apart."""
    (before0, after0), (before1, after1) = (seen["captioner_weights"] for seen in two_processes)
    assert set(after0) == set(after1)
    layer = [k for k in after0 if k.startswith("encoder.transformer.layers.0.")]
    assert layer
    assert all(torch.equal(before0[k], before1[k]) for k in before0)  # epoch 1: frozen encoder, DDP decoder
    assert any(not torch.equal(after0[k], before0[k]) for k in layer)  # the unfrozen layer trained in epoch 2
    differ = [k for k in after0 if not torch.equal(after0[k], after1[k])]
    assert differ == [], f"the processes' copies differ after the unfreeze epoch: {differ[:5]}"


def test_train_captioner_under_two_processes_unfreezes_and_resumes_in_one(two_processes, workdir):
    run_dir = workdir / "captioner"
    ranks = [seen["captioner_history"] for seen in two_processes]
    shared = ("train_loss", "val_loss", "val_scores", "selection")  # losses averaged, the scores sent by rank 0
    for mine, other in zip(*ranks):
        assert [mine[k] for k in shared] == [other[k] for k in shared]
    assert [h["step"] for h in ranks[0]] == [2, 4]
    assert [h["trainable_groups"] for h in ranks[0]] == [["decoder"], ["encoder_layer0", "decoder"]]
    assert {"checkpoint1.pt", "checkpoint2.pt", "checkpoint_best.pt"} <= {p.name for p in run_dir.iterdir()}
    assert len((run_dir / "log.jsonl").read_text().splitlines()) == 2 * 3  # per epoch: two steps and the record

    history = train_captioner.main(script_args("shapes_captioner.yaml", workdir, *TINY_CAPTIONER, "train.epochs=3")
                                   + ["-c", str(run_dir / "checkpoint2.pt")])
    assert [h["step"] for h in history] == [2, 4, 4 + 4]  # one process with 4 images per step: four steps
    assert history[2]["trainable_groups"] == ["patch_embed", "encoder_layer0", "decoder"]
    assert torch.isfinite(torch.tensor(history[2]["train_loss"]))
    assert without_timing(history[:2]) == without_timing(ranks[0])  # the two processes' epochs, carried over

    # The reference: one process continuing the same state saved by one process (rank 0's RNG states:
    # the decoder has dropout, so the RNG matters). The two-process checkpoint must continue exactly so.
    reference_dir = workdir / "captioner_reference"
    single = save_checkpoint(workdir / "captioner_single2.pt",
                             single_process_payload(load_checkpoint(run_dir / "checkpoint2.pt", kind="captioner")))
    expected = train_captioner.main(script_args("shapes_captioner.yaml", workdir, *TINY_CAPTIONER, "train.epochs=3",
                                                f"run_dir={reference_dir}") + ["-c", str(single)])
    assert without_timing(history) == without_timing(expected)
    resumed = load_checkpoint(run_dir / "checkpoint3.pt", kind="captioner")["model"]
    reference = load_checkpoint(reference_dir / "checkpoint3.pt", kind="captioner")["model"]
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_a_resnet_attention_lstm_trains_identically_on_both_processes(two_processes):
    (weights0,), (weights1,) = (seen["cnn_lstm_weights"] for seen in two_processes)
    assert any(k.startswith("encoder.stages.") for k in weights0) and "decoder.cell.weight_ih" in weights0
    assert [k for k in weights0 if not torch.equal(weights0[k], weights1[k])] == []
    histories = [seen["cnn_lstm_history"] for seen in two_processes]
    assert [h["train_loss"] for h in histories[0]] == [h["train_loss"] for h in histories[1]]
    assert histories[0][0]["step"] == 1  # 2 batches of 4 images per process: one accumulated step

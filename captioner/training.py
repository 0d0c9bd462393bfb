"""The training machinery that ``train_encoder.py`` and ``train_captioner.py`` share.

One copy of everything that is not about images or captions:

- devices and precision: :func:`resolve_device`, :func:`resolve_precision`, :func:`autocast`,
  :func:`make_grad_scaler`;
- the learning-rate schedule as a pure function of the step: :func:`lr_at_step`;
- AdamW parameter groups without weight decay on biases, norms and tokens: :func:`param_groups`;
- :class:`Trainer`: the train and validation loops (autocast, gradient scaling, clipping, per-step
  learning rate, non-finite loss detection, tqdm, JSON-lines log) with no host sync in the hot loop
  except at log intervals;
- checkpoints written atomically and loaded with ``weights_only=True``: :func:`save_checkpoint`,
  :func:`load_checkpoint`, :func:`rng_state`, :func:`set_rng_state`.

Exact resume: checkpoints are written at the end of an epoch and hold the model, optimiser, scaler,
step, epoch, resolved config, RNG states and history. The data order of epoch ``e`` is a function of
``(seed, e)`` and the learning rate a function of the step, so a resumed run repeats exactly what an
uninterrupted run would have done.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from captioner.config import COMPILE_MODES
from captioner.fileio import atomic_write_bytes

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or of the wrong kind for this script."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; ``step`` is the first step where it happened."""

    def __init__(self, step: int):
        super().__init__(
            f"the training loss became non-finite at step {step}; stopping. The last checkpoint "
            "written is the last good one: resume from it with a lower learning rate or fp32."
        )
        self.step = step


# --------------------------------------------------------------------------------------------------
# Devices and precision
# --------------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but PyTorch sees no CUDA device")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """Map ``auto|bf16|fp16|fp32`` to what will run: bf16 on CUDA where supported, else fp16; fp32 on CPU.

    CPU runs default to fp32: bf16 autocast on a CPU is slower than fp32 on most machines.
    """
    if precision not in ("auto", "bf16", "fp16", "fp32"):
        raise ValueError(f"unknown precision {precision!r}: use auto, bf16, fp16 or fp32")
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 mixed precision needs a CUDA device; use bf16 or fp32 on the CPU")
    return precision


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """The autocast context for a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def make_grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for fp16 (bf16 has fp32's exponent range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


# --------------------------------------------------------------------------------------------------
# Schedule and optimiser
# --------------------------------------------------------------------------------------------------


def lr_at_step(step: int, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to ``base_lr``, then cosine decay to ``min_lr`` at ``total_steps``.

    A pure function of the step, so a resumed run gets the same learning rate.

    >>> lr_at_step(0, 1.0, 0.0, 10, 110), lr_at_step(10, 1.0, 0.0, 10, 110), lr_at_step(60, 1.0, 0.0, 10, 110)
    (0.1, 1.0, 0.5)
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def is_no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases and norm weights (rank < 2), and learned tokens, are not weight-decayed."""
    return param.ndim < 2 or name.endswith(("mask_token", "cls_token", "pos_embed"))


def param_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    weight_decay: float,
    lr_scale: float = 1.0,
    name: str = "all",
) -> list[dict]:
    """Split parameters into a decayed and a non-decayed AdamW group that share ``lr_scale``.

    The trainer sets each group's ``lr`` to ``lr_at_step(step) * lr_scale`` every step.
    """
    decay, no_decay = [], []
    for pname, p in named_parameters:
        (no_decay if is_no_decay(pname, p) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr_scale": lr_scale, "name": name},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": lr_scale, "name": name},
    ]
    return [g for g in groups if g["params"]]


def make_optimizer(groups: list[dict], lr: float, betas: tuple[float, float], device: torch.device):
    """AdamW over ``groups``; the fused CUDA kernel when on a GPU."""
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)


# --------------------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------------------


class JsonlLogger:
    """Appends one JSON object per line to ``path`` (the run's metrics log)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, **record: Any) -> None:
        record = {"time": round(time.time(), 3), **record}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


# --------------------------------------------------------------------------------------------------
# The loops
# --------------------------------------------------------------------------------------------------


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) dict/list batch to ``device``; other values are kept as they are."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


# A loss function receives (model, batch on the device) and returns (mean loss, number of items),
# where the items (images or captions) are what the throughput in the log counts.
LossFn = Callable[[nn.Module, dict], tuple[torch.Tensor, int]]


@dataclass
class Trainer:
    """Runs the training and validation loops shared by both training scripts.

    ``model`` is what is called (possibly ``torch.compile``-d); ``lr_at(step)`` gives the base learning
    rate, which each optimiser group scales by its ``lr_scale``. ``step`` counts optimiser steps and is
    stored in checkpoints.

    ``average`` (torchrun only; see ``captioner/distributed.py``): the mean of a tensor over all
    processes. The epoch's training loss, the logged loss and the validation loss are then those of
    every process's batches together, identical on all processes (``items_per_s`` in the log stays
    this process's). None in a single process.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    precision: str
    lr_at: Callable[[int], float]
    grad_clip: float = 1.0
    log_every: int = 20
    logger: JsonlLogger | None = None
    step: int = 0
    show_progress: bool = True
    parameters: list[nn.Parameter] = field(default_factory=list)
    average: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self):
        if not self.parameters:
            self.parameters = [p for g in self.optimizer.param_groups for p in g["params"]]

    def set_lr(self) -> float:
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def train_epoch(self, loader: Iterable, loss_fn: LossFn, epoch: int) -> float:
        """One pass over ``loader``; returns the mean training loss of the epoch.

        The loss stays on the device and is read (one host sync) only every ``log_every`` steps, when a
        non-finite value raises :class:`NonFiniteLossError` naming the first bad step.
        """
        self.model.train()
        total = torch.zeros((), device=self.device)  # sum of losses this epoch, on the device
        window = torch.zeros((), device=self.device)  # sum since the last log line
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        n_steps, window_steps, window_items = 0, 0, 0
        window_start = time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not self.show_progress)
        for batch in bar:
            batch = to_device(batch, self.device)
            lr = self.set_lr()
            with autocast(self.device, self.precision):
                loss, n_items = loss_fn(self.model, batch)
            self.scaler.scale(loss).backward()
            if self.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)

            loss = loss.detach().float()
            bad_now = (~torch.isfinite(loss)) & (first_bad < 0)
            first_bad = torch.where(bad_now, torch.full_like(first_bad, self.step), first_bad)
            total += loss
            window += loss
            self.step += 1
            n_steps += 1
            window_steps += 1
            window_items += n_items
            if window_steps == self.log_every:
                self._check_finite(first_bad)
                elapsed = time.perf_counter() - window_start
                mean = self._over_processes(window).item() / window_steps
                bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}")
                if self.logger:
                    self.logger.log(epoch=epoch, step=self.step, loss=mean, lr=lr,
                                    items_per_s=window_items / max(elapsed, 1e-9))
                window.zero_()
                window_steps, window_items = 0, 0
                window_start = time.perf_counter()
        self._check_finite(first_bad)
        return self._over_processes(total).item() / max(1, n_steps)

    def _over_processes(self, x: torch.Tensor) -> torch.Tensor:
        """[distributed] The mean of ``x`` over the processes; ``x`` itself in a single process."""
        return x if self.average is None else self.average(x)

    def _check_finite(self, first_bad: torch.Tensor) -> None:
        bad_step = int(first_bad.item())
        if self.average is not None:
            # [distributed] every process stops at the same check, or the others would wait for it forever
            if self.average((first_bad >= 0).float()).item() > 0 and bad_step < 0:
                bad_step = self.step  # another process saw a non-finite loss first; this is where this one stops
        if bad_step >= 0:
            raise NonFiniteLossError(bad_step)

    @torch.no_grad()
    def evaluate(self, loader: Iterable, loss_fn: LossFn, desc: str = "validation") -> float:
        """Mean loss over ``loader`` with the model in eval mode (weighted by items per batch)."""
        self.model.eval()
        total = torch.zeros((), device=self.device)
        count = 0
        for batch in tqdm(loader, desc=desc, leave=False, disable=not self.show_progress):
            batch = to_device(batch, self.device)
            with autocast(self.device, self.precision):
                loss, n_items = loss_fn(self.model, batch)
            total += loss.detach().float() * n_items
            count += n_items
        if self.average is not None:
            # [distributed] each process saw its share of the batches: weigh their sums, not their means
            total, count = self.average(torch.stack([total, total.new_tensor(float(count))])).tolist()
            return total / count if count else 0.0
        return total.item() / max(1, count)


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def rng_state() -> dict:
    """Every RNG the training touches, as tensors and plain Python data (``weights_only``-loadable)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only where this machine has the same GPUs)."""
    random.setstate(_as_tuples(state["python"]))
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _as_tuples(x: Any) -> Any:
    """Python's random state must be nested tuples; a round trip through a checkpoint may give lists."""
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """Write ``payload`` atomically (temporary file, fsync, ``os.replace``; see :func:`atomic_write_bytes`).

    A crash mid-write leaves the previous checkpoint (if any) intact and no file that looks finished.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **payload}, buffer)
    return atomic_write_bytes(path, buffer.getbuffer())


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The ``checkpoint{N}.pt`` with the largest N in ``run_dir`` (CheckpointError if there is none)."""
    run_dir = Path(run_dir)
    numbered = [(int(p.stem[len("checkpoint"):]), p) for p in run_dir.glob("checkpoint*.pt")
                if p.stem[len("checkpoint"):].isdigit()]
    if not numbered:
        raise CheckpointError(f"{run_dir}: no checkpoint<N>.pt files in this folder")
    return max(numbered)[1]


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict:
    """Load a checkpoint with ``weights_only=True`` onto the CPU, checking its format and ``kind``.

    ``path`` may also be a run folder: its latest ``checkpoint{N}.pt`` is loaded.

    Raises CheckpointError naming the file for a missing, unreadable or mismatched checkpoint.
    """
    path = latest_checkpoint(path) if Path(path).is_dir() else Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a truncated or foreign file
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated, corrupt, or not saved by this project; "
            f"{type(e).__name__})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a checkpoint of this project (format {CHECKPOINT_FORMAT} expected)")
    if kind is not None and payload.get("kind") != kind:
        raise CheckpointError(f"{path}: this is a {payload.get('kind')!r} checkpoint, but a {kind!r} checkpoint is needed")
    return payload


def checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    """``run_dir/checkpoint{epoch}.pt``, where ``epoch`` counts completed epochs (1 after the first)."""
    return Path(run_dir) / f"checkpoint{epoch}.pt"


def load_state_dict_checked(module: nn.Module, state_dict: dict, source: str | Path) -> None:
    """``module.load_state_dict`` with an error that names the checkpoint and the mismatched keys/shapes."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:4])
        raise CheckpointError(f"{source}: the weights do not fit this model: {detail}") from None


def training_state(trainer: Trainer, raw_model: nn.Module, epoch: int, kind: str, config: dict,
                   history: list, **extra: Any) -> dict:
    """Everything a run needs to continue exactly, for :func:`save_checkpoint`."""
    return {
        "kind": kind,
        "epoch": epoch,
        "step": trainer.step,
        "config": config,
        "model": raw_model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "rng": rng_state(),
        "history": history,
        **extra,
    }


def restore_training_state(payload: dict, trainer: Trainer, raw_model: nn.Module, source: str | Path) -> None:
    """Load model, optimiser, scaler, step and RNG states from a :func:`training_state` payload."""
    load_state_dict_checked(raw_model, payload["model"], source)
    try:
        trainer.optimizer.load_state_dict(payload["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{source}: the optimiser state does not fit this model: {e}") from None
    if payload["scaler"] and trainer.scaler.is_enabled():
        trainer.scaler.load_state_dict(payload["scaler"])
    # else: the run switched between fp16 and bf16/fp32; the fresh scaler starts from its defaults.
    trainer.step = payload["step"]
    set_rng_state(payload["rng"])


def maybe_compile(model: nn.Module, enabled: bool, graph_variants: int = 1, mode: str = "default") -> nn.Module:
    """``torch.compile(model, mode=mode)`` when enabled; the checkpoint always stores the uncompiled module.

    ``graph_variants``: how many different graphs the run will legitimately need. Dynamo guards on
    ``requires_grad``, so every freeze state of layer-wise unfreezing is one more compilation; past
    dynamo's recompile limit (8 by default) it would silently fall back to eager mode.

    ``mode`` (``train.compile_mode``, one of COMPILE_MODES, checked even when compilation is off):
    ``reduce-overhead`` replays the step's kernels as CUDA graphs, removing the per-kernel launch
    cost, which can dominate a narrow model's step; it records one graph per input shape, so it suits
    MAE's fixed shapes better than the captioner's varying caption lengths.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown train.compile_mode {mode!r}: use one of {', '.join(COMPILE_MODES)}")
    if not enabled:
        return model
    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = max(limit, graph_variants + 2)
    return torch.compile(model, mode=mode)

"""The set-up steps that ``train_encoder.py`` and ``train_captioner.py`` share, in the order they run.

1. :func:`setup_device` picks the device and precision, seeds torch and creates the run directory;
2. :func:`make_trainer` builds the :class:`~captioner.training.Trainer` with the warm-up + cosine
   schedule of the run's ``train`` section and a ``log.jsonl`` in the run directory;
3. :func:`resume_from` restores a checkpoint into it and says where training continues.

Under torchrun each takes the process's :class:`~captioner.distributed.DistInfo` (``dist``); the
lines that use it are marked ``[distributed]`` and change nothing in a single process.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from captioner.config import TrainConfig
from captioner.distributed import DistInfo, all_reduce_mean
from captioner.training import (
    JsonlLogger,
    Trainer,
    lr_at_step,
    make_grad_scaler,
    resolve_device,
    resolve_precision,
    restore_training_state,
    set_rng_state,
)


def setup_device(device_name: str, train: TrainConfig, run_dir: str | Path,
                 rank: int = 0) -> tuple[torch.device, str, Path]:
    """``(device, resolved precision, run directory)``; seeds torch with ``train.seed`` first so the
    model's initialisation is reproducible, and creates the run directory.

    ``rank`` (torchrun) is added to the seed so the processes draw different dropout masks; rank 0
    seeds like a single process, and DDP copies rank 0's initial weights to the others.
    """
    device = resolve_device(device_name)
    precision = resolve_precision(train.precision, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores when fp32 is asked for
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(train.seed + rank)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return device, precision, run_dir


def make_trainer(model: nn.Module, optimizer: torch.optim.Optimizer, train: TrainConfig, steps_per_epoch: int,
                 device: torch.device, precision: str, run_dir: Path, show_progress: bool = True,
                 dist: DistInfo | None = None) -> Trainer:
    """A Trainer whose learning rate warms up for ``train.warmup_epochs`` and decays by a cosine to
    ``train.min_lr`` at the end of ``train.epochs``; metrics go to ``run_dir/log.jsonl``.

    ``dist`` (torchrun): the losses are averaged over the processes, and only rank 0 shows
    progress bars and writes the log (the others' ``logger`` is None).
    """
    total_steps = train.epochs * steps_per_epoch
    warmup_steps = round(train.warmup_epochs * steps_per_epoch)

    def lr_at(step: int) -> float:
        return lr_at_step(step, train.lr, train.min_lr, warmup_steps, total_steps)

    main = dist is None or dist.is_main  # [distributed] only rank 0 shows and writes
    return Trainer(model, optimizer, make_grad_scaler(device, precision), device, precision, lr_at,
                   grad_clip=train.grad_clip, log_every=train.log_every,
                   logger=JsonlLogger(run_dir / "log.jsonl") if main else None, show_progress=show_progress and main,
                   average=all_reduce_mean if dist is not None and dist.distributed else None)


def resume_from(payload: dict | None, trainer: Trainer, raw_model: nn.Module, source: str | Path,
                dist: DistInfo | None = None) -> tuple[int, list]:
    """Restore ``payload`` (None: a fresh run) and return ``(first epoch to run, history so far)``.

    ``dist`` (torchrun): a checkpoint written by as many processes gives each process its own RNG
    states back (``rng_by_rank``); any other checkpoint gives every process rank 0's. Only rank 0
    prints.
    """
    if payload is None:
        return 0, []
    restore_training_state(payload, trainer, raw_model, source)
    by_rank = payload.get("rng_by_rank")
    if dist is not None and dist.distributed and by_rank is not None and len(by_rank) == dist.world_size:
        set_rng_state(by_rank[dist.rank])  # [distributed] this process's own dropout stream
    if dist is None or dist.is_main:
        print(f"resuming {source} after epoch {payload['epoch']} (step {trainer.step})")
    return payload["epoch"], list(payload["history"])

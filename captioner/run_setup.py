"""The set-up steps that ``train_encoder.py`` and ``train_captioner.py`` share, in the order they run.

1. :func:`setup_device` picks the device and precision, seeds torch and creates the run directory;
2. :func:`make_trainer` builds the :class:`~captioner.training.Trainer` with the warm-up + cosine
   schedule of the run's ``train`` section and a ``log.jsonl`` in the run directory;
3. :func:`resume_from` restores a checkpoint into it and says where training continues.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from captioner.config import TrainConfig
from captioner.training import (
    JsonlLogger,
    Trainer,
    lr_at_step,
    make_grad_scaler,
    resolve_device,
    resolve_precision,
    restore_training_state,
)


def setup_device(device_name: str, train: TrainConfig, run_dir: str | Path) -> tuple[torch.device, str, Path]:
    """``(device, resolved precision, run directory)``; seeds torch with ``train.seed`` first so the
    model's initialisation is reproducible, and creates the run directory."""
    device = resolve_device(device_name)
    precision = resolve_precision(train.precision, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores when fp32 is asked for
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(train.seed)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return device, precision, run_dir


def make_trainer(model: nn.Module, optimizer: torch.optim.Optimizer, train: TrainConfig, steps_per_epoch: int,
                 device: torch.device, precision: str, run_dir: Path, show_progress: bool = True) -> Trainer:
    """A Trainer whose learning rate warms up for ``train.warmup_epochs`` and decays by a cosine to
    ``train.min_lr`` at the end of ``train.epochs``; metrics go to ``run_dir/log.jsonl``."""
    total_steps = train.epochs * steps_per_epoch
    warmup_steps = round(train.warmup_epochs * steps_per_epoch)

    def lr_at(step: int) -> float:
        return lr_at_step(step, train.lr, train.min_lr, warmup_steps, total_steps)

    return Trainer(model, optimizer, make_grad_scaler(device, precision), device, precision, lr_at,
                   grad_clip=train.grad_clip, log_every=train.log_every, logger=JsonlLogger(run_dir / "log.jsonl"),
                   show_progress=show_progress)


def resume_from(payload: dict | None, trainer: Trainer, raw_model: nn.Module, source: str | Path) -> tuple[int, list]:
    """Restore ``payload`` (None: a fresh run) and return ``(first epoch to run, history so far)``."""
    if payload is None:
        return 0, []
    restore_training_state(payload, trainer, raw_model, source)
    print(f"resuming {source} after epoch {payload['epoch']} (step {trainer.step})")
    return payload["epoch"], list(payload["history"])

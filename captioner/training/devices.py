"""Where a run computes and in which precision: the device, autocast and the gradient scaler.

``--device auto`` takes CUDA when there is a GPU; ``train.precision: auto`` then takes bf16 where the GPU
supports it, else fp16 with a gradient scaler; a CPU run computes in fp32.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from captioner.config import TrainConfig


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

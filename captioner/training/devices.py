"""Where a run computes and in which precision: the device, autocast and the gradient scaler.

``--device auto`` takes CUDA when there is a GPU; ``train.precision: auto`` then takes bf16 where the GPU
supports it, else fp16 with a gradient scaler. On a CPU, training takes bf16 where the CPU multiplies
bf16 matrices in hardware (Intel AMX), and fp32 elsewhere; inference on a CPU stays fp32.
"""

from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but PyTorch sees no CUDA device")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


def cpu_has_bf16_matrix_units() -> bool:
    """True when this CPU multiplies bf16 matrices in hardware (Intel AMX tiles, Sapphire Rapids and
    later), where bf16 matmuls beat fp32 ones; without AMX, bf16 on a CPU is emulated or merely
    vectorised, and no faster (docs/benchmarks.md#precision-on-a-cpu-bf16-and-fused-adamw)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # PyTorch >= 2.3; private, hence the guard
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def resolve_precision(precision: str, device: torch.device, training: bool = False) -> str:
    """Map ``auto|bf16|fp16|fp32`` to what will run.

    ``auto``: on CUDA bf16 where supported, else fp16. On a CPU, fp32, except for ``training`` on a CPU
    with AMX (:func:`cpu_has_bf16_matrix_units`), where bf16 autocast makes a training step faster
    (docs/benchmarks.md#precision-on-a-cpu-bf16-and-fused-adamw). Inference on a CPU stays fp32: it takes seconds, and its scores then do not
    depend on the CPU.
    """
    if precision not in ("auto", "bf16", "fp16", "fp32"):
        raise ValueError(f"unknown precision {precision!r}: use auto, bf16, fp16 or fp32")
    if precision == "auto":
        if device.type != "cuda":
            return "bf16" if training and cpu_has_bf16_matrix_units() else "fp32"
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


def setup_device(device_name: str, precision: str) -> tuple[torch.device, str]:
    """``(device, resolved training precision)`` for a training script; on CUDA it also lets fp32
    matmuls use TF32 tensor cores."""
    device = resolve_device(device_name)
    precision = resolve_precision(precision, device, training=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores when fp32 is asked for
        torch.backends.cudnn.allow_tf32 = True
    return device, precision

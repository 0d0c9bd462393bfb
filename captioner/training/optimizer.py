"""The optimiser (AdamW, or LAMB from ``captioner/training/lamb.py``) and its parameter groups: no
weight decay on biases, norms and learned tokens.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from captioner.training.lamb import Lamb


def is_no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases and norm weights (rank < 2), and learned tokens, are not weight-decayed."""
    return param.ndim < 2 or name.endswith(("mask_token", "cls_token", "pos_embed"))


def param_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    weight_decay: float,
    name: str = "all",
) -> list[dict]:
    """Split parameters into a decayed and a non-decayed AdamW group, both called ``name``.

    The training scripts set each group's ``lr`` every step; the captioner's name its unfreeze group,
    whose learning-rate multiplier the script applies.
    """
    decay, no_decay = [], []
    for pname, p in named_parameters:
        (no_decay if is_no_decay(pname, p) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "name": name},
        {"params": no_decay, "weight_decay": 0.0, "name": name},
    ]
    return [g for g in groups if g["params"]]


_CPU_FUSED_ADAMW = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4)  # fused AdamW on the CPU since 2.4


def make_optimizer(groups: list[dict], lr: float, betas: tuple[float, float], device: torch.device,
                   kind: str = "adamw"):
    """AdamW over ``groups``, or with ``kind="lamb"`` LAMB, whose trust ratio skips the groups without
    weight decay (biases and norms; see lamb.py).

    AdamW runs its fused kernel (one pass over all parameters) on a GPU and, from PyTorch 2.4, on the
    CPU too, where the default loops over the parameters one small op at a time (docs/benchmarks.md#precision-on-a-cpu-bf16-and-fused-adamw).
    """
    if kind == "lamb":
        return Lamb([{**g, "adapt": g["weight_decay"] > 0} for g in groups], lr=lr, betas=betas)
    if kind != "adamw":
        raise ValueError(f"unknown optimizer {kind!r}: expected adamw or lamb")
    fused = device.type == "cuda" or (device.type == "cpu" and _CPU_FUSED_ADAMW)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)

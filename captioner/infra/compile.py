"""``torch.compile`` settings for the training scripts.
"""

from __future__ import annotations

import torch
from torch import nn

from captioner.config import COMPILE_MODES


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

"""LAMB: Adam's direction, rescaled layer by layer so that each step is a fixed fraction of the weights.

"Large Batch Optimization for Deep Learning: Training BERT in 76 minutes" (You et al., 2019). For
each parameter tensor w (one "layer") with gradient g, at step t (1, 2, ...)::

    m = b1 m + (1 - b1) g                 Adam's first moment
    v = b2 v + (1 - b2) g^2               Adam's second moment
    m_hat = m / (1 - b1^t)                bias correction: the moments start at zero
    v_hat = v / (1 - b2^t)
    u = m_hat / (sqrt(v_hat) + eps) + wd * w        Adam's direction plus decoupled weight decay
    trust = phi(||w||) / ||u||            the layer's trust ratio
    w = w - lr * trust * u

so every layer moves by ``lr * phi(||w||)`` in norm, whatever the size of its gradients: a layer
with large weights takes large steps, one with small weights small steps. The paper clips the
weight norm with ``phi(z) = min(max(z, gamma_l), gamma_u)``; here gamma_l = ``min_weight_norm``
(default 0) and gamma_u = ``max_weight_norm`` (default 10, as in NVIDIA's reference LAMB). Where
phi(||w||) or ||u|| is zero (a tensor initialised to zeros, or no gradient signal) the trust ratio
is 1, so the step falls back to Adam's.

A group with ``"adapt": False`` skips the trust ratio (plain AdamW); the training script uses it for
biases and norm gains, which are not weight-decayed either, as BERT's LAMB did.
"""

from __future__ import annotations

import torch


class Lamb(torch.optim.Optimizer):
    """LAMB as in the module docstring; per-group options ``lr``, ``betas``, ``eps``, ``weight_decay``,
    ``min_weight_norm``, ``max_weight_norm`` and ``adapt`` (apply the trust ratio)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, min_weight_norm: float = 0.0, max_weight_norm: float = 10.0,
                 adapt: bool = True):
        if lr < 0 or eps <= 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1) or weight_decay < 0:
            raise ValueError(f"invalid LAMB settings: lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}")
        if not 0 <= min_weight_norm <= max_weight_norm:
            raise ValueError(f"need 0 <= min_weight_norm <= max_weight_norm, got {min_weight_norm}, {max_weight_norm}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, min_weight_norm=min_weight_norm,
                        max_weight_norm=max_weight_norm, adapt=adapt)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                g = w.grad
                state = self.state[w]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(w)
                    state["exp_avg_sq"] = torch.zeros_like(w)
                state["step"] += 1
                t = state["step"].item()
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                m_hat = m / (1 - beta1**t)
                v_hat = v / (1 - beta2**t)
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"] > 0:
                    update.add_(w, alpha=group["weight_decay"])  # decoupled: added to the step, not to g
                trust = 1.0
                if group["adapt"]:
                    weight_norm = w.norm().clamp(group["min_weight_norm"], group["max_weight_norm"])  # phi(||w||)
                    update_norm = update.norm()
                    ok = (weight_norm > 0) & (update_norm > 0)
                    trust = torch.where(ok, weight_norm / update_norm.clamp(min=1e-30), torch.ones_like(weight_norm))
                w.sub_(update * (group["lr"] * trust))
        return loss

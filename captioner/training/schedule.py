"""The learning-rate schedule: linear warm-up, then a cosine decay, as a pure function of the step.
"""

from __future__ import annotations

import math


def lr_at_step(step: int, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int,
               schedule: str = "cosine") -> float:
    """Linear warm-up to ``base_lr``, then cosine decay to ``min_lr`` at ``total_steps``; or, with
    ``schedule="inverse-sqrt"``, the same warm-up then ``base_lr * sqrt(warmup_steps / (step + 1))``
    ("Attention is all you need"; it decays ever more slowly and never reaches a floor).

    A pure function of the step, so a resumed run gets the same learning rate.

    >>> lr_at_step(0, 1.0, 0.0, 10, 110), lr_at_step(10, 1.0, 0.0, 10, 110), lr_at_step(60, 1.0, 0.0, 10, 110)
    (0.1, 1.0, 0.5)
    >>> lr_at_step(9, 1.0, 0.0, 10, 110, "inverse-sqrt"), lr_at_step(39, 1.0, 0.0, 10, 110, "inverse-sqrt")
    (1.0, 0.5)
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "inverse-sqrt":
        return base_lr * math.sqrt(max(1, warmup_steps) / (step + 1))
    if schedule != "cosine":
        raise ValueError(f"train.schedule: expected cosine or inverse-sqrt, got {schedule!r}")
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))

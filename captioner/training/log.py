"""The run's metrics log (``log.jsonl``) and the check for a non-finite training loss.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; ``step`` is the first step where it happened."""

    def __init__(self, step: int):
        super().__init__(
            f"the training loss became non-finite at step {step}; stopping. The last checkpoint "
            "written is the last good one: resume from it with a lower learning rate or fp32."
        )
        self.step = step


class JsonlLogger:
    """Appends one JSON object per line to ``path`` (the run's metrics log)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, **record: Any) -> None:
        record = {"time": round(time.time(), 3), **record}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class LossMeter:
    """The training loss, summed on the device and read (one host sync) only when a line is logged.

    ``add(loss, step, n_items)`` after every step; ``window()`` when a log line is due: the mean loss
    and the items per second since the previous line; ``epoch_mean()`` at the end of the epoch. A
    non-finite loss is remembered on the device with the first step it happened at, and raises
    :class:`NonFiniteLossError` at the next read, so the hot loop never waits for the GPU.

    ``average`` ([distributed] ``all_reduce_mean``, None in a single process): the reads are means
    over every process's batches, identical on all processes; every process then stops at the same
    read when any of them saw a non-finite loss.
    """

    def __init__(self, device: torch.device, average: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.average = average
        self.total = torch.zeros((), device=device)  # sum of the epoch's losses
        self.window_sum = torch.zeros((), device=device)  # sum since the last log line
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first non-finite step, or -1
        self.steps, self.window_steps, self.window_items = 0, 0, 0
        self.window_start = time.perf_counter()

    def add(self, loss: torch.Tensor, step: int, n_items: int) -> None:
        loss = loss.detach().float()
        bad_now = (~torch.isfinite(loss)) & (self.first_bad < 0)
        self.first_bad = torch.where(bad_now, torch.full_like(self.first_bad, step), self.first_bad)
        self.total += loss
        self.window_sum += loss
        self.steps += 1
        self.window_steps += 1
        self.window_items += n_items

    def window(self, step: int) -> tuple[float, float]:
        """``(mean loss, items per second)`` since the last call; ``step`` is the current step."""
        self.check_finite(step)
        elapsed = time.perf_counter() - self.window_start
        mean = self._over_processes(self.window_sum).item() / max(1, self.window_steps)
        items_per_s = self.window_items / max(elapsed, 1e-9)
        self.window_sum.zero_()
        self.window_steps, self.window_items = 0, 0
        self.window_start = time.perf_counter()
        return mean, items_per_s

    def epoch_mean(self, step: int) -> float:
        self.check_finite(step)
        return self._over_processes(self.total).item() / max(1, self.steps)

    def check_finite(self, step: int) -> None:
        bad_step = int(self.first_bad.item())
        if self.average is not None:
            # [distributed] every process stops at the same check, or the others would wait for it forever
            if self.average((self.first_bad >= 0).float()).item() > 0 and bad_step < 0:
                bad_step = step  # another process saw a non-finite loss first; this is where this one stops
        if bad_step >= 0:
            raise NonFiniteLossError(bad_step)

    def _over_processes(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.average is None else self.average(x)

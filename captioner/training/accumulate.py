"""Gradient accumulation: one optimiser step from several micro-batches (``train.accumulate_steps``).

The papers' batch sizes do not fit one GPU with a ViT-B, so a step can be split into K micro-batches:
each runs forward and backward on its own, the gradients add up in ``.grad``, and the optimiser steps
once. For that to be the step of one batch K times larger, each micro-batch's mean loss is weighted by
its share of what the big batch's mean would average over (its caption tokens, or its images):

    big-batch loss = sum_i n_i * mean_i / N  =  sum_i  w_i * mean_i,   w_i = n_i / N

so the weights need the counts of the whole window before the first backward: the training scripts take
the K micro-batches of a step first (:func:`take_window`), then run them.

A window never crosses an epoch's end: an epoch has ``len(loader) // K`` steps, and the micro-batches
left over (fewer than K) are not used in that epoch. Checkpoints are written at epoch ends only, so no
checkpoint falls inside a window and resume stays exact. Exact up to floating-point order for the
mean cross-entropy and MAE's loss; BatchNorm (ResNets) sees each micro-batch's statistics, not the big
batch's.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator


def micro_batch_weights(counts: list[int]) -> list[float]:
    """The weight of each micro-batch's mean loss: its count over the window's total.

    >>> micro_batch_weights([30, 10])
    [0.75, 0.25]
    """
    total = sum(counts)
    if total <= 0:
        raise ValueError(f"a window of micro-batches with nothing to average over: counts {counts}")
    return [n / total for n in counts]


def take_window(batches: Iterator, k: int) -> list:
    """The next ``k`` micro-batches of an epoch's iterator: one optimiser step's worth; fewer (none) when
    the iterator ends first, as a URL stream whose failures left it short may (docs/urls.md)."""
    return list(itertools.islice(batches, k))


def steps_in_epoch(n_batches: int, k: int) -> int:
    """Optimiser steps in an epoch of ``n_batches`` micro-batches, K per step (the remainder is left out)."""
    if k < 1:
        raise ValueError(f"train.accumulate_steps must be at least 1, got {k}")
    return n_batches // k

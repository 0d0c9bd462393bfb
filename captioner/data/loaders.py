"""DataLoaders over the processed data, and the sampler that makes every epoch's order reproducible.

One constructor per use:

- :func:`caption_loader`: captions with their images, for training the captioner;
- :func:`image_captions_loader`: each image once with all its raw captions, for captioning a split;
- :func:`image_loader`: images alone, for MAE pretraining.

Batches are read whole: the datasets implement ``__getitems__(indices)``, which the DataLoader calls
with the batch sampler's list of indices (see ``captioner/data/datasets.py``).

:class:`EpochBatchSampler` draws the order of epoch ``e`` from ``(seed, e)``, so a run resumed at
epoch ``e`` sees exactly the batches an uninterrupted run would have seen; under torchrun each
process takes its own disjoint share.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from captioner.data.datasets import (
    ImageCaptionPairDataset,
    ImageDataset,
    ImageWithCaptionsDataset,
    to_tensors,
)


class EpochBatchSampler(Sampler):
    """Lists of indices, one per batch, in an order that is a pure function of ``(seed, epoch)``.

    Call ``set_epoch(e)`` before each epoch: a resumed run that starts at epoch ``e`` sees exactly
    the batches an uninterrupted run would have seen. With ``num_replicas`` > 1 (one process per
    GPU), rank ``r`` takes every ``num_replicas``-th index of the epoch's order starting at ``r``,
    so the ranks' shares are disjoint and together cover the epoch. With ``drop_last`` the order is
    first cut to a multiple of ``num_replicas * batch_size``, so every rank gets the same number of
    full batches (what distributed training needs); without it the last batches may be short and
    the ranks' batch counts may differ by one.

    ``lengths`` (n,), with shuffle: batches of items of about the same length (see
    :func:`group_by_length`), so that less of each padded batch is padding.

    Example: n=5, batch_size=2, shuffle=False -> [0, 1], [2, 3], [4];
    with num_replicas=2, rank=1 -> [1, 3].
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False,
                 num_replicas: int = 1, rank: int = 0, lengths: np.ndarray | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"lengths has {len(lengths)} entries for {n} items")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.drop_last, self.num_replicas, self.rank = drop_last, num_replicas, rank
        self.lengths = lengths
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_indices(self) -> np.ndarray:
        """This rank's indices of the current epoch, in order: the batches are consecutive slices."""
        if not self.shuffle:
            return np.arange(self._usable())[self.rank :: self.num_replicas]
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.n)[: self._usable()]  # (usable,)
        if self.lengths is not None:
            # one block is the epoch's b-th batch of every rank, so each rank's batch is one length group
            order = group_by_length(order, self.lengths, self.batch_size * self.num_replicas, rng)
        return order[self.rank :: self.num_replicas]

    def __iter__(self):
        indices = self.epoch_indices()
        for b in range(len(self)):
            yield indices[b * self.batch_size : (b + 1) * self.batch_size].tolist()

    def __len__(self) -> int:
        per_rank = len(range(self.rank, self._usable(), self.num_replicas))
        if self.drop_last:
            return per_rank // self.batch_size
        return -(-per_rank // self.batch_size)

    def _usable(self) -> int:
        """How many indices of the epoch's order are used, across all ranks."""
        if self.drop_last:
            return self.n - self.n % (self.num_replicas * self.batch_size)
        return self.n


def group_by_length(order: np.ndarray, lengths: np.ndarray, block: int, rng: np.random.Generator,
                    window_blocks: int = 50) -> np.ndarray:
    """``order`` rearranged so that each block of ``block`` consecutive items holds items of about the same
    length, and the blocks come in a random order.

    Each window of ``window_blocks`` blocks of the (already shuffled) order is sorted by length and cut
    into blocks; the full blocks are then shuffled, and a last, partial block stays last. A padded batch
    costs its longest item times its size, so alike lengths waste less (the shapes figures:
    docs/benchmarks.md#training-steps). The window keeps the epoch random: which
    items share a block changes from epoch to epoch.

    Example: lengths [1, 9, 2, 8], order [0, 1, 2, 3], block 2 -> blocks [0, 2] and [3, 1], in either order.
    """
    order = np.asarray(order).copy()
    window = block * window_blocks
    for start in range(0, len(order), window):
        part = order[start : start + window]
        order[start : start + window] = part[np.argsort(lengths[part], kind="stable")]
    full = len(order) // block
    blocks = order[: full * block].reshape(full, block)[rng.permutation(full)]  # (full, block)
    return np.concatenate([blocks.reshape(-1), order[full * block :]])


def caption_loader(processed_dir: str | Path, split: str, batch_size: int, shuffle: bool, seed: int = 0,
                   num_workers: int = 0, drop_last: bool = False, max_len: int | None = None,
                   group_by_image: bool = False, num_replicas: int = 1, rank: int = 0,
                   group_by_length: bool = False) -> DataLoader:
    """Batches of captions with their images, for training the captioner (:class:`ImageCaptionPairDataset`).

    ``batch_size`` counts captions. ``group_by_image``: the sampler draws images and a batch holds all
    the captions of ``batch_size / captions per image`` images (see the module docstring).
    ``group_by_length`` (with shuffle): batches of captions (or of images, by their longest caption) of
    about the same length, :func:`group_by_length`.
    ``num_replicas``/``rank`` [distributed]: this process's share of every epoch.

    Example::

        loader = caption_loader("data/shapes/processed", "train", 128, shuffle=True, max_len=32)
        for epoch in range(epochs):
            loader.batch_sampler.set_epoch(epoch)
            for batch in loader:
                ...  # batch["images"] (U, 3, S, S) uint8, batch["tokens"] (B, T) long
    """
    dataset = ImageCaptionPairDataset(processed_dir, split, max_len=max_len, group_by_image=group_by_image)
    if group_by_image:
        batch_size = max(1, round(batch_size / dataset.captions_per_image))
    lengths = dataset.item_lengths() if group_by_length else None
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle, seed, drop_last, num_replicas, rank, lengths)
    return _data_loader(dataset, sampler, num_workers)


def image_captions_loader(processed_dir: str | Path, split: str, batch_size: int,
                          num_workers: int = 0, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                          num_replicas: int = 1, rank: int = 0) -> DataLoader:
    """Every image of a split once, with all its raw captions (:class:`ImageWithCaptionsDataset`): in
    order for captioning and scoring, or shuffled by ``(seed, epoch)`` for self-critical training;
    ``num_replicas``/``rank`` [distributed]: this process's share."""
    dataset = ImageWithCaptionsDataset(processed_dir, split)
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle, seed, drop_last, num_replicas, rank)
    return _data_loader(dataset, sampler, num_workers)


def image_loader(processed_dir: str | Path, splits: str | Sequence[str], batch_size: int, shuffle: bool,
                 seed: int = 0, num_workers: int = 0, drop_last: bool = False, num_replicas: int = 1,
                 rank: int = 0) -> DataLoader:
    """Batches of images alone, from one split or several end to end, for MAE (:class:`ImageDataset`).

    To keep the images in the GPU's memory instead, see ``captioner/infra/device_loader.py``.
    """
    dataset = ImageDataset(processed_dir, splits)
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle, seed, drop_last, num_replicas, rank)
    return _data_loader(dataset, sampler, num_workers)


def _data_loader(dataset, sampler: EpochBatchSampler, num_workers: int) -> DataLoader:
    """A DataLoader that reads each batch in one ``get_batch`` call; pinned memory when CUDA is
    available; worker processes persist across epochs."""
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=to_tensors, num_workers=num_workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0)

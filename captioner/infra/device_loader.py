"""Images in the training device's memory: MAE batches gathered on the GPU (``data.on_device``).

Infrastructure a reader may skip: the DataLoader of ``captioner/data/loaders.py`` gives the same
batches. This path only removes the host from the loop when a fast GPU step outruns it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from captioner.data.datasets import ImageDataset
from captioner.data.loaders import EpochBatchSampler


def check_device_memory(need: int, device: torch.device) -> None:
    """Refuse, with a message, to put ``need`` bytes on a GPU that would keep less than a tenth of its
    memory free for training (the model, its activations, the optimiser). The CPU is not checked."""
    if device.type != "cuda":
        return
    free, total = torch.cuda.mem_get_info(device)
    reserve = total // 10
    if need > free - reserve:
        raise ValueError(
            f"the image cache needs {need / 2**30:.1f} GiB of GPU memory but only {free / 2**30:.1f} GiB "
            f"are free (and {reserve / 2**30:.1f} GiB are kept for training): set data.on_device=false "
            "to read the images from the host instead")


class DeviceImageLoader:
    """Image batches gathered from a copy of the whole uint8 cache in the training device's memory.

    The DataLoader path reads each batch from the memmap in worker processes, pins it and copies it
    to the GPU: host work that a fast GPU step can outrun (docs/benchmarks.md#on-a-gpu). When the cache fits in device
    memory (COCO train + unlabeled at 256 px: 241,000 x 256 x 256 x 3 bytes = 47 GB), it is copied
    there once, and a batch is then one ``index_select`` on the device. Batches are those of the DataLoader (same ``batch_sampler``,
    same ``(B, 3, S, S)`` channels-last uint8 views), so training is the same either way; each
    epoch's order goes to the device once, not once per batch.

    Under torchrun every process holds the whole cache (the epoch's order is drawn over all of it).
    """

    CHUNK_BYTES = 256 * 2**20  # rows copied per transfer: bounded host memory while uploading

    def __init__(self, dataset: ImageDataset, batch_sampler: EpochBatchSampler, device: torch.device,
                 show_progress: bool = False):
        self.dataset, self.batch_sampler, self.device = dataset, batch_sampler, device
        self.images = self._upload(show_progress)  # (N, S, S, 3) uint8 on the device

    def _upload(self, show_progress: bool) -> torch.Tensor:
        shape = (len(self.dataset), *self.dataset.image_shape)  # (N, S, S, 3)
        need = int(np.prod(shape))  # bytes, uint8
        check_device_memory(need, self.device)
        images = torch.empty(shape, dtype=torch.uint8, device=self.device)
        rows_per_chunk = max(1, self.CHUNK_BYTES // max(1, need // max(1, shape[0])))
        bar = tqdm(total=need, unit="B", unit_scale=True, desc=f"images to {self.device.type} memory", leave=False,
                   disable=not show_progress)
        for a in range(0, shape[0], rows_per_chunk):
            rows = np.arange(a, min(a + rows_per_chunk, shape[0]))
            chunk = torch.from_numpy(self.dataset.get_batch(rows)["images"])  # (rows, S, S, 3), across splits
            images[a : a + len(rows)].copy_(chunk)
            bar.update(chunk.numel())
        bar.close()
        return images

    def __iter__(self):
        order = torch.from_numpy(self.batch_sampler.epoch_indices()).to(self.device)  # (rows of this rank,)
        size = self.batch_sampler.batch_size
        for b in range(len(self.batch_sampler)):
            rows = order[b * size : (b + 1) * size]  # (B,)
            yield {"images": self.images.index_select(0, rows).permute(0, 3, 1, 2)}  # (B, 3, S, S)

    def __len__(self) -> int:
        return len(self.batch_sampler)


def device_image_loader(processed_dir: str | Path, splits: str | Sequence[str], batch_size: int, shuffle: bool,
                        device: torch.device | str, seed: int = 0, drop_last: bool = False, num_replicas: int = 1,
                        rank: int = 0, show_progress: bool = False) -> DeviceImageLoader:
    """:func:`~captioner.data.loaders.image_loader`'s batches, from a copy of the split(s)' whole uint8
    cache in ``device``'s memory (same ``batch_sampler``, no workers, no host-to-device copies);
    ``show_progress``: a progress bar for the copy."""
    dataset = ImageDataset(processed_dir, splits)
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle, seed, drop_last, num_replicas, rank)
    return DeviceImageLoader(dataset, sampler, torch.device(device), show_progress)

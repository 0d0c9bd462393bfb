"""Datasets and DataLoaders over the processed data (see ``captioner/coco_data.py`` for the format).

Three views of a processed split:

- :class:`CaptFirstDataset`: one item per (image, caption) pair, for captioner training;
- :class:`ImgFirstDataset`: one item per image with all its raw captions and its id, for evaluation;
- :class:`ImageOnlyDataset`: images alone, optionally several splits end to end (train + unlabeled),
  for MAE pretraining.

Speed comes from reading a whole batch at once: the datasets implement ``__getitems__(indices)``,
which the DataLoader calls with the batch sampler's list of indices, so one batch costs one fancy-
index read of the uint8 memmap (``np.load(mmap_mode="r")``) and a few numpy ops, with no per-image
Python work and no JPEG decoding. ``dataset[i]`` is a batch of one.

Faster still when the images fit in the GPU's memory: :class:`DeviceImageLoader` (``get_coco_loader(...,
on_device=device)``, ``data.on_device`` in the MAE configs) copies the whole uint8 cache there once
and gathers each batch on the GPU, with no loader workers and no host-to-device copies in the loop.

Batches (dicts of tensors; images are uint8 on the 0..255 scale, transformed later on the device
by ``captioner/image_transforms.py``):

- ``"caption"``: ``images`` (U, 3, S, S) uint8, the *unique* images of the batch; ``image_index``
  (B,) long, which row of ``images`` caption ``b`` belongs to; ``tokens`` (B, T) long,
  ``<sos> ids <eos>`` then ``<pad>``, at most ``max_len`` tokens including ``<sos>`` and ``<eos>``
  (a longer caption is cut and still ends with ``<eos>``); ``image_ids`` (U,) long. The captioner
  encodes each image once and gathers ``features[image_index]``.
- ``"image_captions"``: ``images`` (B, 3, S, S) uint8, ``image_ids`` (B,) long, ``captions``
  (B lists of str).
- ``"image"``: ``images`` (B, 3, S, S) uint8.

Images are views of the cache's (S, S, 3) rows, so their memory layout is channels-last; call
``.contiguous()`` if a kernel needs NCHW.

Captions grouped by image (``group_by_image=True`` for ``"caption"``): the sampler draws *images*
and each batch holds all the captions of those images, so U = B / 5 on COCO and the encoder runs
five times less per caption. Batches then hold about ``batch_size`` captions (it varies with the
number of captions per image). The default draws independent random pairs, so a batch's captions
mostly come from different images (U close to B).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from captioner.coco_data import read_split
from captioner.tokenizers import EOS_ID, PAD_ID, SOS_ID

KINDS = ("caption", "image_captions", "image")


class ImageCache:
    """A processed split's (N, S, S, 3) uint8 cache, opened as a read-only memmap.

    Pickling (for DataLoader workers started with spawn) drops the mapping and the copy reopens
    the file on first use, instead of pickling the whole array.
    """

    def __init__(self, path: str | Path, array: np.ndarray):
        self.path = str(path)
        self.shape = array.shape
        self._array = array

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    def take(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), S, S, 3) uint8 copy of the given rows, in one fancy-index read."""
        return np.asarray(self.array[rows])

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self):
        return {**self.__dict__, "_array": None}


def _open(processed_dir, split) -> tuple[dict, ImageCache]:
    record, images = read_split(processed_dir, split)
    return record, ImageCache(Path(processed_dir) / f"{split}_images.npy", images)


class CaptFirstDataset(Dataset):
    """Every (image, caption) pair of a split; ``__getitems__`` returns a ``"caption"`` batch.

    The token ids of all captions live in one flat int32 array with offsets, so padding a batch
    is a single vectorised gather.

    max_len: tokens per caption including ``<sos>`` and ``<eos>`` (None: no limit; else >= 3).
    group_by_image: index images instead of pairs; item ``i`` is all the captions of image ``i``.
    """

    def __init__(self, processed_dir: str | Path, split: str, max_len: int | None = None,
                 group_by_image: bool = False):
        if max_len is not None and max_len < 3:
            raise ValueError(f"max_len must be at least 3 (<sos>, one token, <eos>), got {max_len}")
        record, self.cache = _open(processed_dir, split)
        self.max_len, self.group_by_image = max_len, group_by_image
        self.image_ids = np.asarray(record["image_ids"], dtype=np.int64)  # (N,)
        per_image = np.array([len(t) for t in record["tokens"]], dtype=np.int64)  # (N,) captions per image
        if per_image.sum() == 0:
            raise ValueError(f"{processed_dir}: split {split!r} has no captions")
        captions = [ids for image_tokens in record["tokens"] for ids in image_tokens]
        self.pair_image = np.repeat(np.arange(len(per_image)), per_image)  # (P,) image row of each pair
        self.image_first_pair = np.concatenate([[0], np.cumsum(per_image)])  # (N + 1,)
        self.lengths = np.array([len(ids) for ids in captions], dtype=np.int64)  # (P,)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)  # (P,)
        self.flat_tokens = np.fromiter((t for ids in captions for t in ids), dtype=np.int32,
                                       count=int(self.lengths.sum()))  # (total tokens,)
        self.captions_per_image = float(per_image.mean())

    def __len__(self) -> int:
        return len(self.image_ids) if self.group_by_image else len(self.pair_image)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])

    def __getitems__(self, indices) -> dict:
        indices = np.asarray(indices, dtype=np.int64)
        if self.group_by_image:
            indices = self._pairs_of_images(indices)
        rows = self.pair_image[indices]  # (B,)
        unique_rows, image_index = np.unique(rows, return_inverse=True)  # (U,), (B,)
        return {
            "images": self.cache.take(unique_rows),  # (U, S, S, 3)
            "image_index": image_index.reshape(-1),  # (B,)
            "tokens": self._pad(indices),  # (B, T)
            "image_ids": self.image_ids[unique_rows],  # (U,)
        }

    def _pairs_of_images(self, image_rows: np.ndarray) -> np.ndarray:
        """All pair indices of the given images, image by image: (sum of their caption counts,)."""
        starts = self.image_first_pair[image_rows]  # (n,)
        counts = self.image_first_pair[image_rows + 1] - starts  # (n,)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)  # 0, 1, .. per image
        return np.repeat(starts, counts) + within

    def _pad(self, pairs: np.ndarray) -> np.ndarray:
        """``<sos> ids <eos> <pad>...`` for each pair: (B, T) int64, T = longest in the batch.

        Example: ids [[7, 8], [9]] -> [[SOS, 7, 8, EOS], [SOS, 9, EOS, PAD]].
        """
        lengths = self.lengths[pairs]  # (B,)
        if self.max_len is not None:
            lengths = np.minimum(lengths, self.max_len - 2)
        width = int(lengths.max()) if len(lengths) else 0
        pos = np.arange(width)  # (W,)
        inside = pos[None, :] < lengths[:, None]  # (B, W)
        gather = np.minimum(self.offsets[pairs][:, None] + pos[None, :], max(len(self.flat_tokens) - 1, 0))  # (B, W)
        out = np.full((len(pairs), width + 2), PAD_ID, dtype=np.int64)  # (B, T)
        out[:, 0] = SOS_ID
        if width:
            out[:, 1 : width + 1] = np.where(inside, self.flat_tokens[gather], PAD_ID)
        out[np.arange(len(pairs)), lengths + 1] = EOS_ID
        return out


class ImgFirstDataset(Dataset):
    """One item per image of a split with all its raw captions; ``__getitems__`` returns an
    ``"image_captions"`` batch. Works for uncaptioned splits too (empty caption lists)."""

    def __init__(self, processed_dir: str | Path, split: str):
        record, self.cache = _open(processed_dir, split)
        self.image_ids = np.asarray(record["image_ids"], dtype=np.int64)  # (N,)
        self.captions = record["captions"]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])

    def __getitems__(self, indices) -> dict:
        indices = np.asarray(indices, dtype=np.int64)
        return {
            "images": self.cache.take(indices),  # (B, S, S, 3)
            "image_ids": self.image_ids[indices],  # (B,)
            "captions": [self.captions[i] for i in indices],
        }


class ImageOnlyDataset(Dataset):
    """The images of one or more splits, end to end (e.g. ``("train", "unlabeled")`` for MAE);
    ``__getitems__`` returns an ``"image"`` batch. All splits must share the image size."""

    def __init__(self, processed_dir: str | Path, splits: Sequence[str] = ("train",)):
        if isinstance(splits, str):
            splits = (splits,)
        self.caches = [_open(processed_dir, split)[1] for split in splits]
        sizes = {cache.shape[1:] for cache in self.caches}
        if len(sizes) > 1:
            raise ValueError(f"{processed_dir}: splits {list(splits)} have different image sizes {sorted(sizes)}")
        self.image_shape = self.caches[0].shape[1:]  # (S, S, 3)
        self.starts = np.cumsum([0] + [len(c) for c in self.caches])  # (n_splits + 1,)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])

    def __getitems__(self, indices) -> dict:
        indices = np.asarray(indices, dtype=np.int64)
        if len(self.caches) == 1:
            return {"images": self.caches[0].take(indices)}  # (B, S, S, 3)
        which = np.searchsorted(self.starts, indices, side="right") - 1  # (B,) split of each index
        images = np.empty((len(indices), *self.image_shape), dtype=np.uint8)  # (B, S, S, 3)
        for k, cache in enumerate(self.caches):
            mask = which == k
            if mask.any():
                images[mask] = cache.take(indices[mask] - self.starts[k])
        return {"images": images}


def to_tensors(batch: dict) -> dict:
    """The DataLoader's collate: numpy batch from ``__getitems__`` -> torch, without copies.

    Images (n, S, S, 3) become (n, 3, S, S) views (channels-last memory); integer arrays become
    long tensors; lists (captions) stay as they are.
    """
    out = {}
    for key, value in batch.items():
        if key == "images":
            out[key] = torch.from_numpy(value).permute(0, 3, 1, 2)  # (n, 3, S, S)
        elif isinstance(value, np.ndarray):
            out[key] = torch.from_numpy(value).long()
        else:
            out[key] = value
    return out


class EpochBatchSampler(Sampler):
    """Lists of indices, one per batch, in an order that is a pure function of ``(seed, epoch)``.

    Call ``set_epoch(e)`` before each epoch: a resumed run that starts at epoch ``e`` sees exactly
    the batches an uninterrupted run would have seen. With ``num_replicas`` > 1 (one process per
    GPU), rank ``r`` takes every ``num_replicas``-th index of the epoch's order starting at ``r``,
    so the ranks' shares are disjoint and together cover the epoch. With ``drop_last`` the order is
    first cut to a multiple of ``num_replicas * batch_size``, so every rank gets the same number of
    full batches (what distributed training needs); without it the last batches may be short and
    the ranks' batch counts may differ by one.

    Example: n=5, batch_size=2, shuffle=False -> [0, 1], [2, 3], [4];
    with num_replicas=2, rank=1 -> [1, 3].
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False,
                 num_replicas: int = 1, rank: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.drop_last, self.num_replicas, self.rank = drop_last, num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_indices(self) -> np.ndarray:
        """This rank's indices of the current epoch, in order: the batches are consecutive slices."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)  # (n,)
        else:
            order = np.arange(self.n)
        return order[: self._usable()][self.rank :: self.num_replicas]

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


def get_coco_loader(processed_dir: str | Path, split: str | Sequence[str], kind: str, batch_size: int,
                    shuffle: bool, seed: int = 0, num_workers: int = 0, drop_last: bool = False,
                    max_len: int | None = None, pin_memory: bool | None = None, num_replicas: int = 1,
                    rank: int = 0, group_by_image: bool = False,
                    on_device: torch.device | str | None = None,
                    show_progress: bool = False) -> DataLoader | DeviceImageLoader:
    """A DataLoader over a processed split; its ``batch_sampler`` has ``set_epoch``.

    kind: ``"caption"`` (CaptFirstDataset), ``"image_captions"`` (ImgFirstDataset) or ``"image"``
    (ImageOnlyDataset; ``split`` may then be a list of splits, read end to end). batch_size counts
    captions for "caption" and images otherwise. pin_memory None means "when CUDA is available";
    worker processes persist across epochs. group_by_image (kind "caption" only): see the module
    docstring. on_device (kind "image" only): copy the split(s)' whole image cache into that device's
    memory once and gather every batch there: a :class:`DeviceImageLoader` (same batches, same
    ``batch_sampler``, no workers, no host-to-device copies); ``show_progress``: a progress bar for that copy.

    Example::

        loader = get_coco_loader("data/shapes/processed", "train", "caption", 128, shuffle=True, max_len=32)
        for epoch in range(epochs):
            loader.batch_sampler.set_epoch(epoch)
            for batch in loader:
                ...  # batch["images"] (U, 3, S, S) uint8, batch["tokens"] (B, T) long
    """
    if kind not in KINDS:
        raise ValueError(f"unknown loader kind {kind!r}; expected one of {KINDS}")
    if group_by_image and kind != "caption":
        raise ValueError("group_by_image applies to kind 'caption' only")
    if not isinstance(split, str) and kind != "image":
        raise ValueError(f"kind {kind!r} reads one split, got {list(split)}")
    if kind == "caption":
        dataset = CaptFirstDataset(processed_dir, split, max_len=max_len, group_by_image=group_by_image)
        if group_by_image:
            batch_size = max(1, round(batch_size / dataset.captions_per_image))
    elif kind == "image_captions":
        dataset = ImgFirstDataset(processed_dir, split)
    else:
        dataset = ImageOnlyDataset(processed_dir, split)
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle, seed, drop_last, num_replicas, rank)
    if on_device is not None:
        if kind != "image":
            raise ValueError(f"on_device applies to kind 'image' only, not {kind!r}")
        return DeviceImageLoader(dataset, sampler, torch.device(on_device), show_progress)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=to_tensors, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0)


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
    to the GPU: host work that a fast GPU step can outrun (on an H200 it delivered 11,527 images/s,
    while the COCO MAE preset at 30 % MFU would consume about 26,600). When the cache fits in device
    memory (COCO train + unlabeled at 256 px: 241,000 x 256 x 256 x 3 bytes = 47 GB), it is copied
    there once, and a batch is then one ``index_select`` on the device. Batches are those of the DataLoader (same ``batch_sampler``,
    same ``(B, 3, S, S)`` channels-last uint8 views), so training is the same either way; each
    epoch's order goes to the device once, not once per batch.

    Under torchrun every process holds the whole cache (the epoch's order is drawn over all of it).
    """

    CHUNK_BYTES = 256 * 2**20  # rows copied per transfer: bounded host memory while uploading

    def __init__(self, dataset: ImageOnlyDataset, batch_sampler: EpochBatchSampler, device: torch.device,
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
            chunk = torch.from_numpy(self.dataset.__getitems__(rows)["images"])  # (rows, S, S, 3), across splits
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

"""Datasets over the processed data (see ``captioner/data/processed.py`` for the format).

Three views of a processed split:

- :class:`ImageCaptionPairDataset`: one item per (image, caption) pair, for captioner training;
- :class:`ImageWithCaptionsDataset`: one item per image with all its raw captions and its id, for evaluation;
- :class:`ImageDataset`: images alone, optionally several splits end to end (train + unlabeled),
  for MAE pretraining.

Speed comes from reading a whole batch at once: the datasets implement ``__getitems__(indices)``,
which the DataLoader calls with the batch sampler's list of indices, so one batch costs one fancy-
index read of the uint8 memmap (``np.load(mmap_mode="r")``) and a few numpy ops, with no per-image
Python work and no JPEG decoding. ``dataset.get_batch(indices)`` is the same call by its own name; ``dataset[i]`` is a batch of one.

Batches (dicts of tensors after :func:`to_tensors`; images are uint8 on the 0..255 scale, transformed
later on the device by ``captioner/data/transforms.py``):

- captions (``ImageCaptionPairDataset``): ``images`` (U, 3, S, S) uint8, the *unique* images of the
  batch; ``image_index`` (B,) long, which row of ``images`` caption ``b`` belongs to; ``tokens``
  (B, T) long, ``<sos> ids <eos>`` then ``<pad>``, at most ``max_len`` tokens including ``<sos>``
  and ``<eos>`` (a longer caption is cut and still ends with ``<eos>``); ``image_ids`` (U,) long.
  The captioner encodes each image once and gathers ``features[image_index]``.
- images with their captions (``ImageWithCaptionsDataset``): ``images`` (B, 3, S, S) uint8,
  ``image_ids`` (B,) long, ``captions`` (B lists of str).
- images (``ImageDataset``): ``images`` (B, 3, S, S) uint8.

Images are views of the cache's (S, S, 3) rows, so their memory layout is channels-last; call
``.contiguous()`` if a kernel needs NCHW.

Captions grouped by image (``group_by_image=True``): the sampler draws *images* and each batch holds
all the captions of those images, so U = B / 5 on COCO and the encoder runs five times less per
caption. Batches then hold about ``batch_size`` captions (it varies with the number of captions per
image). The default draws independent random pairs, so a batch's captions mostly come from different
images (U close to B).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from captioner.data.processed import read_split
from captioner.text.tokenizers import EOS_ID, PAD_ID, SOS_ID


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


class BatchDataset(Dataset):
    """A dataset that reads a whole batch in one call: ``get_batch(indices)`` returns a dict of numpy arrays.

    The DataLoader calls ``__getitems__`` with the batch sampler's list of indices (instead of
    ``__getitem__`` once per index), so a batch costs one read; ``dataset[i]`` is a batch of one.
    """

    def get_batch(self, indices) -> dict:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        return self.get_batch([index])

    def __getitems__(self, indices) -> dict:
        return self.get_batch(indices)


class ImageCaptionPairDataset(BatchDataset):
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

    def item_lengths(self) -> np.ndarray:
        """(len(self),) the tokens of each item's caption, or of each image's longest caption when grouped
        by image: what the item adds to the padded width of a batch."""
        if not self.group_by_image:
            return self.lengths
        starts, ends = self.image_first_pair[:-1], self.image_first_pair[1:]  # (N,) each
        longest = np.zeros(len(starts), dtype=np.int64)  # an image without captions adds nothing
        captioned = ends > starts
        longest[captioned] = np.maximum.reduceat(self.lengths, starts[captioned])  # segments: each image's pairs
        return longest

    def get_batch(self, indices) -> dict:
        indices = np.asarray(indices, dtype=np.int64)
        if self.group_by_image:
            indices = self._pairs_of_images(indices)
        rows = self.pair_image[indices]  # (B,)
        unique_rows, image_index = np.unique(rows, return_inverse=True)  # (U,), (B,)
        return {
            "images": self.cache.take(unique_rows),  # (U, S, S, 3)
            "image_index": image_index.reshape(-1),  # (B,)
            "tokens": self.pad_pairs(indices),  # (B, T)
            "image_ids": self.image_ids[unique_rows],  # (U,)
        }

    def _pairs_of_images(self, image_rows: np.ndarray) -> np.ndarray:
        """All pair indices of the given images, image by image: (sum of their caption counts,)."""
        starts = self.image_first_pair[image_rows]  # (n,)
        counts = self.image_first_pair[image_rows + 1] - starts  # (n,)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)  # 0, 1, .. per image
        return np.repeat(starts, counts) + within

    def pad_pairs(self, pairs: np.ndarray) -> np.ndarray:
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


class ImageWithCaptionsDataset(BatchDataset):
    """One item per image of a split with all its raw captions; ``__getitems__`` returns an
    ``"image_captions"`` batch. Works for uncaptioned splits too (empty caption lists)."""

    def __init__(self, processed_dir: str | Path, split: str):
        record, self.cache = _open(processed_dir, split)
        self.image_ids = np.asarray(record["image_ids"], dtype=np.int64)  # (N,)
        self.captions = record["captions"]

    def __len__(self) -> int:
        return len(self.image_ids)

    def get_batch(self, indices) -> dict:
        indices = np.asarray(indices, dtype=np.int64)
        return {
            "images": self.cache.take(indices),  # (B, S, S, 3)
            "image_ids": self.image_ids[indices],  # (B,)
            "captions": [self.captions[i] for i in indices],
        }


class ImageDataset(BatchDataset):
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

    def get_batch(self, indices) -> dict:
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

"""Training batches streamed from a URL–caption list (``data.source: urls``): no image files at all.

The list is read and its captions tokenized once, in the main process. Each epoch the list's images are
put in an order that is a pure function of ``(seed, epoch)`` (the same :class:`EpochBatchSampler` as
the processed data's) and cut into *blocks* of ``images_per_batch`` images. Block ``b`` becomes batch
``b``: the images of the block that fetched and decoded, resized to the processed data's image size,
with their captions, in the same dict as ``ImageCaptionPairDataset``'s batches (``images``,
``image_index``, ``tokens``, ``image_ids``). So the order depends on the seed and on which URLs
succeeded, nothing else: a failure makes its batch one image smaller and moves nothing.

Loader worker ``w`` of ``W`` fetches the blocks ``w, w + W, ...`` with its own pool of
``fetch_concurrency`` threads (``captioner/data/url_fetch.py``), working ahead of the batch it hands
over; with no workers the main process's threads do it, fetching ahead while the training step runs.
The DataLoader takes the workers'
batches in turn, so the batches arrive in block order. Each batch carries the skip reasons of its
block's failures; :class:`UrlStreamLoader` takes them off, counts them (``skip_counts``, per epoch)
and drops a block whose every image failed.

Exact resume: checkpoints are written at epoch ends, where the stream's position is the start of the
next epoch's order; the checkpoint stores that position and a fingerprint of the list
(:meth:`UrlStreamLoader.state`), and a resumed run refuses another list. The resumed run then sees the
batches the uninterrupted run would have seen *if the same URLs succeed*: with ``url_cache_dir`` every
image that succeeded once is read from the disk, so only a URL that failed before and succeeds now (or
the reverse, without a cache) changes a batch. docs/urls.md#resume says it in full.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from captioner.config import ConfigError, UrlDataConfig
from captioner.data.coco_annotations import SkipLog
from captioner.data.datasets import ImageCaptionPairDataset, to_tensors
from captioner.data.image_io import resize_and_center_crop
from captioner.data.loaders import EpochBatchSampler
from captioner.data.url_fetch import FetchSettings, Fetched, UrlFetcher
from captioner.data.urls import UrlItem, read_url_list


def fetch_settings(data: UrlDataConfig) -> FetchSettings:
    """The fetcher's settings from the ``data`` section of a run config."""
    return FetchSettings(timeout=data.fetch_timeout, retries=data.fetch_retries, max_bytes=data.max_image_bytes,
                         max_pixels=data.max_image_pixels, concurrency=data.fetch_concurrency)


def list_fingerprint(items: list[UrlItem]) -> str:
    """SHA-256 of the list's images and captions, in order: what a resumed run must find again."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps([item.url, item.captions]).encode("utf-8"))
    return digest.hexdigest()


class UrlCaptionStream(IterableDataset):
    """The batches of one epoch of a URL list (see the module docstring); ``sampler`` holds the epoch."""

    # The captions are stored as ImageCaptionPairDataset stores them (flat ids with offsets), so its
    # padding applies as it is.
    pad_pairs = ImageCaptionPairDataset.pad_pairs

    def __init__(self, items: list[UrlItem], tokens: list[list[list[int]]], sampler: EpochBatchSampler,
                 image_size: int, settings: FetchSettings, cache_dir: str | None, max_len: int | None,
                 one_caption: bool):
        self.items, self.sampler, self.image_size = items, sampler, image_size
        self.settings, self.cache_dir, self.max_len, self.one_caption = settings, cache_dir, max_len, one_caption
        per_image = np.array([len(t) for t in tokens], dtype=np.int64)  # (N,)
        captions = [ids for image_tokens in tokens for ids in image_tokens]
        self.image_first_pair = np.concatenate([[0], np.cumsum(per_image)])  # (N + 1,)
        self.lengths = np.array([len(ids) for ids in captions], dtype=np.int64)  # (P,)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)  # (P,)
        self.flat_tokens = np.fromiter((t for ids in captions for t in ids), dtype=np.int32,
                                       count=int(self.lengths.sum()))  # (total tokens,)

    def __len__(self) -> int:
        return len(self.items)  # the list's images (the batches are len(self.sampler) at most)

    def _prepare(self, result: Fetched):
        """In a fetch thread: the image resized and centre-cropped, (S, S, 3) uint8; the failure as it is."""
        if result.reason is not None:
            return result.reason
        return resize_and_center_crop(result.image, self.image_size)

    def _batch(self, block: list[int], outcomes: list) -> dict:
        """Batch of one block: its good images with their captions, and the reasons of the others."""
        good = [(row, out) for row, out in zip(block, outcomes) if not isinstance(out, str)]
        rows = np.array([row for row, _ in good], dtype=np.int64)  # (U,)
        pairs = []
        for row in rows:
            first, end = self.image_first_pair[row], self.image_first_pair[row + 1]
            if self.one_caption:  # a function of (seed, epoch, image): the same on a resumed run
                rng = np.random.default_rng([self.sampler.seed, self.sampler.epoch, int(row)])
                pairs.append([first + int(rng.integers(end - first))])
            else:
                pairs.append(list(range(first, end)))
        counts = [len(p) for p in pairs]
        pairs = np.array([p for image_pairs in pairs for p in image_pairs], dtype=np.int64)  # (B,)
        size = self.image_size
        return {
            "images": np.stack([out for _, out in good]) if good else np.zeros((0, size, size, 3), np.uint8),
            "image_index": np.repeat(np.arange(len(rows)), counts),  # (B,)
            "tokens": self.pad_pairs(pairs) if len(pairs) else np.zeros((0, 2), np.int64),  # (B, T)
            "image_ids": rows + 1,  # (U,) the list's images count from 1, as in the pre-downloaded layout
            "skipped": dict(Counter(out for out in outcomes if isinstance(out, str))),
        }

    def __iter__(self):
        worker = get_worker_info()
        index, count = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        blocks = [block for b, block in enumerate(self.sampler) if b % count == index]
        fetcher = UrlFetcher(self.settings, self.cache_dir)
        # one stream of URLs through the pool, so that it fetches ahead across the blocks
        outcomes = fetcher.fetch_all((self.items[row].url for block in blocks for row in block), self._prepare)
        for block in blocks:
            yield self._batch(block, [next(outcomes) for _ in block])


class UrlStreamLoader:
    """A DataLoader over :class:`UrlCaptionStream` that counts each epoch's skips by reason.

    Used like the processed data's loaders: ``loader.batch_sampler.set_epoch(e)``, then iterate;
    ``len(loader)`` is the number of blocks (batches when nothing fails); ``loader.dataset.items`` the
    list's images; ``loader.skip_counts`` the reasons counted so far in this epoch.
    """

    def __init__(self, stream: UrlCaptionStream, num_workers: int, fingerprint: str, list_skips: SkipLog):
        self.dataset, self.batch_sampler, self.fingerprint = stream, stream.sampler, fingerprint
        self.list_skips = list_skips  # the list's own bad lines, found once when it was read
        self.skip_counts: Counter = Counter()
        # not persistent: each epoch's workers get the sampler with the epoch just set
        self._loader = DataLoader(stream, batch_size=None, collate_fn=to_tensors, num_workers=num_workers,
                                  pin_memory=torch.cuda.is_available())

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        self.skip_counts = Counter()
        for batch in self._loader:
            self.skip_counts.update(batch.pop("skipped"))
            if len(batch["image_ids"]):  # a block whose every image failed makes no batch
                yield batch

    def state(self, next_epoch: int) -> dict:
        """The stream's position at an epoch's end, for the checkpoint (see the module docstring)."""
        return {"list_sha256": self.fingerprint, "images": len(self.dataset.items), "epoch": next_epoch,
                "block": 0, "bad_lines": self.list_skips.counts()}

    def check_resume(self, payload: dict, source: str | Path) -> None:
        """Raise ValueError, naming the checkpoint, unless it was streaming this very list."""
        saved = payload.get("url_stream")
        if not isinstance(saved, dict):
            raise ValueError(f"{source}: the run did not stream a URL list (data.source was not urls)")
        if saved.get("list_sha256") != self.fingerprint:
            raise ValueError(f"{source}: the run streamed another URL list ({saved.get('images')} images) than "
                             f"{len(self.dataset.items)} images now; resume with the list it was started with")


def url_caption_loader(data: UrlDataConfig, tokenizer, seed: int, group_by_image: bool = True,
                       num_replicas: int = 1, rank: int = 0) -> UrlStreamLoader:
    """Training batches of ``data.url_file``'s images, fetched while training runs; ``data.batch_size``
    counts captions. ``group_by_image``: every caption of an image in its batch (the captioner), else one
    caption per image, drawn from ``(seed, epoch, image)`` (the retrieval model: an image's other captions
    would be false negatives). Images are resized to the processed data's ``image_size`` (meta.json)."""
    if not data.url_file:
        raise ConfigError("data.url_file: data.source is urls, but no URL list is named")
    if data.group_by_length:
        raise ConfigError("data.group_by_length: a URL stream's batches are blocks of the epoch's order, not "
                          "grouped by length; set data.group_by_length=false")
    meta_path = Path(data.processed_dir) / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: streaming still reads the tokenizer and the validation "
                                "split from data.processed_dir (docs/urls.md#streaming)")
    image_size = json.loads(meta_path.read_text())["image_size"]
    skips = SkipLog()
    items = read_url_list(data.url_file, skips, data.url_column, data.caption_column, data.url_format)
    tokens = [[tokenizer.encode(caption) for caption in item.captions] for item in items]
    captions_per_image = sum(len(t) for t in tokens) / max(len(items), 1) if group_by_image else 1.0
    images_per_batch = max(1, round(data.batch_size / captions_per_image))
    sampler = EpochBatchSampler(len(items), images_per_batch, shuffle=True, seed=seed, drop_last=True,
                                num_replicas=num_replicas, rank=rank)
    stream = UrlCaptionStream(items, tokens, sampler, image_size, fetch_settings(data), data.url_cache_dir or None,
                              data.max_caption_len, one_caption=not group_by_image)
    return UrlStreamLoader(stream, data.num_workers, list_fingerprint(items), skips)


def describe_skips(counts: dict[str, int]) -> str:
    """One line for the log: ``"none"``, or each reason with its count, the most frequent first.

    >>> describe_skips({"URL answered HTTP 404 (not found)": 3, "URL timed out, every retry too": 5})
    '5 URL timed out, every retry too; 3 URL answered HTTP 404 (not found)'
    """
    if not counts:
        return "none"
    return "; ".join(f"{n} {reason}" for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

"""The uint8 image cache: every image of a split resized once, stored as one ``(N, S, S, 3)`` array.

:func:`build_image_cache` decodes, resizes and center-crops the images (in worker processes when
asked), writing rows straight into a memory-mapped ``.npy`` under a temporary name that is renamed
when complete; an unreadable image is reported, not fatal. :class:`ImageCache` reads the rows back.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Callable

import numpy as np

from captioner.data.coco_annotations import BAD_IMAGE, MISSING_IMAGE
from captioner.data.image_io import (
    BadImageError,
    load_image_rgb,
    resize_and_center_crop,
)

Progress = Callable[[int], None]  # called with the number of items just finished (tqdm's update)


def load_and_resize(path: str | Path, size: int) -> np.ndarray:
    """Decode one image file to RGB and resize + centre-crop it: (size, size, 3) uint8.

    Raises BadImageError (from ``captioner.data.image_io``) for anything that is not a usable image.
    """
    return load_resize_and_kept(path, size)[0]


def load_resize_and_kept(path: str | Path, size: int) -> tuple[np.ndarray, float]:
    """:func:`load_and_resize`, and the share of the picture's longer side that the centre crop kept
    (1.0 for a square picture; 0.75 for 640 x 480: an eighth cut away at each side)."""
    # draft_size lets a JPEG at least twice as large as ``size`` decode directly at 1/2..1/8 scale.
    image = load_image_rgb(path, draft_size=size)
    width, height = image.size
    return resize_and_center_crop(image, size), min(width, height) / max(width, height)


def _resize_rows(array: np.ndarray, start: int, paths: list[str], size: int) -> list[tuple[int, str, str]]:
    """Fill ``array[start : start + len(paths)]``; returns (row, reason, message) per bad image."""
    failures = []
    for k, path in enumerate(paths):
        try:
            array[start + k] = load_and_resize(path, size)
        except BadImageError as e:
            failures.append((start + k, BAD_IMAGE if os.path.exists(path) else MISSING_IMAGE, str(e)))
    return failures


_worker_array = None  # each pool worker's own memmap of the partial cache


def _open_in_worker(path: str) -> None:
    global _worker_array
    _worker_array = np.load(path, mmap_mode="r+")


def _resize_rows_in_worker(task: tuple[int, list[str], int]) -> tuple[int, list[tuple[int, str, str]]]:
    start, paths, size = task
    return len(paths), _resize_rows(_worker_array, start, paths, size)


def finish_file(tmp: str | Path, path: str | Path) -> None:
    """fsync ``tmp`` and rename it to ``path``: the file appears only once it is complete."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def partial_path(path: str | Path) -> Path:
    """The temporary name an output is written under: ``train.json`` -> ``train.json.partial``."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def build_image_cache(paths: list[str | Path], out_path: str | Path, size: int, workers: int = 1,
                      progress: Progress | None = None, chunk: int = 64) -> list[tuple[int, str, str]]:
    """Pre-resize every image in ``paths`` into the uint8 cache ``out_path``: (N_good, size, size, 3).

    Images are decoded in ``workers`` processes, ``chunk`` images per task, that write their rows
    straight into a memmap of the partial file (nothing big travels between processes). Which
    images fail is known only after decoding, so all rows are written first; if some failed, the
    good rows are then compacted into a second file, in their original order. Returns one
    ``(index into paths, reason, message naming the path)`` per dropped image, so the caller can
    drop the same images from the split's captions.
    """
    out_path = Path(out_path)
    tmp = partial_path(out_path)
    paths = [str(p) for p in paths]
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
    tasks = [(start, paths[start : start + chunk], size) for start in range(0, len(paths), chunk)]
    failures = []
    if workers <= 1 or len(tasks) <= 1:
        for start, chunk_paths, _ in tasks:
            failures += _resize_rows(array, start, chunk_paths, size)
            if progress:
                progress(len(chunk_paths))
    else:
        array.flush()
        with multiprocessing.Pool(workers, initializer=_open_in_worker, initargs=(str(tmp),)) as pool:
            for n_done, chunk_failures in pool.imap_unordered(_resize_rows_in_worker, tasks):
                failures += chunk_failures
                if progress:
                    progress(n_done)
    failures.sort()
    if failures:
        bad = {row for row, _, _ in failures}
        keep = np.array([i for i in range(len(paths)) if i not in bad], dtype=np.int64)
        compact_tmp = tmp.with_name(tmp.name + "2")
        compact = np.lib.format.open_memmap(compact_tmp, mode="w+", dtype=np.uint8, shape=(len(keep), size, size, 3))
        for start in range(0, len(keep), 1024):
            compact[start : start + 1024] = array[keep[start : start + 1024]]
        compact.flush()
        del compact, array
        os.replace(compact_tmp, tmp)
    else:
        array.flush()
        del array
    finish_file(tmp, out_path)
    return failures

"""The processed split files: tokenized captions in ``{split}.json``, read back with the image cache.

The processed format (``{split}_images.npy``, ``{split}.json``, ``tokenizer.txt``, ``meta.json``,
``stamps/``) is described in ``process_coco.py``'s docstring; :func:`read_split` reads a split back
and checks it against ``meta.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from captioner.data.coco_annotations import SplitData
from captioner.data.image_cache import Progress
from captioner.infra.fileio import write_json

FORMAT_VERSION = 1


def tokenize_captions(tokenizer, captions: list[list[str]], progress: Progress | None = None) -> list[list[list[int]]]:
    """Token ids (no ``<sos>``/``<eos>``) of every caption, nested like ``captions``."""
    tokens = []
    for image_captions in captions:
        tokens.append([tokenizer.encode(c) for c in image_captions])
        if progress:
            progress(1)
    return tokens


def write_split_json(path: str | Path, split: SplitData, tokens: list[list[list[int]]], image_size: int) -> None:
    """Write ``{split}.json`` (see the module docstring for the fields)."""
    write_json(path, {
        "format_version": FORMAT_VERSION,
        "split": split.name,
        "image_size": image_size,
        "image_ids": split.image_ids,
        "file_names": split.file_names,
        "captions": split.captions,
        "tokens": tokens,
    })


def split_files(processed_dir: str | Path, split: str) -> tuple[Path, Path]:
    """``(images .npy, split .json)`` paths of one processed split."""
    processed_dir = Path(processed_dir)
    return processed_dir / f"{split}_images.npy", processed_dir / f"{split}.json"


def read_split(processed_dir: str | Path, split: str) -> tuple[dict, np.ndarray]:
    """Open one processed split: its JSON record and its image cache as a read-only memmap.

    Raises FileNotFoundError (naming the file and how to make it) if the folder is incomplete
    (no meta.json: never processed, or interrupted) or lacks the split, and ValueError if the
    split's format version or size does not match.
    """
    meta_path = Path(processed_dir) / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: {processed_dir} was never processed or its last "
                                "run was interrupted; run process_coco.py (it resumes)")
    images_path, json_path = split_files(processed_dir, split)
    for path in (json_path, images_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: processed split {split!r} not found (see {meta_path})")
    with open(json_path, encoding="utf-8") as f:
        record = json.load(f)
    if record.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{json_path}: format version {record.get('format_version')} is not "
                         f"{FORMAT_VERSION}; rerun process_coco.py")
    images = np.load(images_path, mmap_mode="r")  # (N, S, S, 3) uint8
    if images.ndim != 4 or images.shape[0] != len(record["image_ids"]) or images.dtype != np.uint8:
        raise ValueError(f"{images_path}: shape {images.shape} {images.dtype} does not match "
                         f"{len(record['image_ids'])} images in {json_path}; rerun process_coco.py")
    return record, images

"""COCO-format captions in, the processed data that the loaders read out.

``process_coco.py`` runs these steps; the loaders (``captioner/coco_loader.py``) read what they
write. Everything here works the same for MS COCO 2017 and the synthetic shapes dataset, which is
written in the same layout::

    <coco_dir>/train2017/*.jpg          annotations/captions_train2017.json      (captioned)
    <coco_dir>/val2017/*.jpg            annotations/captions_val2017.json        (captioned)
    <coco_dir>/test2017/*.jpg           annotations/image_info_test2017.json     (images only)
    <coco_dir>/unlabeled2017/*.jpg      annotations/image_info_unlabeled2017.json (images only, optional)

The processed format (``{split}_images.npy``, ``{split}.json``, ``tokenizer.txt``, ``meta.json``,
``stamps/``) is described in ``process_coco.py``'s docstring; :func:`read_split` reads a split back.
Every output is written under a temporary name and renamed when complete, after an fsync.

Bad input: an annotation file that is not valid JSON or lacks a top-level key raises
:class:`AnnotationError` naming the file. Everything smaller (an annotation with missing keys, a
duplicate id, an empty caption, a caption for an unknown image, an image without captions, a missing
or unreadable image file) is skipped, recorded in a :class:`SkipLog` with its path or id and the
reason, and dropped consistently from its split.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from captioner.fileio import atomic_write_bytes
from captioner.image_io import BadImageError, load_image_rgb, resize_and_center_crop

FORMAT_VERSION = 1

# Skip reasons, as counted in the summary and in meta.json.
MALFORMED_IMAGE_ENTRY = "image entry with missing or invalid keys"
DUPLICATE_IMAGE_ID = "duplicate image id"
MALFORMED_CAPTION_ENTRY = "caption entry with missing or invalid keys"
DUPLICATE_CAPTION_ID = "duplicate caption id"
EMPTY_CAPTION = "empty caption"
UNKNOWN_IMAGE_ID = "caption for an unknown image id"
NO_CAPTIONS = "image without captions"
MISSING_IMAGE = "missing image file"
BAD_IMAGE = "unreadable image"

Progress = Callable[[int], None]  # called with the number of items just finished (tqdm's update)


class AnnotationError(ValueError):
    """An annotation file is missing, is not valid JSON, or lacks a required top-level key."""


@dataclass(frozen=True)
class SplitSpec:
    """Where one split lives in the COCO 2017 layout."""

    name: str
    image_dir: str
    annotation_file: str
    captioned: bool


SPLITS = (
    SplitSpec("train", "train2017", "captions_train2017.json", True),
    SplitSpec("val", "val2017", "captions_val2017.json", True),
    SplitSpec("test", "test2017", "image_info_test2017.json", False),
    SplitSpec("unlabeled", "unlabeled2017", "image_info_unlabeled2017.json", False),
)
REQUIRED_SPLITS = ("train", "val")


@dataclass
class SplitData:
    """The images of one split and their captions, after validation.

    ``captions[i]`` are the (stripped) captions of image ``image_ids[i]``, stored as
    ``image_dir / file_names[i]``; empty lists for an uncaptioned split.
    """

    name: str
    image_dir: Path
    image_ids: list[int]
    file_names: list[str]
    captions: list[list[str]]

    def select(self, rows: list[int]) -> SplitData:
        """The same split restricted to ``rows`` (e.g. the images that decoded)."""
        return SplitData(self.name, self.image_dir, [self.image_ids[i] for i in rows],
                         [self.file_names[i] for i in rows], [self.captions[i] for i in rows])


class SkipLog:
    """Every skipped item with its split, reason and what it was (a path or an id)."""

    def __init__(self):
        self.items: list[dict] = []

    def add(self, split: str, reason: str, item: str) -> None:
        self.items.append({"split": split, "reason": reason, "item": item})

    def counts(self) -> dict[str, int]:
        """{reason: number of items skipped for it}."""
        return dict(Counter(entry["reason"] for entry in self.items))


# --------------------------------------------------------------------------------------------------
# Reading annotations
# --------------------------------------------------------------------------------------------------


def available_splits(coco_dir: str | Path) -> list[SplitSpec]:
    """The splits whose annotation file exists; train and val are required.

    Raises AnnotationError naming the missing file when train or val has none.
    """
    coco_dir = Path(coco_dir)
    found = []
    for spec in SPLITS:
        path = coco_dir / "annotations" / spec.annotation_file
        if path.is_file():
            found.append(spec)
        elif spec.name in REQUIRED_SPLITS:
            raise AnnotationError(f"{path}: annotation file not found")
    return found


def read_annotation_file(path: str | Path, required_keys: tuple[str, ...]) -> dict:
    """Parse a COCO annotation file and check its top-level keys.

    Raises AnnotationError naming the file if it cannot be read, is not valid JSON, is not a JSON
    object, or lacks one of ``required_keys`` (or has one that is not a list).
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read the annotation file ({e.strerror or e})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON object at the top level, found {type(data).__name__}")
    for key in required_keys:
        if key not in data:
            raise AnnotationError(f"{path}: missing the top-level key {key!r}")
        if not isinstance(data[key], list):
            raise AnnotationError(f"{path}: top-level key {key!r} should hold a list, found {type(data[key]).__name__}")
    return data


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_split(coco_dir: str | Path, spec: SplitSpec, skips: SkipLog) -> SplitData:
    """Read and validate one split's annotation file; bad entries go to ``skips``.

    Images are sorted by id; each image's captions keep the file's order. In a captioned split an
    image without any valid caption is skipped too, since a captioner cannot learn from it.
    """
    coco_dir = Path(coco_dir)
    path = coco_dir / "annotations" / spec.annotation_file
    data = read_annotation_file(path, ("images", "annotations") if spec.captioned else ("images",))

    file_names: dict[int, str] = {}
    for entry in data["images"]:
        image_id = entry.get("id") if isinstance(entry, dict) else None
        name = entry.get("file_name") if isinstance(entry, dict) else None
        if not _is_int(image_id) or not isinstance(name, str) or not name.strip():
            skips.add(spec.name, MALFORMED_IMAGE_ENTRY, f"{path}: {json.dumps(entry)[:200]}")
        elif image_id in file_names:
            skips.add(spec.name, DUPLICATE_IMAGE_ID, f"{path}: image id {image_id} ({name})")
        else:
            file_names[image_id] = name

    captions: dict[int, list[str]] = {image_id: [] for image_id in file_names}
    if spec.captioned:
        seen_ids = set()
        for entry in data["annotations"]:
            ann_id = entry.get("id") if isinstance(entry, dict) else None
            image_id = entry.get("image_id") if isinstance(entry, dict) else None
            caption = entry.get("caption") if isinstance(entry, dict) else None
            if not _is_int(ann_id) or not _is_int(image_id) or not isinstance(caption, str):
                skips.add(spec.name, MALFORMED_CAPTION_ENTRY, f"{path}: {json.dumps(entry)[:200]}")
                continue
            if ann_id in seen_ids:
                skips.add(spec.name, DUPLICATE_CAPTION_ID, f"{path}: caption id {ann_id}")
                continue
            seen_ids.add(ann_id)
            if not caption.strip():
                skips.add(spec.name, EMPTY_CAPTION, f"{path}: caption id {ann_id} (image {image_id})")
            elif image_id not in captions:
                skips.add(spec.name, UNKNOWN_IMAGE_ID, f"{path}: caption id {ann_id} names image {image_id}")
            else:
                captions[image_id].append(caption.strip())

    ids = []
    for image_id in sorted(file_names):
        if spec.captioned and not captions[image_id]:
            skips.add(spec.name, NO_CAPTIONS, f"{coco_dir / spec.image_dir / file_names[image_id]} (id {image_id})")
        else:
            ids.append(image_id)
    return SplitData(spec.name, coco_dir / spec.image_dir, ids, [file_names[i] for i in ids], [captions[i] for i in ids])


# --------------------------------------------------------------------------------------------------
# The pre-resized image cache
# --------------------------------------------------------------------------------------------------


def load_and_resize(path: str | Path, size: int) -> np.ndarray:
    """Decode one image file to RGB and resize + centre-crop it: (size, size, 3) uint8.

    Raises BadImageError (from ``captioner.image_io``) for anything that is not a usable image.
    """
    # draft_size lets a JPEG at least twice as large as ``size`` decode directly at 1/2..1/8 scale.
    return resize_and_center_crop(load_image_rgb(path, draft_size=size), size)


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


# --------------------------------------------------------------------------------------------------
# Tokens, split files, stamps
# --------------------------------------------------------------------------------------------------


def tokenize_captions(tokenizer, captions: list[list[str]], progress: Progress | None = None) -> list[list[list[int]]]:
    """Token ids (no ``<sos>``/``<eos>``) of every caption, nested like ``captions``."""
    tokens = []
    for image_captions in captions:
        tokens.append([tokenizer.encode(c) for c in image_captions])
        if progress:
            progress(1)
    return tokens


def write_json(path: str | Path, data: dict) -> None:
    """Write ``data`` as compact JSON, atomically (temporary file, fsync, rename)."""
    atomic_write_bytes(path, json.dumps(data, separators=(",", ":")).encode("utf-8"))


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


def fingerprint(*parts) -> str:
    """A short hash of JSON-serialisable ``parts``; equal inputs give equal fingerprints."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def file_stats(paths: list[str | Path]) -> list[tuple[int, int] | None]:
    """``(size, mtime_ns)`` of each file, ``None`` if missing: a rewritten input changes its stamp."""
    stats = []
    for path in paths:
        try:
            st = os.stat(path)
            stats.append((st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append(None)
    return stats


def stamp_path(processed_dir: str | Path, output: str) -> Path:
    """Where the stamp of ``output`` (a file name in ``processed_dir``) lives."""
    return Path(processed_dir) / "stamps" / f"{output}.stamp"


def read_stamp(processed_dir: str | Path, output: str) -> dict | None:
    """The stamp of a finished output, or None if there is none (or it is unreadable)."""
    try:
        with open(stamp_path(processed_dir, output), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def write_stamp(processed_dir: str | Path, output: str, stamp: dict) -> None:
    """Record that ``output`` is finished; call only after the output itself is in place."""
    path = stamp_path(processed_dir, output)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, stamp)


def is_done(processed_dir: str | Path, output: str, fp: str) -> dict | None:
    """The stamp if ``output`` exists and was made from inputs with fingerprint ``fp``, else None."""
    stamp = read_stamp(processed_dir, output)
    if stamp is None or stamp.get("fingerprint") != fp or not (Path(processed_dir) / output).is_file():
        return None
    return stamp

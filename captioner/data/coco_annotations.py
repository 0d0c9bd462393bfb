"""Reading COCO-format caption annotations: the splits, their checks, and what is skipped and why.

Everything here works the same for MS COCO 2017 and the synthetic shapes dataset, which is
written in the same layout::

    <coco_dir>/train2017/*.jpg          annotations/captions_train2017.json      (captioned)
    <coco_dir>/val2017/*.jpg            annotations/captions_val2017.json        (captioned)
    <coco_dir>/test2017/*.jpg           annotations/image_info_test2017.json     (images only)
                                        or annotations/captions_test2017.json   (captioned: shapes)
    <coco_dir>/unlabeled2017/*.jpg      annotations/image_info_unlabeled2017.json (images only, optional)

Bad input: an annotation file that is not valid JSON or lacks a top-level key raises
:class:`AnnotationError` naming the file. Everything smaller (an annotation with missing keys, a
duplicate id, an empty caption, a caption for an unknown image, an image without captions, a missing
or unreadable image file) is skipped, recorded in a :class:`SkipLog` with its path or id and the
reason, and dropped consistently from its split.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

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


class AnnotationError(ValueError):
    """An annotation file is missing, is not valid JSON, or lacks a required top-level key."""


@dataclass(frozen=True)
class SplitSpec:
    """Where one split lives in the COCO 2017 layout."""

    name: str
    image_dir: str
    annotation_file: str
    captioned: bool


# A split may have more than one spec: the first whose file exists is read.
SPLITS = (
    SplitSpec("train", "train2017", "captions_train2017.json", True),
    SplitSpec("val", "val2017", "captions_val2017.json", True),
    SplitSpec("test", "test2017", "captions_test2017.json", True),  # shapes: the test split has references
    SplitSpec("test", "test2017", "image_info_test2017.json", False),  # COCO 2017: its test captions are private
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


def available_splits(coco_dir: str | Path) -> list[SplitSpec]:
    """The splits whose annotation file exists (the first of a split's specs that does); train and val
    are required.

    Raises AnnotationError naming the missing file when train or val has none.
    """
    coco_dir = Path(coco_dir)
    found = []
    for spec in SPLITS:
        path = coco_dir / "annotations" / spec.annotation_file
        if any(other.name == spec.name for other in found):
            continue
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

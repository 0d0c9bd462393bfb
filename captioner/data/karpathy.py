"""The papers' splits: Karpathy's split files for COCO, Flickr8k and Flickr30k, and Flickr8k as distributed.

Both readers return the same :class:`~captioner.data.coco_annotations.SplitData` as the COCO reader,
with the same skip reasons counted in a :class:`~captioner.data.coco_annotations.SkipLog`, so
``process_coco.py`` writes the same processed layout from them; val and test keep their references.

**Karpathy's split files** (``dataset_coco.json``, ``dataset_flickr8k.json``, ``dataset_flickr30k.json``),
one JSON object::

    {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "cocoid": 391895, "imgid": 0,
         "split": "test", "sentids": [770337, ...],
         "sentences": [{"raw": "A man with a red helmet on a small moped on a dirt road. ", "tokens": [...],
                        "imgid": 0, "sentid": 770337}, ...]}, ...]}

``split`` is one of train, restval, val, test (COCO: 113,287 train + restval, 5,000 val, 5,000 test;
Flickr8k 6,000 / 1,000 / 1,000; Flickr30k 29,000 / 1,014 / 1,000). ``filepath`` exists for COCO only
(``train2014`` or ``val2014``: the folder under the image root). The image id is ``cocoid`` where there is
one, else ``imgid``. Captions are the ``raw`` sentences; the pre-made ``tokens`` are not used, since the
project tokenizes every caption itself.

**Flickr8k as distributed** (``Flickr8k_text.zip``): ``Flickr8k.token.txt`` has one caption a line,
``<name>.jpg#<k><TAB><caption>`` with k = 0..4, and ``Flickr_8k.trainImages.txt``, ``Flickr_8k.devImages.txt``
(val) and ``Flickr_8k.testImages.txt`` list one image name a line. Image ids are the positions of the
listed names in sorted order (the files have no ids).
"""

from __future__ import annotations

import json
from pathlib import Path

from captioner.data.coco_annotations import (
    DUPLICATE_CAPTION_ID,
    DUPLICATE_IMAGE_ID,
    EMPTY_CAPTION,
    MALFORMED_CAPTION_ENTRY,
    MALFORMED_IMAGE_ENTRY,
    NO_CAPTIONS,
    AnnotationError,
    SkipLog,
    SplitData,
    _is_int,
    read_annotation_file,
)

# Skip reasons of these formats, beside the COCO reader's.
UNKNOWN_SPLIT = "image entry with an unknown split"


MALFORMED_LINE = "caption line not of the form name.jpg#k<TAB>caption"


IMAGE_IN_TWO_SPLITS = "image listed in more than one split file"


UNLISTED_IMAGE = "captioned image in no split file"


KARPATHY_SPLITS = ("train", "restval", "val", "test")
RESTVAL_CHOICES = ("train", "skip")  # restval joins train (every reference codebase does), or is left out
FLICKR8K_TOKENS = "Flickr8k.token.txt"
FLICKR8K_SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
                        "test": "Flickr_8k.testImages.txt"}


def _splits(image_root: Path, images: dict[str, dict[int, tuple[str, list[str]]]], source: Path) -> list[SplitData]:
    """SplitData for train, val and test from ``{split: {image_id: (file name, captions)}}``, by id."""
    for name in ("train", "val"):
        if not images[name]:
            raise AnnotationError(f"{source}: no usable {name} image (see the skipped items)")
    return [SplitData(name, image_root, sorted(by_id), [by_id[i][0] for i in sorted(by_id)],
                      [by_id[i][1] for i in sorted(by_id)])
            for name, by_id in images.items() if by_id]


def read_karpathy(path: str | Path, image_root: str | Path, skips: SkipLog,
                  restval: str = "train") -> tuple[list[SplitData], dict]:
    """Read one of Karpathy's split files; bad entries go to ``skips``.

    Returns the train, val and test splits (an image's file is ``image_root / filepath / filename``)
    and ``{"dataset": the file's "dataset" value, "restval": images of the restval split, and where
    they went}``. ``restval="train"`` adds those images to train, ``"skip"`` leaves them out.
    Raises AnnotationError naming the file if it is not JSON, lacks ``images``, or leaves train or
    val empty.
    """
    if restval not in RESTVAL_CHOICES:
        raise ValueError(f"restval must be one of {', '.join(RESTVAL_CHOICES)}, got {restval!r}")
    path = Path(path)
    data = read_annotation_file(path, ("images",))
    images: dict[str, dict[int, tuple[str, list[str]]]] = {"train": {}, "val": {}, "test": {}}
    seen, n_restval = set(), 0
    for entry in data["images"]:
        get = entry.get if isinstance(entry, dict) else (lambda key, default=None: None)
        image_id = get("cocoid", get("imgid"))
        name, folder, split, sentences = get("filename"), get("filepath", ""), get("split"), get("sentences")
        if (not _is_int(image_id) or not isinstance(name, str) or not name.strip() or not isinstance(folder, str)
                or not isinstance(split, str) or not isinstance(sentences, list)):
            skips.add(str(split), MALFORMED_IMAGE_ENTRY, f"{path}: {json.dumps(entry)[:200]}")
            continue
        if split not in KARPATHY_SPLITS:
            skips.add(split, UNKNOWN_SPLIT, f"{path}: image {image_id} ({name}) in split {split!r}")
            continue
        if image_id in seen:
            skips.add(split, DUPLICATE_IMAGE_ID, f"{path}: image id {image_id} ({name})")
            continue
        seen.add(image_id)
        if split == "restval":
            n_restval += 1
            if restval == "skip":
                continue
            split = "train"
        captions = []
        for k, sentence in enumerate(sentences):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if not isinstance(raw, str):
                skips.add(split, MALFORMED_CAPTION_ENTRY, f"{path}: image {image_id}, sentence {k}: "
                                                          f"{json.dumps(sentence)[:200]}")
            elif not raw.strip():
                skips.add(split, EMPTY_CAPTION, f"{path}: image {image_id}, sentence {k}")
            else:
                captions.append(raw.strip())
        file_name = f"{folder}/{name}" if folder else name
        if not captions:
            skips.add(split, NO_CAPTIONS, f"{Path(image_root) / file_name} (id {image_id})")
        else:
            images[split][image_id] = (file_name, captions)
    info = {"dataset": data.get("dataset"), "restval": {"images": n_restval, "into": restval}}
    return _splits(Path(image_root), images, path), info


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read the file ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 text ({e})") from e


def read_flickr8k(text_dir: str | Path, image_root: str | Path, skips: SkipLog) -> list[SplitData]:
    """Read Flickr8k's own text files from ``text_dir``; bad lines and images go to ``skips``.

    Returns the train, val (``devImages``) and test splits, images ``image_root / name``. An image
    listed in two split files stays in the first (train, then val, then test); captioned images in no
    split file are reported, once per image. Raises AnnotationError naming a file that is missing.
    """
    text_dir = Path(text_dir)
    token_path = text_dir / FLICKR8K_TOKENS
    captions: dict[str, list[str]] = {}
    seen = set()
    for line_no, line in enumerate(_read_lines(token_path), start=1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        name, hash_sign, k = key.strip().rpartition("#")
        where = f"{token_path}:{line_no}"
        if not tab or not hash_sign or not k.isdigit() or not name:
            skips.add("?", MALFORMED_LINE, f"{where}: {line[:200]!r}")
        elif (name, k) in seen:
            skips.add("?", DUPLICATE_CAPTION_ID, f"{where}: {name}#{k}")
        elif not caption.strip():
            seen.add((name, k))
            skips.add("?", EMPTY_CAPTION, f"{where}: {name}#{k}")
        else:
            seen.add((name, k))
            captions.setdefault(name, []).append(caption.strip())

    split_of: dict[str, str] = {}
    for split, file_name in FLICKR8K_SPLIT_FILES.items():
        split_path = text_dir / file_name
        for name in (line.strip() for line in _read_lines(split_path)):
            if not name:
                continue
            if name in split_of:
                skips.add(split, IMAGE_IN_TWO_SPLITS, f"{split_path}: {name} (already in {split_of[name]})")
            else:
                split_of[name] = split
    for name in sorted(set(captions) - set(split_of)):
        skips.add("-", UNLISTED_IMAGE, f"{token_path}: {name} ({len(captions[name])} captions)")

    images: dict[str, dict[int, tuple[str, list[str]]]] = {"train": {}, "val": {}, "test": {}}
    for image_id, name in enumerate(sorted(split_of)):
        split = split_of[name]
        if not captions.get(name):
            skips.add(split, NO_CAPTIONS, f"{Path(image_root) / name} (id {image_id})")
        else:
            images[split][image_id] = (name, captions[name])
    return _splits(Path(image_root), images, text_dir)

"""WIT (Wikipedia-based Image Text) shards, turned into the COCO layout that ``process_coco.py`` reads.

A WIT training shard is a gzipped file of JSON lines, one image per line::

    {"image_url": "https://upload.wikimedia.org/.../Half_Dome.jpg",
     "b64_bytes": "<the image file, base64-encoded>",
     "wit_features": [{"language": "en", "caption_reference_description": "Half Dome from ...", ...}, ...],
     ...}

``wit_features`` holds one entry per Wikipedia page (and language) that shows the image; each may have a
``caption_reference_description``, the caption under the image on that page. Every non-empty one
becomes a caption of the image, so an image has one or more captions, like COCO's five.

:func:`wit_to_coco_layout` writes the images as files under ``train2017/`` and ``val2017/`` (every
``val_every``-th good line goes to val) and the two caption files under ``annotations/``, so the rest of
``process_coco.py`` (tokenizer, image cache, tokenized captions) runs unchanged. Bad lines are skipped
and counted in the same :class:`~captioner.data.coco_annotations.SkipLog` as COCO's bad entries:
broken JSON, no caption, no or invalid base64 (base64 wrapped over several lines is valid: whitespace is
dropped before the strict decoding). An image that does not decode is skipped by the image cache step,
as a corrupt COCO image is. A file that is not gzip at all is an error naming it, before any work.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import zlib
from pathlib import Path

from captioner.data.coco_annotations import SkipLog
from captioner.infra.fileio import write_json

BROKEN_JSON = "WIT line is not a JSON object"
NO_CAPTION = "WIT line has no caption_reference_description"
BAD_BASE64 = "WIT line has no valid b64_bytes"
GZIP_MAGIC = b"\x1f\x8b"  # the first two bytes of every gzip file


def wit_captions(record: dict) -> list[str]:
    """The non-empty, distinct ``caption_reference_description`` values of a line's ``wit_features``, in order.

    Example: {"wit_features": [{"caption_reference_description": "A dome."}, {}, {"caption_reference_description": " "}]}
    -> ["A dome."]
    """
    features = record.get("wit_features")
    if isinstance(features, dict):  # a single page, not wrapped in a list
        features = [features]
    captions = []
    for feature in features if isinstance(features, list) else []:
        caption = feature.get("caption_reference_description") if isinstance(feature, dict) else None
        if isinstance(caption, str) and caption.strip() and caption.strip() not in captions:
            captions.append(caption.strip())
    return captions


def check_shard(path: str | Path) -> None:
    """Raise FileNotFoundError or ValueError, naming the file, unless ``path`` is a file that starts as gzip does."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: WIT shard not found")
    with open(path, "rb") as f:
        if f.read(2) != GZIP_MAGIC:
            raise ValueError(f"{path}: not a gzip file (a WIT shard is gzipped JSON lines, e.g. *.json.gz)")


def decode_base64(text) -> bytes:
    """Strict base64 of a JSON string, which may be wrapped over lines (MIME wraps at 76 characters).

    Example: "aGVs\nbG8h" -> b"hello!"; "aGVsbG8h$$$" raises binascii.Error.
    """
    if not isinstance(text, str):
        raise TypeError(f"b64_bytes is a {type(text).__name__}, not a string")
    return base64.b64decode("".join(text.split()), validate=True)


def read_wit_shard(path: str | Path, skips: SkipLog, split: str = "wit"):
    """Yield ``(image_url, captions, image_bytes)`` for each good line of a gzipped JSON-lines shard.

    Bad lines go to ``skips`` with the file and line number. A shard that is cut short (a truncated
    download) keeps the lines read before the cut; the cut itself is counted as a broken line, as is
    a corrupt stream. A file that is not gzip raises ValueError (:func:`check_shard`).
    """
    path = Path(path)
    check_shard(path)
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        line_no = 0
        try:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{line_no}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    record = None
                if not isinstance(record, dict):
                    skips.add(split, BROKEN_JSON, where)
                    continue
                captions = wit_captions(record)
                if not captions:
                    skips.add(split, NO_CAPTION, where)
                    continue
                try:
                    image_bytes = decode_base64(record.get("b64_bytes") or "")
                except (binascii.Error, TypeError, ValueError):
                    image_bytes = b""
                if not image_bytes:
                    skips.add(split, BAD_BASE64, where)
                    continue
                yield str(record.get("image_url", "")), captions, image_bytes
        except EOFError:
            skips.add(split, BROKEN_JSON, f"{path}:{line_no + 1} (the gzip stream ends early)")
        except (OSError, zlib.error) as error:  # gzip.BadGzipFile is an OSError: a bad CRC, a corrupt block
            skips.add(split, BROKEN_JSON, f"{path}:{line_no + 1} (the gzip stream is corrupt: {error})")


def image_extension(image_url: str) -> str:
    """The image file's extension from its URL (``.jpg`` when there is none): PIL reads by content anyway."""
    suffix = Path(image_url.split("?")[0]).suffix.lower()
    return suffix if suffix in (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff") else ".jpg"


def wit_to_coco_layout(shards: list[str | Path], out_dir: str | Path, skips: SkipLog, val_every: int = 10) -> dict:
    """Write the good lines of ``shards`` as a COCO 2017 layout in ``out_dir``; return ``{split: images}``.

    Image ids count the good lines from 1; image ``k`` goes to val when ``k % val_every == 0``.
    """
    if val_every < 2:
        raise ValueError(f"val_every must be at least 2 (some images must train), got {val_every}")
    out_dir = Path(out_dir)
    layout = {"train": ("train2017", "captions_train2017.json"), "val": ("val2017", "captions_val2017.json")}
    annotations = {split: {"images": [], "annotations": []} for split in layout}
    for folder, _ in layout.values():
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    for shard in shards:  # every shard checked before the first image is written
        check_shard(shard)
    image_id, caption_id = 0, 0
    for shard in shards:
        for image_url, captions, image_bytes in read_wit_shard(shard, skips):
            image_id += 1
            split = "val" if image_id % val_every == 0 else "train"
            file_name = f"{image_id:012d}{image_extension(image_url)}"
            (out_dir / layout[split][0] / file_name).write_bytes(image_bytes)
            annotations[split]["images"].append({"id": image_id, "file_name": file_name, "url": image_url})
            for caption in captions:
                caption_id += 1
                annotations[split]["annotations"].append({"id": caption_id, "image_id": image_id, "caption": caption})
    (out_dir / "annotations").mkdir(exist_ok=True)
    for split, (_, annotation_file) in layout.items():
        write_json(out_dir / "annotations" / annotation_file, annotations[split])
    return {split: len(annotations[split]["images"]) for split in layout}

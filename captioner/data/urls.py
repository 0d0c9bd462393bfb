"""URL–caption lists (the form of CC3M, CC12M, LAION), read into items and fetched into the COCO layout.

A list is TSV, CSV or JSON lines, gzipped or not (gzip is recognised by its first two bytes, not by
the name). The URL and the caption are found by column name: the header row of a TSV or CSV file, the
keys of each JSON object::

    url<TAB>caption                                  url,caption
    https://a.org/1.jpg<TAB>a dog on a beach         https://a.org/1.jpg,"a dog, on a beach"

    {"url": "https://a.org/1.jpg", "caption": "a dog on a beach"}

For a TSV or CSV file without a header row (CC3M's ``Train_GCC-training.tsv`` is ``caption<TAB>url``),
give the columns as 0-based numbers: ``caption_column="0", url_column="1"``. The format follows the
name (``.tsv``, ``.csv``, ``.jsonl`` / ``.json``, each maybe with ``.gz``); for any other name a first
line that starts with ``{`` is JSON lines, one with a tab TSV, else CSV.

Lines whose URL appears again add their caption to the first one's, so an image may have several
captions, as in COCO. A bad line (broken JSON, too few fields, no http(s) URL, an empty caption) is
skipped and counted with its file and line number in a :class:`SkipLog`, as the COCO and WIT readers
do; a list whose header lacks a named column, or that is not UTF-8 or not valid gzip, is an error
naming the file. :func:`urls_to_coco_layout` fetches the images (``captioner/data/url_fetch.py``) and
writes the layout that ``process_coco.py`` reads.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from captioner.data.coco_annotations import SkipLog
from captioner.data.url_fetch import UrlFetcher, is_http_url
from captioner.data.wit import GZIP_MAGIC, image_extension
from captioner.infra.fileio import atomic_write_bytes, write_json

BROKEN_LINE = "URL list line is malformed"
NO_URL = "URL list line has no http(s) URL"
NO_CAPTION = "URL list line has an empty caption"
FORMATS = ("auto", "tsv", "csv", "jsonl")


class UrlListError(ValueError):
    """A URL list that cannot be read at all: missing column, not UTF-8, broken gzip; names the file."""


class UrlItem(NamedTuple):
    """One image of a list: its URL, its captions (in the list's order) and where it first appears."""

    url: str
    captions: list[str]
    where: str


def open_text(path: str | Path) -> io.TextIOBase:
    """Open ``path`` as UTF-8 text, through gzip when its first two bytes are gzip's."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: URL list not found")
    with open(path, "rb") as f:
        gzipped = f.read(2) == GZIP_MAGIC
    if gzipped:
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def list_format(path: str | Path, first_line: str) -> str:
    """tsv, csv or jsonl from the name (``.gz`` dropped), else from the first line.

    Example: ``("cc3m.tsv.gz", "...") -> "tsv"``; ``("list.txt", '{"url": ...}') -> "jsonl"``.
    """
    name = Path(path).name.lower().removesuffix(".gz")
    for suffix, fmt in ((".tsv", "tsv"), (".csv", "csv"), (".jsonl", "jsonl"), (".json", "jsonl")):
        if name.endswith(suffix):
            return fmt
    if first_line.lstrip().startswith("{"):
        return "jsonl"
    return "tsv" if "\t" in first_line else "csv"


def _rows(path: Path, f: io.TextIOBase, fmt: str, url_column: str, caption_column: str
          ) -> Iterator[tuple[int, str | None, str | None]]:
    """``(line number, url, caption)`` per line; None for a field the line lacks. Blank lines are left out."""
    if fmt == "jsonl":
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict):
                yield line_no, None, None
                continue
            url, caption = record.get(url_column), record.get(caption_column)
            yield line_no, url if isinstance(url, str) else None, caption if isinstance(caption, str) else None
        return
    # TSV carries no quoting (CC3M's captions hold bare quotes); CSV follows RFC 4180.
    reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if fmt == "tsv" else csv.reader(f)
    if url_column.isdigit() and caption_column.isdigit():
        url_at, caption_at = int(url_column), int(caption_column)
    else:
        header = next(reader, None)
        if header is None:
            return
        missing = [name for name in (url_column, caption_column) if name not in header]
        if missing:
            raise UrlListError(f"{path}:1: the header row has no column {missing[0]!r} (it has "
                               f"{', '.join(repr(h) for h in header)}); set the column names, or give 0-based "
                               "numbers for a file without a header row")
        url_at, caption_at = header.index(url_column), header.index(caption_column)
    for fields in reader:
        if not fields or not any(field.strip() for field in fields):
            continue
        line_no = reader.line_num
        yield (line_no, fields[url_at] if url_at < len(fields) else None,
               fields[caption_at] if caption_at < len(fields) else None)


def read_url_list(path: str | Path, skips: SkipLog, url_column: str = "url", caption_column: str = "caption",
                  fmt: str = "auto", split: str = "urls") -> list[UrlItem]:
    """The images of a URL–caption list, in the order of their first line; bad lines go to ``skips``.

    Raises FileNotFoundError or UrlListError naming the file (and line) for a list that cannot be read.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"URL list format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    items: dict[str, UrlItem] = {}
    line_no = 0
    try:
        with open_text(path) as f:
            if fmt == "auto":
                fmt = list_format(path, f.readline())
                f.seek(0)
            for line_no, url, caption in _rows(path, f, fmt, url_column, caption_column):
                where = f"{path}:{line_no}"
                if url is None and caption is None:
                    skips.add(split, BROKEN_LINE, where)
                elif url is None or not is_http_url(url.strip()):
                    skips.add(split, NO_URL, f"{where} ({url!r})" if url else where)
                elif caption is None or not caption.strip():
                    skips.add(split, NO_CAPTION, where)
                elif url.strip() in items:
                    items[url.strip()].captions.append(caption.strip())
                else:
                    items[url.strip()] = UrlItem(url.strip(), [caption.strip()], where)
    except UnicodeDecodeError as e:
        raise UrlListError(f"{path}: not UTF-8 text near line {line_no + 1} ({e.reason})") from e
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise UrlListError(f"{path}: the gzip stream is cut short or corrupt near line {line_no + 1} ({e})") from e
    except csv.Error as e:
        raise UrlListError(f"{path}:{line_no + 1}: {e}") from e
    return list(items.values())


LAYOUT = {"train": ("train2017", "captions_train2017.json"), "val": ("val2017", "captions_val2017.json")}


def recorded_urls(out_dir: str | Path) -> dict[int, str]:
    """``{image id: URL}`` from the caption files of an earlier pre-download into ``out_dir`` (empty if none)."""
    urls = {}
    for _, annotation_file in LAYOUT.values():
        path = Path(out_dir) / "annotations" / annotation_file
        try:
            images = json.loads(path.read_text(encoding="utf-8")).get("images", [])
        except (OSError, ValueError, AttributeError):
            continue  # none yet, or unreadable: the files present are trusted
        urls.update({image["id"]: image["url"] for image in images if isinstance(image, dict) and "url" in image})
    return urls


def urls_to_coco_layout(items: list[UrlItem], out_dir: str | Path, fetcher: UrlFetcher, skips: SkipLog,
                        val_every: int = 10, progress: Callable[[int], object] | None = None) -> dict:
    """Fetch the images of ``items`` into a COCO 2017 layout in ``out_dir``; return counts.

    Image ``k`` (counting the list's images from 1, failed ones included, so that an image keeps its id
    and file name whatever fails) goes to val when ``k % val_every == 0``. An image file already there
    is not fetched again, so a rerun fetches only what is missing: the failures of the last run. (A file
    whose id the last run's caption files gave another URL, from an edited list, is fetched again.) The
    caption files list the images present. Returns ``{"train": n, "val": n, "fetched": n, "kept": n,
    "failed": n}``; each failure goes to ``skips`` with its reason and ``progress(1)`` is called per item.
    """
    if val_every < 2:
        raise ValueError(f"val_every must be at least 2 (some images must train), got {val_every}")
    out_dir = Path(out_dir)
    for folder, _ in LAYOUT.values():
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    paths = []
    for image_id, item in enumerate(items, start=1):
        split = "val" if image_id % val_every == 0 else "train"
        paths.append(out_dir / LAYOUT[split][0] / f"{image_id:012d}{image_extension(item.url)}")
    before = recorded_urls(out_dir)
    for image_id, (item, path) in enumerate(zip(items, paths), start=1):
        if before.get(image_id, item.url) != item.url:
            path.unlink(missing_ok=True)  # the list was edited: this id is another image now
    missing = [i for i, path in enumerate(paths) if not path.is_file()]
    counts = {"fetched": 0, "kept": len(items) - len(missing), "failed": 0}
    if progress is not None and counts["kept"]:
        progress(counts["kept"])
    for i, result in zip(missing, fetcher.fetch_all(items[i].url for i in missing)):
        if result.reason is None:
            atomic_write_bytes(paths[i], result.data, fsync=False)  # the file appears whole or not at all
            counts["fetched"] += 1
        else:
            skips.add("train" if paths[i].parent.name == LAYOUT["train"][0] else "val", result.reason,
                      f"{items[i].where}: {result.detail}")
            counts["failed"] += 1
        if progress is not None:
            progress(1)
    annotations = {split: {"images": [], "annotations": []} for split in LAYOUT}
    caption_id = 0
    for image_id, (item, path) in enumerate(zip(items, paths), start=1):
        if not path.is_file():
            continue
        split = "val" if image_id % val_every == 0 else "train"
        annotations[split]["images"].append({"id": image_id, "file_name": path.name, "url": item.url})
        for caption in item.captions:
            caption_id += 1
            annotations[split]["annotations"].append({"id": caption_id, "image_id": image_id, "caption": caption})
    (out_dir / "annotations").mkdir(exist_ok=True)
    for split, (_, annotation_file) in LAYOUT.items():
        write_json(out_dir / "annotations" / annotation_file, annotations[split])
    return {split: len(annotations[split]["images"]) for split in LAYOUT} | counts

"""Downloading MS COCO 2017: resumable, retried, verified, and safely extracted.

COCO 2017 is about 46 GB of zip files (the unlabeled images alone are 19 GB), so a download will
be interrupted sooner or later. Each step is therefore made restartable:

1. :func:`download_file` writes to ``<name>.part`` and, after an interruption, asks the server only
   for the missing bytes (an HTTP ``Range: bytes=N-`` request). Network errors are retried with
   exponential back-off; the file is renamed to its final name only once its size is verified.
2. :func:`check_zip` reads every member and checks its CRC, so a corrupt download is caught
   before anything is extracted.
3. :func:`safe_extract` refuses archives with entries that would land outside the target folder
   (absolute paths, ``..``, symbolic links), writes each member under a temporary name, and
   leaves a stamp file when done: an interrupted extraction is redone, a finished one skipped.

:func:`fetch_coco` chains the three for every file of :data:`COCO_FILES`; the result is the
layout that the shapes dataset imitates (``train2017/``, ``val2017/``, ``annotations/...``)::

    >>> fetch_coco("data/coco", progress=tqdm(unit="B", unit_scale=True).update)   # doctest: +SKIP

Only the standard library (urllib, zipfile) is used.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from captioner.infra.fileio import atomic_write_bytes


class RemoteFile(NamedTuple):
    """A file to download: its local ``name``, its ``url``, and its size in bytes (None: unknown,
    then the server's Content-Length is checked instead)."""

    name: str
    url: str
    size: int | None


_SITE = "http://images.cocodataset.org"
# Sizes as served by images.cocodataset.org; None where we could not confirm the published size.
COCO_FILES = [
    RemoteFile("train2017.zip", f"{_SITE}/zips/train2017.zip", 19_336_861_798),
    RemoteFile("val2017.zip", f"{_SITE}/zips/val2017.zip", 815_585_330),
    RemoteFile("test2017.zip", f"{_SITE}/zips/test2017.zip", 6_646_970_404),
    RemoteFile("unlabeled2017.zip", f"{_SITE}/zips/unlabeled2017.zip", None),
    RemoteFile("annotations_trainval2017.zip", f"{_SITE}/annotations/annotations_trainval2017.zip", 252_907_541),
    RemoteFile("image_info_test2017.zip", f"{_SITE}/annotations/image_info_test2017.zip", None),
    RemoteFile("image_info_unlabeled2017.zip", f"{_SITE}/annotations/image_info_unlabeled2017.zip", None),
]


class DownloadError(Exception):
    """A download, integrity check or extraction that failed for good; the message names the file."""


class _Retry(Exception):
    """A transient failure (cut connection, short transfer, server busy): try again."""


# What a flaky network raises while connecting or reading. HTTPError (a URLError) is handled
# before it gets here: 4xx answers are not worth retrying.
_TRANSIENT = (_Retry, urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException)


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """``"bytes 100-199/200" -> (100, 200)``, ``"bytes */200" -> (None, 200)``, unknown total -> None."""
    match = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", (header or "").strip())
    if match is None:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


def _fetch_once(url: str, part: Path, expected_size: int | None, timeout: float,
                progress: Callable[[int], object] | None, chunk_size: int) -> None:
    """One attempt to complete ``part``; returns when it is complete, raises _Retry when not."""
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset >= expected_size:
        if offset == expected_size:
            return
        part.unlink()  # longer than the file can be: it is not a prefix of it
        offset = 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        with e:
            if e.code == 416 and offset:
                # "Range not satisfiable": we asked from the end of the file, so .part is complete
                # when the server's total says so; otherwise .part is not a prefix of this file.
                _, total = _content_range(e.headers.get("Content-Range"))
                if total == offset:
                    return
                part.unlink()
                raise _Retry(f"the server refused to resume at byte {offset}; starting over") from e
            if e.code in (408, 429) or e.code >= 500:
                raise _Retry(f"HTTP {e.code} {e.reason}") from e
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
    with response:
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _Retry(f"the server sent bytes from {start}, not {offset}; starting over")
            mode = "ab"
        else:
            # 200: the whole file, either because we asked from byte 0 or because the server
            # ignores Range requests; either way .part starts over.
            length = response.headers.get("Content-Length")
            total, mode = (int(length) if length else None), "wb"
        if expected_size is not None and total is not None and total != expected_size:
            raise DownloadError(f"{url}: the server has {total} bytes, expected {expected_size}")
        with open(part, mode) as f:
            while chunk := response.read(chunk_size):
                f.write(chunk)
                if progress is not None:
                    progress(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    size, wanted = part.stat().st_size, expected_size if expected_size is not None else total
    if wanted is not None and size != wanted:
        # urllib returns a short body without an error when the connection drops mid-transfer.
        raise _Retry(f"received {size} of {wanted} bytes")


def download_file(url: str, dest: str | os.PathLike, expected_size: int | None = None, retries: int = 5,
                  backoff: float = 1.0, timeout: float = 60, progress: Callable[[int], object] | None = None,
                  chunk_size: int = 1 << 20, log: Callable[[str], object] | None = None) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``; resumable, retried, size-checked.

    Bytes go to ``dest + ".part"``; a later call (or retry) continues from its end with
    ``Range: bytes=N-``. A server that ignores Range (answers 200) makes the transfer start over.
    Transient failures (connection errors, timeouts, short transfers, HTTP 408/429/5xx) are retried
    up to ``retries`` times, sleeping ``backoff * 2**attempt`` seconds in between; other HTTP errors
    raise DownloadError at once. The size is checked against ``expected_size``, else against the
    server's Content-Length / Content-Range total, before ``.part`` is renamed to ``dest``.

    A ``dest`` that already exists is complete (it only ever appears by that rename) and is not
    fetched again; with ``expected_size`` its size is checked too. Without any size (no
    ``expected_size``, no Content-Length) a cut transfer looks complete: check_zip catches that
    for archives. ``progress(n)`` gets the byte count of each chunk received, ``log(message)`` a
    line before each retry.
    """
    dest = Path(dest)
    if dest.exists():
        size = dest.stat().st_size
        if expected_size is None or size == expected_size:
            return dest
        raise DownloadError(f"{dest} exists with {size} bytes, expected {expected_size}; delete it to download again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, expected_size, timeout, progress, chunk_size)
            break
        except _TRANSIENT as e:
            if attempt == retries:
                raise DownloadError(f"{url}: giving up after {retries + 1} attempts ({e}); "
                                    f"run again to resume from {part}") from e
            delay = backoff * 2 ** attempt
            if log is not None:
                log(f"{dest.name}: {e}; retrying in {delay:g} s ({attempt + 1}/{retries})")
            time.sleep(delay)
    os.replace(part, dest)
    return dest


def check_zip(path: str | os.PathLike) -> None:
    """Raise DownloadError unless ``path`` is a zip archive whose every member passes its CRC check."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
        raise DownloadError(f"{path}: not a valid zip archive ({type(e).__name__}: {e}); "
                            "delete it and download it again") from e
    if bad is not None:
        raise DownloadError(f"{path}: member {bad!r} is corrupt (CRC mismatch); delete it and download it again")


def _stamp(zip_path: Path, target_dir: Path) -> Path:
    return target_dir / f".{zip_path.name}.extracted"


def is_extracted(zip_name: str, target_dir: str | os.PathLike) -> bool:
    """True when :func:`safe_extract` has finished extracting the archive ``zip_name`` into ``target_dir``."""
    return _stamp(Path(zip_name), Path(target_dir)).exists()


def _checked_members(archive: zipfile.ZipFile, zip_path: Path, target: Path) -> list[tuple[zipfile.ZipInfo, Path]]:
    """Every member with its destination; DownloadError if any entry would escape ``target``.

    All entries are checked before anything is written, so a malicious archive writes nothing.
    """
    root = target.resolve()
    members = []
    for info in archive.infolist():
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
            raise DownloadError(f"{zip_path}: refusing entry {name!r}: absolute path")
        if ".." in parts:
            raise DownloadError(f"{zip_path}: refusing entry {name!r}: it escapes the target folder")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DownloadError(f"{zip_path}: refusing entry {name!r}: symbolic link")
        dest = target.joinpath(*[p for p in parts if p not in ("", ".")])
        # resolve() follows links already inside the target folder, which could point elsewhere.
        resolved = dest.resolve()
        if not resolved.is_relative_to(root) or (resolved == root and not info.is_dir()):
            raise DownloadError(f"{zip_path}: refusing entry {name!r}: it resolves to {resolved}, "
                                f"outside {root}")
        members.append((info, dest))
    return members


def safe_extract(zip_path: str | os.PathLike, target_dir: str | os.PathLike) -> list[Path]:
    """Extract ``zip_path`` into ``target_dir``; returns the extracted files' paths, in archive order.

    Refuses (DownloadError, before writing anything) entries that are absolute, contain ``..``, are
    symbolic links, or resolve outside ``target_dir``. Each member is written to a temporary name
    and renamed, so a file under its final name is always complete; a member already there with
    the right size (from an interrupted run) is not written again. A stamp file
    ``.<zip name>.extracted`` marks the archive as done; while it exists, extraction is skipped.
    """
    zip_path, target = Path(zip_path), Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    stamp = _stamp(zip_path, target)
    record = {"zip": zip_path.name, "size": zip_path.stat().st_size}
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = _checked_members(archive, zip_path, target)
            files = [dest for info, dest in members if not info.is_dir()]
            if stamp.exists() and json.loads(stamp.read_text()).get("size") == record["size"]:
                return files
            for info, dest in members:
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                if dest.is_file() and dest.stat().st_size == info.file_size:
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.part")
                with archive.open(info) as source, open(tmp, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                os.replace(tmp, dest)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise DownloadError(f"{zip_path}: extraction failed ({type(e).__name__}: {e})") from e
    atomic_write_bytes(stamp, json.dumps({**record, "files": len(files)}).encode())
    return files


def _with_base(url: str, base_url: str | None) -> str:
    """Keep the path, swap scheme and host: ``("http://images.cocodataset.org/zips/a.zip",
    "http://127.0.0.1:8000") -> "http://127.0.0.1:8000/zips/a.zip"``."""
    if base_url is None:
        return url
    return base_url.rstrip("/") + urllib.parse.urlsplit(url).path


def fetch_coco(coco_dir: str | os.PathLike, files: list[RemoteFile] = COCO_FILES, base_url: str | None = None,
               progress: Callable[[int], object] | None = None, log: Callable[[str], object] | None = None,
               delete_zips: bool = False, retries: int = 5, backoff: float = 1.0, timeout: float = 60) -> None:
    """Download, check and extract every file of ``files`` into ``coco_dir``.

    Zips are kept in ``coco_dir/downloads/`` (deleted after extraction with ``delete_zips``) and
    extracted into ``coco_dir``, giving ``coco_dir/train2017/``, ``coco_dir/annotations/``, ...
    An archive already extracted is neither downloaded nor checked again, so a rerun resumes
    where the last one stopped. ``base_url`` replaces the scheme and host of every URL (a mirror,
    or a local test server). ``progress(n)`` receives downloaded byte counts, ``log(msg)`` one line
    per step.
    """
    coco_dir = Path(coco_dir)
    say = log if log is not None else (lambda message: None)
    for remote in files:
        if is_extracted(remote.name, coco_dir):
            say(f"{remote.name}: already extracted")
            continue
        url = _with_base(remote.url, base_url)
        zip_path = coco_dir / "downloads" / remote.name
        say(f"{remote.name}: downloading {url}")
        download_file(url, zip_path, remote.size, retries=retries, backoff=backoff, timeout=timeout,
                      progress=progress, log=log)
        say(f"{remote.name}: checking the archive")
        check_zip(zip_path)
        say(f"{remote.name}: extracting into {coco_dir}")
        safe_extract(zip_path, coco_dir)
        if delete_zips:
            zip_path.unlink()

"""Build stamps: how ``process_coco.py`` knows an output is complete and still matches its inputs.

Infrastructure a reader may skip. Each output gets a stamp under ``processed/stamps/`` holding a
fingerprint of what it was made from (settings and input file sizes and times); a rerun skips an
output whose stamp matches and redoes one whose inputs changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from captioner.infra.fileio import write_json


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

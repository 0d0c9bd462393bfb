"""Writing files so that an interrupted run never leaves one that looks finished."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    A reader, or a rerun after an interruption, sees either no file or the complete one, never a
    partial file under the final name. ``fsync=True`` also makes the content durable before the
    rename (worth it for a few large files, not for thousands of small ones).
    """
    path = Path(path)
    # the process and the thread in the name: two fetch threads may write the same cache entry at once
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if fsync:  # make the rename itself durable too
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write ``data`` as compact JSON, atomically (temporary file, fsync, rename)."""
    atomic_write_bytes(path, json.dumps(data, separators=(",", ":")).encode("utf-8"))

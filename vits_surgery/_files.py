"""Atomic file writes: the one helper the library's writers share."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_text", "fsync_dir"]


def atomic_write(
    path: str | Path, write: Callable[[Any], None], durable: bool = True, *, by_path: bool = False
) -> Path:
    """Write a file atomically: ``write(f)`` into a temp file beside it, then rename it into place.

    A reader sees the old file or the whole new one, never a part; the temp file is removed
    when ``write`` fails.

    Args:
        path: destination.
        write: called with the open binary temp file, or with the temp file's path (a str)
            when ``by_path`` (for writers that only take a file name, e.g. an ONNX export).
        durable: fsync the file and its folder, so the new file survives a power cut (checkpoints);
            False for caches that can be recomputed.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        if by_path:
            write(str(tmp))
            if durable:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
        else:
            with open(tmp, "wb") as f:
                write(f)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    if durable:
        fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of UTF-8 text (durable)."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


def fsync_dir(path: Path) -> None:
    """fsync a folder (its entries), where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)

"""On-disk feature cache: atomic writes, validated reads.

Entries live under ``<root>/<kind>/<key[:2]>/<key>.pt`` and are plain dicts of tensors and
numbers written with ``torch.save`` (read back with ``weights_only=True``). A key is a hash of
everything the entry depends on (for spectrograms: the audio file's bytes and the audio
config; for tokens: the text and the text config), so a changed file or config simply misses.
Each entry also stores its own key and :data:`CACHE_VERSION`; an entry that fails to load or
whose stored key/version differ is reported as ``invalid``, and the caller recomputes and
overwrites it. Writes go to a temporary file in the same folder and are renamed into place,
so concurrent writers (DataLoader workers, DDP ranks) never leave a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from .._files import atomic_write

__all__ = ["CACHE_VERSION", "FeatureCache", "file_digest", "fingerprint"]

logger = logging.getLogger(__name__)

#: Bump when the layout or the content of cache entries changes.
CACHE_VERSION = 1

_CHUNK = 1 << 20


def file_digest(path: str | Path) -> str:
    """SHA-1 hex digest of a file's bytes."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(*parts: Any) -> str:
    """SHA-1 hex digest of JSON-serializable parts (dict keys sorted)."""
    text = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class FeatureCache:
    """A folder of cached feature dicts.

    Args:
        root: cache folder (created on first write).

    Attributes:
        stats: counters ``"<kind>/hit"``, ``"<kind>/miss"``, ``"<kind>/invalid"``, ``"<kind>/write"``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.stats: Counter[str] = Counter()

    def path(self, kind: str, key: str) -> Path:
        """Where the entry ``key`` of ``kind`` lives."""
        return self.root / kind / key[:2] / f"{key}.pt"

    def load(self, kind: str, key: str, mmap: bool = False) -> dict[str, Any] | None:
        """The entry, or None when it is absent or invalid (counted in :attr:`stats`).

        Args:
            kind: entry family ("spec", "tokens").
            key: the entry's key.
            mmap: memory-map tensors (cheap when only the numbers in the entry are needed).
        """
        path = self.path(kind, key)
        if not path.is_file():
            self.stats[f"{kind}/miss"] += 1
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as exc:  # truncated or foreign file
            logger.warning("cache entry %s is unreadable (%s); it will be recomputed", path, exc)
            self.stats[f"{kind}/invalid"] += 1
            return None
        if not isinstance(entry, dict) or entry.get("version") != CACHE_VERSION or entry.get("key") != key:
            logger.warning("cache entry %s has a stale version or key; it will be recomputed", path)
            self.stats[f"{kind}/invalid"] += 1
            return None
        self.stats[f"{kind}/hit"] += 1
        return entry

    def save(self, kind: str, key: str, entry: dict[str, Any]) -> Path:
        """Atomically write ``entry`` (``version`` and ``key`` are added)."""
        path = self.path(kind, key)
        payload = dict(entry, version=CACHE_VERSION, key=key)
        atomic_write(path, lambda f: torch.save(payload, f), durable=False)
        self.stats[f"{kind}/write"] += 1
        return path

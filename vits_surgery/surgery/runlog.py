"""Deprecated: moved to :mod:`vits_surgery.surgery.callbacks` (removed in vits_surgery 0.3)."""

from __future__ import annotations

from .._deprecated import moved_names

__getattr__ = moved_names(__name__, {n: "vits_surgery.surgery.callbacks" for n in ("RunLogger", "read_metrics", "read_run")})

"""Deprecated: moved to :mod:`vits_surgery.surgery.callbacks` (removed in vits_surgery 0.3)."""

from __future__ import annotations

from .._deprecated import moved_names

__getattr__ = moved_names(__name__, {"ProgressBar": "vits_surgery.surgery.callbacks", "progress_iter": "vits_surgery.surgery.callbacks"})

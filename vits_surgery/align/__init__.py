"""Monotonic alignment search (MAS) for VITS training.

``maximum_path(log_p, mask)`` finds the most likely monotonic alignment of text tokens to mel
frames (layout ``[B, T_text, T_mel]``). Backends: ``numba`` (CPU default, compiled on first
use), ``cython`` (PyPI ``monotonic-align``), ``torch`` (any device). Importing this package does
not import numba.
"""

from __future__ import annotations

from vits_surgery.align.search import available_backends, maximum_path

__all__ = ["available_backends", "maximum_path"]

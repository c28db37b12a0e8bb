"""The one "did you mean" helper behind every unknown-name error of the library."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["did_you_mean"]


def did_you_mean(name: str, known: Iterable[str], n: int = 1, cutoff: float = 0.6) -> str:
    """``"; did you mean 'x'?"`` (or ``'x', 'y'`` for ``n`` > 1) for the closest known names, else "".

    Args:
        name: the unknown name.
        known: the valid names.
        n: at most this many suggestions.
        cutoff: similarity threshold in [0, 1] (:func:`difflib.get_close_matches`).
    """
    close = difflib.get_close_matches(name, list(dict.fromkeys(known)), n=n, cutoff=cutoff)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""

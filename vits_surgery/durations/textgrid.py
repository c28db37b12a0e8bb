"""Word and phone timings from Praat TextGrids (e.g. Montreal Forced Aligner output).

Read with ``praatio`` (``pip install praatio``). The word tier is the first interval tier
whose name contains ``word`` (MFA writes ``words``, or ``<speaker> - words``), the phone tier
the first whose name contains ``phone``; without such names, the first and second interval
tiers. Empty labels and MFA's silence labels (``sil``, ``sp``, ``spn``, ``<eps>``) are pauses.
Phone labels may be ARPAbet (``AH0``) or IPA.
"""

from __future__ import annotations

from pathlib import Path

from .segments import PhoneSpan, WordSpan, normalize_word

__all__ = ["read_textgrid", "SILENCE_LABELS"]

#: Labels that mean "no word here".
SILENCE_LABELS = frozenset({"", "sil", "sp", "spn", "<eps>", "<sil>", "silence", "#"})


def _pick(tg, key: str, fallback: int):
    names = list(tg.tierNames)
    tiers = [tg.getTier(n) for n in names]
    interval = [t for t in tiers if t.tierType == "IntervalTier"]
    for t in interval:
        if key in t.name.lower():
            return t
    return interval[fallback] if len(interval) > fallback else None


def read_textgrid(path: str | Path) -> list[WordSpan]:
    """Words (with their phones, when the TextGrid has a phone tier) in time order.

    Args:
        path: a ``.TextGrid`` file (long or short text format, or praatio JSON).

    Returns:
        One :class:`WordSpan` per labelled word interval; words are normalised like the
        aligner's (:func:`~.segments.normalize_word`) and a word of several parts (a hyphen)
        becomes several words sharing its phones in order.

    Raises:
        ImportError: praatio is not installed.
        ValueError: the file has no interval tier.
    """
    try:
        from praatio import textgrid
    except ImportError as exc:  # pragma: no cover - documented extra
        raise ImportError("reading TextGrids needs praatio (`pip install praatio`)") from exc
    tg = textgrid.openTextgrid(str(path), includeEmptyIntervals=False)
    words_tier = _pick(tg, "word", 0)
    if words_tier is None:
        raise ValueError(f"{path}: no interval tier")
    phones_tier = _pick(tg, "phone", 1)
    if phones_tier is words_tier:
        phones_tier = None
    phones = [
        PhoneSpan(e.label.strip(), float(e.start), float(e.end))
        for e in (phones_tier.entries if phones_tier is not None else [])
        if e.label.strip().lower() not in SILENCE_LABELS
    ]
    out: list[WordSpan] = []
    for e in words_tier.entries:
        label = e.label.strip()
        if label.lower() in SILENCE_LABELS:
            continue
        start, end = float(e.start), float(e.end)
        inside = tuple(p for p in phones if start <= (p.start + p.end) / 2 < end)
        parts = [w for w in (normalize_word(t) for t in label.replace("-", " ").split()) if w]
        if len(parts) <= 1:
            out.append(WordSpan(parts[0] if parts else label.lower(), start, end, inside))
            continue
        # split a compound's time (and phones) evenly by part
        step = (end - start) / len(parts)
        for k, part in enumerate(parts):
            a, b = start + k * step, start + (k + 1) * step
            out.append(WordSpan(part, a, b, tuple(p for p in inside if a - 1e-6 <= (p.start + p.end) / 2 < b + 1e-6)))
    return out

"""Time-aligned words and phones, the common currency of every duration source.

Times are in seconds from the start of the utterance. A pause is the time between two words
(or before the first, after the last); it is not a segment of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PhoneSpan", "WordSpan", "normalize_word", "transcript_words"]


@dataclass(frozen=True)
class PhoneSpan:
    """One phone: its label (ARPAbet or IPA) and ``[start, end)`` in seconds."""

    label: str
    start: float
    end: float


@dataclass(frozen=True)
class WordSpan:
    """One word of the transcript with its time span and, when known, its phones.

    Attributes:
        text: the word, lower case, as it appears in :func:`transcript_words`.
        start, end: seconds.
        phones: the word's phones in order (empty when only word timings are known).
    """

    text: str
    start: float
    end: float
    phones: tuple[PhoneSpan, ...] = field(default_factory=tuple)


def normalize_word(word: str) -> str:
    """Lower case, letters, digits and inner apostrophes only (``"Smith's,"`` -> ``"smith's"``)."""
    kept = "".join(c for c in word.lower() if c.isalnum() or c == "'")
    return kept.strip("'")


def transcript_words(text: str) -> list[str]:
    """The words an aligner is given for ``text``: split on whitespace and hyphens/dashes,
    normalised with :func:`normalize_word`, empty ones dropped."""
    for dash in ("-", "\u2013", "\u2014"):
        text = text.replace(dash, " ")
    return [w for w in (normalize_word(t) for t in text.split()) if w]

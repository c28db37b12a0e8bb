"""Donor durations: frames per model token from forced alignment, TextGrids or MAS, and the
cached cadence step that trains on them.

:func:`donor_durations` is the entry point; :func:`forced_align` and :func:`read_textgrid`
give word and phone timings, :func:`token_durations` maps them onto a model's tokens.
:mod:`~vits_surgery.durations.cache` keeps each utterance's durations and frozen text-encoder
outputs on disk, and :mod:`~vits_surgery.durations.step` runs the duration predictor alone on them.
"""

from __future__ import annotations

from .._lazy import lazy_attributes

_LAZY = {
    "donor_durations": "vits_surgery.durations.api:donor_durations",
    "mas_durations": "vits_surgery.durations.api:mas_durations",
    "choose_source": "vits_surgery.durations.api:choose_source",
    "recipient_weights": "vits_surgery.durations.api:recipient_weights",
    "DonorUtterance": "vits_surgery.durations.api:DonorUtterance",
    "SOURCES": "vits_surgery.durations.api:SOURCES",
    "forced_align": "vits_surgery.durations.forced:forced_align",
    "AlignmentError": "vits_surgery.durations.forced:AlignmentError",
    "read_textgrid": "vits_surgery.durations.textgrid:read_textgrid",
    "token_durations": "vits_surgery.durations.tokens:token_durations",
    "WordSpan": "vits_surgery.durations.segments:WordSpan",
    "PhoneSpan": "vits_surgery.durations.segments:PhoneSpan",
    "transcript_words": "vits_surgery.durations.segments:transcript_words",
}
__all__ = list(_LAZY)

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)

"""Deprecated: moved to :mod:`vits_surgery.regrowth` (removed in vits_surgery 0.3)."""

from __future__ import annotations

from .._deprecated import moved_names

__getattr__ = moved_names(__name__, {
    **{n: "vits_surgery.regrowth.core" for n in (
        "REGROWABLE", "DEFAULT_STEPS", "DEFAULT_LR", "RegrowReport", "regrow", "organs_from_report", "cache_root")},
    "RegrowOptions": "vits_surgery.regrowth.options",
    "Utterance": "vits_surgery.regrowth.teacher:TeacherUtterance",
    **{n: "vits_surgery.regrowth.teacher" for n in ("synthesize_utterances", "default_texts")},
    "duration_recovery": "vits_surgery.regrowth.metrics",
})

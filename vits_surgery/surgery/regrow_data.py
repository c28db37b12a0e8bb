"""Deprecated: moved to :mod:`vits_surgery.regrowth.teacher` and :mod:`vits_surgery.regrowth.metrics`
(removed in vits_surgery 0.3)."""

from __future__ import annotations

from .._deprecated import moved_names

__getattr__ = moved_names(__name__, {
    "Utterance": "vits_surgery.regrowth.teacher:TeacherUtterance",
    **{n: "vits_surgery.regrowth.teacher" for n in (
        "default_texts", "tokenize_texts", "synthesize_utterances", "speaker_vectors", "progress_bar")},
    **{n: "vits_surgery.regrowth.metrics" for n in ("duration_recovery", "heldout_metrics")},
})

"""Organ regrowth: re-create the organs an inference-only voice lacks, trained on its own speech.

- :mod:`~vits_surgery.regrowth.core`: :func:`regrow`, its report and cache;
- :mod:`~vits_surgery.regrowth.options`: :class:`RegrowOptions` (``quick()``, ``thorough()``);
- :mod:`~vits_surgery.regrowth.teacher`: teacher synthesis (:class:`TeacherUtterance`);
- :mod:`~vits_surgery.regrowth.fit`: the training loop of each organ, with the ``extra_terms`` seam;
- :mod:`~vits_surgery.regrowth.metrics`: held-out duration recovery and SDP likelihood.
"""

from __future__ import annotations

from .core import REGROWABLE, RegrowReport, cache_root, organs_from_report, regrow
from .fit import PosteriorStep
from .metrics import duration_recovery, heldout_metrics, sdp_nll_per_token
from .options import DEFAULT_LR, DEFAULT_STEPS, RegrowOptions
from .teacher import TeacherUtterance, default_texts, synthesize_utterances, tokenize_texts

__all__ = [
    "regrow",
    "RegrowOptions",
    "RegrowReport",
    "PosteriorStep",
    "TeacherUtterance",
    "REGROWABLE",
    "DEFAULT_STEPS",
    "DEFAULT_LR",
    "cache_root",
    "organs_from_report",
    "default_texts",
    "tokenize_texts",
    "synthesize_utterances",
    "duration_recovery",
    "heldout_metrics",
    "sdp_nll_per_token",
]

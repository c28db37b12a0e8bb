"""Deprecated: moved to :mod:`vits_surgery.regrowth.fit`, :mod:`vits_surgery.regrowth.options` and
:mod:`vits_surgery.regrowth.metrics` (removed in vits_surgery 0.3)."""

from __future__ import annotations

from .._deprecated import moved_names

__getattr__ = moved_names(__name__, {
    **{n: "vits_surgery.regrowth.fit" for n in (
        "FITTERS", "bf16_autocast", "fit_posterior", "fit_duration_posterior", "fit_discriminator", "posterior_loss",
        "alignment_loss", "segment_pool", "pool_utterances", "teacher_prior")},
    **{n: "vits_surgery.regrowth.options" for n in ("PRECISIONS", "cpu_has_fast_bf16", "resolve_precision")},
    **{n: "vits_surgery.regrowth.metrics" for n in ("sdp_nll_per_token", "text_hidden")},
    "FitOptions": "vits_surgery.regrowth.options:RegrowOptions",
})

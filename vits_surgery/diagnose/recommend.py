"""The recommendation rule: which organs to operate on, from the contrast and the profile.

Two questions, each answered by both instruments:

- **cadence** (train the duration predictor): the donor's speaking rate differs from the voice's
  on the same texts by at least ``rate_tolerance`` (profile), and/or the duration predictor's
  contrast stands out from the text encoder's (gradients: the donor asks more of the duration
  predictor than of the organ that feeds it).
- **timbre** (train the decoder, and the flow when its contrast is high too): the donor sounds
  like another speaker (cosine to the voice at least ``similarity_margin`` below the voice's
  own) or speaks at another pitch (``f0_tolerance`` semitones) (profile), and/or the decoder's
  or flow's contrast reaches ``timbre_contrast`` (gradients).

The profile is the direct measurement, so it decides where it was measured; the gradients
decide where it was not (a profile field is NaN), and pick the organs of a timbre plan. Where
the two disagree, the reason line says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..surgery.autoplan import ContrastiveRanking
from .profile import DonorProfile

__all__ = ["Recommendation", "recommend", "plan_organs"]


@dataclass
class Recommendation:
    """What to train and why.

    Attributes:
        organs: organs to train (empty: nothing to transplant).
        kind: ``"cadence"``, ``"timbre"``, ``"cadence+timbre"`` or ``"none"``.
        why: one line that says why.
        evidence: per question, what the gradients and the profile said.
        notes: further advice (ordering, caveats).
    """

    organs: tuple[str, ...]
    kind: str
    why: str
    evidence: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def plan(self, **kwargs: Any) -> Any:
        """The :class:`~vits_surgery.surgery.plan.SurgeryPlan` that trains :attr:`organs`."""
        from ..surgery.plan import SurgeryPlan

        if not self.organs:
            raise ValueError(f"nothing to train: {self.why}")
        kwargs.setdefault("name", f"diagnosed-{self.kind}")
        return SurgeryPlan(train=self.organs, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _finite(*xs: float) -> bool:
    return all(x is not None and math.isfinite(x) for x in xs)


def plan_organs(cadence: bool, timbre: bool, with_flow: bool) -> tuple[tuple[str, ...], str]:
    """Organs and kind for the two answers."""
    organs: list[str] = []
    if cadence:
        organs.append("duration_predictor")
    if timbre:
        organs += ["decoder", "flow"] if with_flow else ["decoder"]
    kind = "+".join(k for k, on in (("cadence", cadence), ("timbre", timbre)) if on) or "none"
    return tuple(organs), kind


def _decide(name: str, profile_says: bool | None, gradient_says: bool) -> tuple[bool, str]:
    if profile_says is None:
        return gradient_says, "gradients only (profile not measured)"
    if profile_says == gradient_says:
        return profile_says, "profile and gradients agree"
    return profile_says, f"profile says {'yes' if profile_says else 'no'}, gradients disagree"


def recommend(
    ranking: ContrastiveRanking | None,
    profile: DonorProfile | None,
    rate_tolerance: float = 0.10,
    f0_tolerance: float = 2.0,
    similarity_margin: float = 0.15,
    cadence_contrast: float = 1.15,
    timbre_contrast: float = 1.5,
    flow_contrast: float = 2.0,
) -> Recommendation:
    """Apply the rule of the module docstring.

    Args:
        ranking: the contrastive ranking (None: the profile alone decides).
        profile: the measured profile (None: the gradients alone decide).
        rate_tolerance: relative speaking-rate difference that counts as another cadence.
        f0_tolerance: median-F0 shift in semitones that counts as another voice.
        similarity_margin: how far below the voice's own cosine the donor's must be.
        cadence_contrast: duration-predictor contrast over the text encoder's that counts.
        timbre_contrast: decoder contrast that counts (without a cadence signal).
        flow_contrast: flow contrast that counts, and above which the flow joins a timbre plan.
    """
    c = ranking.contrast if ranking is not None else (lambda organ: math.nan)
    dp, te, dec, flow = c("duration_predictor"), c("text_encoder"), c("decoder"), c("flow")
    cad_grad = _finite(dp, te) and dp / te >= cadence_contrast
    # the flow's contrast marks another voice; the decoder's alone only when no cadence signal
    # explains it (a slowed donor pulls on the voice's decoder too: 3.1x on D_cad, docs/benchmarks.md)
    tim_grad = (_finite(flow) and flow >= flow_contrast) or (_finite(dec) and dec >= timbre_contrast and not cad_grad)
    cad_prof = tim_prof = None
    if profile is not None and _finite(profile.rate_ratio):
        cad_prof = abs(math.log(profile.rate_ratio)) >= math.log1p(rate_tolerance)
    if profile is not None:
        sim, own, shift = profile.similarity, profile.recipient.self_similarity, profile.f0_shift_semitones
        votes = []
        if _finite(sim, own):
            votes.append(sim < own - similarity_margin)
        if _finite(shift):
            votes.append(abs(shift) >= f0_tolerance)
        tim_prof = any(votes) if votes else None
    cadence, cad_how = _decide("cadence", cad_prof, cad_grad)
    timbre, tim_how = _decide("timbre", tim_prof, tim_grad)
    with_flow = _finite(flow) and flow >= flow_contrast
    organs, kind = plan_organs(cadence, timbre, with_flow)
    evidence = {
        "cadence": {"decision": cadence, "profile": cad_prof, "gradients": cad_grad, "how": cad_how,
                    "dp_over_text_encoder": dp / te if _finite(dp, te) and te > 0 else math.nan},
        "timbre": {"decision": timbre, "profile": tim_prof, "gradients": tim_grad, "how": tim_how,
                   "decoder_contrast": dec, "flow_contrast": flow},
    }
    why = _why(kind, profile, dp / te if _finite(dp, te) and te > 0 else math.nan, dec, flow, cad_how, tim_how)
    notes = []
    if cadence and timbre:
        notes.append("for the duration predictor take the donor's durations from forced alignment "
                     "(--duration-source forced, CadenceStep(trainer, source='forced')): the voice's own "
                     "posterior encoder aligns another person's speech poorly")
    return Recommendation(organs, kind, why, evidence, notes)


def _why(kind: str, p: DonorProfile | None, dp_te: float, dec: float, flow: float, cad_how: str, tim_how: str) -> str:
    parts = []
    if p is not None:
        parts.append(f"rate x{p.rate_ratio:.2f}" if _finite(p.rate_ratio) else "rate n/a")
        parts.append(f"F0 {p.f0_shift_semitones:+.1f} st" if _finite(p.f0_shift_semitones) else "F0 n/a")
        if _finite(p.similarity):
            parts.append(f"cosine to the voice {p.similarity:.2f} (its own {p.recipient.self_similarity:.2f})")
    parts.append(f"contrast: duration predictor/text encoder {dp_te:.2f}, decoder {dec:.2f}, flow {flow:.2f}")
    verdict = {
        "cadence": "another cadence, same voice",
        "timbre": "another voice at the same cadence",
        "cadence+timbre": "another voice and another cadence",
        "none": "no difference worth a transplant",
    }[kind]
    return f"{verdict}: {'; '.join(parts)} (cadence: {cad_how}; timbre: {tim_how})"

"""The targets of the transplant benchmark (issue 7), checked on a run's three table rows.

Rows: ``[recipient before, donor, result]``, each with ``phones_per_second``, ``f0_median``,
``similarity_recipient``, ``similarity_donor`` and ``wer``.

- Cadence: the speaking rate moves >= 80 % of the way from the recipient's to the donor's
  (in log ratio); similarity to the recipient's centroid stays >= 0.90; median F0 within
  +-1 semitone of the recipient's.
- Timbre: similarity to the donor rises by >= 0.15; median F0 moves >= half way (in
  semitones) toward the donor's; durations identical to the recipient's for the same seed;
  WER rises by at most 10 points.
"""

from __future__ import annotations

import math
from typing import Any

CADENCE_RATE_FRACTION = 0.80
CADENCE_MIN_SIMILARITY = 0.90
CADENCE_MAX_F0_SEMITONES = 1.0
TIMBRE_MIN_SIMILARITY_GAIN = 0.15
TIMBRE_F0_FRACTION = 0.5
TIMBRE_MAX_WER_RISE = 0.10


def _st(f: float, ref: float) -> float:
    return 12.0 * math.log2(f / ref)


def _target(name: str, value: float, op: str, threshold: float) -> dict[str, Any]:
    met = (
        value >= threshold if op == ">=" else abs(value) <= threshold if op == "|x|<=" else value <= threshold
    )
    return {"name": name, "value": value, "op": op, "threshold": threshold, "met": bool(met)}


def moved_fraction(before: float, target: float, after: float, log: bool = True) -> float:
    """How far ``after`` went from ``before`` toward ``target`` (1 = all the way), in log ratio."""
    if log:
        before, target, after = math.log(before), math.log(target), math.log(after)
    span = target - before
    return (after - before) / span if span else float("nan")


def check_targets(plan: str, rows: list[dict[str, Any]], evidence: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for ``plan`` (``cadence`` or ``timbre``) with their measured values."""
    rec, donor, res = rows
    f0_shift = _st(res["f0_median"], rec["f0_median"])
    if plan == "cadence":
        rate = moved_fraction(rec["phones_per_second"], donor["phones_per_second"], res["phones_per_second"])
        return [
            _target("rate moved toward donor (log ratio)", rate, ">=", CADENCE_RATE_FRACTION),
            _target("similarity to recipient", res["similarity_recipient"], ">=", CADENCE_MIN_SIMILARITY),
            _target("median F0 shift (semitones)", f0_shift, "|x|<=", CADENCE_MAX_F0_SEMITONES),
        ]
    gain = res["similarity_donor"] - rec["similarity_donor"]
    donor_st = _st(donor["f0_median"], rec["f0_median"])
    return [
        _target("similarity to donor gain", gain, ">=", TIMBRE_MIN_SIMILARITY_GAIN),
        _target("median F0 moved toward donor (semitones)", f0_shift / donor_st, ">=", TIMBRE_F0_FRACTION),
        _target(
            "utterances with identical durations", evidence["identical_durations"], ">=", evidence["n_test"]
        ),
        _target("WER rise", res["wer"] - rec["wer"], "<=", TIMBRE_MAX_WER_RISE),
    ]

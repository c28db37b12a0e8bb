"""Donor diagnosis: before training, what a donor differs in and which organs to operate on.

:func:`diagnose` samples a donor folder, has the voice read the same texts, and reports

- unusable-donor checks (:mod:`~vits_surgery.diagnose.checks`): too little audio, another
  language, clipping, a sample rate far below the voice's;
- the measured profile (:mod:`~vits_surgery.diagnose.profile`): speaking rate, F0 median and
  range, speaker similarity, duration ratio per phone class;
- the contrastive organ ranking (:mod:`~vits_surgery.surgery.autoplan`): each organ's relative
  gradient norm on the donor over the same on the voice's own speech;
- a recommended plan with one line saying why (:mod:`~vits_surgery.diagnose.recommend`).

Example::

    from vits_surgery.diagnose import diagnose
    d = diagnose(model, "donor_folder", out_dir="diagnosis")
    print(d)                         # the summary
    plan = d.recommendation.plan()   # a SurgeryPlan of the recommended organs
"""

from __future__ import annotations

from .._lazy import lazy_attributes

_LAZY = {
    "diagnose": "vits_surgery.diagnose.run:diagnose",
    "Diagnosis": "vits_surgery.diagnose.run:Diagnosis",
    "Finding": "vits_surgery.diagnose.checks:Finding",
    "DonorProfile": "vits_surgery.diagnose.profile:DonorProfile",
    "measure_profile": "vits_surgery.diagnose.profile:measure_profile",
    "ContrastiveRanking": "vits_surgery.surgery.autoplan:ContrastiveRanking",
    "contrastive_ranking": "vits_surgery.surgery.autoplan:contrastive_ranking",
    "ranking_from_rgn": "vits_surgery.surgery.autoplan:ranking_from_rgn",
    "Recommendation": "vits_surgery.diagnose.recommend:Recommendation",
    "recommend": "vits_surgery.diagnose.recommend:recommend",
    "mas_durations": "vits_surgery.diagnose.durations:mas_durations",
}

__all__ = list(_LAZY)

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)

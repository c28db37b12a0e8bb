"""Choosing a plan from the donor's data: Auto-RGN's raw ranking or the contrastive one.

:func:`auto_plan` ranks organs by relative gradient norm on the donor's batches
(:mod:`vits_surgery.surgery.auto`), or, given the recipient's own speech of the same texts, by
contrast: how much harder the donor pulls on each organ than the voice itself.

The raw relative gradient norm ``RGN = ||grad|| / ||param||`` (:mod:`vits_surgery.surgery.auto`)
of a trained voice is large for some organs on *any* speech: the decoder's mel and adversarial
terms never reach zero, so it ranks first for every donor. The contrast removes that floor:
each organ's RGN on the donor's batches is divided by its RGN on the recipient's own speech,
synthesized on the same texts and batched the same way,

    contrast(organ) = RGN_donor(organ) / RGN_recipient(organ),

so 1 means "the donor asks nothing of this organ that the voice's own speech does not", and
the organs whose contrast stands out are the ones the donor differs in.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from ..batch import Batch
from .auto import _take, plan_from_rgn, relative_gradient_norms
from .plan import SurgeryPlan
from .registry import ComponentRegistry
from .train_config import TrainConfig

logger = logging.getLogger(__name__)

__all__ = [
    "OrganContrast", "ContrastiveRanking", "contrastive_ranking", "ranking_from_rgn", "plan_from_contrast", "auto_plan",
]


@dataclass(frozen=True)
class OrganContrast:
    """One organ of a :class:`ContrastiveRanking`.

    Attributes:
        organ: organ name.
        rgn_donor: relative gradient norm on the donor's batches.
        rgn_recipient: the same on the recipient's own speech of the same texts.
        contrast: ``rgn_donor / rgn_recipient`` (NaN when either is not finite or is 0).
        rank: 1 for the largest contrast.
    """

    organ: str
    rgn_donor: float
    rgn_recipient: float
    contrast: float
    rank: int


@dataclass
class ContrastiveRanking:
    """Organs ranked by contrast, largest first.

    Attributes:
        organs: the rows, ranked.
        n_batches: batches per side.
        terms: generator loss terms in the loss.
    """

    organs: list[OrganContrast]
    n_batches: int = 0
    terms: tuple[str, ...] = ()

    def ranking(self) -> list[str]:
        """Organ names with a finite contrast, largest first."""
        return [r.organ for r in self.organs if math.isfinite(r.contrast)]

    def contrast(self, organ: str) -> float:
        """The contrast of ``organ`` (NaN if it is not in the ranking)."""
        return next((r.contrast for r in self.organs if r.organ == organ), math.nan)

    def table(self) -> str:
        """A plain-text table."""
        head = f"{'rank':>4}  {'organ':<20}{'RGN donor':>11}{'RGN self':>11}{'contrast':>10}"
        rows = [
            f"{r.rank:>4}  {r.organ:<20}{r.rgn_donor:>11.4g}{r.rgn_recipient:>11.4g}{r.contrast:>10.3g}"
            for r in self.organs
        ]
        return "\n".join([head, *rows])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"n_batches": self.n_batches, "terms": list(self.terms), "organs": [asdict(r) for r in self.organs]}


def ranking_from_rgn(
    donor: Mapping[str, float], recipient: Mapping[str, float], n_batches: int = 0, terms: Sequence[str] = ()
) -> ContrastiveRanking:
    """A :class:`ContrastiveRanking` from per-organ RGNs of both sides (organs of ``donor``)."""
    raw = []
    for organ, d in donor.items():
        r = recipient.get(organ, math.nan)
        ok = math.isfinite(d) and math.isfinite(r) and r > 0 and d > 0
        raw.append((organ, float(d), float(r), d / r if ok else math.nan))
    raw.sort(key=lambda x: (not math.isfinite(x[3]), -x[3] if math.isfinite(x[3]) else 0.0))
    rows = [OrganContrast(o, d, r, c, i + 1) for i, (o, d, r, c) in enumerate(raw)]
    return ContrastiveRanking(rows, n_batches=n_batches, terms=tuple(terms))


def contrastive_ranking(
    model: Any,
    donor_batches: Sequence[Batch],
    recipient_batches: Sequence[Batch],
    n_batches: int | None = None,
    seed: int = 0,
    **rgn_kwargs: Any,
) -> ContrastiveRanking:
    """Rank organs by ``RGN(donor) / RGN(recipient's own speech)``.

    Both sides run :func:`~vits_surgery.surgery.auto.relative_gradient_norms` with the same
    seed (the same training noise draws), so with paired batches (the same texts in the same
    order) the only difference is the audio.

    Args:
        model: the recipient voice (left unchanged).
        donor_batches: the donor's batches.
        recipient_batches: the recipient's own speech of the same texts, batched alike.
        n_batches: batches per side (default: all of the shorter list).
        seed: training-noise seed of both sides.
        **rgn_kwargs: further arguments of ``relative_gradient_norms`` (``loss_weights``...).

    Returns:
        :class:`ContrastiveRanking`.
    """
    n = n_batches or min(len(donor_batches), len(recipient_batches))
    sides = {}
    for name, data in (("donor", donor_batches), ("recipient", recipient_batches)):
        report = relative_gradient_norms(model, list(data), n_batches=n, seed=seed, **rgn_kwargs)
        sides[name] = {r.name: r.rgn for r in report.organs}
        terms = report.terms
    return ranking_from_rgn(sides["donor"], sides["recipient"], n_batches=n, terms=terms)


def plan_from_contrast(
    ranking: ContrastiveRanking,
    top_k: int | None = 1,
    threshold: float | None = None,
    plan_cls: type | None = None,
    **plan_kwargs: Any,
) -> Any:
    """A plan that trains the organs of largest contrast.

    Args:
        ranking: from :func:`contrastive_ranking`.
        top_k: at most this many organs (None = no limit).
        threshold: keep organs whose contrast is at least ``threshold`` times the top one's.
        plan_cls: the plan class (default :class:`~vits_surgery.surgery.plan.SurgeryPlan`).
        **plan_kwargs: further plan fields (``name`` defaults to "auto-contrast").

    Raises:
        ValueError: no organ has a finite contrast.
    """
    names = ranking.ranking()
    if not names:
        raise ValueError("no organ has a finite contrast: check that both sides receive gradients")
    top = ranking.contrast(names[0])
    if threshold is not None:
        names = [n for n in names if ranking.contrast(n) >= threshold * top]
    plan_kwargs.setdefault("name", "auto-contrast")
    return (plan_cls or SurgeryPlan)(train=tuple(names[:top_k]), **plan_kwargs)


def auto_plan(
    model: nn.Module,
    donor_data: Iterable[Batch] | Batch,
    top_k: int | None = 1,
    threshold: float | None = None,
    per_tensor_lr: bool = False,
    n_batches: int = 4,
    *,
    scale_lr: bool = False,
    level: str = "organ",
    min_lr_scale: float = 1e-3,
    loss_weights: Mapping[str, float] | None = None,
    config: TrainConfig | None = None,
    registry: ComponentRegistry | None = None,
    seed: int = 0,
    plan_cls: type[SurgeryPlan] = SurgeryPlan,
    baseline_data: Iterable[Batch] | Batch | None = None,
    **plan_kwargs: Any,
) -> SurgeryPlan:
    """:func:`relative_gradient_norms` then :func:`plan_from_rgn`; the report is logged (INFO).

    Args:
        model, donor_data, n_batches, loss_weights, config, registry, seed: as
            :func:`relative_gradient_norms` (``donor_data`` is its ``batches``).
        top_k, threshold, per_tensor_lr, scale_lr, level, min_lr_scale, plan_cls,
            **plan_kwargs: as :func:`plan_from_rgn`.
        baseline_data: the recipient's own speech of the donor's texts, batched alike. When
            given, organs are ranked by contrast, RGN on the donor over RGN on this
            (:func:`contrastive_ranking`), and ``threshold``
            is a fraction of the top contrast; organ level only, no learning-rate scaling.

    Returns:
        The plan (to see the scores, call the two functions yourself).
    """
    if baseline_data is not None:
        if per_tensor_lr or scale_lr or level != "organ":
            raise ValueError("a contrastive ranking (baseline_data) plans whole organs without learning-rate scaling")
        ranking = contrastive_ranking(
            model, _take(donor_data, n_batches), _take(baseline_data, n_batches), seed=seed,
            loss_weights=loss_weights, config=config, registry=registry,
        )
        logger.info("contrastive organ ranking:\n%s", ranking.table())
        return plan_from_contrast(ranking, top_k=top_k, threshold=threshold, plan_cls=plan_cls, **plan_kwargs)
    report = relative_gradient_norms(
        model,
        donor_data,
        n_batches=n_batches,
        loss_weights=loss_weights,
        config=config,
        registry=registry,
        seed=seed,
    )
    logger.info("%s", report)
    return plan_from_rgn(
        report,
        top_k=top_k,
        threshold=threshold,
        per_tensor_lr=per_tensor_lr,
        scale_lr=scale_lr,
        level=level,
        min_lr_scale=min_lr_scale,
        plan_cls=plan_cls,
        **plan_kwargs,
    )

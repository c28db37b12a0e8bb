"""Automatic organ selection by relative gradient norm (Auto-RGN).

Lee et al., "Surgical Fine-Tuning Improves Adaptation to Distribution Shifts" (ICLR 2023),
rank the parts of a network by how hard the new data pulls on them: the *relative gradient
norm* of a parameter tensor,

    RGN(θ) = ||∂L/∂θ|| / ||θ||,

with L the full training loss on the new (donor) data. Parts with a large RGN are the ones
whose adaptation the donor's data asks for; Auto-RGN trains those, each at a learning rate
proportional to its RGN normalised by the largest.

:func:`relative_gradient_norms` computes it with the trainer's own loss path: the
:class:`~vits_surgery.surgery.step.LossPath` of a plan that trains every generator organ (the
discriminator stays frozen: it is scored but not ranked) runs its forward and generator losses
in training mode on a few donor batches; the gradients of the weighted total are taken with
``torch.autograd.grad`` (no ``.grad`` is written, no optimizer steps). Afterwards the model's
parameters, ``requires_grad`` flags, train/eval flags and any applied plan are as before
(:func:`~vits_surgery.surgery.freeze.preserved`), and the global RNG streams are untouched.

Per batch b and tensor t the gradient norm ``||g_bt||`` is recorded; the reported gradient
norm is its mean over batches and ``RGN_t = mean_b ||g_bt|| / ||θ_t||`` (parameters do not
change between batches). An organ or sub-organ is scored as one vector: its gradient norm per
batch is ``sqrt(sum_t ||g_bt||^2)`` and its parameter norm ``sqrt(sum_t ||θ_t||^2)``, so the
score does not depend on how the organ is split into tensors. A tensor whose norm is 0 (a
zero-initialised layer) has no defined RGN (NaN in the report); it still counts in its
organ's score.

Example::

    report = relative_gradient_norms(model, donor_loader, n_batches=4)
    print(report)                               # ranked organ and sub-organ tables
    plan = plan_from_rgn(report, top_k=2, scale_lr=True)
    plan = auto_plan(model, donor_loader, top_k=2)    # the same in one call
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import itertools
import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .._deprecated import warn_renamed
from ..batch import Batch
from ..losses import DEFAULT_WEIGHTS
from .freeze import apply_resolved, preserved
from .plan import SurgeryPlan
from .registry import GENERATOR_TERMS, ComponentRegistry
from .step import LossPath, StepPlan
from .train_config import TrainConfig

__all__ = [
    "LEVELS",
    "RGNRow",
    "RGNReport",
    "relative_gradient_norms",
    "plan_from_rgn",
    "sub_organ_of",
]

logger = logging.getLogger(__name__)

#: Granularities of an :class:`RGNReport`.
LEVELS = ("organ", "sub_organ", "tensor")

@dataclass(frozen=True)
class RGNRow:
    """One scored organ, sub-organ or tensor.

    Attributes:
        name: organ name, sub-organ module path or parameter path.
        organ: the organ it belongs to.
        sub_organ: the sub-organ it belongs to ("" for an organ row).
        numel: scalar parameters.
        param_norm: L2 norm of the parameters.
        grad_norm: L2 norm of the gradient, averaged over the batches.
        rgn: ``grad_norm / param_norm`` (NaN when ``param_norm`` is 0).
        normalized: ``rgn`` over the largest finite ``rgn`` of the same level (1.0 for the top).
        rank: 1 for the largest ``rgn`` of its level; NaN rows come last.
    """

    name: str
    organ: str
    sub_organ: str
    numel: int
    param_norm: float
    grad_norm: float
    rgn: float
    normalized: float
    rank: int


@dataclass
class RGNReport:
    """Relative gradient norms per organ, sub-organ and tensor, each level ranked.

    Attributes:
        organs, sub_organs, tensors: rows sorted by rank (largest RGN first).
        n_batches: donor batches averaged.
        terms: generator loss terms in the loss (weight != 0).
        loss_weights: the weight of every generator term (0 = not in the loss).
        losses: mean unweighted value of each term over the batches.
    """

    organs: list[RGNRow]
    sub_organs: list[RGNRow]
    tensors: list[RGNRow]
    n_batches: int
    terms: tuple[str, ...]
    loss_weights: dict[str, float] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)

    def rows(self, level: str = "organ") -> list[RGNRow]:
        """The ranked rows of ``level`` ("organ", "sub_organ" or "tensor")."""
        if level not in LEVELS:
            raise ValueError(f"unknown RGN level {level!r}: use one of {', '.join(LEVELS)}")
        return {"organ": self.organs, "sub_organ": self.sub_organs, "tensor": self.tensors}[level]

    def ranking(self, level: str = "organ") -> list[str]:
        """Names of ``level`` that receive a gradient, largest RGN first."""
        return [r.name for r in self.rows(level) if math.isfinite(r.rgn) and r.rgn > 0]

    def row(self, name: str, level: str = "organ") -> RGNRow:
        """The row of ``name`` at ``level``."""
        for r in self.rows(level):
            if r.name == name:
                return r
        known = ", ".join(r.name for r in self.rows(level)[:12])
        raise KeyError(f"no {level} named {name!r} in this report (ranked first: {known})")

    def table(self, level: str = "organ", limit: int | None = None) -> str:
        """A plain-text table of ``level`` (first ``limit`` rows)."""
        header = ("rank", level.replace("_", "-"), "params", "|param|", "|grad|", "RGN", "normalized")
        lines = [_cells(r) for r in self.rows(level)[:limit]]
        widths = [
            max(len(h), *(len(row[i]) for row in lines)) if lines else len(h) for i, h in enumerate(header)
        ]
        aligns = (">", "<", ">", ">", ">", ">", ">")

        def fmt(row: tuple[str, ...]) -> str:
            return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(row, aligns, widths, strict=True)).rstrip()

        more = len(self.rows(level)) - len(lines)
        tail = [f"... {more} more"] if more > 0 else []
        return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in lines), *tail])

    def __str__(self) -> str:
        head = f"relative gradient norms over {self.n_batches} batch(es); loss terms: {', '.join(self.terms)}"
        return "\n\n".join([head, self.table("organ"), self.table("sub_organ", limit=12)])

    def _repr_html_(self) -> str:
        def block(level: str, limit: int | None) -> str:
            cols = ("rank", level.replace("_", "-"), "params", "|param|", "|grad|", "RGN", "normalized")
            head = "".join(f"<th>{c}</th>" for c in cols)
            body = "".join(
                "<tr>"
                + "".join(
                    f"<td style='text-align:{'left' if i == 1 else 'right'}'>{html.escape(c)}</td>"
                    for i, c in enumerate(_cells(r))
                )
                + "</tr>"
                for r in self.rows(level)[:limit]
            )
            return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

        title = html.escape(
            f"relative gradient norms over {self.n_batches} batch(es); loss terms: {', '.join(self.terms)}"
        )
        return f"<p>{title}</p>{block('organ', None)}{block('sub_organ', 12)}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN stays NaN; ``json.dumps`` writes it as ``NaN``)."""
        return {
            "n_batches": self.n_batches,
            "terms": list(self.terms),
            "loss_weights": dict(self.loss_weights),
            "losses": dict(self.losses),
            "organs": [asdict(r) for r in self.organs],
            "sub_organs": [asdict(r) for r in self.sub_organs],
            "tensors": [asdict(r) for r in self.tensors],
        }


def _cells(r: RGNRow) -> tuple[str, ...]:
    def num(x: float) -> str:
        return "n/a" if not math.isfinite(x) else f"{x:.3g}"

    values = (r.param_norm, r.grad_norm, r.rgn, r.normalized)
    return (str(r.rank), r.name, f"{r.numel:,}", *(num(v) for v in values))


def sub_organ_of(param_name: str, depth: int = 1) -> str:
    """The sub-organ module path of a parameter: the organ plus ``depth`` named module levels.

    List indices stay attached to their container, and weight-norm internals to their layer:
    ``decoder.ups.0.parametrizations.weight.original0`` -> ``decoder.ups.0``,
    ``text_encoder.encoder.attn_layers.0.conv_q.weight`` -> ``text_encoder.encoder`` (depth 1)
    or ``text_encoder.encoder.attn_layers.0`` (depth 2).
    """
    if depth < 1:
        raise ValueError(f"sub-organ depth must be >= 1, got {depth}")
    parts = param_name.split(".")[:-1]  # the owning module's path
    out, named = parts[:1], 0
    for part in parts[1:]:
        if part.isdigit():
            out.append(part)
            continue
        if named == depth or part == "parametrizations":
            break
        out.append(part)
        named += 1
    return ".".join(out) or param_name


def relative_gradient_norms(
    model: nn.Module,
    batches: Iterable[Batch] | Batch,
    n_batches: int = 4,
    loss_weights: Mapping[str, float] | None = None,
    config: TrainConfig | None = None,
    registry: ComponentRegistry | None = None,
    seed: int = 0,
    sub_organ_depth: int = 1,
    loss_path_cls: type[LossPath] = LossPath,
    trainer_cls: type | None = None,
) -> RGNReport:
    """Relative gradient norm ``||grad|| / ||param||`` of every generator tensor on donor batches.

    Args:
        model: the recipient :class:`~vits_surgery.models.vits.VITS` (left exactly as it was).
        batches: donor batches (a loader, a list, or one :class:`~vits_surgery.batch.Batch`);
            the first ``n_batches`` are used. A loader with ``state_dict`` keeps its position.
        n_batches: batches to average over.
        loss_weights: overrides of the training loss weights (0 drops a term).
        config: the training settings whose loss weights and ``amp`` apply (its device, seed
            and learning rate are ignored: the model stays on its device).
        registry: the model's registry (organ names and user groups).
        seed: seeds the training noise (posterior sample, duration noise, decoded segment,
            dropout) so the scores are reproducible.
        sub_organ_depth: module levels below an organ that make a sub-organ (see
            :func:`sub_organ_of`).
        loss_path_cls: the :class:`~vits_surgery.surgery.step.LossPath` (sub)class whose
            ``forward`` and ``generator_losses`` define the loss.
        trainer_cls: deprecated (removed in vits_surgery 0.3): a
            :class:`~vits_surgery.surgery.trainer.SurgicalTrainer` subclass whose
            ``forward_generator`` / ``generator_losses`` define the loss; use ``loss_path_cls``.

    Returns:
        An :class:`RGNReport`, ranked per organ, per sub-organ and per tensor.

    Raises:
        ValueError: no batch, ``n_batches < 1``, or a non-finite loss on a batch.
    """
    if n_batches < 1:
        raise ValueError(f"n_batches must be >= 1, got {n_batches}")
    registry = registry or ComponentRegistry(model)
    device = next(model.parameters()).device
    base = config or TrainConfig()
    plan = SurgeryPlan(
        train=("generator",), train_discriminator=False, loss_weights=dict(loss_weights or {}), name="rgn"
    )
    with preserved(model), _forked_rng(device, seed):
        data = _take(batches, n_batches)
        if trainer_cls is not None:
            warn_renamed("relative_gradient_norms(trainer_cls=...)", "loss_path_cls=")
            cfg = dataclasses.replace(base, seed=None, progress=False, device=str(device))
            path: Any = _TrainerPath(trainer_cls(model, plan, config=cfg, registry=registry))
            resolved = path.trainer.resolved
        else:
            resolved = plan.resolve(registry, base.loss_weights)
            apply_resolved(model, resolved, frozen_eval=plan.frozen_eval)
            rng = torch.Generator(device=device)
            path = loss_path_cls(model, StepPlan.derive(model, resolved), resolved.loss_weights, base.amp, rng)
        path.rng.manual_seed(seed)
        named = [(n, p) for name, pairs in resolved.groups.items() if name != "discriminator" for n, p in pairs]
        model.train()
        sq, losses = _squared_grad_norms(path, named, data)
    report = _report(registry, named, sq, sub_organ_depth)
    report.terms = path.step_plan.terms
    report.loss_weights = {k: path.weights[k] for k in GENERATOR_TERMS}
    report.losses = losses
    return report


class _TrainerPath:
    """The deprecated ``trainer_cls`` route: a trainer's hooks seen as a loss path."""

    def __init__(self, trainer: Any) -> None:
        self.trainer, self.rng = trainer, trainer.rng
        self.step_plan, self.weights = trainer.step_plan, trainer.weights
        self.autocast = trainer.loss_path.autocast
        self.forward, self.generator_losses = trainer.forward_generator, trainer.generator_losses
        self.total = trainer.loss_path.total


def _squared_grad_norms(
    path: LossPath, named: list[tuple[str, nn.Parameter]], data: list[Batch]
) -> tuple[torch.Tensor, dict[str, float]]:
    """[n_batches, n_tensors] squared gradient norms (float64) and mean loss terms."""
    params = [p for _, p in named]
    sq = torch.zeros(len(data), len(params), dtype=torch.float64)
    sums: dict[str, float] = {}
    for i, batch in enumerate(data):
        batch = batch.to(params[0].device)
        with path.autocast():
            out = path.forward(batch)
            losses = path.generator_losses(batch, out)
        total = path.total(losses)
        if not bool(torch.isfinite(total)):
            raise ValueError(
                f"donor batch {i} ({batch.ids}) gives a non-finite loss "
                f"({ {k: float(v) for k, v in losses.items()} }): check the data or the model"
            )
        grads = torch.autograd.grad(total, params, allow_unused=True)
        for j, g in enumerate(grads):
            if g is not None:
                sq[i, j] = g.detach().double().pow(2).sum().cpu()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
    return sq, {k: v / len(data) for k, v in sums.items()}


def _report(
    registry: ComponentRegistry, named: list[tuple[str, nn.Parameter]], sq: torch.Tensor, depth: int
) -> RGNReport:
    names = [n for n, _ in named]
    psq = torch.tensor([float(p.detach().double().pow(2).sum()) for _, p in named], dtype=torch.float64)
    organs = [registry.organ_of(n) for n in names]
    subs = [sub_organ_of(n, depth) for n in names]

    def rows(keys: list[str], parents: list[tuple[str, str]]) -> list[RGNRow]:
        index: dict[str, list[int]] = {}
        for j, key in enumerate(keys):
            index.setdefault(key, []).append(j)
        raw = []
        for key, cols in index.items():
            grad = float(sq[:, cols].sum(dim=1).sqrt().mean())
            pnorm = float(psq[cols].sum().sqrt())
            rgn = grad / pnorm if pnorm > 0 else math.nan
            numel = sum(named[j][1].numel() for j in cols)
            raw.append((key, *parents[cols[0]], numel, pnorm, grad, rgn))
        top = max((r[6] for r in raw if math.isfinite(r[6])), default=0.0)
        raw.sort(key=lambda r: (not math.isfinite(r[6]), -r[6] if math.isfinite(r[6]) else 0.0))
        norm = [r[6] / top if top > 0 else (0.0 if r[6] == 0 else math.nan) for r in raw]
        return [RGNRow(*r, norm[i], i + 1) for i, r in enumerate(raw)]

    return RGNReport(
        organs=rows(organs, [(o, "") for o in organs]),
        sub_organs=rows(subs, list(zip(organs, subs, strict=True))),
        tensors=rows(names, list(zip(organs, subs, strict=True))),
        n_batches=int(sq.shape[0]),
        terms=(),
    )


def plan_from_rgn(
    report: RGNReport,
    top_k: int | None = 1,
    threshold: float | None = None,
    per_tensor_lr: bool = False,
    scale_lr: bool = False,
    level: str = "organ",
    min_lr_scale: float = 1e-3,
    plan_cls: type[SurgeryPlan] = SurgeryPlan,
    **plan_kwargs: Any,
) -> SurgeryPlan:
    """A plan that trains the top-ranked organs (or sub-organs) of an :class:`RGNReport`.

    Only entries that receive a gradient are candidates. ``threshold`` keeps those whose
    normalised RGN is at least ``threshold``; ``top_k`` then keeps at most ``k`` of them (both
    None: every candidate).

    Args:
        report: from :func:`relative_gradient_norms`.
        top_k: at most this many entries (None = no limit).
        threshold: minimum normalised RGN in (0, 1] (None = no minimum).
        per_tensor_lr: Auto-RGN learning rates: every tensor of the chosen entries becomes
            its own plan entry with ``lr_scale`` = its RGN over the largest RGN among them.
        scale_lr: per-entry learning rates: each chosen entry's ``lr_scale`` is its RGN over
            the top entry's.
        level: "organ" or "sub_organ".
        min_lr_scale: floor of every scale (a tensor without gradient still gets a valid scale).
        plan_cls: the plan class to build.
        **plan_kwargs: further :class:`SurgeryPlan` fields (``name`` defaults to "auto"); the
            report's loss weights that differ from the defaults become the plan's
            ``loss_weights`` unless given, so the plan trains on the loss that ranked it.

    Raises:
        ValueError: bad ``top_k`` / ``threshold`` / ``level``, both learning-rate options, or
            no entry receives a gradient.
    """
    if level not in ("organ", "sub_organ"):
        raise ValueError(f"level must be 'organ' or 'sub_organ', got {level!r}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or None for no limit), got {top_k}")
    if threshold is not None and not 0 < threshold <= 1:
        raise ValueError(f"threshold is a normalised RGN and must be in (0, 1], got {threshold}")
    if per_tensor_lr and scale_lr:
        raise ValueError("per_tensor_lr and scale_lr both set learning rates: choose one")
    if not 0 < min_lr_scale <= 1:
        raise ValueError(f"min_lr_scale must be in (0, 1], got {min_lr_scale}")
    chosen = [report.row(n, level) for n in report.ranking(level)]
    if not chosen:
        raise ValueError(
            f"no {level} receives a gradient from the loss terms {list(report.terms)}: check the loss weights"
        )
    if threshold is not None:
        chosen = [r for r in chosen if r.normalized >= threshold]
    chosen = chosen[:top_k]
    names = [r.name for r in chosen]
    scales: dict[str, float] = {}
    if scale_lr:
        scales = {r.name: max(r.rgn / chosen[0].rgn, min_lr_scale) for r in chosen}
    train: list[str] = names
    if per_tensor_lr:
        key = "organ" if level == "organ" else "sub_organ"
        tensors = [t for t in report.tensors if getattr(t, key) in names]
        train = [t.name for t in tensors]
        scales = _tensor_scales(tensors, min_lr_scale)
    plan_kwargs.setdefault("name", "auto")
    # the loss that ranked is the loss that trains: keep the weights that differ from the defaults
    changed = {k: v for k, v in report.loss_weights.items() if v != DEFAULT_WEIGHTS[k]}
    plan_kwargs.setdefault("loss_weights", changed)
    plan = plan_cls(train=tuple(train), lr_scale=scales, **plan_kwargs)
    logger.info(
        "Auto-RGN chose %s (normalised RGN %s)%s",
        ", ".join(names),
        ", ".join(f"{r.normalized:.3g}" for r in chosen),
        f"; per-tensor learning rates on {len(train)} tensors" if per_tensor_lr else "",
    )
    return plan


def _tensor_scales(tensors: list[RGNRow], floor: float) -> dict[str, float]:
    """Tensor -> RGN / largest RGN among ``tensors``; a zero-norm tensor with a gradient gets 1."""
    top = max((t.rgn for t in tensors if math.isfinite(t.rgn)), default=0.0)
    out = {}
    for t in tensors:
        if not math.isfinite(t.rgn):
            value = 1.0 if t.grad_norm > 0 else 0.0
        else:
            value = t.rgn / top if top > 0 else 0.0
        out[t.name] = max(value, floor)
    return out


@contextlib.contextmanager
def _forked_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Seed torch's global RNG (dropout, loader shuffles) inside; the outer streams are kept."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if devices:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def _take(data: Iterable[Batch] | Batch, n: int) -> list[Batch]:
    """The first ``n`` batches; a stateful loader gets its position back."""
    if isinstance(data, Batch):
        return [data]
    state = data.state_dict() if hasattr(data, "state_dict") and hasattr(data, "load_state_dict") else None
    try:
        out = list(itertools.islice(iter(data), n))
    finally:
        if state is not None:
            data.load_state_dict(state)
    if not out:
        raise ValueError("the donor data yielded no batch: pass a non-empty loader or list of Batch objects")
    bad = [type(b).__name__ for b in out if not isinstance(b, Batch)]
    if bad:
        raise TypeError(f"the donor data must yield vits_surgery.batch.Batch objects, got {bad[0]}")
    return out

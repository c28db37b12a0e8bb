"""Optimisation settings of :class:`~vits_surgery.surgery.trainer.SurgicalTrainer`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from ..loss_terms import LossTerm, loss_terms_from_any

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """Optimisation settings (defaults: VITS / Coqui, constant learning rate).

    Attributes:
        lr: generator learning rate (each group: ``lr * plan.lr_scale[group]``).
        lr_discriminator: discriminator learning rate; None = ``lr``.
        betas, eps, weight_decay: AdamW (VITS: (0.8, 0.99), 1e-9, 0.01).
        warmup_steps: linear warm-up from ``lr / warmup_steps`` to ``lr``.
        lr_decay: ExponentialLR gamma (1.0 = constant; VITS 0.999875 per epoch).
        lr_decay_every: "step" or "epoch".
        grad_clip: max global gradient norm per optimizer (None = off; VITS 1000).
        grad_accum: batches per optimizer update.
        amp: "bf16", "fp16" or None; the flow, the duration predictor, MAS and the losses
            always run in fp32.
        loss_weights: overrides of ``losses.DEFAULT_WEIGHTS`` and of the weights of
            ``loss_terms`` (0 = term not computed).
        loss_terms: extra generator terms (:class:`~vits_surgery.loss_terms.LossTerm`) for
            every plan the trainer runs; a plan's term of the same name replaces one of these.
        sample_every: deprecated (removed in vits_surgery 0.3): listening checkpoints are a
            callback, :class:`~vits_surgery.surgery.listening.ListeningCallback` (``every=``).
        save_every: checkpoint period in steps (0 = only at the end of ``fit``).
        keep_last: checkpoints kept (0 = all).
        seed: seeds torch, numpy, random and the noise generator (+ rank); None = leave them.
        log_every: log losses every N steps.
        device: "cpu", "cuda", "cuda:1"...; None = ``cuda:LOCAL_RANK`` if available, else CPU.
        max_consecutive_nonfinite: stop after this many skipped updates in a row.
        progress: show a tqdm bar with live losses (rank 0).
    """

    lr: float = 2e-4
    lr_discriminator: float | None = None
    betas: tuple[float, float] = (0.8, 0.99)
    eps: float = 1e-9
    weight_decay: float = 0.01
    warmup_steps: int = 0
    lr_decay: float = 1.0
    lr_decay_every: str = "step"
    grad_clip: float | None = 1000.0
    grad_accum: int = 1
    amp: str | None = None
    loss_weights: dict[str, float] = field(default_factory=dict)
    loss_terms: Sequence[LossTerm] = ()
    sample_every: int = 0
    save_every: int = 1000
    keep_last: int = 3
    seed: int | None = 1234
    log_every: int = 50
    device: str | None = None
    max_consecutive_nonfinite: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        self.loss_terms = loss_terms_from_any(self.loss_terms)
        if self.sample_every:
            from .._deprecated import warn_renamed

            warn_renamed("TrainConfig(sample_every=...)", "ListeningCallback(every=...)")
        if self.amp not in (None, "bf16", "fp16"):
            raise ValueError(f"TrainConfig.amp must be 'bf16', 'fp16' or None, got {self.amp!r}")
        if self.lr_decay_every not in ("step", "epoch"):
            raise ValueError(f"TrainConfig.lr_decay_every must be 'step' or 'epoch', got {self.lr_decay_every!r}")
        if self.grad_accum < 1:
            raise ValueError(f"TrainConfig.grad_accum must be >= 1, got {self.grad_accum}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")

    @staticmethod
    def decay_to(fraction: float, steps: int) -> float:
        """The per-step ``lr_decay`` that brings the learning rate to ``fraction`` of itself
        after ``steps`` steps, e.g. ``TrainConfig(lr=1e-3, lr_decay=TrainConfig.decay_to(0.1, 400))``.

        Raises:
            ValueError: ``fraction`` not in (0, 1] or ``steps`` < 1.
        """
        if not 0 < fraction <= 1:
            raise ValueError(f"decay_to: the fraction must be in (0, 1], got {fraction}")
        if steps < 1:
            raise ValueError(f"decay_to: steps must be >= 1, got {steps}")
        return fraction ** (1.0 / steps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``loss_terms`` by name and arguments)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["betas"] = list(self.betas)
        d["loss_weights"] = dict(self.loss_weights)
        d["loss_terms"] = [t.to_dict() for t in self.loss_terms]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}")
        return cls(**data)

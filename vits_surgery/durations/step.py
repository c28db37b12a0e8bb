"""The cached cadence step: the duration predictor alone, on cached inputs.

When a plan trains the duration predictor and nothing upstream of it, the duration loss is
the only term and its inputs (the frozen text encoder's hidden states, the speaker vector and
the donor's durations) are the same at every step. :class:`CadenceStep` computes them once
per utterance (:class:`~vits_surgery.durations.cache.DurationCache`) and each step then runs
the duration predictor alone: no text encoder, posterior encoder, flow or MAS.

:class:`~vits_surgery.surgery.trainer.SurgicalTrainer` builds one by default
(:meth:`CadenceStep.for_trainer`); ``trainer.cadence`` holds it, or None when the plan needs
the full path (an upstream organ trains, another loss term is computed, frozen organs run in
train mode, or a trainer subclass overrides ``forward_generator`` / ``generator_losses``, or its
``loss_path_cls`` overrides ``forward`` / ``generator_losses``).
To choose another duration source or cache folder, replace it before ``fit``::

    trainer.cadence = CadenceStep(trainer, source=my_aligner, cache_dir="cache/cadence")

or, by name, ``trainer.cadence = CadenceStep.for_trainer(trainer, source="forced")`` (None when
the plan needs the full path). The default source, ``"auto"``, measures how well the donor fits
the recipient's prior and picks MAS (a donor that sounds like the recipient) or forced alignment
(another voice); :meth:`CadenceStep.describe` records the choice and the gap.

and ``trainer.cadence = None`` forces the full path. The SDP's posterior noise is drawn from
the trainer's generator (or taken from ``TrainNoise.duration``) as in the full step, so on the
same durations and noise both steps give the same gradients.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from ..batch import Batch
from ..losses import duration_loss
from ..models.vits import TrainNoise
from .cache import DurationCache, DurationSource

__all__ = ["CadenceStep", "fallback_reason", "describe_cadence", "sample_batches", "utterance_batches"]

logger = logging.getLogger(__name__)

#: Stages upstream of the duration predictor: if one runs with gradients, the cache cannot serve.
UPSTREAM = ("speaker_embedding", "text_encoder", "posterior_encoder", "flow")
PRECOMPUTE_BATCH = 8


def _overridden(obj: Any, name: str) -> bool:
    """Whether a subclass of the class that first defines ``name`` redefines it."""
    return sum(name in vars(cls) for cls in type(obj).__mro__) > 1


def fallback_reason(trainer: Any) -> str | None:
    """Why ``trainer`` needs the full step for its plan, or None when the cached step serves."""
    organs = tuple(trainer.resolved.trained_organs)
    if "duration_predictor" not in organs:
        return "the duration predictor does not train"
    if organs != ("duration_predictor",):
        return f"the plan also trains {', '.join(o for o in organs if o != 'duration_predictor')}"
    sp = trainer.step_plan
    upstream = [s for s in UPSTREAM if sp.grad.get(s)]
    if upstream:
        return f"{', '.join(upstream)} runs with gradients"
    if tuple(sp.terms) != ("gen/dur",) or sp.decode or sp.train_discriminator:
        return f"the step computes {', '.join(sp.terms)}" + ("; the decoder runs" if sp.decode else "")
    if not trainer.plan.frozen_eval:
        return "frozen organs run in train mode (frozen_eval=False): their dropout changes the inputs at each step"
    for name in ("forward_generator", "generator_losses"):
        if _overridden(trainer, name):
            return f"{type(trainer).__name__} overrides {name}"
    path_cls = type(getattr(trainer, "loss_path", None))
    if any(name in vars(cls) for cls in path_cls.__mro__[:-1] if cls.__name__ != "LossPath"
           for name in ("forward", "generator_losses")):
        return f"its loss path {path_cls.__name__} overrides the forward or the losses"
    return None


def utterance_batches(data: Any, batch_size: int = PRECOMPUTE_BATCH) -> Iterator[Batch] | None:
    """Batches covering every utterance of ``data`` once, without moving its position.

    A loader with a ``dataset`` and a collate function yielding :class:`Batch` (``make_loader``,
    a ``DataLoader``) is read item by item, sorted by length, in batches of ``batch_size``; a
    list or tuple of batches is read as is. Anything else (a one-shot iterator) gives None:
    its inputs are then computed at first use.
    """
    if isinstance(data, (list, tuple)):
        return iter(data)
    dataset = getattr(data, "dataset", None)
    collate = getattr(getattr(data, "loader", data), "collate_fn", None)
    if dataset is None or collate is None or not hasattr(dataset, "__len__"):
        return None
    lengths = list(getattr(dataset, "lengths", None) or [0] * len(dataset))
    order = sorted(range(len(dataset)), key=lambda i: lengths[i])

    def batches() -> Iterator[Batch]:
        for start in range(0, len(order), batch_size):
            batch = collate([dataset[i] for i in order[start : start + batch_size]])
            if not isinstance(batch, Batch):
                raise TypeError(f"the loader's collate_fn gives {type(batch).__name__}, not Batch")
            yield batch

    return batches()


def sample_batches(data: Any, n: int, batch_size: int = 4) -> Iterator[Batch] | None:
    """Batches of up to ``n`` utterances of ``data`` spread over its length range (shortest to
    longest), without moving its position; a list or tuple of batches is read as is (its first
    utterances). None for a one-shot iterator (see :func:`utterance_batches`)."""
    if isinstance(data, (list, tuple)):
        return iter(data)
    dataset = getattr(data, "dataset", None)
    collate = getattr(getattr(data, "loader", data), "collate_fn", None)
    if dataset is None or collate is None or not hasattr(dataset, "__len__") or len(dataset) == 0:
        return None
    lengths = list(getattr(dataset, "lengths", None) or [0] * len(dataset))
    order = sorted(range(len(dataset)), key=lambda i: lengths[i])
    k = min(n, len(order))
    picked = list(dict.fromkeys(order[round(j * (len(order) - 1) / max(k - 1, 1))] for j in range(k)))

    def batches() -> Iterator[Batch]:
        for start in range(0, len(picked), batch_size):
            yield collate([dataset[i] for i in picked[start : start + batch_size]])

    return batches()


class CadenceStep:
    """The duration loss on cached inputs, for a trainer whose plan allows it.

    Args:
        trainer: the :class:`~vits_surgery.surgery.trainer.SurgicalTrainer` (its model,
            device and generator are used).
        source: the duration source (name or object; see :mod:`vits_surgery.durations.cache`).
            The default ``"auto"`` picks MAS for a donor that sounds like the recipient and forced
            alignment for another voice (:class:`~vits_surgery.durations.cache.AutoDurations`),
            deciding in :meth:`prepare` (or at the first batch when the data is read once).
        cache_dir: the cache folder (default ``$VITS_SURGERY_CACHE/cadence``).
    """

    def __init__(self, trainer: Any, source: str | DurationSource = "auto", cache_dir: str | Path | None = None) -> None:
        self.trainer = trainer
        self.cache = DurationCache(trainer.model, source, cache_dir)
        self.prepared: dict[str, Any] = {}

    @classmethod
    def for_trainer(cls, trainer: Any, **kwargs: Any) -> CadenceStep | None:
        """A cached step when the plan allows it (logged either way for a cadence plan), else None."""
        reason = fallback_reason(trainer)
        if reason is None:
            step = cls(trainer, **kwargs)
            logger.info("cadence: cached durations (source: %s), the duration predictor alone at each step",
                        step.cache.source.name)
            return step
        if "duration_predictor" in trainer.resolved.trained_organs:
            logger.info("cadence: full path (%s): durations by MAS at every step", reason)
        return None

    @property
    def source_name(self) -> str:
        """The duration source's name."""
        return self.cache.source.name

    def _source_label(self) -> str:
        """The source's name, with its choice for a source that chooses (``"auto -> forced"``)."""
        choice = getattr(self.cache.source, "choice", None)
        return f"{self.source_name} -> {choice}" if choice else self.source_name

    def prepare(self, data: Iterable[Batch] | None) -> None:
        """Let an ``"auto"`` source choose on ``data``, then compute (or load) the inputs of every
        utterance of ``data`` once, and log it."""
        source = self.cache.source
        if data is not None and not getattr(source, "decided", True):
            sample = sample_batches(data, getattr(source, "max_utterances", 12))
            if sample is not None:
                device = self.trainer.device
                self.cache.decide(batch.to(device) for batch in sample)
        batches = utterance_batches(data) if data is not None else None
        if batches is None:
            logger.info("cadence: cached durations (source: %s); train_data is read once, so each "
                        "utterance's inputs are computed at its first step", self.source_name)
            return
        start, before = time.perf_counter(), dict(self.cache.stats)
        for batch in batches:
            self.cache.ensure(batch.to(self.trainer.device))
        stats = {k: v - before[k] for k, v in self.cache.stats.items()}
        minutes = stats["audio_seconds"] / 60
        self.prepared = {
            "utterances": len(self.cache.items), "seconds": time.perf_counter() - start,
            "computed": int(stats["computed"]), "loaded": int(stats["loaded"]), "corrupt": int(stats["corrupt"]),
            "compute_seconds": stats["compute_seconds"], "audio_minutes": minutes,
        }
        per_minute = f", {stats['compute_seconds'] / minutes:.2f} s per minute of audio" if minutes else ""
        logger.info(
            "cadence: cached durations (source: %s), %d utterances precomputed in %.1f s (%d computed%s, "
            "%d loaded from %s)", self._source_label(), len(self.cache.items), self.prepared["seconds"],
            stats["computed"], per_minute, stats["loaded"], self.cache.root,
        )

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the reference duration predictor whose durations share each
        aligned word's time among its tokens (only for a source that reads it, or may)."""
        if not self.cache.uses_reference and getattr(self.cache.source, "decided", True):
            return {}
        return {"reference_duration_predictor": self.cache.reference_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (before :meth:`prepare`, as ``fit(resume=...)`` does)."""
        if state.get("reference_duration_predictor"):
            self.cache.load_reference_state(state["reference_duration_predictor"])

    def losses(self, batch: Batch, noise: TrainNoise | None = None) -> dict[str, torch.Tensor]:
        """``{"gen/dur": loss}`` from the duration predictor alone (fp32, as in the full step).

        Args:
            batch: on the trainer's device.
            noise: ``noise.duration`` [B, 2, T_x] is the SDP's posterior noise; drawn from the
                trainer's generator when None.
        """
        inputs = self.cache.inputs(batch)
        model = self.trainer.model
        with torch.autocast(self.trainer.device.type, enabled=False):
            nll = model.duration_nll_of(
                inputs.hidden, inputs.x_mask, inputs.durations, inputs.g,
                noise.duration if noise is not None else None, self.trainer.rng,
            )  # [B]
            return {"gen/dur": duration_loss(nll, inputs.x_mask)}

    def describe(self) -> dict[str, Any]:
        """For the run log: path, duration source, its settings, the precompute figures."""
        source = self.cache.source
        decided = getattr(source, "decided", True)  # False: auto before its decision
        out = {
            "path": "cached", "source": self.source_name, "source_settings": source.settings() if decided else None,
            "cache_dir": str(self.cache.root), **self.prepared,
        }
        stats = getattr(source, "stats", None)
        if callable(stats):  # e.g. the forced source's aligned / fallen-back counts
            out["source_stats"] = stats()
        decision = getattr(source, "describe", None)
        if callable(decision):  # the auto source's choice and the gap it measured
            out["decision"] = decision()
        return out


def describe_cadence(trainer: Any) -> dict[str, Any] | None:
    """The cadence step's path for the run log (None when the duration predictor does not train)."""
    step = getattr(trainer, "cadence", None)
    if step is not None:
        return step.describe()
    reason = fallback_reason(trainer)
    if "duration_predictor" not in trainer.resolved.trained_organs:
        return None
    return {"path": "full", "source": "mas", "reason": reason or "the cached step was switched off"}

"""Surgery plans: which organs train, at which learning-rate scale, with which losses.

A :class:`SurgeryPlan` is a plain, JSON-serialisable description. It is resolved against a
model's :class:`~vits_surgery.surgery.registry.ComponentRegistry` into a
:class:`ResolvedPlan` (parameter groups, discriminator on/off, effective loss weights);
:func:`vits_surgery.surgery.freeze.apply_plan` then freezes the model accordingly.

Presets::

    SurgeryPlan.cadence()   # duration_predictor: the donor's rhythm and pace
    SurgeryPlan.timbre()    # decoder + flow + posterior_encoder: the donor's voice quality
    SurgeryPlan.accent()    # text_encoder: the donor's pronunciation
    SurgeryPlan.full()      # every generator organ (+ discriminator)

A plan chosen from the donor's data (Auto-RGN) comes from :func:`vits_surgery.auto_plan`.

LoRA: ``SurgeryPlan(lora={"duration_predictor": LoRASpec(rank=4)})`` trains only low-rank
adapters on the duration predictor's layers; resolving the plan injects the adapters it names
(see :mod:`vits_surgery.surgery.lora`) and puts only their factors in the parameter groups.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn

from .._names import did_you_mean
from ..loss_terms import LossTerm, loss_terms_from_any, merge_loss_terms, registered_loss_terms
from ..losses import DEFAULT_WEIGHTS
from .lora import LoRASpec, inject_lora, lora_parameters
from .registry import ComponentRegistry, UnknownComponentError

__all__ = ["SurgeryPlan", "ResolvedPlan", "LoRASpec", "effective_weights"]

logger = logging.getLogger(__name__)

_ADVERSARIAL = ("gen/adv", "gen/fm")


def effective_weights(
    *overrides: Mapping[str, float] | None, terms: Iterable[LossTerm] = (), allow: Iterable[str] = ()
) -> dict[str, float]:
    """``DEFAULT_WEIGHTS`` and the weights of ``terms``, updated by each mapping in turn
    (later ones win).

    A key may name a built-in term or one of ``terms``. A registered term that is not in
    ``terms`` may be given weight 0 (it is not computed either way); names in ``allow`` are
    accepted and left out of the result (a plan's weights for terms the trainer config adds).

    Raises:
        KeyError: a key is not a loss term (the message suggests the closest one).
        ValueError: a weight is negative, or a registered term that is not added has a weight.
    """
    weights = dict(DEFAULT_WEIGHTS)
    weights.update({t.name: t.weight for t in terms})
    allowed = set(allow)
    for mapping in overrides:
        for key, value in (mapping or {}).items():
            if float(value) < 0:
                raise ValueError(f"loss weight {key!r} must be >= 0, got {value}")
            if key not in weights:
                if key in allowed:
                    continue
                if key in registered_loss_terms():
                    if float(value) == 0:
                        continue
                    raise ValueError(
                        f"loss weight {key!r}: the term is not added to this plan or trainer; pass it in "
                        f"loss_terms=[{registered_loss_terms()[key].__name__}(...)]"
                    )
                known = list(weights) + list(registered_loss_terms())
                hint = did_you_mean(key, known)
                raise UnknownComponentError(f"unknown loss term {key!r}{hint} (known: {', '.join(known)})")
            weights[key] = float(value)
    return weights


@dataclass
class ResolvedPlan:
    """A plan resolved on one model.

    Attributes:
        groups: parameter-group name -> ``(full name, parameter)`` pairs; each trainable
            parameter is in exactly one group (the most specific plan entry that contains it).
            The ``"discriminator"`` group is present when the discriminator trains.
        lr_scale: group name -> learning-rate multiplier.
        train_discriminator: whether the discriminator trains (adversarially, own optimizer).
        trained_organs: generator organs holding at least one trainable parameter.
        trained_paths: canonical module paths that train (for train/eval modes).
        loss_weights: effective loss weights (defaults < trainer config < plan).
        loss_terms: the extra loss terms (:class:`~vits_surgery.loss_terms.LossTerm`) of the
            trainer config and the plan (the plan's win by name).
    """

    groups: dict[str, list[tuple[str, nn.Parameter]]]
    lr_scale: dict[str, float]
    train_discriminator: bool
    trained_organs: tuple[str, ...]
    trained_paths: tuple[str, ...]
    loss_weights: dict[str, float]
    loss_terms: tuple[LossTerm, ...] = ()

    def num_trainable(self) -> int:
        """Scalar parameters in all groups."""
        return sum(p.numel() for pairs in self.groups.values() for _, p in pairs)


@dataclass
class SurgeryPlan:
    """Which organs train, and how.

    Args:
        train: organ names, aliases (``dec``, ``waveform_decoder``), dotted sub-organ paths
            (``decoder.ups.3``), parameter paths or registered groups. A parameter in two
            entries goes to the most specific one (``["decoder", "decoder.ups.3"]`` gives
            ``decoder.ups.3`` its own group).
        lr_scale: entry name -> multiplier of the trainer's learning rate for that group
            (``"discriminator"`` scales the discriminator's optimizer).
        train_discriminator: True / False, or None = auto: on only when a trainable organ is
            reached by a weighted adversarial term (``gen/adv``, ``gen/fm``): the decoder, the
            posterior encoder or the speaker embedding. The flow feeds only the KL (the decoder
            decodes the posterior sample z, not the flow's output), so a flow-only plan runs
            no discriminator.
        loss_weights: overrides of the trainer's loss weights for this plan (0 = not computed);
            keys: built-in terms and the names of ``loss_terms``.
        loss_terms: extra generator terms (:class:`~vits_surgery.loss_terms.LossTerm`, e.g.
            ``MultiResolutionSTFTLoss(weight=2.0)``), added to the trainer config's (a term of
            the same name replaces the config's). Serialised by name and arguments.
        frozen_eval: keep frozen modules in ``eval()`` even after ``model.train()``.
        name: informational label (logged, saved with checkpoints).
        lora: entry (organ, alias, sub-organ path or group) -> :class:`LoRASpec` (a dict or a
            bare rank also works). Only the adapter factors of these entries train (one
            parameter group per entry, named by the entry); the base weights under them stay
            frozen. Resolving the plan injects missing adapters into the model.
    """

    train: Sequence[str] = ()
    lr_scale: dict[str, float] = field(default_factory=dict)
    train_discriminator: bool | None = None
    loss_weights: dict[str, float] = field(default_factory=dict)
    frozen_eval: bool = True
    name: str = "custom"
    lora: dict[str, LoRASpec] = field(default_factory=dict)
    loss_terms: Sequence[LossTerm] = ()

    def __post_init__(self) -> None:
        if isinstance(self.train, str):
            self.train = (self.train,)
        self.train = tuple(self.train)
        self.lora = {str(k): LoRASpec.from_any(v) for k, v in dict(self.lora).items()}
        if not self.train and not self.lora and not self.train_discriminator:
            raise ValueError("SurgeryPlan.train is empty: name at least one organ to train (or a lora entry)")
        for key, scale in self.lr_scale.items():
            if not float(scale) > 0:
                raise ValueError(f"lr_scale[{key!r}] must be > 0, got {scale}")
        self.loss_terms = loss_terms_from_any(self.loss_terms)
        # validates keys and signs; a registered term may be one the trainer config adds
        effective_weights(self.loss_weights, terms=self.loss_terms, allow=registered_loss_terms())

    # ------------------------------------------------------------------ presets
    @classmethod
    def cadence(cls, **kwargs: Any) -> SurgeryPlan:
        """Duration predictor only: rhythm and pace of the donor."""
        return cls(train=("duration_predictor",), name="cadence", **kwargs)

    @classmethod
    def timbre(cls, **kwargs: Any) -> SurgeryPlan:
        """Decoder + flow + posterior encoder: the donor's timbre and resonance."""
        return cls(train=("decoder", "flow", "posterior_encoder"), name="timbre", **kwargs)

    @classmethod
    def accent(cls, **kwargs: Any) -> SurgeryPlan:
        """Text encoder only: the donor's pronunciation."""
        return cls(train=("text_encoder",), name="accent", **kwargs)

    @classmethod
    def full(cls, **kwargs: Any) -> SurgeryPlan:
        """Every generator organ, one parameter group each (the discriminator: auto, so on)."""
        return cls(train=("generator",), name="full", **kwargs)

    @classmethod
    def auto(cls, model: nn.Module, donor_data: Any, **kwargs: Any) -> SurgeryPlan:
        """Deprecated: use :func:`vits_surgery.auto_plan` (removed in vits_surgery 0.3)."""
        from .._deprecated import warn_renamed

        warn_renamed("SurgeryPlan.auto()", "vits_surgery.auto_plan()")
        # the plan is plain data and imports no algorithm: the alias calls the public replacement
        return sys.modules["vits_surgery"].auto_plan(model, donor_data, plan_cls=cls, **kwargs)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``loss_terms`` only when there are any)."""
        out = {
            "train": list(self.train),
            "lr_scale": dict(self.lr_scale),
            "train_discriminator": self.train_discriminator,
            "loss_weights": dict(self.loss_weights),
            "frozen_eval": self.frozen_eval,
            "name": self.name,
            "lora": {k: v.to_dict() for k, v in self.lora.items()},
        }
        if self.loss_terms:
            out["loss_terms"] = [t.to_dict() for t in self.loss_terms]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SurgeryPlan:
        """Inverse of :meth:`to_dict`; unknown keys raise ``KeyError`` naming the key."""
        names = [f.name for f in fields(cls)]
        for key in data:
            if key not in names:
                hint = did_you_mean(key, names)
                raise UnknownComponentError(f"unknown SurgeryPlan field {key!r}{hint}")
        return cls(**dict(data))

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> SurgeryPlan:
        """Parse JSON text or a JSON file."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text(encoding="utf-8")
        return cls.from_dict(json.loads(text))

    # ------------------------------------------------------------------ resolution
    def resolve(
        self,
        registry: ComponentRegistry,
        loss_weights: Mapping[str, float] | None = None,
        loss_terms: Sequence[LossTerm] = (),
    ) -> ResolvedPlan:
        """Resolve names to parameter groups on ``registry.model``.

        Args:
            registry: the model's registry (aliases, groups).
            loss_weights: the trainer's weights; this plan's ``loss_weights`` override them.
            loss_terms: the trainer's extra terms; this plan's ``loss_terms`` replace those of
                the same name. Weights, lowest first: defaults, the trainer's terms, the
                trainer's ``loss_weights``, the plan's terms, the plan's ``loss_weights``.

        Raises:
            KeyError: an unknown name (with suggestions), or an ``lr_scale`` key that is not
                a plan entry.
            ValueError: the plan resolves to zero trainable parameters, or contradicts itself
                about the discriminator.
        """
        config_terms = loss_terms_from_any(loss_terms)
        terms = merge_loss_terms(config_terms, self.loss_terms)
        plan_term_weights = {t.name: t.weight for t in self.loss_terms}
        weights = effective_weights(loss_weights, plan_term_weights, self.loss_weights, terms=terms)
        entries = []
        for name in (registry.canonical(n) for n in self.train):
            # the built-in "generator" group expands to its organs: one parameter group each
            entries.extend(registry.groups["generator"] if name == "generator" else [name])
        entries = list(dict.fromkeys(entries))
        explicit_disc = "discriminator" in entries
        if explicit_disc and self.train_discriminator is False:
            raise ValueError("the plan trains 'discriminator' but sets train_discriminator=False")
        entries = [e for e in entries if e != "discriminator"]
        lora_groups = self._lora_groups(registry, entries)
        adapter_ids = {id(p) for _, p in lora_parameters(registry.model)}
        groups = _assign_groups(registry, entries, exclude=adapter_ids) if entries else {}
        groups.update(lora_groups)
        trained_paths = [p for e in groups for p in registry.resolve(e)]
        organs = tuple(o for o in registry.organs if any(registry.organ_of(p) == o for p in trained_paths))
        disc = self._discriminator_on(registry, organs, weights, explicit_disc)
        if disc:
            groups["discriminator"] = registry.named_parameters("discriminator")
            trained_paths.append("discriminator")
        scales = self._scales(registry, groups)
        resolved = ResolvedPlan(groups, scales, disc, organs, tuple(trained_paths), weights, terms)
        if resolved.num_trainable() == 0:
            raise ValueError(
                f"plan {self.name!r} (train={list(self.train)}) resolves to zero trainable parameters"
            )
        return resolved

    def _lora_groups(
        self, registry: ComponentRegistry, entries: list[str]
    ) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Inject the plan's adapters; entry -> the adapter factors under it."""
        if not self.lora:
            return {}
        specs = {registry.canonical(k): v for k, v in self.lora.items()}
        clash = sorted(set(specs) & set(entries))
        if clash:
            raise ValueError(
                f"{', '.join(repr(c) for c in clash)} is both in train and lora: train its weights or "
                "adapt it with LoRA, not both"
            )
        inject_lora(registry.model, specs, registry=registry)
        adapters = lora_parameters(registry.model)
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
        for entry in specs:
            paths = registry.resolve(entry)
            groups[entry] = [
                (n, p) for n, p in adapters if any(n.startswith(path + ".") for path in paths)
            ]
        return groups

    def _discriminator_on(
        self,
        registry: ComponentRegistry,
        organs: tuple[str, ...],
        weights: Mapping[str, float],
        explicit: bool,
    ) -> bool:
        has_disc = "discriminator" in registry.organs
        wanted = explicit or self.train_discriminator is True
        if wanted and not has_disc:
            raise ValueError("the plan trains the discriminator but the model was built without one")
        if wanted or self.train_discriminator is False:
            return wanted
        needed = any(
            weights[t] != 0 for o in organs for t in registry.losses(o) if t in _ADVERSARIAL
        )
        if needed and not has_disc:
            logger.warning(
                "plan %r trains %s, which adversarial losses reach, but the model has no "
                "discriminator: gen/adv and gen/fm will not be computed",
                self.name,
                ", ".join(organs),
            )
        return needed and has_disc

    def _scales(self, registry: ComponentRegistry, groups: Mapping[str, Any]) -> dict[str, float]:
        scales = {name: 1.0 for name in groups}
        for key, value in self.lr_scale.items():
            name = registry.canonical(key)
            if name not in scales:
                hint = did_you_mean(name, scales)
                raise UnknownComponentError(
                    f"lr_scale key {key!r} is not a trained entry of the plan{hint} "
                    f"(entries: {', '.join(scales)})"
                )
            scales[name] = float(value)
        return scales


def _assign_groups(
    registry: ComponentRegistry, entries: list[str], exclude: set[int] | None = None
) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Each parameter to the most specific entry (deepest resolved path) that contains it.

    Parameters whose ``id`` is in ``exclude`` (LoRA factors) belong to no ``train`` entry.
    """
    exclude = exclude or set()
    owner: dict[int, tuple[str, int]] = {}
    named: dict[int, tuple[str, nn.Parameter]] = {}
    for entry in entries:
        found = False
        for path in registry.resolve(entry):
            if registry.organ_of(path) == "discriminator":
                raise ValueError(
                    f"{entry!r}: train the discriminator as a whole ('discriminator' or "
                    "train_discriminator=True), not by sub-path or inside a group"
                )
            depth = path.count(".") + 1
            for full, param in registry.named_parameters(path):
                if id(param) in exclude:
                    continue
                found = True
                named[id(param)] = (full, param)
                if id(param) not in owner or depth > owner[id(param)][1]:
                    owner[id(param)] = (entry, depth)
        if not found:
            raise ValueError(f"plan entry {entry!r} has no parameters")
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {e: [] for e in entries}
    for pid, (entry, _) in owner.items():
        groups[entry].append(named[pid])
    return {e: pairs for e, pairs in groups.items() if pairs}


def __getattr__(name: str) -> Any:
    if name == "StepPlan":  # deprecated location
        from .._deprecated import warn_renamed

        warn_renamed("vits_surgery.surgery.plan.StepPlan", "vits_surgery.surgery.step.StepPlan")
        return importlib.import_module("vits_surgery.surgery.step").StepPlan
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

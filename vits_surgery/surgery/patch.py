"""Transplant patches: what a transplant changed, as a small file tied to its base voice.

A :class:`Patch` holds either the adapter factors of a LoRA transplant, or the tensors of the
trained organs that differ from the base voice (or both), plus metadata: the base voice's
fingerprint (:func:`voice_fingerprint`), the organs it touches, the adapters' ranks and a
training summary. It is saved as one ``.safetensors`` file (tensors ``weights/<key>`` and
``lora/<layer>.lora_a|lora_b``; metadata as JSON strings).

:func:`apply_patch` applies patches to the voice they were made from, and only to it: the
fingerprint of the model must equal the patch's. A strength ``alpha`` in [0, 1] dials the
transplant: 0 gives the recipient, 1 the full transplant; in between, LoRA updates are scaled
by ``alpha`` and changed tensors are interpolated ``base + alpha * (patched - base)``
(``torch.lerp``, exact at both ends). Patches touching disjoint organs compose (a cadence patch
and a timbre patch); overlapping organs are refused unless ``allow_overlap=True``, in which case
weight changes add up (``base + sum_i alpha_i * (patched_i - base)``).

The model remembers what was applied (and the base values it replaced), so further patches
still verify against the base voice and :func:`remove_patches` restores it exactly.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .lora import (
    LoRASpec,
    NonFiniteAdapterError,
    add_adapter,
    is_lora_key,
    lora_layers,
    lora_state,
    remove_lora,
    set_lora_strength,
)
from .registry import ComponentRegistry

__all__ = [
    "PATCH_FORMAT",
    "Patch",
    "PatchMismatchError",
    "voice_fingerprint",
    "make_patch",
    "apply_patch",
    "remove_patches",
    "applied_patches",
]

logger = logging.getLogger(__name__)

PATCH_FORMAT = "vits_surgery.patch"
PATCH_VERSION = 1
_RECORD_ATTR = "_vits_surgery_patch_record"
_ORGAN_ORDER = ("text_encoder", "duration_predictor", "posterior_encoder", "flow", "decoder", "speaker_embedding")


class PatchMismatchError(ValueError):
    """A patch does not belong to this voice, or patches collide."""


def _voice_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys that define a voice: every generator tensor (no discriminator, no adapter)."""
    return sorted(k for k in state if not k.startswith("discriminator.") and not is_lora_key(k))


def voice_fingerprint(model: nn.Module | Mapping[str, torch.Tensor], replace: Mapping[str, torch.Tensor] | None = None) -> str:
    """SHA-256 of a voice: its generator tensors in sorted key order (name, dtype, shape, bytes).

    The discriminator and LoRA factors are left out, so a voice loaded with or without its
    discriminator has one fingerprint.

    Args:
        model: a model or a state dict.
        replace: key -> tensor used instead of the model's (the base values a patch replaced).

    Returns:
        64 hex digits.
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    replace = replace or {}
    digest = hashlib.sha256()
    for key in _voice_keys(state):
        t = replace.get(key, state[key]).detach().to("cpu").contiguous()
        digest.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _organ(key: str) -> str:
    return key.partition(".")[0]


def _sorted_organs(organs: Iterable[str]) -> tuple[str, ...]:
    found = set(organs)
    return tuple(o for o in _ORGAN_ORDER if o in found) + tuple(sorted(found - set(_ORGAN_ORDER)))


@dataclass
class Patch:
    """What a transplant changed.

    Attributes:
        base_fingerprint: :func:`voice_fingerprint` of the voice it applies to.
        weights: state-dict key -> trained tensor (only tensors that differ from the base).
        lora: ``<layer>.lora_a`` / ``<layer>.lora_b`` -> adapter factor.
        layers: adapted layer path -> ``{"kind", "rank", "alpha", "dropout"}``.
        organs: organs touched, in data-flow order.
        summary: free-form training summary (plan, steps, learning rate, ...).
    """

    base_fingerprint: str
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    lora: dict[str, torch.Tensor] = field(default_factory=dict)
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    organs: tuple[str, ...] = ()
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """"lora", "weights" or "mixed"."""
        if self.lora and self.weights:
            return "mixed"
        return "lora" if self.lora else "weights"

    @property
    def rank(self) -> int | None:
        """Largest adapter rank, or None for a weights-only patch."""
        return max((int(v["rank"]) for v in self.layers.values()), default=None)

    def num_parameters(self) -> int:
        """Scalars stored."""
        return sum(t.numel() for t in (*self.weights.values(), *self.lora.values()))

    def __repr__(self) -> str:
        return (
            f"Patch(kind={self.kind!r}, organs={list(self.organs)}, tensors={len(self.weights) + len(self.lora)}, "
            f"parameters={self.num_parameters():,}, base={self.base_fingerprint[:12]})"
        )

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write one ``.safetensors`` file atomically; returns its path."""
        from safetensors.torch import save as st_save

        from .._files import atomic_write

        tensors = {f"weights/{k}": v for k, v in self.weights.items()}
        tensors.update({f"lora/{k}": v for k, v in self.lora.items()})
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        meta = {
            "format": PATCH_FORMAT,
            "version": str(PATCH_VERSION),
            "base_fingerprint": self.base_fingerprint,
            "organs": json.dumps(list(self.organs)),
            "layers": json.dumps(self.layers),
            "rank": "" if self.rank is None else str(self.rank),
            "kind": self.kind,
            "summary": json.dumps(self.summary, default=str),
        }
        blob = st_save(tensors, metadata=meta)
        return atomic_write(Path(path), lambda f: f.write(blob))

    @classmethod
    def load(cls, path: str | Path) -> Patch:
        """Read a file written by :meth:`save`.

        Raises:
            ValueError: the file is not a vits_surgery patch, or of a newer version.
        """
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        if meta.get("format") != PATCH_FORMAT:
            raise ValueError(f"{path} is not a vits_surgery patch (metadata format={meta.get('format')!r})")
        if int(meta.get("version", "1")) > PATCH_VERSION:
            raise ValueError(f"{path} is a patch of version {meta['version']}; this vits_surgery reads up to {PATCH_VERSION}")
        return cls(
            base_fingerprint=meta["base_fingerprint"],
            weights={k.partition("/")[2]: v for k, v in tensors.items() if k.startswith("weights/")},
            lora={k.partition("/")[2]: v for k, v in tensors.items() if k.startswith("lora/")},
            layers=json.loads(meta.get("layers", "{}")),
            organs=tuple(json.loads(meta.get("organs", "[]"))),
            summary=json.loads(meta.get("summary", "{}")),
        )


# ----------------------------------------------------------------------------- making
def _trainer_summary(trainer: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"steps": int(getattr(trainer, "step", 0))}
    plan = getattr(trainer, "plan", None)
    if plan is not None:
        out["plan"] = plan.to_dict()
    config = getattr(trainer, "config", None)
    if config is not None and hasattr(config, "lr"):
        out["lr"] = float(config.lr)
    out["skipped_steps"] = int(getattr(trainer, "skipped_steps", 0))
    return out


def _selector(model: nn.Module, organs: Sequence[str] | str | None):
    if organs is None:
        return lambda key: True
    registry = ComponentRegistry(model)
    names = [organs] if isinstance(organs, str) else list(organs)
    paths = [p for name in names for p in registry.resolve(name)]
    return lambda key: any(key == p or key.startswith(p + ".") for p in paths)


def _changed_weights(base: nn.Module, trained: nn.Module, selected) -> dict[str, torch.Tensor]:
    base_sd, trained_sd = base.state_dict(), trained.state_dict()
    base_keys, trained_keys = set(_voice_keys(base_sd)), set(_voice_keys(trained_sd))
    problems = [f"missing in the trained model: {k}" for k in sorted(base_keys - trained_keys)]
    problems += [f"not in the base model: {k}" for k in sorted(trained_keys - base_keys)]
    problems += [
        f"{k}: shape {tuple(base_sd[k].shape)} in the base, {tuple(trained_sd[k].shape)} trained"
        for k in sorted(base_keys & trained_keys)
        if base_sd[k].shape != trained_sd[k].shape
    ]
    if problems:
        raise PatchMismatchError("the trained model is not the base voice's architecture:\n  " + "\n  ".join(problems[:20]))
    changed = {k: trained_sd[k].detach().clone() for k in sorted(base_keys) if not torch.equal(base_sd[k], trained_sd[k])}
    left_out = sorted({_organ(k) for k in changed if not selected(k)})
    if left_out:
        logger.info("make_patch: changes in %s are not part of the patch (organs=...)", ", ".join(left_out))
    return {k: v for k, v in changed.items() if selected(k)}


def make_patch(
    base_model: nn.Module,
    trained: Any,
    organs: Sequence[str] | str | None = None,
    summary: Mapping[str, Any] | None = None,
) -> Patch:
    """Capture what a transplant changed relative to its base voice.

    Args:
        base_model: the recipient voice as it was before training (no adapters).
        trained: the trained model, or a :class:`~vits_surgery.surgery.trainer.SurgicalTrainer`
            (its model; plan, steps and learning rate go into the summary).
        organs: restrict the patch to these organs / sub-organ paths / groups; None = every
            organ that changed. The discriminator is never part of a patch.
        summary: extra summary entries (merged over the trainer's).

    Returns:
        A :class:`Patch` with the unmerged adapters and the tensors that differ from the base.

    Raises:
        PatchMismatchError: the models differ in architecture.
        ValueError: the base has adapters, an adapter is merged, or nothing changed.
    """
    model = getattr(trained, "model", trained)
    info = _trainer_summary(trained) if model is not trained else {}
    info.update(summary or {})
    if lora_layers(base_model):
        raise ValueError("the base model carries LoRA adapters: pass the voice as it was before the transplant")
    layers = lora_layers(model)
    merged = [n for n, m in layers.items() if lora_state(m).merged]
    if merged:
        raise ValueError(
            f"adapters of {', '.join(merged[:3])}{' ...' if len(merged) > 3 else ''} are merged: call "
            "unmerge_lora() first, or remove_lora() to patch the merged weights"
        )
    selected = _selector(model, organs)
    weights = _changed_weights(base_model, model, selected)
    lora: dict[str, torch.Tensor] = {}
    meta: dict[str, dict[str, Any]] = {}
    for name, module in layers.items():
        if selected(name):
            state = lora_state(module)
            meta[name] = {"kind": state.kind, "rank": state.rank, "alpha": state.alpha, "dropout": state.dropout}
            lora[f"{name}.lora_a"] = module.lora_a.detach().clone()
            lora[f"{name}.lora_b"] = module.lora_b.detach().clone()
    if not weights and not lora:
        raise ValueError(f"the trained model does not differ from the base voice (organs={organs}): nothing to patch")
    touched = _sorted_organs([_organ(k) for k in weights] + [_organ(n) for n in meta])
    return Patch(voice_fingerprint(base_model), weights, lora, meta, touched, info)


# ----------------------------------------------------------------------------- applying
@dataclass
class _Record:
    """What was applied to a model: the base values replaced and the adapters added."""

    fingerprint: str
    originals: dict[str, torch.Tensor] = field(default_factory=dict)
    adapters: list[str] = field(default_factory=list)
    organs: list[tuple[str, ...]] = field(default_factory=list)
    summaries: list[dict[str, Any]] = field(default_factory=list)


def applied_patches(model: nn.Module) -> list[dict[str, Any]]:
    """One dict per patch applied to ``model`` (organs, alpha, summary)."""
    record: _Record | None = getattr(model, _RECORD_ATTR, None)
    return [dict(s) for s in record.summaries] if record else []


def _check_alphas(patches: list[Patch], alpha: float | Sequence[float]) -> list[float]:
    alphas = [float(alpha)] * len(patches) if isinstance(alpha, (int, float)) else [float(a) for a in alpha]
    if len(alphas) != len(patches):
        raise ValueError(f"got {len(alphas)} alpha values for {len(patches)} patches")
    for a in alphas:
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"patch strength alpha must be in [0, 1], got {a}")
    return alphas


def _check_fit(model: nn.Module, patches: list[Patch], record: _Record | None, allow_overlap: bool) -> str:
    """Fingerprint, collisions and shapes; returns the base fingerprint."""
    fingerprint = voice_fingerprint(model, record.originals if record else None)
    for i, patch in enumerate(patches):
        if patch.base_fingerprint != fingerprint:
            raise PatchMismatchError(
                f"patch {i} ({', '.join(patch.organs)}) was made for voice {patch.base_fingerprint}, but this "
                f"model is voice {fingerprint}: a patch applies only to the voice it was trained from"
            )
    layers_taken = set(lora_layers(model))
    foreign = sorted(layers_taken - set(record.adapters if record else ()))
    if foreign:
        raise PatchMismatchError(
            f"the model carries LoRA adapters no patch added ({', '.join(foreign[:3])}"
            f"{' ...' if len(foreign) > 3 else ''}): remove_lora() or merge them before applying patches"
        )
    seen = [(f"applied patch {j}", set(o)) for j, o in enumerate(record.organs if record else [])]
    for i, patch in enumerate(patches):
        for who, organs in seen:
            common = organs & set(patch.organs)
            if common and not allow_overlap:
                raise PatchMismatchError(
                    f"patch {i} and {who} both change {', '.join(sorted(common))}; pass allow_overlap=True "
                    "to add their changes"
                )
        clash = sorted(layers_taken & set(patch.layers))
        if clash:
            raise PatchMismatchError(f"patch {i} adapts {', '.join(clash[:3])}, which already carry an adapter")
        layers_taken |= set(patch.layers)
        seen.append((f"patch {i}", set(patch.organs)))
    return fingerprint


def _check_finite(patches: list[Patch]) -> None:
    """Refuse patches with NaN/inf tensors before any of them touches the model."""
    for i, p in enumerate(patches):
        bad = [k for k, v in {**p.weights, **p.lora}.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise NonFiniteAdapterError(
                f"patch {i} holds NaN/inf in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}: nothing was applied"
            )


@torch.no_grad()
def _apply_weights(model: nn.Module, patch: Patch, alpha: float, record: _Record) -> None:
    state = model.state_dict()
    for key, value in patch.weights.items():
        current = state[key]
        base = record.originals.setdefault(key, current.detach().clone())
        target = torch.lerp(base, value.to(base.device, base.dtype), alpha) if base.is_floating_point() else value
        if torch.equal(current, base):
            current.copy_(target)
        else:  # another patch already moved this tensor: add this patch's change
            current.add_(target - base)


def _apply_lora(model: nn.Module, patch: Patch, alpha: float, record: _Record) -> None:
    for name, info in patch.layers.items():
        module = model.get_submodule(name)
        spec = LoRASpec(rank=int(info["rank"]), alpha=float(info["alpha"]), dropout=float(info.get("dropout", 0.0)))
        add_adapter(module, spec, name)
        with torch.no_grad():
            for factor in ("lora_a", "lora_b"):
                param = getattr(module, factor)
                param.copy_(patch.lora[f"{name}.{factor}"].to(param.device, param.dtype))
        record.adapters.append(name)
    if patch.layers:
        set_lora_strength(model, alpha, list(patch.layers))


def apply_patch(
    model: nn.Module,
    patch: Patch | str | Path | Sequence[Patch | str | Path],
    alpha: float | Sequence[float] = 1.0,
    allow_overlap: bool = False,
) -> nn.Module:
    """Apply one or more patches to the voice they were made from (in place).

    Args:
        model: the base voice (possibly already carrying patches made from the same voice).
        patch: a :class:`Patch`, a path to a patch file, or a list of them.
        alpha: strength in [0, 1] (one value, or one per patch): 0 = recipient, 1 = transplant.
        allow_overlap: let patches change the same organs (their weight changes add up;
            two adapters on one layer are still refused).

    Returns:
        ``model``.

    Raises:
        PatchMismatchError: a patch was made from another voice (both fingerprints are named),
            or patches collide.
        NonFiniteAdapterError: a patch holds NaN or inf (nothing is applied).
        ValueError: alpha outside [0, 1].
    """
    items = [patch] if isinstance(patch, (Patch, str, Path)) else list(patch)
    patches = [p if isinstance(p, Patch) else Patch.load(p) for p in items]
    alphas = _check_alphas(patches, alpha)
    record: _Record | None = getattr(model, _RECORD_ATTR, None)
    fingerprint = _check_fit(model, patches, record, allow_overlap)
    _check_finite(patches)
    record = record or _Record(fingerprint)
    for p, a in zip(patches, alphas, strict=True):
        _apply_weights(model, p, a, record)
        _apply_lora(model, p, a, record)
        record.organs.append(tuple(p.organs))
        record.summaries.append({"organs": list(p.organs), "alpha": a, "kind": p.kind, "summary": p.summary})
        logger.info("applied %r at alpha %.3g", p, a)
    object.__setattr__(model, _RECORD_ATTR, record)
    return model


@torch.no_grad()
def remove_patches(model: nn.Module) -> nn.Module:
    """Undo every :func:`apply_patch` on ``model``: base tensors restored exactly, adapters removed."""
    record: _Record | None = getattr(model, _RECORD_ATTR, None)
    if record is None:
        return model
    state = model.state_dict()
    for key, value in record.originals.items():
        state[key].copy_(value)
    present = lora_layers(model)
    remove_lora(model, merge=False, layers=[n for n in record.adapters if n in present])
    object.__delattr__(model, _RECORD_ATTR)
    return model

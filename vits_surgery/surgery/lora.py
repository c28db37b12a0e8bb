"""Plan-aware LoRA injection: which layers an entry of a surgery plan adapts.

The adapter mechanism itself (add, merge, unmerge, remove, strength) lives in
:mod:`vits_surgery.models.lora`; its names are re-exported here.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .._names import did_you_mean
from ..models.lora import (
    SUPPORTED_LAYERS,
    LoRASpec,
    LoRAState,
    NonFiniteAdapterError,
    adapter_refusal,
    add_adapter,
    is_lora_key,
    lora_layers,
    lora_parameters,
    lora_state,
    lora_state_dict,
    merge_lora,
    remove_lora,
    set_lora_strength,
    unmerge_lora,
)
from .registry import ComponentRegistry

__all__ = [
    "LoRASpec",
    "LoRAState",
    "NonFiniteAdapterError",
    "SUPPORTED_LAYERS",
    "inject_lora",
    "add_adapter",
    "merge_lora",
    "unmerge_lora",
    "remove_lora",
    "lora_layers",
    "lora_parameters",
    "lora_state_dict",
    "set_lora_strength",
    "is_lora_key",
    "lora_state",
]

logger = logging.getLogger(__name__)


def _specs_of(plan_or_specs: Any) -> dict[str, LoRASpec]:
    specs = getattr(plan_or_specs, "lora", plan_or_specs)
    if not isinstance(specs, Mapping):
        raise TypeError(f"inject_lora needs a SurgeryPlan or a mapping entry -> LoRASpec, got {type(specs).__name__}")
    return {str(k): LoRASpec.from_any(v) for k, v in specs.items()}


def _select(model: nn.Module, path: str, spec: LoRASpec) -> list[str]:
    """Full paths of the layers of entry ``path`` that ``spec`` adapts."""
    root = model.get_submodule(path)
    inside = [(rel, m) for rel, m in root.named_modules() if isinstance(m, SUPPORTED_LAYERS)]
    if spec.targets is None:
        chosen = [(rel, m, rel == "") for rel, m in inside]
    else:
        names = [rel for rel, _ in root.named_modules() if rel]
        chosen = []
        for pattern in spec.targets:
            hits = [rel for rel in names if fnmatch.fnmatchcase(rel, pattern)]
            if not hits:
                hint = did_you_mean(pattern, names, n=3, cutoff=0.5)
                raise ValueError(f"LoRA target {pattern!r} matches no module of {path!r}{hint}")
            for rel, m in inside:
                if any(rel == h or rel.startswith(h + ".") for h in hits):
                    chosen.append((rel, m, rel in hits))
    out: list[str] = []
    for rel, m, direct in chosen:
        full = f"{path}.{rel}" if rel else path
        why = adapter_refusal(m)
        if why is not None and direct:
            raise ValueError(f"cannot add a LoRA adapter to {full!r}: {why}")
        if why is not None:
            logger.info("LoRA: skipping %s (%s)", full, why.split(";")[0])
        elif full not in out:
            out.append(full)
    if not out:
        raise ValueError(f"LoRA entry {path!r} (targets={spec.targets}) selects no layer that can take an adapter")
    return out


def inject_lora(
    model: nn.Module,
    plan_or_specs: Any,
    registry: ComponentRegistry | None = None,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Add adapters to the layers a plan's ``lora`` entries select.

    Layers that already carry an adapter of the same rank and alpha are kept as they are (so
    calling this twice, or resolving a plan after injecting, changes nothing).

    Args:
        model: the model (usually :class:`~vits_surgery.models.vits.VITS`).
        plan_or_specs: a :class:`~vits_surgery.surgery.plan.SurgeryPlan` (its ``lora`` field) or a
            mapping entry -> :class:`LoRASpec` (or dict, or rank). Entries are organs, aliases,
            sub-organ paths or groups, resolved by the registry.
        registry: the model's registry (needed for user groups); built if None.
        generator: RNG of the ``lora_a`` initialisation.

    Returns:
        Paths of the adapted layers of every entry, in model order.

    Raises:
        ValueError: a grouped conv selected directly, a target that matches nothing, a
            discriminator entry, or a layer already adapted with another rank/alpha.
    """
    registry = registry or ComponentRegistry(model)
    adapted: list[str] = []
    for entry, spec in _specs_of(plan_or_specs).items():
        for path in registry.resolve(entry):
            if registry.organ_of(path) == "discriminator":
                raise ValueError(f"LoRA entry {entry!r}: adapters on the discriminator are not supported")
            try:
                model.get_submodule(path)
            except AttributeError:
                raise ValueError(f"LoRA entry {entry!r} names a parameter ({path!r}); name a module") from None
            for full in _select(model, path, spec):
                module = model.get_submodule(full)
                state = lora_state(module)
                if state is None:
                    add_adapter(module, spec, full, generator)
                elif (state.rank, state.alpha) != (spec.rank, float(spec.alpha)):
                    raise ValueError(
                        f"{full!r} already has a LoRA adapter of rank {state.rank}, alpha {state.alpha}; "
                        f"entry {entry!r} asks for rank {spec.rank}, alpha {spec.alpha}"
                    )
                if full not in adapted:
                    adapted.append(full)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    adapted.sort(key=order.__getitem__)
    logger.info("LoRA: %d layers adapted", len(adapted))
    return adapted



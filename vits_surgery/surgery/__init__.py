"""Surgical fine-tuning: name organs, plan what trains, freeze the rest, train.

Heavy modules load lazily, so importing this package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ComponentRegistry": "registry",
    "ALIASES": "registry",
    "data_flow": "registry",
    "reachable_losses": "registry",
    "SurgeryPlan": "plan",
    "ResolvedPlan": "plan",
    "apply_plan": "freeze",
    "release_plan": "freeze",
    "SurgicalTrainer": "trainer",
    "TrainConfig": "train_config",
    "StepPlan": "plan",
    "NonFiniteLossError": "trainer",
    "Callback": "callbacks",
    "CallbackList": "callbacks",
    "ProgressBar": "progress",
    "BatchStream": "runtime",
    "relative_gradient_norms": "auto",
    "plan_from_rgn": "auto",
    "RGNReport": "auto",
    "RejectionMonitor": "monitor",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vits_surgery.surgery' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

"""Surgical fine-tuning: name organs, plan what trains, freeze the rest, train.

Heavy modules load lazily, so importing this package stays cheap.
"""

from __future__ import annotations

from .._lazy import lazy_attributes

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
    "StepPlan": "step",
    "LossPath": "step",
    "preserved": "freeze",
    "NonFiniteLossError": "trainer",
    "Callback": "callbacks",
    "CallbackList": "callbacks",
    "ProgressBar": "callbacks",
    "RunLogger": "callbacks",
    "BatchStream": "runtime",
    "relative_gradient_norms": "auto",
    "plan_from_rgn": "auto",
    "auto_plan": "autoplan",
    "RGNReport": "auto",
    "RejectionMonitor": "monitor",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)

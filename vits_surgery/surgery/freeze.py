"""Freezing: the one place in the library that sets ``requires_grad``.

:func:`apply_plan` freezes every parameter of the model, then enables exactly the parameters
a :class:`~vits_surgery.surgery.plan.SurgeryPlan` resolves to (structurally, through the
:class:`~vits_surgery.surgery.registry.ComponentRegistry`).

Frozen modules stay in ``eval()``: ``apply_plan`` replaces the model's ``train`` method by
one that first runs ``nn.Module.train`` and then puts every module outside the trained paths
back in ``eval()`` (``model.eval()`` goes through the same method). So ``model.train()``
enables dropout only inside the organs that learn; the text encoder's dropout, for example,
stays off in a cadence plan. A module that is an ancestor of a trained path (``decoder`` in a
``decoder.ups.3`` plan) follows ``model.train()``; its frozen children do not. Calling
``train()`` on a submodule directly bypasses this. :func:`release_plan` undoes it all.

:func:`preserved` is the one way the library borrows a model for a while (an evaluation, a
gradient probe, a regrowth): whatever happens inside to train/eval flags, ``requires_grad``
and the applied plan, the model leaves the block as it entered.
"""

from __future__ import annotations

import contextlib
import logging
import types
from collections.abc import Iterator, Mapping

from torch import nn

from .plan import ResolvedPlan, SurgeryPlan
from .registry import ComponentRegistry

__all__ = ["apply_plan", "apply_resolved", "release_plan", "frozen_module_paths", "preserved"]

logger = logging.getLogger(__name__)

_FROZEN_ATTR = "_vits_surgery_frozen_paths"
# model attributes that applying a plan installs
_PLAN_ATTRS = ("train", _FROZEN_ATTR)


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[nn.Module]:
    """Restore, on exit, every module's train/eval flag, every parameter's ``requires_grad`` and
    the applied plan (or its absence) as they were on entry.

    Parameters added inside (e.g. LoRA factors) keep their own flags; weights are not copied.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    attrs = {k: model.__dict__[k] for k in _PLAN_ATTRS if k in model.__dict__}
    try:
        yield model
    finally:
        for key in _PLAN_ATTRS:
            model.__dict__.pop(key, None)
        model.__dict__.update(attrs)
        for param, flag in flags:
            param.requires_grad_(flag)
        for module, mode in modes:
            module.training = mode


def apply_plan(
    model: nn.Module,
    plan: SurgeryPlan,
    registry: ComponentRegistry | None = None,
    loss_weights: Mapping[str, float] | None = None,
) -> dict[str, list[nn.Parameter]]:
    """Freeze ``model`` except the parameters of ``plan``.

    Args:
        model: the model (usually :class:`~vits_surgery.models.vits.VITS`).
        plan: what trains.
        registry: the model's registry (needed for user-registered groups); built if None.
        loss_weights: the trainer's loss weights (they decide the automatic discriminator).

    Returns:
        Parameter-group name (plan entry, ``"discriminator"``) -> trainable parameters.

    Raises:
        ValueError: the plan resolves to zero trainable parameters.
        KeyError: an unknown organ / path / group name (with suggestions).
    """
    registry = registry or ComponentRegistry(model)
    resolved = plan.resolve(registry, loss_weights)
    apply_resolved(model, resolved, frozen_eval=plan.frozen_eval)
    logger.info(
        "plan %r: %s trainable parameters in %s; discriminator %s",
        plan.name,
        f"{resolved.num_trainable():,}",
        ", ".join(resolved.groups),
        "trains" if resolved.train_discriminator else "frozen",
    )
    return {name: [p for _, p in pairs] for name, pairs in resolved.groups.items()}


def apply_resolved(model: nn.Module, resolved: ResolvedPlan, frozen_eval: bool = True) -> None:
    """Set ``requires_grad`` (and the train/eval behaviour) from a resolved plan."""
    if resolved.num_trainable() == 0:
        raise ValueError("the plan resolves to zero trainable parameters")
    for param in model.parameters():
        param.requires_grad_(False)
    for pairs in resolved.groups.values():
        for _, param in pairs:
            param.requires_grad_(True)
    if frozen_eval:
        paths = frozen_module_paths(model, _module_paths(model, resolved.trained_paths))
        object.__setattr__(model, _FROZEN_ATTR, paths)
        object.__setattr__(model, "train", types.MethodType(_train_keeping_frozen_eval, model))
    else:
        _uninstall(model)
    model.train(model.training)


def release_plan(model: nn.Module, requires_grad: bool = True) -> None:
    """Undo :func:`apply_plan`: restore ``model.train`` and set every ``requires_grad``."""
    _uninstall(model)
    for param in model.parameters():
        param.requires_grad_(requires_grad)
    model.train(model.training)


def frozen_module_paths(model: nn.Module, trained: tuple[str, ...] | list[str]) -> list[str]:
    """The largest subtrees that contain no trained module: the modules kept in ``eval()``.

    Args:
        model: the root module.
        trained: module paths that train (a path trains its whole subtree).

    Returns:
        Paths (relative to ``model``) of the frozen subtrees, outermost only.
    """
    trained_set = set(trained)

    def inside(path: str) -> bool:
        return any(path == t or path.startswith(t + ".") for t in trained_set)

    def above(path: str) -> bool:
        return any(t.startswith(path + ".") for t in trained_set)

    out: list[str] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if inside(path):
                continue
            if above(path):
                walk(child, path)
            else:
                out.append(path)

    if "" not in trained_set:
        walk(model, "")
    return out


def _module_paths(model: nn.Module, paths: tuple[str, ...]) -> list[str]:
    """Parameter paths become their owning module's path."""
    out = []
    for path in paths:
        try:
            model.get_submodule(path)
            out.append(path)
        except AttributeError:
            out.append(path.rpartition(".")[0])
    return out


def _train_keeping_frozen_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    """``nn.Module.train`` that leaves the plan's frozen modules in ``eval()``."""
    type(self).train(self, mode)
    if mode:
        for path in getattr(self, _FROZEN_ATTR, ()):
            self.get_submodule(path).eval()
    return self


def _uninstall(model: nn.Module) -> None:
    model.__dict__.pop("train", None)
    model.__dict__.pop(_FROZEN_ATTR, None)

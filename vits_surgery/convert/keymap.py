"""Declarative key maps and named tensor transforms shared by every converter.

A converter is a list of :class:`Rule` (regex on the source key -> format string for the
target key, with optional index arithmetic and a named transform) plus a weight-norm
normalisation pass. :func:`apply_rules` is strict: a source key no rule matches is an
error, never silently ignored. :func:`reconcile` then matches the renamed state dict with
the model's own keys and shapes, and lists every missing, unexpected or misshaped key.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .report import ConversionError, ConversionReport

__all__ = [
    "Rule",
    "apply_rules",
    "reconcile",
    "TRANSFORMS",
    "legacy_weight_norm_to_parametrized",
    "parametrized_to_legacy_weight_norm",
    "fold_weight_norm_pairs",
    "split_weight_norm",
]

WN_G = ".parametrizations.weight.original0"
WN_V = ".parametrizations.weight.original1"


@dataclass(frozen=True)
class Rule:
    """One renaming rule.

    Attributes:
        src: regex matched against the whole source key (named groups allowed).
        dst: format string using the groups, or None to drop the key.
        index: group name -> function mapping the integer group value (e.g. flow i -> i // 2).
        transform: name of a tensor transform in :data:`TRANSFORMS`, or "".
        reason: why the key is dropped (when ``dst`` is None).
    """

    src: str
    dst: str | None
    index: Mapping[str, Callable[[int], int]] = field(default_factory=dict)
    transform: str = ""
    reason: str = ""

    def match(self, key: str) -> dict[str, str] | None:
        m = re.fullmatch(self.src, key)
        return None if m is None else m.groupdict()

    def target(self, groups: dict[str, str]) -> str:
        assert self.dst is not None
        values: dict[str, object] = dict(groups)
        for name, fn in self.index.items():
            values[name] = fn(int(groups[name]))
        return self.dst.format(**values)


# ----------------------------------------------------------------------------- transforms
def _squeeze_last(t: torch.Tensor) -> torch.Tensor:
    """Conv1d kernel-1 weight [O, I, 1] -> Linear weight [O, I]."""
    if t.dim() != 3 or t.shape[-1] != 1:
        raise ConversionError(f"expected a kernel-1 conv weight [O, I, 1], got shape {tuple(t.shape)}")
    return t[..., 0]


def _unsqueeze_last(t: torch.Tensor) -> torch.Tensor:
    """Linear weight [O, I] -> Conv1d kernel-1 weight [O, I, 1]."""
    return t.unsqueeze(-1)


def _exp(t: torch.Tensor) -> torch.Tensor:
    return torch.exp(t)


def _log(t: torch.Tensor) -> torch.Tensor:
    return torch.log(t)


#: Named tensor transforms (each unit-tested).
TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "conv1x1_to_linear": _squeeze_last,
    "linear_to_conv1x1": _unsqueeze_last,
    "exp": _exp,
    "log": _log,
}


def apply_rules(
    state: Mapping[str, torch.Tensor],
    rules: Sequence[Rule],
    report: ConversionReport,
    source: str = "checkpoint",
) -> dict[str, torch.Tensor]:
    """Rename (and transform) every source key by the first rule that matches it.

    Raises:
        ConversionError: keys no rule matches (all of them are named), or two source keys
            mapping to the same target.
    """
    out: dict[str, torch.Tensor] = {}
    unmatched: list[str] = []
    for key, tensor in state.items():
        for rule in rules:
            groups = rule.match(key)
            if groups is None:
                continue
            if rule.dst is None:
                report.dropped.append((key, rule.reason or "not used by vits_surgery"))
                break
            dst = rule.target(groups)
            if dst in out:
                raise ConversionError(f"{source}: keys map twice to {dst!r} (second: {key!r})")
            value = TRANSFORMS[rule.transform](tensor) if rule.transform else tensor
            out[dst] = value
            report.mapped.append((key, dst, rule.transform))
            break
        else:
            unmatched.append(key)
    if unmatched:
        shown = ", ".join(unmatched[:10]) + (f" (+{len(unmatched) - 10} more)" if len(unmatched) > 10 else "")
        raise ConversionError(f"{source}: {len(unmatched)} unexpected key(s) no rule explains: {shown}")
    return out


# ----------------------------------------------------------------------------- weight norm
def legacy_weight_norm_to_parametrized(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``x.weight_g`` / ``x.weight_v`` -> ``x.parametrizations.weight.original0/1`` (same tensors)."""
    return {_swap_suffix(k, {"weight_g": WN_G[1:], "weight_v": WN_V[1:]}): v for k, v in state.items()}


def parametrized_to_legacy_weight_norm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`legacy_weight_norm_to_parametrized`."""
    return {_swap_suffix(k, {WN_G[1:]: "weight_g", WN_V[1:]: "weight_v"}): v for k, v in state.items()}


def _swap_suffix(key: str, table: Mapping[str, str]) -> str:
    """Replace a dotted suffix (the whole key for a top-level layer) by its counterpart."""
    for old, new in table.items():
        if key == old:
            return new
        if key.endswith("." + old):
            return key[: -len(old)] + new
    return key


def fold_weight_norm_pairs(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Effective weight ``g * v / ||v||`` (norm over every dim but 0), as torch computes it."""
    return torch._weight_norm(v, g, 0)  # the kernel torch's weight-norm parametrization uses


def split_weight_norm(weight: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Write a folded weight as weight-norm ``(g, v)`` with ``g·v/‖v‖ == weight``.

    Uses ``v = weight`` and ``g = ‖weight‖`` over every dimension except ``dim`` (0 for
    Conv1d, 0 for ConvTranspose1d's ``[in, out, k]`` weight as torch's weight norm uses).

    Args:
        weight: effective weight, e.g. ``[out, in, k]``.
        dim: the dimension weight norm keeps.

    Returns:
        ``(g, v)``: ``g`` has size 1 in every dimension but ``dim``; ``v`` is ``weight``.
    """
    dims = [d for d in range(weight.dim()) if d != dim % weight.dim()]
    g = torch.linalg.vector_norm(weight, dim=dims, keepdim=True)
    return g, weight.clone()


def reconcile(
    renamed: dict[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    report: ConversionReport,
    create: Callable[[str], str | None] | None = None,
    source: str = "checkpoint",
) -> dict[str, torch.Tensor]:
    """Match a renamed state dict against the model's own, fixing weight-norm forms.

    Folded weights where the model expects a parametrization are split into (g, v);
    parametrized pairs where the model expects a plain weight are folded. Keys the model
    has but the source lacks are errors unless ``create(key)`` returns a reason (then the
    model's freshly initialised tensor is kept and the report lists it).

    Raises:
        ConversionError: missing, unexpected or misshaped keys, all named.
    """
    state = dict(renamed)
    for key in list(state):
        if key.endswith(".weight") and key not in expected:
            base = key[: -len(".weight")]
            if base + WN_G in expected and base + WN_V in expected:
                g, v = split_weight_norm(state.pop(key))
                state[base + WN_G], state[base + WN_V] = g, v
        elif key.endswith(WN_G) and key not in expected:
            base = key[: -len(WN_G)]
            if base + ".weight" in expected and base + WN_V in state:
                state[base + ".weight"] = fold_weight_norm_pairs(state.pop(key), state.pop(base + WN_V))
    problems: list[str] = []
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:10])}" + (" ..." if len(unexpected) > 10 else ""))
    missing = []
    for key in expected:
        if key in state:
            continue
        reason = create(key) if create is not None else None
        if reason:
            report.created.append((key, reason))
        else:
            missing.append(key)
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
    for key, value in state.items():
        if key in expected and tuple(value.shape) != tuple(expected[key].shape):
            problems.append(f"{key}: checkpoint shape {tuple(value.shape)} != model shape {tuple(expected[key].shape)}")
    if problems:
        raise ConversionError(f"{source} does not fit the model: " + "; ".join(problems[:12]))
    return state

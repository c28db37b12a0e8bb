"""Low-rank adapters (LoRA) on the layers of a VITS organ, keeping the base state-dict keys.

An adapted layer stays the same module object at the same path: its ``weight``/``bias``, or
its weight-norm keys (``parametrizations.weight.original0/1``), are untouched, and two
parameters are added beside them, ``lora_a`` (the input-side factor) and ``lora_b`` (the
output-side factor, zero at injection). A forward hook adds the low-rank branch to the
layer's output, ``scale * B(A(x))`` with ``scale = alpha / rank * strength``, which is the
output of the layer with the *effective* weight ``W + scale * delta(A, B)``; for a weight-normed
layer ``W`` is the weight the parametrization computes, so the adapter works on the weight the
voice actually uses.

Supported layers and the shapes of their factors (``r`` = rank):

=================  ======================  ==============  ===========================
layer              ``lora_a``              ``lora_b``      ``delta`` (shape of weight)
=================  ======================  ==============  ===========================
Linear             [r, in]                 [out, r]        ``b @ a``
Conv1d             [r, in, k]              [out, r]        ``sum_r b[o,r] a[r,i,k]``
ConvTranspose1d    [in, r, k]              [out, r]        ``sum_r a[i,r,k] b[o,r]``
Embedding          [r, num_embeddings]     [dim, r]        ``(b @ a).T``
=================  ======================  ==============  ===========================

Grouped and depthwise convolutions (``groups > 1``, e.g. the DDS convs of the stochastic
duration predictor) are refused when selected directly and skipped inside a wider selection:
a low-rank update of a depthwise kernel can hold more parameters than the kernel itself.

:func:`merge_lora` folds the delta into the effective weight (for a weight-normed layer it
recomputes ``g`` and ``v`` from the merged weight) and keeps a copy of the base parameters, so
:func:`unmerge_lora` restores them bit for bit. A merge whose delta is not finite is refused
(:class:`NonFiniteAdapterError`) before any weight changes. Adapters are created with
:func:`add_adapter`; which of them train is decided by the surgery plan (``SurgeryPlan.lora``),
never here.

This module is the mechanism only: which layers an entry of a surgery plan adapts is decided in
:mod:`vits_surgery.surgery.lora` (:func:`~vits_surgery.surgery.lora.inject_lora`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LoRASpec",
    "LoRAState",
    "SUPPORTED_LAYERS",
    "merge_adapters",
    "adapter_refusal",
    "NonFiniteAdapterError",
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

_STATE_ATTR = "_vits_surgery_lora"
_SAVED_PREFIX = "_lora_saved_"
#: Layer types that can carry an adapter.
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.ConvTranspose1d, nn.Embedding)
_FACTORS = ("lora_a", "lora_b")


@dataclass(frozen=True)
class LoRASpec:
    """How to adapt the layers of one plan entry.

    Args:
        rank: r, the width of the low-rank update (> 0).
        alpha: the update is scaled by ``alpha / rank``.
        dropout: dropout on the adapter's input while the layer trains (0 <= p < 1).
        targets: glob patterns (``fnmatch``) on module paths relative to the entry, e.g.
            ``("ups.*",)`` in the decoder or ``("encoder.attn_layers.*",)`` in the text encoder;
            every supported layer inside a matched module is adapted. None = every supported
            layer of the entry.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.rank, int) and self.rank > 0):
            raise ValueError(f"LoRASpec.rank must be a positive integer, got {self.rank!r}")
        if not float(self.alpha) > 0:
            raise ValueError(f"LoRASpec.alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"LoRASpec.dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", (self.targets,))
        elif self.targets is not None:
            object.__setattr__(self, "targets", tuple(self.targets))
            if not self.targets:
                raise ValueError("LoRASpec.targets is empty: give patterns, or None for every layer")

    @property
    def scale(self) -> float:
        """``alpha / rank``."""
        return float(self.alpha) / self.rank

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = asdict(self)
        out["targets"] = list(self.targets) if self.targets is not None else None
        return out

    @classmethod
    def from_any(cls, value: LoRASpec | Mapping[str, Any] | int) -> LoRASpec:
        """A spec from a spec, a dict (``to_dict`` output) or a bare rank."""
        if isinstance(value, LoRASpec):
            return value
        if isinstance(value, int):
            return cls(rank=value)
        if isinstance(value, Mapping):
            unknown = set(value) - {"rank", "alpha", "dropout", "targets"}
            if unknown:
                raise KeyError(f"unknown LoRASpec field(s) {sorted(unknown)} (known: rank, alpha, dropout, targets)")
            return cls(**dict(value))
        raise TypeError(f"cannot make a LoRASpec from {type(value).__name__}: {value!r}")


@dataclass
class LoRAState:
    """Bookkeeping of one adapted layer (kept on the module, not in its state dict).

    Attributes:
        kind: "linear", "conv1d", "conv_transpose1d" or "embedding".
        rank, alpha, dropout: the spec it was created with.
        strength: extra multiplier of the update (a patch's strength dial; 1 = as trained).
        merged: the update is folded into the base weight (the hook then adds nothing).
        hook_id: id of the forward hook.
        saved: base parameter name -> buffer name of its pre-merge copy.
    """

    kind: str
    rank: int
    alpha: float
    dropout: float
    strength: float = 1.0
    merged: bool = False
    hook_id: int = -1
    saved: dict[str, str] | None = None

    @property
    def scale(self) -> float:
        """Multiplier of ``B(A(x))``: ``alpha / rank * strength``."""
        return self.alpha / self.rank * self.strength


# ----------------------------------------------------------------------------- per-kind maths
def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.ConvTranspose1d):
        return "conv_transpose1d"
    if isinstance(module, nn.Conv1d):
        return "conv1d"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Embedding):
        return "embedding"
    raise TypeError(
        f"LoRA supports {', '.join(t.__name__ for t in SUPPORTED_LAYERS)}; got {type(module).__name__}"
    )


def adapter_refusal(module: nn.Module) -> str | None:
    """Why a supported layer cannot take an adapter, or None."""
    groups = getattr(module, "groups", 1)
    if groups != 1:
        return (
            f"it is a grouped/depthwise convolution (groups={groups}); a low-rank update of such a "
            "kernel saves nothing, adapt the 1x1 convolutions around it instead"
        )
    if getattr(module, "padding_mode", "zeros") != "zeros":
        return f"its padding_mode is {module.padding_mode!r} (only 'zeros' is supported)"
    return None


def _factor_shapes(module: nn.Module, kind: str, rank: int) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """(shape of lora_a, shape of lora_b, fan-in of lora_a)."""
    if kind == "linear":
        return (rank, module.in_features), (module.out_features, rank), module.in_features
    if kind == "embedding":
        return (rank, module.num_embeddings), (module.embedding_dim, rank), module.num_embeddings
    k = module.kernel_size[0]
    if kind == "conv1d":
        return (rank, module.in_channels, k), (module.out_channels, rank), module.in_channels * k
    return (module.in_channels, rank, k), (module.out_channels, rank), module.in_channels * k


def _delta(module: nn.Module, kind: str) -> torch.Tensor:
    """The unscaled weight update, shaped like the layer's weight."""
    a, b = module.lora_a, module.lora_b
    if kind == "linear":
        return b @ a  # [out, in]
    if kind == "embedding":
        return (b @ a).t()  # [num, dim]
    if kind == "conv1d":
        return torch.einsum("or,rik->oik", b, a)  # [out, in, k]
    return torch.einsum("irk,or->iok", a, b)  # [in, out, k]


def _branch(module: nn.Module, kind: str, x: torch.Tensor, output_size: Any = None) -> torch.Tensor:
    """``B(A(x))``: the unscaled low-rank branch, shaped like the layer's output."""
    a, b = module.lora_a, module.lora_b
    if kind == "linear":
        return F.linear(F.linear(x, a), b)
    if kind == "embedding":
        return F.embedding(x, a.t()) @ b.t()  # [..., dim]
    if kind == "conv1d":
        z = F.conv1d(x, a, None, module.stride, module.padding, module.dilation)  # [B, r, T']
    else:
        out_pad = module.output_padding
        if output_size is not None:
            out_pad = module._output_padding(
                x, output_size, module.stride, module.padding, module.kernel_size, 1, module.dilation
            )
        z = F.conv_transpose1d(x, a, None, module.stride, module.padding, out_pad, 1, module.dilation)
    return F.conv1d(z, b.unsqueeze(-1))  # [B, out, T']


def _forward_hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
    state: LoRAState = getattr(module, _STATE_ATTR)
    if state.merged or state.scale == 0.0:
        return output
    x = args[0] if args else kwargs["input"]
    if state.dropout > 0 and module.training and state.kind != "embedding":
        x = F.dropout(x, state.dropout, True)
    output_size = args[1] if len(args) > 1 else kwargs.get("output_size")
    return output + state.scale * _branch(module, state.kind, x, output_size)


# ----------------------------------------------------------------------------- injection
def add_adapter(
    module: nn.Module, spec: LoRASpec, name: str = "layer", generator: torch.Generator | None = None
) -> LoRAState:
    """Add an adapter to one layer (``lora_b`` = 0, so its output is unchanged).

    Args:
        module: a supported layer (see :data:`SUPPORTED_LAYERS`).
        spec: rank, alpha, dropout (``targets`` is ignored).
        name: the layer's path, for messages.
        generator: RNG of the ``lora_a`` initialisation.

    Raises:
        TypeError: the layer type is not supported.
        ValueError: a grouped/depthwise conv, or the layer already has an adapter.
    """
    kind = _kind(module)
    why = adapter_refusal(module)
    if why is not None:
        raise ValueError(f"cannot add a LoRA adapter to {name!r}: {why}")
    if getattr(module, _STATE_ATTR, None) is not None:
        raise ValueError(f"{name!r} already has a LoRA adapter")
    shape_a, shape_b, fan_in = _factor_shapes(module, kind, spec.rank)
    ref = next(module.parameters())
    a = torch.empty(shape_a, dtype=ref.dtype, device=ref.device)
    if kind == "embedding":
        nn.init.normal_(a, 0.0, 1.0, generator=generator)
    else:  # the bound nn.Linear/Conv use for their weights (kaiming uniform, a = sqrt(5))
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(a, -bound, bound, generator=generator)
    module.register_parameter("lora_a", nn.Parameter(a))
    module.register_parameter("lora_b", nn.Parameter(torch.zeros(shape_b, dtype=ref.dtype, device=ref.device)))
    state = LoRAState(kind=kind, rank=spec.rank, alpha=float(spec.alpha), dropout=float(spec.dropout))
    state.hook_id = module.register_forward_hook(_forward_hook, with_kwargs=True).id
    object.__setattr__(module, _STATE_ATTR, state)
    return state


# ----------------------------------------------------------------------------- queries
def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Adapted layers by path."""
    return {name: m for name, m in model.named_modules() if getattr(m, _STATE_ATTR, None) is not None}


def lora_state(module: nn.Module) -> LoRAState | None:
    """The :class:`LoRAState` of a layer, or None."""
    return getattr(module, _STATE_ATTR, None)


def lora_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every adapter factor."""
    return [
        (f"{path}.{factor}" if path else factor, getattr(m, factor))
        for path, m in lora_layers(model).items()
        for factor in _FACTORS
    ]


def is_lora_key(key: str) -> bool:
    """True for a state-dict key of an adapter factor (``....lora_a`` / ``....lora_b``)."""
    return key.rpartition(".")[2] in _FACTORS


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter factors only (detached, on their device), keyed as in ``model.state_dict()``."""
    return {name: p.detach() for name, p in lora_parameters(model)}


def set_lora_strength(model: nn.Module, strength: float, layers: list[str] | None = None) -> None:
    """Scale the update of adapted layers (0 = base output, 1 = as trained).

    Raises:
        ValueError: a layer is merged (unmerge first) or is not adapted.
    """
    found = lora_layers(model)
    for name in layers if layers is not None else list(found):
        if name not in found:
            raise ValueError(f"{name!r} has no LoRA adapter")
        state = lora_state(found[name])
        if state.merged:
            raise ValueError(f"{name!r} is merged: unmerge_lora() before changing its strength")
        state.strength = float(strength)


# ----------------------------------------------------------------------------- merge / unmerge
def _base_parameter_names(module: nn.Module) -> list[str]:
    """The parameters that define the layer's weight (plain or parametrized)."""
    if hasattr(module, "parametrizations") and "weight" in module.parametrizations:
        return [f"parametrizations.weight.{n}" for n, _ in module.parametrizations.weight.named_parameters()]
    return ["weight"]


class NonFiniteAdapterError(ValueError):
    """An adapter's update holds NaN or inf: merging it would poison the base weights."""


@torch.no_grad()
def _check_finite(model: nn.Module, layers: Mapping[str, nn.Module]) -> None:
    """Raise :class:`NonFiniteAdapterError` naming the adapters whose update is not finite."""
    bad = [name for name, m in layers.items() if not bool(torch.isfinite(_delta(m, lora_state(m).kind)).all())]
    if bad:
        raise NonFiniteAdapterError(
            f"LoRA adapters with NaN/inf factors: {', '.join(bad)}; nothing was merged (remove them with "
            "remove_lora(model, merge=False), or retrain)"
        )


@torch.no_grad()
def _merge_one(module: nn.Module) -> None:
    state = lora_state(module)
    saved: dict[str, str] = {}
    for i, name in enumerate(_base_parameter_names(module)):
        buffer = f"{_SAVED_PREFIX}{i}"
        module.register_buffer(buffer, module.get_parameter(name).detach().clone(), persistent=False)
        saved[name] = buffer
    merged = module.weight + state.scale * _delta(module, state.kind).to(module.weight.dtype)
    if saved.keys() == {"weight"}:
        module.weight.copy_(merged)
    else:  # a parametrized weight: right_inverse recomputes the originals (g, v) in place
        module.weight = merged
    state.saved, state.merged = saved, True


@torch.no_grad()
def _unmerge_one(module: nn.Module, name: str) -> None:
    state = lora_state(module)
    names = _base_parameter_names(module)
    if set(names) != set(state.saved or {}):
        raise RuntimeError(
            f"{name!r}: its weight parametrization changed since merge_lora() (had {sorted(state.saved or {})}, "
            f"now {names}); cannot unmerge"
        )
    for pname, buffer in state.saved.items():
        module.get_parameter(pname).copy_(getattr(module, buffer))
        delattr(module, buffer)
    state.saved, state.merged = None, False


def merge_lora(model: nn.Module) -> int:
    """Fold every unmerged adapter into its layer's effective weight.

    The base parameters are copied first (non-persistent buffers), so :func:`unmerge_lora`
    restores them exactly. For a weight-normed layer ``g`` and ``v`` are recomputed so that the
    effective weight is the merged one. The adapters stay (their branch is off while merged).

    Returns:
        Number of layers merged.

    Raises:
        NonFiniteAdapterError: an adapter's update holds NaN or inf (no layer is merged).
    """
    pending = {n: m for n, m in lora_layers(model).items() if not lora_state(m).merged}
    _check_finite(model, pending)
    for module in pending.values():
        _merge_one(module)
    return len(pending)


def unmerge_lora(model: nn.Module) -> int:
    """Undo :func:`merge_lora`: restore the base parameters bit for bit.

    Returns:
        Number of layers unmerged.
    """
    count = 0
    for name, module in lora_layers(model).items():
        if lora_state(module).merged:
            _unmerge_one(module, name)
            count += 1
    return count


def remove_lora(model: nn.Module, merge: bool = True, layers: list[str] | None = None) -> int:
    """Delete adapters, leaving plain layers with only their base keys.

    Args:
        model: the model.
        merge: fold the adapters into the weights first (False = restore the base weights).
        layers: paths of the adapted layers to strip; None = all.

    Returns:
        Number of layers whose adapter was removed.

    Raises:
        ValueError: a named layer has no adapter.
        NonFiniteAdapterError: ``merge`` and an adapter's update holds NaN or inf (nothing changes).
    """
    found = lora_layers(model)
    missing = [n for n in layers or () if n not in found]
    if missing:
        raise ValueError(f"no LoRA adapter on {', '.join(repr(n) for n in missing)}")
    layers = found if layers is None else {n: found[n] for n in layers}
    if merge:
        _check_finite(model, {n: m for n, m in layers.items() if not lora_state(m).merged})
    for name, module in layers.items():
        state = lora_state(module)
        if merge and not state.merged:
            _merge_one(module)
        if not merge and state.merged:
            _unmerge_one(module, name)
        for buffer in (state.saved or {}).values():
            delattr(module, buffer)
        module._forward_hooks.pop(state.hook_id, None)
        module._forward_hooks_with_kwargs.pop(state.hook_id, None)
        for factor in _FACTORS:
            delattr(module, factor)
        object.__delattr__(module, _STATE_ATTR)
    return len(layers)


def merge_adapters(model: nn.Module, what: str = "the copy") -> int:
    """Merge and remove every LoRA adapter of an inference copy (no adapter: nothing happens).

    The one step that :func:`~vits_surgery.models.inference.optimize_for_inference` and the
    ONNX export share before they fold weight norm.

    Returns:
        Number of adapters merged.
    """
    if not lora_layers(model):
        return 0
    merged = remove_lora(model, merge=True)
    logger.info("merged %d LoRA adapters into %s", merged, what)
    return merged

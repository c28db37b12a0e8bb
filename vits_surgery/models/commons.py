"""Small tensor helpers shared by the organs: masks, weight norm, paths and slices."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm as _weight_norm

__all__ = [
    "sequence_mask",
    "length_mask",
    "get_padding",
    "weight_norm",
    "has_weight_norm",
    "remove_weight_norms",
    "restore_weight_norms",
    "own_weight_norm_classes",
    "fused_add_tanh_sigmoid_multiply",
    "generate_path",
    "slice_segments",
    "rand_slice_segments",
    "init_normal",
]

_WN_MARK = "_vits_surgery_weight_norm"


def sequence_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """Boolean mask of valid positions.

    Args:
        lengths: [B] integer lengths.
        max_length: T; defaults to ``lengths.max()``.

    Returns:
        [B, T] bool, True where ``t < lengths[b]``.
    """
    if max_length is None:
        max_length = int(lengths.max())
    positions = torch.arange(max_length, device=lengths.device, dtype=lengths.dtype)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)  # [B, T]


def length_mask(lengths: torch.Tensor, max_length: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Float mask ``[B, 1, T]`` (1 = valid) from lengths ``[B]``."""
    return sequence_mask(lengths, max_length).unsqueeze(1).to(dtype)


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    """"Same" padding of an odd kernel with a dilation."""
    return (kernel_size * dilation - dilation) // 2


def weight_norm(module: nn.Module) -> nn.Module:
    """Apply weight norm (``parametrizations.weight.original0/1`` keys) and mark the layer.

    torch's default ``dim=0`` is kept, as every VITS implementation does, so ``original0``
    has shape ``(out_channels, 1, 1)`` for convolutions and ``(in_channels, 1, 1)`` for
    transposed convolutions.
    """
    module = _weight_norm(module)
    setattr(module, _WN_MARK, True)
    return module


def has_weight_norm(module: nn.Module) -> bool:
    """True when ``module.weight`` is a weight-norm parametrization."""
    return parametrize.is_parametrized(module, "weight")


def remove_weight_norms(model: nn.Module) -> int:
    """Fold every weight-norm parametrization into a plain ``weight`` (inference speed).

    The effective weights are unchanged. Layers remember that they had weight norm, so
    :func:`restore_weight_norms` can re-apply it for training.

    Returns:
        Number of layers folded.
    """
    count = 0
    for module in model.modules():
        if has_weight_norm(module):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            setattr(module, _WN_MARK, True)
            count += 1
    return count


def own_weight_norm_classes(model: nn.Module) -> None:
    """Give every weight-normed layer of ``model`` (a deep copy) a class of its own.

    torch gives each parametrized layer a generated class holding the ``weight`` property, and
    a deep copy shares that class with the original; folding the copy's weight norm deletes
    the property from the class, which would break the original layer. Call this on the copy
    before :func:`remove_weight_norms`.
    """
    for module in model.modules():
        if has_weight_norm(module):
            cls = type(module)
            body = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
            module.__class__ = type(cls.__name__, cls.__bases__, body)


def restore_weight_norms(model: nn.Module) -> int:
    """Re-apply weight norm on the layers :func:`remove_weight_norms` folded.

    The effective weight is unchanged (``g = ||v||`` at re-application).

    Returns:
        Number of layers re-parametrized.
    """
    count = 0
    for module in model.modules():
        if getattr(module, _WN_MARK, False) and not has_weight_norm(module):
            _weight_norm(module)
            count += 1
    return count


def fused_add_tanh_sigmoid_multiply(a: torch.Tensor, b: torch.Tensor, n_channels: int) -> torch.Tensor:
    """WaveNet gate: ``tanh(x[:, :n]) * sigmoid(x[:, n:])`` with ``x = a + b``.

    Args:
        a: [B, 2n, T] dilated-conv output.
        b: [B, 2n, T] or [B, 2n, 1] conditioning.
        n_channels: n.

    Returns:
        [B, n, T].
    """
    x = a + b  # [B, 2n, T]
    return torch.tanh(x[:, :n_channels]) * torch.sigmoid(x[:, n_channels:])


def generate_path(durations: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hard alignment from integer durations.

    Args:
        durations: [B, T_x] non-negative (integer-valued) frames per token.
        mask: [B, T_x, T_y] valid cells.

    Returns:
        [B, T_x, T_y] path, 1 where frame y belongs to token x.
    """
    t_y = mask.shape[-1]
    ends = torch.cumsum(durations, dim=1)  # [B, T_x]
    starts = ends - durations  # [B, T_x]
    frames = torch.arange(t_y, device=durations.device, dtype=durations.dtype)  # [T_y]
    path = (frames.view(1, 1, -1) >= starts.unsqueeze(-1)) & (frames.view(1, 1, -1) < ends.unsqueeze(-1))
    return path.to(mask.dtype) * mask  # [B, T_x, T_y]


def slice_segments(x: torch.Tensor, starts: torch.Tensor, segment_size: int) -> torch.Tensor:
    """Cut ``x[b, :, starts[b]:starts[b]+segment_size]`` for each item.

    Args:
        x: [B, C, T].
        starts: [B] integer start indices.
        segment_size: S.

    Returns:
        [B, C, S]; positions past the end of ``x`` are zero.
    """
    b, c, t = x.shape
    offsets = torch.arange(segment_size, device=x.device)  # [S]
    index = starts.to(x.device).long().view(b, 1) + offsets.view(1, -1)  # [B, S]
    valid = index < t
    gathered = torch.gather(x, 2, index.clamp(max=t - 1).unsqueeze(1).expand(b, c, segment_size))
    return gathered * valid.unsqueeze(1).to(x.dtype)  # [B, C, S]


def rand_slice_segments(
    x: torch.Tensor,
    lengths: torch.Tensor,
    segment_size: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``segment_size`` windows inside each item's valid length.

    The start is ``floor(u * (length - segment_size + 1))`` with ``u ~ U[0, 1)``, clamped at 0.

    Returns:
        (segments [B, C, S], starts [B] long)
    """
    max_start = (lengths.to(x.device) - segment_size + 1).clamp(min=1)  # [B]
    draw_on = generator.device if generator is not None else x.device  # a CUDA generator draws on CUDA
    u = torch.rand(lengths.shape[0], generator=generator, device=draw_on).to(x.device)
    starts = (u * max_start.to(u.dtype)).long()  # [B]
    return slice_segments(x, starts, segment_size), starts


def init_normal(module: nn.Module, mean: float = 0.0, std: float = 0.01) -> None:
    """HiFi-GAN style init: conv weights ~ N(mean, std). Call before :func:`weight_norm`."""
    if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d, nn.Conv2d)):
        module.weight.data.normal_(mean, std)

"""Dilated depth-separable convolution stack (VITS ``DDSConv``, Coqui ``DilatedDepthSeparableConv``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .commons import get_padding
from .norms import LayerNorm

__all__ = ["DDSConv"]


class DDSConv(nn.Module):
    """Residual stack of depthwise (dilation ``kernel_size**i``) + pointwise convolutions.

    Each layer: ``x = x + drop(gelu(norm_2(conv_1x1(gelu(norm_1(conv_sep(x * mask)))))))``.

    Args:
        channels: width C.
        kernel_size: odd depthwise kernel.
        n_layers: layers; layer i has dilation ``kernel_size**i``.
        p_dropout: dropout at the end of each layer's branch.
    """

    def __init__(self, channels: int, kernel_size: int, n_layers: int, p_dropout: float = 0.0) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"DDSConv kernel_size must be odd, got {kernel_size}")
        self.n_layers = n_layers
        self.drop = nn.Dropout(p_dropout)
        self.convs_sep = nn.ModuleList()
        self.convs_1x1 = nn.ModuleList()
        self.norms_1 = nn.ModuleList()
        self.norms_2 = nn.ModuleList()
        for i in range(n_layers):
            dilation = kernel_size**i
            self.convs_sep.append(
                nn.Conv1d(
                    channels, channels, kernel_size, groups=channels, dilation=dilation,
                    padding=get_padding(kernel_size, dilation),
                )
            )
            self.convs_1x1.append(nn.Conv1d(channels, channels, 1))
            self.norms_1.append(LayerNorm(channels))
            self.norms_2.append(LayerNorm(channels))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the stack.

        Args:
            x: [B, C, T].
            x_mask: [B, 1, T].
            g: optional [B, C, T] or [B, C, 1] conditioning added to the input.

        Returns:
            [B, C, T], zero where masked.
        """
        if g is not None:
            x = x + g
        for conv_sep, conv_1x1, norm_1, norm_2 in zip(self.convs_sep, self.convs_1x1, self.norms_1, self.norms_2, strict=True):
            y = F.gelu(norm_1(conv_sep(x * x_mask)))  # [B, C, T]
            y = F.gelu(norm_2(conv_1x1(y)))
            x = x + self.drop(y)
        return x * x_mask

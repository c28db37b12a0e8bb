"""Residual-coupling normalizing flow f: z -> z_p (VITS section 2.1).

A stack of affine coupling layers; between them the channel order is reversed, so every
half of ``z`` gets transformed. The reversal (VITS' ``Flip`` module) has no parameters and is
inlined here, so the coupling layers sit at ``flows.0 .. flows.{n-1}`` exactly like Coqui
TTS' ``ResidualCouplingBlocks`` (the original VITS keeps the flips in the list, at odd
indices; its converter renumbers).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..config import FlowConfig
from .wavenet import WN

__all__ = ["FlowOutput", "ResidualCouplingLayer", "ResidualCouplingFlow"]


class FlowOutput(NamedTuple):
    """Result of a flow pass."""

    z: torch.Tensor  # [B, C, T] transformed tensor
    logdet: torch.Tensor  # [B] log |det d z_out / d z_in| over valid positions


class ResidualCouplingLayer(nn.Module):
    """One affine coupling layer: ``x1 <- m(x0) + x1 * exp(logs(x0))``.

    ``x0`` (the first half of the channels) passes unchanged and parametrises the
    transform of ``x1`` through ``pre`` (1x1), a WaveNet ``enc`` and ``post`` (1x1,
    zero-initialised so a fresh layer is the identity). With ``mean_only`` the scale is 1.

    Args:
        cfg: the ``flow`` config slice.
        channels: C (even).
        gin_channels: speaker-vector width; 0 = unconditioned.
    """

    def __init__(self, cfg: FlowConfig, channels: int, gin_channels: int = 0) -> None:
        super().__init__()
        if channels % 2 != 0:
            raise ValueError(f"the coupling flow needs an even number of channels, got {channels}")
        self.half_channels = channels // 2
        self.mean_only = cfg.mean_only
        self.pre = nn.Conv1d(self.half_channels, cfg.hidden_channels, 1)
        self.enc = WN(
            cfg.hidden_channels,
            cfg.kernel_size,
            cfg.dilation_rate,
            cfg.n_layers,
            gin_channels=gin_channels,
            p_dropout=cfg.p_dropout,
        )
        out = self.half_channels * (1 if cfg.mean_only else 2)
        self.post = nn.Conv1d(cfg.hidden_channels, out, 1)
        nn.init.zeros_(self.post.weight)
        nn.init.zeros_(self.post.bias)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None = None, reverse: bool = False
    ) -> FlowOutput:
        """Apply the coupling (or its inverse).

        Args:
            x: [B, C, T].
            mask: [B, 1, T] float mask.
            g: [B, gin, 1] speaker vector, or None.
            reverse: run the inverse transform.

        Returns:
            :class:`FlowOutput`; ``logdet`` [B] is ``sum(logs)`` forward and ``-sum(logs)``
            in reverse (0 when ``mean_only``).
        """
        x0, x1 = torch.split(x, self.half_channels, dim=1)  # [B, C/2, T] each
        h = self.pre(x0) * mask  # [B, H, T]
        h = self.enc(h, mask, g=g)  # [B, H, T]
        stats = self.post(h) * mask  # [B, C/2 or C, T]
        if self.mean_only:
            m, logs = stats, torch.zeros_like(stats)
        else:
            m, logs = torch.split(stats, self.half_channels, dim=1)
        if reverse:
            x1 = (x1 - m) * torch.exp(-logs) * mask
            logdet = -torch.sum(logs, dim=(1, 2))
        else:
            x1 = m + x1 * torch.exp(logs) * mask
            logdet = torch.sum(logs, dim=(1, 2))
        return FlowOutput(torch.cat([x0, x1], dim=1), logdet)


class ResidualCouplingFlow(nn.Module):
    """``n_flows`` coupling layers with a channel reversal after each.

    Args:
        cfg: the ``flow`` config slice.
        channels: latent channels C (even).
        gin_channels: speaker-vector width; 0 = unconditioned.
    """

    def __init__(self, cfg: FlowConfig, channels: int, gin_channels: int = 0) -> None:
        super().__init__()
        self.flows = nn.ModuleList(
            ResidualCouplingLayer(cfg, channels, gin_channels) for _ in range(cfg.n_flows)
        )

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None = None, reverse: bool = False
    ) -> FlowOutput:
        """Map ``z -> z_p`` (or ``z_p -> z`` with ``reverse``).

        Args:
            x: [B, C, T], zero at padded positions.
            mask: [B, 1, T] float mask.
            g: [B, gin, 1] speaker vector, or None.
            reverse: run the inverse.

        Returns:
            :class:`FlowOutput` with the summed log-determinant [B] of the map performed.
        """
        logdet = x.new_zeros(x.shape[0])  # [B]
        if not reverse:
            for flow in self.flows:
                x, ld = flow(x, mask, g=g)
                x = torch.flip(x, dims=[1])
                logdet = logdet + ld
        else:
            for flow in reversed(self.flows):
                x = torch.flip(x, dims=[1])
                x, ld = flow(x, mask, g=g, reverse=True)
                logdet = logdet + ld
        return FlowOutput(x, logdet)

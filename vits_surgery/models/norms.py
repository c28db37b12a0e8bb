"""Channel-wise layer normalisation for channel-first tensors.

Two parameter layouts exist in VITS checkpoints and both are kept so that state dicts load
unchanged:

* :class:`LayerNorm` -- ``gamma``/``beta`` of shape ``[C]``, eps 1e-5 (VITS ``modules.LayerNorm``;
  the text encoder, the DDS convs and the original deterministic duration predictor).
* :class:`GlowLayerNorm` -- ``gamma``/``beta`` of shape ``[1, C, 1]``, eps 1e-4 (Glow-TTS layout,
  which Coqui TTS uses for its deterministic duration predictor when ``use_sdp=False``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LayerNorm", "GlowLayerNorm", "LAYER_NORM_EPS", "GLOW_LAYER_NORM_EPS"]

LAYER_NORM_EPS = 1e-5
"""Epsilon of the VITS channel LayerNorm (``F.layer_norm`` default)."""

GLOW_LAYER_NORM_EPS = 1e-4
"""Epsilon of the Glow-TTS LayerNorm (Coqui ``TTS.tts.layers.generic.normalization.LayerNorm``)."""


class LayerNorm(nn.Module):
    """Layer normalisation over the channel dimension of ``[B, C, T]``.

    Args:
        channels: C.
        eps: added to the variance.
    """

    def __init__(self, channels: int, eps: float = LAYER_NORM_EPS) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise each time step over its channels.

        Args:
            x: [B, C, T].

        Returns:
            [B, C, T].
        """
        y = F.layer_norm(x.transpose(1, -1), (self.channels,), self.gamma, self.beta, self.eps)  # [B, T, C]
        return y.transpose(1, -1)

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}"


class GlowLayerNorm(nn.Module):
    """Glow-TTS layer normalisation: parameters shaped ``[1, C, 1]``, eps 1e-4.

    Mathematically the same normalisation as :class:`LayerNorm` (biased variance over the
    channels), with the parameter shapes and epsilon of Glow-TTS checkpoints.

    Args:
        channels: C.
        eps: added to the variance.
    """

    def __init__(self, channels: int, eps: float = GLOW_LAYER_NORM_EPS) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(1, channels, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise each time step over its channels.

        Args:
            x: [B, C, T].

        Returns:
            [B, C, T].
        """
        mean = x.mean(dim=1, keepdim=True)  # [B, 1, T]
        var = (x - mean).pow(2).mean(dim=1, keepdim=True)  # [B, 1, T]
        return (x - mean) * torch.rsqrt(var + self.eps) * self.gamma + self.beta

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}"

"""Posterior encoder q(z | x_lin): linear spectrogram -> latent z (VITS section 2.1).

A 1x1 convolution lifts the spectrogram to the hidden width, a non-causal WaveNet
(:class:`~vits_surgery.models.wavenet.WN`) mixes it, and a 1x1 projection gives the mean and
log standard deviation of a diagonal Gaussian, from which ``z`` is sampled with the
reparameterisation trick. Sub-module names (``pre``, ``enc``, ``proj``) are Coqui TTS'.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..config import PosteriorEncoderConfig
from .commons import length_mask
from .wavenet import WN

__all__ = ["PosteriorEncoder", "PosteriorOutput"]


class PosteriorOutput(NamedTuple):
    """Result of :meth:`PosteriorEncoder.forward`."""

    z: torch.Tensor  # [B, C, T] sample, zero at padded positions
    m_q: torch.Tensor  # [B, C, T] posterior mean
    logs_q: torch.Tensor  # [B, C, T] posterior log standard deviation
    mask: torch.Tensor  # [B, 1, T] float mask


class PosteriorEncoder(nn.Module):
    """Linear spectrogram -> posterior sample ``z``.

    Args:
        cfg: the ``posterior_encoder`` config slice.
        in_channels: spectrogram bins F (``n_fft // 2 + 1``).
        out_channels: latent channels C.
        gin_channels: speaker-vector width; 0 = unconditioned.
    """

    def __init__(
        self, cfg: PosteriorEncoderConfig, in_channels: int, out_channels: int, gin_channels: int = 0
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.pre = nn.Conv1d(in_channels, cfg.hidden_channels, 1)
        self.enc = WN(
            cfg.hidden_channels,
            cfg.kernel_size,
            cfg.dilation_rate,
            cfg.n_layers,
            gin_channels=gin_channels,
            p_dropout=cfg.p_dropout,
        )
        self.proj = nn.Conv1d(cfg.hidden_channels, 2 * out_channels, 1)

    def forward(
        self,
        spec: torch.Tensor,
        lengths: torch.Tensor,
        g: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PosteriorOutput:
        """Encode and sample.

        Args:
            spec: [B, F, T] linear spectrogram.
            lengths: [B] valid frames per item.
            g: [B, gin, 1] speaker vector, or None.
            noise: [B, C, T] standard normal noise for the sample; drawn (with ``generator``)
                when None.
            generator: random source used when ``noise`` is None.

        Returns:
            :class:`PosteriorOutput` with ``z = (m_q + noise * exp(logs_q)) * mask``.
        """
        mask = length_mask(lengths, spec.shape[-1], dtype=spec.dtype)  # [B, 1, T]
        h = self.pre(spec) * mask  # [B, H, T]
        h = self.enc(h, mask, g=g)  # [B, H, T]
        stats = self.proj(h) * mask  # [B, 2C, T]
        m_q, logs_q = torch.split(stats, self.out_channels, dim=1)  # [B, C, T] each
        if noise is None:
            noise = _standard_normal(m_q, generator)
        elif noise.shape != m_q.shape:
            raise ValueError(
                f"noise has shape {tuple(noise.shape)} but the posterior has shape {tuple(m_q.shape)}"
            )
        z = (m_q + noise * torch.exp(logs_q)) * mask  # [B, C, T]
        return PosteriorOutput(z, m_q, logs_q, mask)


def _standard_normal(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, 1) noise shaped like ``like``, drawn on the generator's device then moved."""
    device = generator.device if generator is not None else like.device
    eps = torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype)
    return eps.to(like.device)

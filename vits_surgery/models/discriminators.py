"""VITS discriminator: one scale discriminator plus multi-period discriminators.

``nets.0`` is a HiFi-GAN scale discriminator on the raw waveform (grouped strided 1-D
convolutions); ``nets.1..`` are period discriminators, which fold the waveform into a 2-D
``[T / p, p]`` grid and run ``(k, 1)`` convolutions along time. Each returns its flattened
score and the feature map after every convolution (for the feature-matching loss). Key names
(``nets.{i}.convs.{j}``, ``nets.{i}.conv_post``) are Coqui TTS'. Layers are weight-normed
(parametrization keys), or spectral-normed with ``use_spectral_norm`` (torch's
``torch.nn.utils.spectral_norm``, keys ``weight_orig``/``weight_u``/``weight_v``, as Coqui
and the original VITS store them).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from ..config import DiscriminatorConfig
from .commons import get_padding, weight_norm

__all__ = ["DiscriminatorOutput", "ScaleDiscriminator", "PeriodDiscriminator", "VITSDiscriminator"]

#: LeakyReLU slope after every discriminator convolution (HiFi-GAN, VITS, Coqui, Piper).
LRELU_SLOPE = 0.1
#: Kernel (along time) of the final 1-channel ``conv_post`` of every sub-discriminator.
POST_KERNEL_SIZE = 3


def _norm(module: nn.Module, use_spectral_norm: bool) -> nn.Module:
    return spectral_norm(module) if use_spectral_norm else weight_norm(module)


class ScaleDiscriminator(nn.Module):
    """HiFi-GAN scale discriminator on the raw waveform.

    Args:
        cfg: the ``discriminator`` config slice (``scale_*`` fields).
    """

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        channels_in = (1, *cfg.scale_channels[:-1])
        self.convs = nn.ModuleList()
        for c_in, c_out, k, s, gr in zip(
            channels_in,
            cfg.scale_channels,
            cfg.scale_kernel_sizes,
            cfg.scale_strides,
            cfg.scale_groups,
            strict=True,
        ):
            if c_in % gr or c_out % gr:
                raise ValueError(
                    f"discriminator.scale_groups value {gr} must divide both {c_in} input and "
                    f"{c_out} output channels"
                )
            conv = nn.Conv1d(c_in, c_out, k, stride=s, groups=gr, padding=get_padding(k))
            self.convs.append(_norm(conv, cfg.use_spectral_norm))
        post = nn.Conv1d(cfg.scale_channels[-1], 1, POST_KERNEL_SIZE, padding=get_padding(POST_KERNEL_SIZE))
        self.conv_post = _norm(post, cfg.use_spectral_norm)

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Score a waveform.

        Args:
            y: [B, 1, N].

        Returns:
            (score [B, N'], features: one [B, C_j, N_j] per conv and the conv_post output).
        """
        features = []
        x = y
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            features.append(x)
        x = self.conv_post(x)  # [B, 1, N']
        features.append(x)
        return torch.flatten(x, 1, -1), features


class PeriodDiscriminator(nn.Module):
    """HiFi-GAN period discriminator.

    The waveform is reflect-padded to a multiple of ``period`` and reshaped to
    ``[B, 1, N / period, period]``; ``(k, 1)`` convolutions run along the first axis.

    Args:
        cfg: the ``discriminator`` config slice (``period_*`` fields).
        period: p.
    """

    def __init__(self, cfg: DiscriminatorConfig, period: int) -> None:
        super().__init__()
        if period < 1:
            raise ValueError(f"discriminator period must be >= 1, got {period}")
        self.period = period
        k = cfg.period_kernel_size
        channels_in = (1, *cfg.period_channels[:-1])
        n = len(cfg.period_channels)
        self.convs = nn.ModuleList()
        for j, (c_in, c_out) in enumerate(zip(channels_in, cfg.period_channels, strict=True)):
            stride = cfg.period_stride if j < n - 1 else 1  # the last conv keeps the resolution
            conv = nn.Conv2d(c_in, c_out, (k, 1), stride=(stride, 1), padding=(get_padding(k), 0))
            self.convs.append(_norm(conv, cfg.use_spectral_norm))
        post = nn.Conv2d(
            cfg.period_channels[-1], 1, (POST_KERNEL_SIZE, 1), padding=(get_padding(POST_KERNEL_SIZE), 0)
        )
        self.conv_post = _norm(post, cfg.use_spectral_norm)

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Score a waveform.

        Args:
            y: [B, 1, N].

        Returns:
            (score [B, N'], features: one [B, C_j, N_j, p] per conv and the conv_post output).
        """
        b, c, n = y.shape
        remainder = n % self.period
        if remainder:
            pad = self.period - remainder
            if pad >= n:
                raise ValueError(
                    f"a waveform of {n} samples is too short to reflect-pad to period {self.period}"
                )
            y = F.pad(y, (0, pad), mode="reflect")
            n += pad
        x = y.view(b, c, n // self.period, self.period)  # [B, 1, N/p, p]
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            features.append(x)
        x = self.conv_post(x)  # [B, 1, N', p]
        features.append(x)
        return torch.flatten(x, 1, -1), features


class DiscriminatorOutput(NamedTuple):
    """Scores and feature maps of every sub-discriminator (``nets`` order)."""

    real_scores: list[torch.Tensor]  # one [B, N_i] per sub-discriminator
    real_features: list[list[torch.Tensor]]  # per sub-discriminator, one map per conv
    fake_scores: list[torch.Tensor] | None
    fake_features: list[list[torch.Tensor]] | None


class VITSDiscriminator(nn.Module):
    """One scale discriminator followed by one period discriminator per period.

    Args:
        cfg: the ``discriminator`` config slice.
    """

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        nets: list[nn.Module] = [ScaleDiscriminator(cfg)]
        nets.extend(PeriodDiscriminator(cfg, p) for p in cfg.periods)
        self.nets = nn.ModuleList(nets)

    def forward(self, y: torch.Tensor, y_hat: torch.Tensor | None = None) -> DiscriminatorOutput:
        """Score real (and optionally generated) waveforms.

        Args:
            y: [B, 1, N] real waveform.
            y_hat: [B, 1, N] generated waveform, or None.

        Returns:
            :class:`DiscriminatorOutput`; the ``fake_*`` fields are None without ``y_hat``.
        """
        real_scores, real_features = [], []
        fake_scores: list[torch.Tensor] | None = [] if y_hat is not None else None
        fake_features: list[list[torch.Tensor]] | None = [] if y_hat is not None else None
        for net in self.nets:
            score, feats = net(y)
            real_scores.append(score)
            real_features.append(feats)
            if y_hat is not None:
                score, feats = net(y_hat)
                fake_scores.append(score)  # type: ignore[union-attr]
                fake_features.append(feats)  # type: ignore[union-attr]
        return DiscriminatorOutput(real_scores, real_features, fake_scores, fake_features)

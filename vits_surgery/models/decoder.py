"""HiFi-GAN generator: latent z -> waveform (VITS' decoder).

``conv_pre`` lifts z to ``upsample_initial_channel``; each stage applies a LeakyReLU, a
transposed convolution (``ups.i``) that upsamples by its rate and halves the channels, and
the average of a multi-receptive-field fusion of residual blocks (``resblocks``, one per
kernel size per stage); a final LeakyReLU, ``conv_post`` and ``tanh`` give the waveform.
Names and weight-norm placement follow Coqui TTS' ``HifiganGenerator`` as VITS builds it:
``ups`` and ``resblocks`` are weight-normed, ``conv_pre``, ``conv_post`` and ``cond_layer``
are plain convolutions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DecoderConfig
from .commons import get_padding, init_normal, remove_weight_norms, weight_norm

__all__ = ["ResBlock1", "ResBlock2", "Generator"]

#: Kernel of ``conv_pre`` and ``conv_post`` (HiFi-GAN V1/V2, VITS, Coqui, Piper).
PRE_POST_KERNEL_SIZE = 7
#: Standard deviation of the N(0, std) init of ``ups`` and resblock convolutions.
INIT_STD = 0.01


def _wn_conv(channels: int, kernel_size: int, dilation: int) -> nn.Conv1d:
    conv = nn.Conv1d(
        channels, channels, kernel_size, dilation=dilation, padding=get_padding(kernel_size, dilation)
    )
    init_normal(conv, std=INIT_STD)
    return weight_norm(conv)


class ResBlock1(nn.Module):
    """HiFi-GAN residual block type 1: per dilation, ``x + c2(lrelu(c1(lrelu(x))))``.

    ``convs1[i]`` has dilation ``dilations[i]``; ``convs2[i]`` has dilation 1.

    Args:
        channels: width of the stage.
        kernel_size: kernel of every convolution (odd).
        dilations: one entry per residual unit.
        slope: LeakyReLU negative slope.
    """

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...], slope: float) -> None:
        super().__init__()
        self.slope = slope
        self.convs1 = nn.ModuleList(_wn_conv(channels, kernel_size, d) for d in dilations)
        self.convs2 = nn.ModuleList(_wn_conv(channels, kernel_size, 1) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T] -> [B, C, T]."""
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            xt = c1(F.leaky_relu(x, self.slope))
            xt = c2(F.leaky_relu(xt, self.slope))
            x = x + xt
        return x


class ResBlock2(nn.Module):
    """HiFi-GAN residual block type 2: per dilation, ``x + c(lrelu(x))``.

    Args:
        channels: width of the stage.
        kernel_size: kernel of every convolution (odd).
        dilations: one entry per residual unit.
        slope: LeakyReLU negative slope.
    """

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...], slope: float) -> None:
        super().__init__()
        self.slope = slope
        self.convs = nn.ModuleList(_wn_conv(channels, kernel_size, d) for d in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T] -> [B, C, T]."""
        for c in self.convs:
            x = x + c(F.leaky_relu(x, self.slope))
        return x


class Generator(nn.Module):
    """HiFi-GAN generator.

    Args:
        cfg: the ``decoder`` config slice.
        in_channels: latent channels C of z.
        gin_channels: speaker-vector width; 0 = unconditioned (no ``cond_layer``).
    """

    def __init__(self, cfg: DecoderConfig, in_channels: int, gin_channels: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.gin_channels = gin_channels
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        ch0 = cfg.upsample_initial_channel
        pad = get_padding(PRE_POST_KERNEL_SIZE)
        self.conv_pre = nn.Conv1d(in_channels, ch0, PRE_POST_KERNEL_SIZE, padding=pad)
        block = ResBlock1 if cfg.resblock == "1" else ResBlock2
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True)):
            ch_in, ch_out = ch0 // 2**i, ch0 // 2 ** (i + 1)
            up = nn.ConvTranspose1d(ch_in, ch_out, kernel, stride=rate, padding=(kernel - rate) // 2)
            init_normal(up, std=INIT_STD)
            self.ups.append(weight_norm(up))
            for k, dilations in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True):
                self.resblocks.append(block(ch_out, k, tuple(dilations), cfg.leaky_slope))
        ch_last = ch0 // 2 ** len(cfg.upsample_rates)
        self.conv_post = nn.Conv1d(ch_last, 1, PRE_POST_KERNEL_SIZE, padding=pad, bias=cfg.conv_post_bias)
        if gin_channels > 0:
            self.cond_layer = nn.Conv1d(gin_channels, ch0, 1)

    def forward(self, z: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """Synthesize a waveform.

        Args:
            z: [B, C, T] latent frames.
            g: [B, gin, 1] speaker vector, or None.

        Returns:
            [B, 1, T * hop] waveform in [-1, 1].

        Raises:
            ValueError: ``g`` is given but the generator has ``gin_channels=0``.
        """
        x = self.conv_pre(z)  # [B, ch0, T]
        if g is not None:
            if self.gin_channels == 0:
                raise ValueError(
                    f"Generator got a speaker vector of shape {tuple(g.shape)} but was built with "
                    "gin_channels=0"
                )
            x = x + self.cond_layer(g)  # [B, ch0, 1] broadcast over T
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, self.cfg.leaky_slope))  # [B, ch0 / 2^(i+1), T * prod(rates[:i+1])]
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            acc = blocks[0](x)
            for block in blocks[1:]:
                acc = acc + block(x)
            x = acc / self.num_kernels
        x = F.leaky_relu(x, self.cfg.final_leaky_slope)
        return torch.tanh(self.conv_post(x))  # [B, 1, T * hop]

    def remove_weight_norm(self) -> int:
        """Fold every weight-norm parametrization into plain weights (for inference).

        Outputs are unchanged; :func:`~vits_surgery.models.commons.restore_weight_norms`
        re-applies it for training.

        Returns:
            Number of layers folded.
        """
        return remove_weight_norms(self)

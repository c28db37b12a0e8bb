"""Relative-position transformer of the VITS text encoder.

Multi-head self-attention with learned relative-position embeddings for keys and values
(Shaw et al. 2018, "Self-Attention with Relative Position Representations"), clipped to a
window of ``window_size`` positions each side, followed by a convolutional feed-forward
network; post-norm residual blocks.

Sub-module names are Coqui TTS 0.28's (``attn_layers``, ``norm_layers_1``, ``ffn_layers``,
``norm_layers_2``; ``conv_q/k/v/o``, ``emb_rel_k/v``; ``conv_1/conv_2``), which are also the
original VITS names.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .norms import LayerNorm

__all__ = ["RelativePositionMultiHeadAttention", "FeedForward", "Encoder", "MASK_FILL_VALUE"]

MASK_FILL_VALUE = -1e4
"""Score given to masked key positions before the softmax (VITS / Coqui use -1e4)."""


def _band_indices(length: int, window: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Index tables between absolute ``[T, T]`` and relative ``[T, 2w+1]`` layouts.

    Returns:
        (to_absolute [T, T], to_relative [T, 2w+1]) long tensors. ``to_absolute[i, j]`` is the
        relative slot ``j - i + w`` of key ``j`` for query ``i``, or ``2w + 1`` (a zero pad slot)
        outside the window. ``to_relative[i, r]`` is the key ``i + r - w``, or ``T`` (a zero pad
        slot) outside the sequence.
    """
    pos = torch.arange(length, device=device)
    offset = pos.view(1, -1) - pos.view(-1, 1)  # [T, T] j - i
    to_absolute = torch.where(offset.abs() <= window, offset + window, torch.full_like(offset, 2 * window + 1))
    slots = torch.arange(2 * window + 1, device=device)
    keys = pos.view(-1, 1) + slots.view(1, -1) - window  # [T, 2w+1]
    to_relative = torch.where((keys >= 0) & (keys < length), keys, torch.full_like(keys, length))
    return to_absolute, to_relative


class RelativePositionMultiHeadAttention(nn.Module):
    """Multi-head attention with windowed relative-position embeddings.

    Args:
        channels: input (and query/key/value) width C.
        out_channels: output width.
        n_heads: heads; ``channels`` must be divisible by it.
        window_size: relative positions ``-w..w`` have embeddings; farther ones get none.
        p_dropout: dropout on the attention weights.
    """

    def __init__(self, channels: int, out_channels: int, n_heads: int, window_size: int, p_dropout: float = 0.0) -> None:
        super().__init__()
        if channels % n_heads != 0:
            raise ValueError(f"attention channels ({channels}) must be divisible by n_heads ({n_heads})")
        if window_size < 0:
            raise ValueError(f"attention window_size must be >= 0, got {window_size}")
        self.n_heads = n_heads
        self.window_size = window_size
        self.head_channels = channels // n_heads
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, out_channels, 1)
        self.drop = nn.Dropout(p_dropout)
        std = self.head_channels**-0.5
        self.emb_rel_k = nn.Parameter(torch.randn(1, 2 * window_size + 1, self.head_channels) * std)
        self.emb_rel_v = nn.Parameter(torch.randn(1, 2 * window_size + 1, self.head_channels) * std)
        for conv in (self.conv_q, self.conv_k, self.conv_v):
            nn.init.xavier_uniform_(conv.weight)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        return x.view(b, self.n_heads, self.head_channels, t).transpose(2, 3)  # [B, h, T, d]

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """Self-attention over the time axis.

        Args:
            x: [B, C, T].
            attn_mask: [B, 1, T, T], 1 where query i may attend key j.

        Returns:
            [B, out_channels, T].
        """
        b, c, t = x.shape
        scale = math.sqrt(self.head_channels)
        q = self._split_heads(self.conv_q(x))  # [B, h, T, d]
        k = self._split_heads(self.conv_k(x))  # [B, h, T, d]
        v = self._split_heads(self.conv_v(x))  # [B, h, T, d]
        # scaling after each product (not on q) reproduces Coqui's float32 results bit for bit
        scores = torch.matmul(q, k.transpose(-2, -1)) / scale  # [B, h, T, T]
        to_absolute, to_relative = _band_indices(t, self.window_size, x.device)
        rel_logits = torch.matmul(q, self.emb_rel_k[0].transpose(0, 1))  # [B, h, T, 2w+1]
        rel_logits = F.pad(rel_logits, (0, 1))  # [B, h, T, 2w+2], last slot = 0
        scores = scores + torch.gather(rel_logits, 3, to_absolute.expand(b, self.n_heads, t, t)) / scale
        scores = scores.masked_fill(attn_mask == 0, MASK_FILL_VALUE)
        p_attn = self.drop(torch.softmax(scores, dim=-1))  # [B, h, T, T]
        out = torch.matmul(p_attn, v)  # [B, h, T, d]
        band = torch.gather(F.pad(p_attn, (0, 1)), 3, to_relative.expand(b, self.n_heads, t, -1))  # [B, h, T, 2w+1]
        out = out + torch.matmul(band, self.emb_rel_v[0])  # [B, h, T, d]
        out = out.transpose(2, 3).reshape(b, c, t)  # [B, C, T]
        return self.conv_o(out)


class FeedForward(nn.Module):
    """Two "same"-padded convolutions with a ReLU, masked at the input of each.

    Args:
        in_channels: input width.
        out_channels: output width.
        filter_channels: inner width.
        kernel_size: odd kernel of both convolutions.
        p_dropout: dropout after the activation.
    """

    def __init__(self, in_channels: int, out_channels: int, filter_channels: int, kernel_size: int, p_dropout: float = 0.0) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"feed-forward kernel_size must be odd, got {kernel_size}")
        self.conv_1 = nn.Conv1d(in_channels, filter_channels, kernel_size, padding=kernel_size // 2)
        self.conv_2 = nn.Conv1d(filter_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.drop = nn.Dropout(p_dropout)

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        """Args: x [B, C_in, T], x_mask [B, 1, T]. Returns: [B, C_out, T], zero where masked."""
        h = self.drop(torch.relu(self.conv_1(x * x_mask)))  # [B, F, T]
        return self.conv_2(h * x_mask) * x_mask


class Encoder(nn.Module):
    """Post-norm transformer stack: ``x = norm1(x + attn(x)); x = norm2(x + ffn(x))`` per layer.

    Args:
        hidden_channels: width C.
        filter_channels: FFN inner width.
        n_heads: attention heads.
        n_layers: blocks.
        kernel_size: FFN kernel.
        p_dropout: dropout on the attention weights, after the FFN activation and on each
            residual branch.
        window_size: relative attention window.
    """

    def __init__(
        self,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int,
        p_dropout: float,
        window_size: int,
    ) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.drop = nn.Dropout(p_dropout)
        self.attn_layers = nn.ModuleList()
        self.norm_layers_1 = nn.ModuleList()
        self.ffn_layers = nn.ModuleList()
        self.norm_layers_2 = nn.ModuleList()
        for _ in range(n_layers):
            self.attn_layers.append(
                RelativePositionMultiHeadAttention(hidden_channels, hidden_channels, n_heads, window_size, p_dropout)
            )
            self.norm_layers_1.append(LayerNorm(hidden_channels))
            self.ffn_layers.append(FeedForward(hidden_channels, hidden_channels, filter_channels, kernel_size, p_dropout))
            self.norm_layers_2.append(LayerNorm(hidden_channels))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        """Args: x [B, C, T], x_mask [B, 1, T]. Returns: [B, C, T], zero where masked."""
        attn_mask = x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)  # [B, 1, T, T]
        x = x * x_mask
        for attn, norm_1, ffn, norm_2 in zip(self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2, strict=True):
            x = norm_1(x + self.drop(attn(x, attn_mask)))
            x = norm_2(x + self.drop(ffn(x, x_mask)))
        return x * x_mask

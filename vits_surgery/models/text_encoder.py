"""Prior text encoder: token embedding, relative-position transformer, projection to (m_p, logs_p)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ..config import TextEncoderConfig
from .attention import Encoder
from .commons import length_mask

__all__ = ["TextEncoder", "TextEncoderOutput"]


class TextEncoderOutput(NamedTuple):
    """Output of :class:`TextEncoder`."""

    hidden: torch.Tensor
    """[B, H, T_x] transformer output (H includes language channels, if any), zero where masked."""
    m_p: torch.Tensor
    """[B, C, T_x] prior means, zero where masked."""
    logs_p: torch.Tensor
    """[B, C, T_x] prior log standard deviations, zero where masked."""
    mask: torch.Tensor
    """[B, 1, T_x] float mask (1 = valid token)."""


class TextEncoder(nn.Module):
    """VITS prior encoder (``enc_p`` / Coqui ``text_encoder``).

    The embedding (init N(0, H^-0.5)) is scaled by sqrt(H). With
    ``cfg.language_embedding_channels = L > 0`` (Coqui multilingual models) a language vector
    is appended to every token embedding and the transformer and projection work on H + L
    channels.

    Args:
        cfg: text-encoder slice of the config.
        out_channels: C, channels of m_p and logs_p (the latent width).
    """

    def __init__(self, cfg: TextEncoderConfig, out_channels: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.out_channels = out_channels
        hidden = cfg.hidden_channels
        width = hidden + cfg.language_embedding_channels
        self.hidden_channels = width
        self.emb = nn.Embedding(cfg.n_vocab, hidden)
        nn.init.normal_(self.emb.weight, 0.0, hidden**-0.5)
        self.encoder = Encoder(
            width, cfg.filter_channels, cfg.n_heads, cfg.n_layers, cfg.kernel_size, cfg.p_dropout, cfg.window_size
        )
        self.proj = nn.Conv1d(width, 2 * out_channels, 1)

    def _embed(self, tokens: torch.Tensor, lang_emb: torch.Tensor | None) -> torch.Tensor:
        n_lang = self.cfg.language_embedding_channels
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, T_x], got shape {tuple(tokens.shape)}")
        x = self.emb(tokens) * math.sqrt(self.cfg.hidden_channels)  # [B, T, H]
        if n_lang == 0:
            if lang_emb is not None:
                raise ValueError("lang_emb was given but text_encoder.language_embedding_channels is 0")
            return x.transpose(1, 2)  # [B, H, T]
        if lang_emb is None:
            raise ValueError(f"text_encoder.language_embedding_channels is {n_lang}, so lang_emb [B, {n_lang}, 1] is required")
        if lang_emb.dim() == 2:
            lang_emb = lang_emb.unsqueeze(-1)
        if lang_emb.shape[1] != n_lang:
            raise ValueError(f"lang_emb has {lang_emb.shape[1]} channels, expected {n_lang} (shape {tuple(lang_emb.shape)})")
        lang = lang_emb.to(x.dtype).expand(x.shape[0], n_lang, x.shape[1])  # [B, L, T]
        return torch.cat([x.transpose(1, 2), lang], dim=1)  # [B, H + L, T]

    def forward(
        self, tokens: torch.Tensor, lengths: torch.Tensor, lang_emb: torch.Tensor | None = None
    ) -> TextEncoderOutput:
        """Encode token ids.

        Args:
            tokens: [B, T_x] long token ids.
            lengths: [B] valid lengths.
            lang_emb: [B, L, 1] (or [B, L]) language vector; required iff L > 0.

        Returns:
            :class:`TextEncoderOutput` (hidden [B, H(+L), T_x], m_p, logs_p [B, C, T_x], mask [B, 1, T_x]).
        """
        x = self._embed(tokens, lang_emb)  # [B, H(+L), T]
        mask = length_mask(lengths, tokens.shape[1], dtype=x.dtype).to(x.device)  # [B, 1, T]
        x = self.encoder(x * mask, mask)  # [B, H(+L), T]
        stats = self.proj(x) * mask  # [B, 2C, T]
        m_p, logs_p = torch.split(stats, self.out_channels, dim=1)
        return TextEncoderOutput(x, m_p, logs_p, mask)

"""Durations by the voice's own alignment: posterior encoder, flow, MAS against the text prior.

The one implementation of the ``"mas"`` route: the cadence cache
(:class:`~vits_surgery.durations.cache.MASDurations`), :func:`~vits_surgery.durations.api.donor_durations`
and the donor diagnosis all call :func:`posterior_durations`.
"""

from __future__ import annotations

import torch

from ..batch import Batch
from ..models.text_encoder import TextEncoderOutput
from ..models.vits import VITS

__all__ = ["posterior_durations"]


@torch.no_grad()
def posterior_durations(
    model: VITS,
    batch: Batch,
    text: TextEncoderOutput | None = None,
    g: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Integer frames per token of each utterance of ``batch``.

    The model runs as it is (the caller sets eval mode); nothing is trained.

    Args:
        model: the voice (its posterior encoder and flow must be trained).
        batch: tokens, token lengths, spectrograms and their lengths, on the model's device.
        text: the text encoder's output on ``batch`` (computed here when None).
        g: [B, gin, 1] speaker vector, or None (single speaker).
        noise: [B, C, T_y] posterior noise (standard normal draws); None = the posterior mean.

    Returns:
        [B, T_x] long frames per token (0 on padding); row ``i`` sums to ``batch.spec_lengths[i]``.
    """
    if text is None:
        text = model.encode_text(batch.tokens, batch.token_lengths)
    if noise is None:
        noise = torch.zeros(len(batch), model.config.inter_channels, batch.spec.shape[-1])
    noise = noise.to(device=batch.spec.device, dtype=batch.spec.dtype)
    z, _, _, y_mask = model.encode_audio(batch.spec, batch.spec_lengths, g, noise)
    g32 = g.float() if g is not None else None
    z_p = model.flow(z.float(), y_mask.float(), g=g32).z  # [B, C, T_y]
    path = model.align(z_p, text.m_p.float(), text.logs_p.float(), text.mask.float(), y_mask.float())  # [B, T_x, T_y]
    return path.sum(dim=2).round().long()

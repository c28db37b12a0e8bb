"""The training batch passed from data loaders to the model and trainer."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

__all__ = ["Batch"]


@dataclass
class Batch:
    """A padded batch of utterances.

    Attributes:
        tokens: [B, T_x] token ids (padded with 0).
        token_lengths: [B].
        spec: [B, F, T_y] linear spectrogram (``audio.linear_spectrogram``).
        spec_lengths: [B].
        wav: [B, 1, N] waveform, N = T_y * hop (zero padded).
        wav_lengths: [B] samples.
        speakers: [B] speaker ids, or None for single-speaker data.
        texts: the raw texts.
        ids: utterance ids (file stems).
    """

    tokens: torch.Tensor
    token_lengths: torch.Tensor
    spec: torch.Tensor
    spec_lengths: torch.Tensor
    wav: torch.Tensor
    wav_lengths: torch.Tensor
    speakers: torch.Tensor | None = None
    texts: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str) -> Batch:
        """Copy with every tensor moved to ``device``."""
        values = {}
        for f in fields(self):
            v = getattr(self, f.name)
            values[f.name] = v.to(device) if isinstance(v, torch.Tensor) else v
        return Batch(**values)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

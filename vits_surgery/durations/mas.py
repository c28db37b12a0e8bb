"""Durations by the voice's own alignment: posterior encoder, flow, MAS against the text prior.

The one implementation of the ``"mas"`` route: the cadence cache
(:class:`~vits_surgery.durations.cache.MASDurations`), :func:`~vits_surgery.durations.api.donor_durations`
and the donor diagnosis all call :func:`posterior_durations` (or :func:`posterior_alignment`,
which also gives the prior fit).

**Prior fit.** Along the MAS path, the mean over an utterance's frames of the Gaussian
log-likelihood of ``z_p`` under the aligned token's prior, per channel (nats per frame per
channel). Speech that the voice itself could have produced fits its prior well; another voice
pushed through the same posterior encoder and flow fits it worse. :func:`prior_fit_gap` compares
a donor's fit with the fit of the voice's own synthesis of the donor's texts: the gap tells a
donor that sounds like the recipient (MAS durations are right) from another voice (a
speaker-independent aligner is).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..batch import Batch
from ..models.text_encoder import TextEncoderOutput
from ..models.vits import VITS

__all__ = ["PosteriorAlignment", "PriorFitGap", "posterior_alignment", "posterior_durations", "prior_fit_gap"]


@dataclass
class PosteriorAlignment:
    """MAS through the posterior, with the prior fit along the path.

    Attributes:
        durations: [B, T_x] long frames per token (0 on padding).
        fit: [B] mean over valid frames of log N(z_p; m_p, exp(logs_p)) of the aligned token,
            per channel (nats per frame per channel).
        fit_z: [B] the same without the log-std and 2π terms: -0.5 times the mean squared
            z-score of ``z_p`` under the aligned prior.
    """

    durations: torch.Tensor
    fit: torch.Tensor
    fit_z: torch.Tensor


@torch.no_grad()
def posterior_alignment(
    model: VITS,
    batch: Batch,
    text: TextEncoderOutput | None = None,
    g: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> PosteriorAlignment:
    """Durations by MAS of each utterance of ``batch``, and how well its ``z_p`` fits the prior.

    The model runs as it is (the caller sets eval mode); nothing is trained. Arguments as
    :func:`posterior_durations`.
    """
    if text is None:
        text = model.encode_text(batch.tokens, batch.token_lengths)
    if noise is None:
        noise = torch.zeros(len(batch), model.config.inter_channels, batch.spec.shape[-1])
    noise = noise.to(device=batch.spec.device, dtype=batch.spec.dtype)
    z, _, _, y_mask = model.encode_audio(batch.spec, batch.spec_lengths, g, noise)
    g32 = g.float() if g is not None else None
    y_mask = y_mask.float()  # [B, 1, T_y]
    z_p = model.flow(z.float(), y_mask, g=g32).z  # [B, C, T_y]
    m_p, logs_p = text.m_p.float(), text.logs_p.float()  # [B, C, T_x]
    path = model.align(z_p, m_p, logs_p, text.mask.float(), y_mask)  # [B, T_x, T_y]
    m_e, logs_e = model.expand_prior(path, m_p, logs_p)  # [B, C, T_y]
    z2 = ((z_p - m_e) * torch.exp(-logs_e)) ** 2  # [B, C, T_y]
    quad = (-0.5 * z2 * y_mask).sum(dim=(1, 2))  # [B]
    logdet = ((-logs_e - 0.5 * math.log(2 * math.pi)) * y_mask).sum(dim=(1, 2))  # [B]
    count = y_mask.sum(dim=(1, 2)).clamp_min(1) * z_p.shape[1]  # [B] frames * channels
    return PosteriorAlignment(path.sum(dim=2).round().long(), (quad + logdet) / count, quad / count)


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
    return posterior_alignment(model, batch, text, g, noise).durations


@dataclass
class PriorFitGap:
    """A donor's prior fit against the voice's own synthesis of the donor's texts.

    Attributes:
        donor: mean prior fit of the donor's utterances (nats per frame per channel).
        reference: mean prior fit of the voice's synthesis of the first ``references`` texts.
        gap: ``reference - donor``: near 0 for a donor that sounds like the voice, large for
            another voice.
        donor_z, reference_z, gap_z: the same on the fit without the log-std terms.
        utterances: donor utterances measured; references: reference utterances synthesized.
        per_utterance: the donor's fit of each utterance (in the order read).
    """

    donor: float
    reference: float
    gap: float
    donor_z: float
    reference_z: float
    gap_z: float
    utterances: int
    references: int
    per_utterance: list[float]

    def to_dict(self) -> dict[str, float | int | list[float]]:
        """JSON-ready."""
        return dict(vars(self))


def _synthesis_batch(model: VITS, tokens: torch.Tensor, speaker: torch.Tensor | None, seed: int,
                     max_frames: int | None = None) -> Batch:
    """The voice's own rendering of ``tokens`` [T_x] (seeded noise, its own predicted durations,
    scaled down to at most ``max_frames`` in all when given) as a one-item batch."""
    from ..audio import spectrogram

    device = tokens.device
    gen = torch.Generator().manual_seed(seed)
    # the voice's own timing, drawn as ``infer`` draws it (same generator order)
    ids = tokens.view(1, -1)
    g = model.speaker_vector(speaker.view(1) if speaker is not None else None)
    enc = model.encode_text(ids, torch.tensor([ids.shape[1]], device=device))
    durations = model.predict_durations(enc, g, model.config.noise_scale_w, model.config.length_scale, gen)[0]
    if max_frames is not None and float(durations.sum()) > max_frames:
        # an untrained or broken duration predictor can ask for minutes of audio: scale it down
        durations = torch.floor(durations * (max_frames / float(durations.sum()))).clamp(min=1)
    out = model.infer(ids, speaker=speaker, generator=gen, durations=durations.view(1, -1))
    wav = out.audio[0, :, : int(out.audio_lengths[0])].float()  # [1, N]
    spec = spectrogram(wav, model.config.audio)  # [1, F, T_y]
    n = torch.tensor([tokens.shape[0]], device=device)
    return Batch(tokens=tokens.view(1, -1), token_lengths=n, spec=spec.to(device),
                 spec_lengths=torch.tensor([spec.shape[-1]], device=device), wav=wav.view(1, 1, -1).to(device),
                 wav_lengths=torch.tensor([wav.shape[-1]], device=device),
                 speakers=speaker.view(1) if speaker is not None else None)


@torch.no_grad()
def prior_fit_gap(model: VITS, batches: Iterable[Batch], max_utterances: int = 12, references: int = 6,
                  seed: int = 0) -> PriorFitGap:
    """The prior-fit gap of a donor (see the module's docstring).

    The model runs in eval mode and fp32 here (its modes are restored); nothing is trained.

    Args:
        model: the recipient.
        batches: the donor's utterances, on the model's device; the first ``max_utterances`` are
            read (the iterable is not read further).
        max_utterances: donor utterances measured (posterior mean, no noise).
        references: how many of those utterances' token ids the voice synthesizes
            (``model.infer``, prior noise seeded ``seed + i``) for the reference fit.
        seed: first seed of the reference syntheses (timed by the voice's duration predictor,
            its noise drawn from the same seed; at most 3x the donor utterance's frames).

    Raises:
        ValueError: no utterance in ``batches``.
    """
    modes = {module: module.training for module in model.modules()}
    model.eval()
    fits: list[float] = []
    fits_z: list[float] = []
    texts: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []
    try:
        with torch.autocast(next(model.parameters()).device.type, enabled=False):
            for batch in batches:
                res = posterior_alignment(model, batch, g=model.speaker_vector(batch.speakers))
                take = min(len(batch), max_utterances - len(fits))
                fits += res.fit[:take].tolist()
                fits_z += res.fit_z[:take].tolist()
                for i in range(take):
                    if len(texts) < references:
                        speaker = batch.speakers[i] if batch.speakers is not None else None
                        n = int(batch.token_lengths[i])
                        texts.append((batch.tokens[i, :n], speaker, res.durations[i, :n]))
                if len(fits) >= max_utterances:
                    break
            if not fits:
                raise ValueError("no donor utterance to measure the prior fit on")
            ref, ref_z = [], []
            for i, (tokens, speaker, durations) in enumerate(texts):
                # the reference is at most 3x as long as the donor's utterance of the same text
                one = _synthesis_batch(model, tokens, speaker, seed + i, max_frames=3 * max(1, int(durations.sum())))
                res = posterior_alignment(model, one, g=model.speaker_vector(one.speakers))
                ref.append(float(res.fit[0]))
                ref_z.append(float(res.fit_z[0]))
    finally:
        for module, training in modes.items():
            module.training = training
    donor, donor_z = sum(fits) / len(fits), sum(fits_z) / len(fits_z)
    reference, reference_z = sum(ref) / len(ref), sum(ref_z) / len(ref_z)
    return PriorFitGap(donor, reference, reference - donor, donor_z, reference_z, reference_z - donor_z,
                       len(fits), len(ref), fits)

"""Shared helpers of the surgery tests: tiny models and batches built from real speech."""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from vits_surgery import audio
from vits_surgery.batch import Batch
from vits_surgery.config import VITSConfig, preset
from vits_surgery.models.vits import VITS, TrainNoise

SENTENCES = (
    "The quick brown fox.",
    "A tiny voice speaks.",
    "Hello there, friend!",
    "Surgery on a voice.",
)


def tiny_config(**overrides) -> VITSConfig:
    """The ``tiny`` preset with dotted overrides."""
    return preset("tiny", **overrides)


def tiny_model(seed: int = 0, **overrides) -> VITS:
    """A tiny VITS (with discriminator) built from a fixed seed."""
    torch.manual_seed(seed)
    return VITS(tiny_config(**overrides))


@functools.lru_cache(maxsize=8)
def _speech(text: str, sample_rate: int) -> np.ndarray:
    """espeak-ng speech of ``text`` at ``sample_rate``.

    Without espeak-ng the calling test is skipped, with the reason (never a silent stand-in:
    the surgery tests are about speech, and CI fails on such a skip).
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("the surgery tests train on real speech from espeak-ng: apt-get install espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.wav"
        subprocess.run([exe, "-w", str(path), text], check=True, capture_output=True)
        wav, _ = audio.load_audio(path, sample_rate=sample_rate)
    return wav


def speech_batch(config: VITSConfig, n: int = 2, seed: int = 0, max_seconds: float = 0.6) -> Batch:
    """A padded batch of ``n`` espeak-ng utterances with random token ids."""
    cfg = config.audio
    hop = cfg.hop_length
    rng = np.random.default_rng(seed)
    wavs = []
    for i in range(n):
        limit = int(max_seconds * (1.0 - 0.12 * (i % 4)) * cfg.sample_rate)
        wav = _speech(SENTENCES[i % len(SENTENCES)], cfg.sample_rate)[:limit]
        wav = wav[: (len(wav) // hop) * hop]
        wavs.append(torch.from_numpy(wav.copy()))
    frames = [len(w) // hop for w in wavs]
    t_y = max(frames)
    wav = torch.zeros(n, 1, t_y * hop)
    for i, w in enumerate(wavs):
        wav[i, 0, : len(w)] = w
    spec = audio.spectrogram(wav, cfg)[..., :t_y]  # [B, F, T_y]
    spec_lengths = torch.tensor(frames)
    spec = spec * (torch.arange(t_y)[None, None, :] < spec_lengths[:, None, None])
    token_lengths = torch.tensor([int(rng.integers(max(4, f // 8), max(5, f // 4))) for f in frames])
    tokens = torch.zeros(n, int(token_lengths.max()), dtype=torch.long)
    for i, length in enumerate(token_lengths.tolist()):
        tokens[i, :length] = torch.from_numpy(rng.integers(1, config.text_encoder.n_vocab, length))
    return Batch(
        tokens=tokens,
        token_lengths=token_lengths,
        spec=spec,
        spec_lengths=spec_lengths,
        wav=wav,
        wav_lengths=spec_lengths * hop,
        texts=[SENTENCES[i % len(SENTENCES)] for i in range(n)],
        ids=[f"utt{i}" for i in range(n)],
    )


def explicit_noise(model: VITS, batch: Batch, seed: int = 0) -> TrainNoise:
    """Every random draw of one training forward, fixed."""
    gen = torch.Generator().manual_seed(seed)
    b, t_y = batch.spec.shape[0], batch.spec.shape[-1]
    c = model.config.inter_channels
    t_x = batch.tokens.shape[1]
    max_start = (batch.spec_lengths - model.config.segment_size + 1).clamp(min=1)
    starts = (torch.rand(b, generator=gen) * max_start).long()
    return TrainNoise(
        posterior=torch.randn(b, c, t_y, generator=gen),
        duration=torch.randn(b, 2, t_x, generator=gen),
        segment_starts=starts,
    )


def reference_losses(model: VITS, batch: Batch, noise: TrainNoise) -> dict[str, torch.Tensor]:
    """Every generator term of the unpruned VITS step (``model.forward``, joint discriminator)."""
    from vits_surgery import losses as L
    from vits_surgery.models.commons import slice_segments

    out = model(batch.tokens, batch.token_lengths, batch.spec, batch.spec_lengths, batch.speakers, noise=noise)
    cfg = model.config
    seg, hop = cfg.segment_size, cfg.audio.hop_length
    spec_slice = slice_segments(batch.spec, out.segment_starts, seg)
    mel_target = audio.amp_to_log(
        audio.spec_to_mel(spec_slice, cfg.audio.sample_rate, cfg.audio.n_fft, cfg.audio.n_mels,
                          cfg.audio.mel_fmin, cfg.audio.mel_fmax)
    )
    y = slice_segments(batch.wav, out.segment_starts * hop, seg * hop)
    scores = model.discriminator(y, out.audio_hat)
    return {
        "gen/kl": L.kl_loss(out.z_p, out.logs_q, out.m_p_expanded, out.logs_p_expanded, out.y_mask),
        "gen/dur": L.duration_loss(out.duration_nll, out.x_mask),
        "gen/mel": L.mel_loss(mel_target, audio.log_mel(out.audio_hat, cfg.audio)),
        "gen/adv": L.generator_adversarial_loss(scores.fake_scores),
        "gen/fm": L.feature_matching_loss(scores.real_features, scores.fake_features),
    }

"""The composed VITS on the tiny preset: shapes, masking, gradients, determinism, and learning."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch

from vits_surgery import losses
from vits_surgery.audio import linear_spectrogram, load_audio, log_mel, spec_to_mel
from vits_surgery.config import preset
from vits_surgery.models.commons import remove_weight_norms, restore_weight_norms, slice_segments
from vits_surgery.models.vits import ORGANS, VITS, TrainNoise
from vits_surgery.text.tokenizer import Tokenizer

CFG = preset("tiny")


def _batch(n_frames=(60, 48), n_tokens=(21, 15), seed=0):
    g = torch.Generator().manual_seed(seed)
    hop = CFG.audio.hop_length
    b = len(n_frames)
    wav = torch.zeros(b, 1, max(n_frames) * hop)
    for i, f in enumerate(n_frames):
        wav[i, 0, : f * hop] = 0.3 * torch.randn(f * hop, generator=g)
    spec = linear_spectrogram(wav[:, 0], CFG.audio.n_fft, CFG.audio.hop_length, CFG.audio.win_length)
    spec_lengths = torch.tensor(n_frames)
    for i, f in enumerate(n_frames):
        spec[i, :, f:] = 0
    tokens = torch.randint(4, CFG.text_encoder.n_vocab, (b, max(n_tokens)), generator=g)
    token_lengths = torch.tensor(n_tokens)
    for i, t in enumerate(n_tokens):
        tokens[i, t:] = 0
    return tokens, token_lengths, spec, spec_lengths, wav


def _all_losses(model: VITS, out, wav, spec):
    cfg = model.config
    hop = cfg.audio.hop_length
    starts = out.segment_starts
    real = slice_segments(wav, starts * hop, cfg.segment_size * hop)
    mel_target = torch.log(torch.clamp(spec_to_mel(slice_segments(spec, starts, cfg.segment_size), cfg.audio.sample_rate,
                                                    cfg.audio.n_fft, cfg.audio.n_mels, cfg.audio.mel_fmin,
                                                    cfg.audio.mel_fmax), min=1e-5))
    mel_hat = log_mel(out.audio_hat[:, 0], cfg.audio)
    d = model.discriminator(real, out.audio_hat)
    return {
        "gen/kl": losses.kl_loss(out.z_p, out.logs_q, out.m_p_expanded, out.logs_p_expanded, out.y_mask),
        "gen/dur": losses.duration_loss(out.duration_nll, out.x_mask),
        "gen/mel": losses.mel_loss(mel_target, mel_hat),
        "gen/adv": losses.generator_adversarial_loss(d.fake_scores),
        "gen/fm": losses.feature_matching_loss(d.real_features, d.fake_features),
    }


def test_training_forward_shapes_and_masks() -> None:
    torch.manual_seed(0)
    model = VITS(CFG)
    tokens, tl, spec, sl, _ = _batch()
    out = model(tokens, tl, spec, sl, generator=torch.Generator().manual_seed(1))
    c, b = CFG.inter_channels, 2
    assert out.z.shape == (b, c, 60) and out.m_p.shape == (b, c, 21)
    assert out.path.shape == (b, 21, 60)
    assert out.audio_hat.shape == (b, 1, CFG.segment_size * CFG.audio.hop_length)
    assert out.duration_nll.shape == (b,)
    # each valid frame belongs to exactly one valid token; padding owns nothing
    assert torch.equal(out.path.sum(1)[1, :48], torch.ones(48)) and out.path[1, :, 48:].abs().sum() == 0
    assert out.path[1, 15:].abs().sum() == 0
    assert out.z[1, :, 48:].abs().sum() == 0 and out.m_p[1, :, 15:].abs().sum() == 0


def test_gradients_reach_every_parameter_of_every_organ() -> None:
    torch.manual_seed(0)
    model = VITS(CFG)
    with torch.no_grad():  # VITS zero-initialises some output layers; give them weights
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    tokens, tl, spec, sl, wav = _batch()
    out = model(tokens, tl, spec, sl, generator=torch.Generator().manual_seed(1))
    gen = _all_losses(model, out, wav, spec)
    total = sum(gen.values())
    d = model.discriminator(slice_segments(wav, out.segment_starts * CFG.audio.hop_length,
                                           CFG.segment_size * CFG.audio.hop_length), out.audio_hat.detach())
    disc = losses.discriminator_loss(d.real_scores, d.fake_scores)
    (total + disc["disc/real"] + disc["disc/fake"]).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    # the SDP's first ConvFlow acts only on the dropped channel at inference but trains in nll
    assert missing == [], missing
    for organ in ORGANS:
        if getattr(model, organ) is not None:
            assert any(p.grad is not None for p in getattr(model, organ).parameters()), organ


def test_duration_loss_does_not_reach_the_text_encoder() -> None:
    model = VITS(CFG)
    tokens, tl, spec, sl, _ = _batch()
    out = model(tokens, tl, spec, sl, decode=False)
    losses.duration_loss(out.duration_nll, out.x_mask).backward()
    assert all(p.grad is None for p in model.text_encoder.parameters())
    assert any(p.grad is not None for p in model.duration_predictor.parameters())


def test_forward_is_deterministic_with_explicit_noise_and_generator() -> None:
    model = VITS(CFG).eval()
    tokens, tl, spec, sl, _ = _batch()
    a = model(tokens, tl, spec, sl, generator=torch.Generator().manual_seed(3))
    b = model(tokens, tl, spec, sl, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.z, b.z) and torch.equal(a.audio_hat, b.audio_hat) and torch.equal(a.path, b.path)
    noise = TrainNoise(posterior=torch.zeros_like(a.z), duration=torch.zeros(2, 2, 21), segment_starts=torch.tensor([3, 5]))
    c = model(tokens, tl, spec, sl, noise=noise)
    torch.testing.assert_close(c.z, c.m_q * c.y_mask)
    assert torch.equal(c.segment_starts, torch.tensor([3, 5]))


def test_infer_batch_equals_items_and_ignores_padding() -> None:
    torch.manual_seed(0)
    model = VITS(CFG).eval()
    tokens, tl, *_ = _batch()
    tokens[1, 15:] = 7  # garbage past the length
    with torch.inference_mode():
        both = model.infer(tokens, tl, noise_scale=0.0, noise_scale_w=0.0)
        one = model.infer(tokens[1:, :15], noise_scale=0.0, noise_scale_w=0.0)
    n = int(one.audio_lengths[0])
    assert int(both.audio_lengths[1]) == n
    # The decoder is not masked (as in VITS): biases of padded frames reach the last samples
    # through its receptive field, so compare all but the final frame.
    hop = CFG.audio.hop_length
    torch.testing.assert_close(both.audio[1, :, : n - hop], one.audio[0, :, : n - hop], atol=1e-5, rtol=0)
    assert both.audio[1, :, n:].abs().sum() == 0
    assert torch.equal(both.durations[1, 15:], torch.zeros(6))


def test_infer_controls() -> None:
    torch.manual_seed(0)
    model = VITS(CFG).eval()
    tokens = torch.randint(4, 60, (1, 12))
    with torch.inference_mode():
        g1 = model.infer(tokens, generator=torch.Generator().manual_seed(5))
        g2 = model.infer(tokens, generator=torch.Generator().manual_seed(5))
        slow = model.infer(tokens, noise_scale_w=0.0, length_scale=2.0)
        base = model.infer(tokens, noise_scale_w=0.0, length_scale=1.0)
        forced = model.infer(tokens, durations=torch.full((1, 12), 3.0))
    assert torch.equal(g1.audio, g2.audio)
    assert slow.durations.sum() >= 1.9 * base.durations.sum()
    assert torch.equal(forced.durations, torch.full((1, 12), 3.0)) and forced.audio.shape[-1] == 36 * CFG.audio.hop_length


def test_weight_norm_fold_keeps_inference_output() -> None:
    torch.manual_seed(0)
    model = VITS(CFG).eval()
    tokens = torch.randint(4, 60, (1, 10))
    with torch.inference_mode():
        ref = model.infer(tokens, noise_scale=0.0, noise_scale_w=0.0).audio
    assert remove_weight_norms(model) > 0
    with torch.inference_mode():
        folded = model.infer(tokens, noise_scale=0.0, noise_scale_w=0.0).audio
    torch.testing.assert_close(folded, ref, atol=1e-5, rtol=0)
    assert restore_weight_norms(model) > 0
    assert any("parametrizations" in k for k in model.state_dict())


def test_voice_conversion_needs_speakers_and_runs() -> None:
    with pytest.raises(ValueError, match="multi-speaker"):
        VITS(CFG).voice_conversion(torch.zeros(1, CFG.spec_channels, 10), torch.tensor([10]), 0, 1)
    cfg = CFG.replace(n_speakers=3, gin_channels=8)
    model = VITS(cfg).eval()
    _, _, spec, sl, _ = _batch()
    out = model.voice_conversion(spec, sl, 0, 2)
    assert out.shape == (2, 1, 60 * cfg.audio.hop_length)
    with pytest.raises(ValueError, match="out of range"):
        model.infer(torch.randint(4, 60, (1, 5)), speaker=3)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt-get install espeak-ng)")
def test_tiny_model_learns_real_speech(tmp_path) -> None:
    """A tiny model fit to a few seconds of real speech lowers its mel loss by a large margin."""
    text = "The quick brown fox jumps over the lazy dog."
    wav_path = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav_path), text], check=True)
    audio, _ = load_audio(wav_path, CFG.audio.sample_rate)
    hop = CFG.audio.hop_length
    frames = len(audio) // hop
    wav = torch.from_numpy(audio[: frames * hop]).view(1, 1, -1)
    spec = linear_spectrogram(wav[:, 0], CFG.audio.n_fft, hop, CFG.audio.win_length)
    tokens = torch.tensor([Tokenizer.from_config(CFG.text).encode(text)])
    tl, sl = torch.tensor([tokens.shape[1]]), torch.tensor([spec.shape[-1]])
    torch.manual_seed(0)
    model = VITS(CFG, with_discriminator=False)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    history = []
    for _ in range(120):  # well under a minute on 2 CPU cores
        out = model(tokens, tl, spec, sl, generator=g)
        starts = out.segment_starts
        mel_t = torch.log(torch.clamp(spec_to_mel(slice_segments(spec, starts, CFG.segment_size), CFG.audio.sample_rate,
                                                   CFG.audio.n_fft, CFG.audio.n_mels, CFG.audio.mel_fmin,
                                                   CFG.audio.mel_fmax), min=1e-5))
        mel = losses.mel_loss(mel_t, log_mel(out.audio_hat[:, 0], CFG.audio))
        kl = losses.kl_loss(out.z_p, out.logs_q, out.m_p_expanded, out.logs_p_expanded, out.y_mask)
        loss = 45 * mel + kl + losses.duration_loss(out.duration_nll, out.x_mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(mel))
    first, last = np.mean(history[:5]), np.mean(history[-5:])
    assert last < 0.6 * first, f"mel loss {first:.3f} -> {last:.3f}"

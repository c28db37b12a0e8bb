"""Numerical parity with Coqui TTS 0.28 VITS, from the golden fixtures in ``tests/fixtures/coqui``.

Coqui itself is not needed: ``scripts/make_coqui_fixtures.py`` recorded Coqui's checkpoints,
token ids, inference outputs, training-forward tensors and losses (with the random draws) and
per-organ outputs. Each test loads a fixture with :func:`vits_surgery.convert.coqui.load_coqui`
and compares.
"""

from __future__ import annotations

import functools
import json
import re
import warnings
from pathlib import Path

import pytest
import torch

from vits_surgery import audio, losses
from vits_surgery.config import preset
from vits_surgery.convert.coqui import load_coqui
from vits_surgery.models.commons import length_mask, slice_segments
from vits_surgery.models.vits import VITS, TrainNoise
from vits_surgery.text import PhonemizerError, Tokenizer
from vits_surgery.text.cleaners import clean
from vits_surgery.text.phonemize import phonemize

ROOT = Path(__file__).parent / "fixtures" / "coqui"
FIXTURES = ("graphemes_sdp", "multispeaker_dp_rb2", "legacy_weightnorm_genonly", "phonemes")
TRAINED = ("graphemes_sdp", "multispeaker_dp_rb2", "phonemes")  # fixtures with train/ and organ/ goldens
# Tolerances: the measured max abs differences (x86-64 CPU, torch 2.13; docs/results/parity_diffs.json)
# with a margin of about 3-5x.
WAV_TOL = 5e-6  # waveforms and latents: measured <= 1.2e-6
LOSS_TOL = 5e-5  # scalar losses: measured <= 1.5e-5 (the KL term; the others <= 7.2e-7)
ORGAN_TOL = 5e-5  # organ outputs and spectrograms: measured <= 1.4e-5
MEL_TOL = 2e-4  # log-mels (log of near-zero bins): measured <= 6.2e-5


@functools.cache
def loaded(name: str):
    """(model in eval mode, report) for a fixture; cached across tests (and test modules)."""
    return load_coqui(ROOT / name / "model.pth")


@functools.cache
def golden(name: str) -> dict:
    return torch.load(ROOT / name / "golden.pt", weights_only=True)


@functools.cache
def meta(name: str) -> dict:
    return json.loads((ROOT / name / "meta.json").read_text(encoding="utf-8"))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return float((a - b).abs().max())


def _loss_diff(ours: torch.Tensor | float, coqui: torch.Tensor | float) -> float:
    """|ours - Coqui's| of a scalar loss."""
    return abs(float(ours) - float(coqui))


# ----------------------------------------------------------------------------- inference
@pytest.mark.parametrize("name", FIXTURES)
def test_infer_reproduces_coqui_waveform(name):
    model, _ = loaded(name)
    g = golden(name)
    with torch.no_grad():
        out = model.infer(g["infer/tokens"], g["infer/token_lengths"], speaker=g.get("infer/speaker_ids"),
                          noise_scale=0.0, noise_scale_w=0.0)
    assert torch.equal(out.durations, g["infer/w_ceil"][:, 0])
    assert out.audio.shape == g["infer/wav"].shape
    assert _max_diff(out.audio, g["infer/wav"]) <= WAV_TOL
    assert _max_diff(out.z, g["infer/z"][:, :, : out.z.shape[-1]]) <= WAV_TOL
    assert model.config.length_scale == g["infer/length_scale"]


def test_max_inference_len_cuts_after_the_flow():
    """The phonemes fixture has max_inference_len 100 and a 152-frame utterance."""
    model, report = loaded("phonemes")
    g = golden("phonemes")
    assert model.max_inference_frames == g["infer/max_inference_len"] == 100
    assert int(g["infer/y_lengths"]) > 100
    assert any("max_inference_len" in n for n in report.notes)
    with torch.no_grad():
        out = model.infer(g["infer/tokens"], noise_scale=0.0, noise_scale_w=0.0)
    assert int(out.audio_lengths) == 100 * model.hop_length == g["infer/wav"].shape[-1]
    assert _max_diff(out.z, g["infer/z"][:, :, :100]) <= WAV_TOL


@pytest.mark.parametrize("name", [n for n in FIXTURES if n != "legacy_weightnorm_genonly"])
def test_forced_fractional_durations_are_ceiled_like_coqui(name):
    model, _ = loaded(name)
    g = golden(name)
    assert not torch.equal(g["forced/durations"], g["forced/durations"].ceil())  # really fractional
    with torch.no_grad():
        out = model.infer(g["forced/tokens"], speaker=g.get("infer/speaker_ids"), noise_scale=0.0,
                          noise_scale_w=0.0, durations=g["forced/durations"])
    assert torch.equal(out.durations, g["forced/w_ceil"][:, 0])
    assert int(out.audio_lengths) == int(g["forced/y_lengths"]) * model.hop_length
    assert _max_diff(out.audio, g["forced/wav"]) <= WAV_TOL
    assert _max_diff(out.z, g["forced/z"]) <= WAV_TOL


@pytest.mark.parametrize("name", [n for n in FIXTURES if n != "legacy_weightnorm_genonly"])
def test_batch_inference_matches_coqui_per_item(name):
    model, _ = loaded(name)
    g = golden(name)
    with torch.no_grad():
        out = model.infer(g["batch/tokens"], g["batch/token_lengths"], speaker=g.get("batch/speaker_ids"),
                          noise_scale=0.0, noise_scale_w=0.0)
    assert torch.equal(out.durations, g["batch/w_ceil"][:, 0])
    assert torch.equal(out.audio_lengths, g["batch/y_lengths"] * model.hop_length)
    assert out.audio.shape == g["batch/wav"].shape
    # Coqui leaves decoder output past each item's end; ours is zero there. Compare valid samples.
    valid = length_mask(out.audio_lengths, out.audio.shape[-1])
    assert _max_diff(out.audio * valid, g["batch/wav"] * valid) <= WAV_TOL


def test_legacy_generator_only_file_equals_its_parametrized_twin():
    legacy, report = loaded("legacy_weightnorm_genonly")
    full, _ = loaded("graphemes_sdp")
    a, b = legacy.state_dict(), full.state_dict()
    gen = [k for k in b if not k.startswith("discriminator.")]
    assert all(torch.equal(a[k], b[k]) for k in gen)
    assert {k for k, _ in report.created} == {k for k in b if k.startswith("discriminator.")}
    assert any("weight_g/weight_v" in n for n in report.notes)


# ----------------------------------------------------------------------------- training forward
def _train_forward(name: str):
    model, _ = loaded(name)
    g = golden(name)
    model.train()
    try:
        for m in model.modules():  # the fixtures switch dropout off
            if isinstance(m, torch.nn.Dropout):
                m.eval()
        seg = model.config.segment_size
        spec_lengths = g["train/spec_lengths"].long()
        starts = (g["train/noise/segment_u"] * (spec_lengths - seg + 1)).long().clamp(min=0)  # Coqui's draw
        assert torch.equal(starts, g["train/slice_ids"])
        noise = TrainNoise(posterior=g["train/noise/posterior_eps"], duration=g.get("train/noise/sdp_e_q"),
                           segment_starts=starts)
        with torch.no_grad():
            out = model(g["train/tokens"], g["train/token_lengths"], g["train/spec"], spec_lengths,
                        speakers=g.get("train/speaker_ids"), noise=noise)
    finally:
        model.eval()
    return model, g, out


@pytest.mark.parametrize("name", TRAINED)
def test_training_forward_reproduces_coqui_losses(name):
    model, g, out = _train_forward(name)
    assert torch.equal(out.path, g["train/alignments"])  # our MAS finds Coqui's path (no tie differs)
    for ours, key in ((out.z, "z"), (out.z_p, "z_p"), (out.m_q, "m_q"), (out.logs_q, "logs_q"),
                      (out.m_p_expanded, "m_p"), (out.logs_p_expanded, "logs_p"), (out.audio_hat, "model_outputs")):
        assert _max_diff(ours, g[f"train/{key}"]) <= ORGAN_TOL, key
    kl = losses.kl_loss(out.z_p, out.logs_q, out.m_p_expanded, out.logs_p_expanded, out.y_mask)
    assert _loss_diff(float(kl) * g["train/kl_loss_alpha"], g["train/gen/loss_kl"]) <= LOSS_TOL
    per_item = out.duration_nll / out.x_mask.sum()  # Coqui divides by the batch's token count
    assert _max_diff(per_item, g["train/loss_duration"]) <= LOSS_TOL
    dur = losses.duration_loss(out.duration_nll, out.x_mask) * g["train/dur_loss_alpha"]
    assert _loss_diff(dur, g["train/gen/loss_duration"]) <= LOSS_TOL
    seg = model.config.segment_size
    mel_hat = audio.log_mel(out.audio_hat, model.config.audio)  # mel of the generated slice
    mel_target = slice_segments(g["train/mel"], out.segment_starts, seg)
    assert _max_diff(mel_hat, g["train/mel_slice_hat"]) <= MEL_TOL
    assert torch.equal(mel_target, g["train/mel_slice"])
    mel = losses.mel_loss(mel_target, mel_hat) * g["train/mel_loss_alpha"]
    assert _loss_diff(mel, g["train/gen/loss_mel"]) <= LOSS_TOL


@pytest.mark.parametrize("name", [n for n in TRAINED if "train/loss_disc" in golden(n)])
def test_adversarial_losses_reproduce_coqui(name):
    """Coqui's discriminator loss and the generator's adversarial and feature-matching terms."""
    model, g, out = _train_forward(name)
    hop = model.hop_length
    real = slice_segments(g["train/waveform"], out.segment_starts * hop, model.config.segment_size * hop)
    assert torch.equal(real, g["train/waveform_seg"])
    with torch.no_grad():
        d = model.discriminator(real, out.audio_hat)
    disc = losses.discriminator_loss(d.real_scores, d.fake_scores)
    assert _loss_diff(disc["disc/real"] + disc["disc/fake"], g["train/loss_disc"]) <= LOSS_TOL
    adv = losses.generator_adversarial_loss(d.fake_scores) * g["train/gen_loss_alpha"]
    assert _loss_diff(adv, g["train/gen/loss_gen"]) <= LOSS_TOL
    fm = losses.feature_matching_loss(d.real_features, d.fake_features) * g["train/feat_loss_alpha"]
    assert _loss_diff(fm, g["train/gen/loss_feat"]) <= LOSS_TOL


@pytest.mark.parametrize("name", TRAINED)
def test_spectrogram_and_mel_match_coqui_inside_lengths(name):
    model, _ = loaded(name)
    g = golden(name)
    spec = audio.spectrogram(g["train/waveform"], model.config.audio)
    mel = audio.log_mel(g["train/waveform"], model.config.audio)
    mask = length_mask(g["train/spec_lengths"].long(), spec.shape[-1])  # Coqui zeroes padded frames
    assert _max_diff(spec * mask, g["train/spec"]) <= ORGAN_TOL
    assert _max_diff(mel * mask, g["train/mel"] * mask) <= MEL_TOL


# ----------------------------------------------------------------------------- organs
@pytest.mark.parametrize("name", TRAINED)
def test_organs_reproduce_coqui(name):
    model, _ = loaded(name)
    g = golden(name)
    speaker = lambda key: model.speaker_vector(g[key]) if key in g else None  # noqa: E731
    with torch.no_grad():
        enc = model.encode_text(g["infer/tokens"], g["infer/token_lengths"])
        for ours, key in ((enc.hidden, "x"), (enc.m_p, "m_p"), (enc.logs_p, "logs_p"), (enc.mask, "x_mask")):
            assert _max_diff(ours, g[f"organ/text_encoder/{key}"]) <= ORGAN_TOL, key
        g_inf = model._dp_g(speaker("infer/speaker_ids"))
        logw = model.duration_predictor.infer(enc.hidden, enc.mask, g=g_inf, noise_scale=0.0)
        assert _max_diff(logw, g["organ/duration_predictor/logw"]) <= ORGAN_TOL
        z_in, lengths = g["organ/flow/z_in"], g["organ/flow/lengths"]
        mask = length_mask(lengths, z_in.shape[-1])
        g_train = speaker("train/speaker_ids")
        assert _max_diff(model.flow(z_in, mask, g=g_train).z, g["organ/flow/forward"]) <= ORGAN_TOL
        assert _max_diff(model.flow(z_in, mask, g=g_train, reverse=True).z, g["organ/flow/reverse"]) <= ORGAN_TOL
        wav = model.decoder(g["organ/decoder/z_in"], g=speaker("infer/speaker_ids"))
        assert _max_diff(wav, g["organ/decoder/wav"]) <= ORGAN_TOL


# ----------------------------------------------------------------------------- text
def _texts(name: str) -> list[tuple[str, list[int], str]]:
    """(text, Coqui ids, Coqui's symbol string) for every sentence of a fixture."""
    g, s = golden(name), meta(name)["strings"]
    out = []
    for group, texts in (("infer", [s["infer_text"]]), ("batch", s["batch_texts"]), ("train", s["train_texts"])):
        key = "infer" if group == "infer" else group
        decoded = s[f"{group}_decoded"]
        for row, text in enumerate(texts):
            n = int(g[f"{key}/token_lengths"][row])
            out.append((text, g[f"{key}/tokens"][row, :n].tolist(), decoded[row].replace("<BLNK>", "")))
    return out


@pytest.mark.parametrize("name", TRAINED)
def test_token_ids_from_coqui_symbols(name):
    """Ids from Coqui's own cleaned / phonemized symbols: the vocabulary and blank layout."""
    model, _ = loaded(name)
    tok = Tokenizer.from_config(model.config)
    assert list(model.config.text.symbols) == meta(name)["strings"]["vocabulary"]
    for _text, ids, symbols in _texts(name):
        assert tok.ids_from_symbols(list(symbols)) == ids


@pytest.mark.parametrize("name", ["graphemes_sdp", "multispeaker_dp_rb2"])
def test_grapheme_token_ids_end_to_end(name):
    model, _ = loaded(name)
    tok = Tokenizer.from_config(model.config, on_unknown="drop")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Coqui drops the digit '3' (no cleaner) too
        assert [tok.encode(t) for t, _, _ in _texts(name)] == [ids for _, ids, _ in _texts(name)]


def test_cleaner_matches_coqui_before_phonemization():
    model, _ = loaded("phonemes")
    strings = meta("phonemes")["strings"]
    assert model.config.text.cleaner == "coqui_english_cleaners"
    assert clean(strings["infer_text"], model.config.text.cleaner) == strings["infer_cleaned"]


def _espeak_version() -> str:
    """``major.minor`` of the espeak-ng we phonemize with; skips when it is not installed."""
    try:
        phonemize("a")
    except PhonemizerError as err:
        pytest.skip(f"espeak-ng is not available: {err}")
    from phonemizer.backend import EspeakBackend

    return ".".join(str(v) for v in EspeakBackend.version()[:2])


def test_phoneme_token_ids_end_to_end():
    """Phonemes depend on the espeak-ng version: only another version may differ (then skip)."""
    recorded = re.search(r"\d+\.\d+", meta("phonemes")["espeak_ng"]).group(0)
    found = _espeak_version()
    if found != recorded:
        pytest.skip(f"the fixture's phonemes come from espeak-ng {recorded}, this machine has {found}")
    model, _ = loaded("phonemes")
    tok = Tokenizer.from_config(model.config)
    ours = [tok.normalize(t) for t, _, _ in _texts("phonemes")]
    coqui = [s for _, _, s in _texts("phonemes")]
    assert ours == coqui, [(a, b) for a, b in zip(ours, coqui, strict=True) if a != b]
    assert [tok.encode(t) for t, _, _ in _texts("phonemes")] == [ids for _, ids, _ in _texts("phonemes")]


# ----------------------------------------------------------------------------- infer() semantics (tiny)
def _tiny() -> VITS:
    torch.manual_seed(0)
    return VITS(preset("tiny"), with_discriminator=False).eval()


def test_max_frames_decodes_a_prefix_of_the_full_latent():
    model = _tiny()
    tokens = torch.randint(4, 60, (1, 12))
    durations = torch.full((1, 12), 3.0)
    with torch.no_grad():
        full = model.infer(tokens, noise_scale=0.0, durations=durations)
        cut = model.infer(tokens, noise_scale=0.0, durations=durations, max_frames=20)
        model.max_inference_frames = 20
        default = model.infer(tokens, noise_scale=0.0, durations=durations)
    assert full.z.shape[-1] == 36 and cut.z.shape[-1] == 20
    assert torch.equal(cut.z, full.z[:, :, :20])  # the flow ran on all 36 frames
    assert int(cut.audio_lengths) == 20 * model.hop_length == cut.audio.shape[-1]
    assert torch.equal(default.audio, cut.audio)


def test_fractional_forced_durations_round_up():
    model = _tiny()
    tokens = torch.randint(4, 60, (1, 6))
    with torch.no_grad():
        frac = model.infer(tokens, noise_scale=0.0, durations=torch.tensor([[0.2, 1.0, 1.5, 2.0, 2.01, 0.0]]))
        whole = model.infer(tokens, noise_scale=0.0, durations=torch.tensor([[1.0, 1.0, 2.0, 2.0, 3.0, 0.0]]))
    assert torch.equal(frac.durations, whole.durations)
    assert torch.equal(frac.audio, whole.audio)


def test_audio_lengths_follow_the_decoder_when_upsampling_adds_samples():
    """Kernel minus rate odd (e.g. Coqui 16 kHz configs with rates 5,4,4,2 and kernels 10,8,8,4)."""
    torch.manual_seed(0)
    model = VITS(preset("tiny", **{"decoder.upsample_kernel_sizes": (9, 8, 7)}), with_discriminator=False).eval()
    frames = torch.tensor([1, 5, 12])
    lengths = model.audio_length(frames)
    assert torch.equal(lengths, ((frames * 4 + 1) * 4) * 4 + 1)
    with torch.no_grad():
        for n, expected in zip(frames.tolist(), lengths.tolist(), strict=True):
            assert model.decoder(torch.randn(1, model.config.inter_channels, n)).shape[-1] == expected
        out = model.infer(torch.randint(4, 60, (2, 5)), torch.tensor([5, 3]), noise_scale=0.0,
                          durations=torch.full((2, 5), 2.0))
    assert torch.equal(out.audio_lengths, model.audio_length(torch.tensor([10, 6])))
    assert out.audio.shape[-1] == int(out.audio_lengths[0])
    assert float(out.audio[0, 0, -1].abs()) > 0 and float(out.audio[1, 0, int(out.audio_lengths[1]):].abs().max()) == 0

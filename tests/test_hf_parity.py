"""Hugging Face ``VitsModel`` -> vits_surgery: key map, config, text front end and waveform parity.

The reference is ``transformers.VitsModel`` itself, built locally with small sizes and random
weights (no download). Every parameter is perturbed before saving, because HF initialises some
of them to zero or identity (flow ``conv_post``, SDP ``conv_proj``), which would hide a wrong
mapping; ``conv_post`` of the decoder is scaled down so the waveform stays out of tanh
saturation, where differences would be masked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip(
    "transformers", reason="transformers is a dev dependency (pip install -e .[dev]): the HF parity tests need it"
)

import vits_surgery  # noqa: E402
from vits_surgery.convert import detect_format  # noqa: E402
from vits_surgery.convert.hf import HF_DEFAULTS, config_from_hf  # noqa: E402
from vits_surgery.convert.report import ConversionError  # noqa: E402
from vits_surgery.text.tokenizer import Tokenizer  # noqa: E402

VOCAB = "k abcdefghijlmnopqrs"  # id 0 is a real letter, as in MMS vocabularies
SMALL = dict(
    vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, ffn_dim=32,
    flow_size=8, spectrogram_bins=33, upsample_initial_channel=32, upsample_rates=[4, 4],
    upsample_kernel_sizes=[8, 8], resblock_kernel_sizes=[3, 5], resblock_dilation_sizes=[[1, 3], [1, 3]],
    posterior_encoder_num_wavenet_layers=2, prior_encoder_num_wavenet_layers=2,
    duration_predictor_filter_channels=24, sampling_rate=8000,
)
CASES = {
    "sdp": {},
    "deterministic": {"use_stochastic_duration_prediction": False},
    "multispeaker": {"num_speakers": 4, "speaker_embedding_size": 8},
    # one speaker with a speaker width: HF builds the conditioning layers but never feeds them
    "unused_conditioning": {"speaker_embedding_size": 8},
}
TOL = 1e-6  # waveforms: measured <= 2.1e-7 (x86-64 CPU, torch 2.13)
LATENT_TOL = 1e-5  # the latent z: measured <= 1.8e-6


def _build_hf(folder: Path, extra: dict, seed: int = 0):
    torch.manual_seed(seed)
    model = transformers.VitsModel(transformers.VitsConfig(**SMALL, **extra)).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        model.decoder.conv_post.weight.mul_(0.02)  # keep tanh out of saturation
    model.save_pretrained(folder)
    vocab = {c: i for i, c in enumerate(VOCAB)} | {"<pad>": len(VOCAB)}
    (folder / "vocab_src.json").write_text(json.dumps(vocab), encoding="utf-8")
    tok = transformers.VitsTokenizer(str(folder / "vocab_src.json"), add_blank=True, normalize=True, phonemize=False)
    tok.save_pretrained(folder)
    (folder / "vocab_src.json").unlink()
    return model, tok


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    torch.set_num_threads(1)
    out = {}
    for name, extra in CASES.items():
        folder = tmp_path_factory.mktemp(f"hf_{name}")
        model, tok = _build_hf(folder, extra)
        ours, report = vits_surgery.load(folder, return_report=True)
        out[name] = (folder, model, tok, ours, report)
    return out


def _hf_infer(model, ids: torch.Tensor, speaker: int | None = None, mask: torch.Tensor | None = None):
    model.noise_scale = 0.0
    model.noise_scale_duration = 0.0
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, speaker_id=speaker)


@pytest.mark.parametrize("case", list(CASES))
def test_waveform_matches_transformers_at_zero_noise(hf_models, case):
    _, hf, tok, ours, _ = hf_models[case]
    ids = torch.tensor([tok("hello bird jar").input_ids])
    speaker = 2 if case == "multispeaker" else None
    ref = _hf_infer(hf, ids, speaker)
    with torch.no_grad():
        got = ours.infer(ids, speaker=speaker, noise_scale=0.0, noise_scale_w=0.0)
    wav = got.audio[0, 0, : int(got.audio_lengths[0])]
    assert wav.shape[-1] == ref.waveform.shape[-1] == int(ref.sequence_lengths[0])
    assert 1e-3 < ref.waveform.std() and ref.waveform.abs().max() < 0.9, "reference must be non-trivial, unsaturated"
    assert (wav - ref.waveform[0]).abs().max() <= TOL
    assert (got.z - ref.spectrogram).abs().max() <= LATENT_TOL  # HF's "spectrogram" is the latent z


def test_speaker_conditioning_is_exercised(hf_models):
    _, hf, tok, ours, _ = hf_models["multispeaker"]
    ids = torch.tensor([tok("bird").input_ids])
    with torch.no_grad():
        a = ours.infer(ids, speaker=0, noise_scale=0.0, noise_scale_w=0.0, durations=torch.full(ids.shape, 3.0))
        b = ours.infer(ids, speaker=3, noise_scale=0.0, noise_scale_w=0.0, durations=torch.full(ids.shape, 3.0))
    assert (a.audio - b.audio).abs().max() > 1e-3
    ref = _hf_infer(hf, ids, speaker=3)
    with torch.no_grad():
        got = ours.infer(ids, speaker=3, noise_scale=0.0, noise_scale_w=0.0)
    assert got.audio.shape[-1] == ref.waveform.shape[-1]
    assert (got.audio[0, 0] - ref.waveform[0]).abs().max() <= TOL


def test_padded_batch_matches_within_lengths(hf_models):
    _, hf, tok, ours, _ = hf_models["sdp"]
    batch = tok(["hello bird", "jar"], padding=True, return_tensors="pt")
    ids = batch.input_ids * batch.attention_mask  # HF's <pad> id is past the embedding
    ref = _hf_infer(hf, ids, mask=batch.attention_mask)
    with torch.no_grad():
        got = ours.infer(ids, lengths=batch.attention_mask.sum(1), noise_scale=0.0, noise_scale_w=0.0)
    assert got.audio_lengths.tolist() == ref.sequence_lengths.tolist()
    for i, n in enumerate(got.audio_lengths.tolist()):
        assert (got.audio[i, 0, :n] - ref.waveform[i, :n]).abs().max() <= TOL


def test_report_maps_every_key_and_creates_only_the_discriminator(hf_models):
    folder, _, _, model, report = hf_models["multispeaker"]
    assert detect_format(folder) == "hf"
    saved = load_file(str(folder / "model.safetensors"))
    assert sorted(src for src, _, _ in report.mapped) == sorted(saved)
    assert not report.dropped
    created = {key for key, _ in report.created}
    assert created == {k for k in model.state_dict() if k.startswith("discriminator.")}
    linear = [src for src, _, t in report.mapped if t == "linear_to_conv1x1"]
    assert len(linear) == 4 * SMALL["num_hidden_layers"]
    assert model.config.n_speakers == 4 and model.config.gin_channels == 8
    assert model.config.audio.hop_length == 16 and model.config.audio.n_fft == 64


def test_text_front_end_matches_vits_tokenizer(hf_models):
    _, _, tok, ours, _ = hf_models["sdp"]
    assert ours.config.text.style == "hf"
    assert ours.config.text.symbols == tuple(VOCAB)
    encoder = Tokenizer.from_config(ours.config)
    # VitsTokenizer lower-cases; it keeps runs of spaces, which basic_cleaners collapses
    for text in ("Hello Bird jar", "A sad dog"):
        assert encoder.encode(text) == tok(text).input_ids


def _rewrite(folder: Path, dst: Path, rename=None, edit=None, config=None) -> Path:
    dst.mkdir()
    state = load_file(str(folder / "model.safetensors"))
    if rename:
        state = {rename(k): v for k, v in state.items()}
    if edit:
        edit(state)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((folder / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, **(config or {})}))
    return dst


def test_legacy_weight_norm_names_load_the_same(hf_models, tmp_path):
    folder, _, _, ours, _ = hf_models["sdp"]
    legacy = _rewrite(
        folder, tmp_path / "legacy",
        rename=lambda k: k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"),
    )
    assert any(k.endswith("weight_g") for k in load_file(str(legacy / "model.safetensors")))
    a, b = ours.state_dict(), vits_surgery.load(legacy).state_dict()
    for key, value in a.items():
        if not key.startswith("discriminator."):
            assert torch.equal(value, b[key]), key


def test_unsupported_config_value_is_named(hf_models, tmp_path):
    folder = hf_models["sdp"][0]
    bad = _rewrite(folder, tmp_path / "gelu", config={"hidden_act": "gelu"})
    with pytest.raises(ConversionError, match="hidden_act='gelu'"):
        vits_surgery.load(bad)


def test_misshaped_and_unknown_keys_are_named(hf_models, tmp_path):
    folder = hf_models["sdp"][0]
    key = "text_encoder.project.weight"

    def shrink(state):
        state[key] = state[key][:-1].contiguous()

    with pytest.raises(ConversionError, match="text_encoder.proj.weight: checkpoint shape"):
        vits_surgery.load(_rewrite(folder, tmp_path / "shape", edit=shrink))

    def extra(state):
        state["text_encoder.mystery.weight"] = torch.zeros(2)

    with pytest.raises(ConversionError, match="text_encoder.mystery.weight"):
        vits_surgery.load(_rewrite(folder, tmp_path / "extra", edit=extra))


def test_folder_without_config_is_refused(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConversionError, match="config.json"):
        vits_surgery.load(tmp_path, format="hf")


def test_defaults_for_missing_fields_are_transformers_defaults():
    reference = transformers.VitsConfig().to_dict()
    for key, value in HF_DEFAULTS.items():
        assert json.loads(json.dumps(reference[key])) == value, key
    cfg = config_from_hf({"model_type": "vits"})
    assert (cfg.text_encoder.n_vocab, cfg.audio.sample_rate, cfg.audio.n_fft, cfg.audio.hop_length) == (38, 16000, 1024, 256)
    assert (cfg.posterior_encoder.n_layers, cfg.flow.n_layers, cfg.n_speakers, cfg.gin_channels) == (16, 4, 0, 0)
    assert cfg.noise_scale_w == 0.8 and cfg.length_scale == 1.0

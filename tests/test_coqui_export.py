"""Coqui TTS checkpoint export, round trips, refusals and vocabulary rules (no Coqui needed).

That Coqui's own ``Vits.load_checkpoint(strict=True)`` loads exported files and reproduces the
outputs was checked by running coqui-tts 0.28.0 on them; here the exported files are compared
with the trainer-written fixtures they came from, key for key.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from test_coqui_parity import ROOT, golden, loaded

from vits_surgery.config import preset
from vits_surgery.convert import ConversionError, detect_format, export, load
from vits_surgery.convert.coqui import (
    config_from_coqui,
    coqui_config_dict,
    coqui_vocabulary,
    export_coqui,
    load_coqui,
    native_to_coqui,
)
from vits_surgery.models.commons import remove_weight_norms

FIXTURES = ("graphemes_sdp", "multispeaker_dp_rb2", "legacy_weightnorm_genonly", "phonemes")
GENERATOR_ONLY = ("legacy_weightnorm_genonly", "phonemes")


def _original(name: str) -> dict:
    return torch.load(ROOT / name / "model.pth", weights_only=True)


def _parametrized_names(state: dict) -> dict:
    return {k.replace(".weight_g", ".parametrizations.weight.original0").replace(
        ".weight_v", ".parametrizations.weight.original1"): v for k, v in state.items()}


def _export(name: str, tmp_path, **kw) -> dict:
    model, _ = loaded(name)
    path = export_coqui(model, tmp_path / f"{name}.pth", include_discriminator=name not in GENERATOR_ONLY, **kw)
    return torch.load(path, weights_only=True)


# ----------------------------------------------------------------------------- exported files
@pytest.mark.parametrize("name", FIXTURES)
def test_export_reproduces_the_trainer_file(name, tmp_path):
    """Same keys, shapes, values and config as the checkpoint Coqui's trainer wrote."""
    original, exported = _original(name), _export(name, tmp_path)
    source = _parametrized_names(original["model"])  # the legacy fixture uses weight_g / weight_v
    assert set(exported["model"]) == set(source)
    for key, value in source.items():
        assert exported["model"][key].shape == value.shape, key
        assert torch.equal(exported["model"][key], value), key
    assert exported["config"] == original["config"]
    assert {"config", "model", "step", "epoch", "date"} <= set(exported)


def test_legacy_export_keeps_weight_g_names(tmp_path):
    original = _original("legacy_weightnorm_genonly")
    exported = _export("legacy_weightnorm_genonly", tmp_path, legacy_weight_norm=True)
    assert set(exported["model"]) == set(original["model"])
    assert all(torch.equal(exported["model"][k], v) for k, v in original["model"].items())


@pytest.mark.parametrize("name", FIXTURES)
def test_load_export_load_is_bit_identical(name, tmp_path):
    model, _ = loaded(name)
    path = export_coqui(model, tmp_path / "again.pth", config_path=tmp_path / "config.json")
    again, report = load_coqui(path)
    first, second = model.state_dict(), again.state_dict()
    assert list(first) == list(second)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not report.created and not report.dropped
    assert again.max_inference_frames == model.max_inference_frames
    assert again.config == model.config
    assert json.loads((tmp_path / "config.json").read_text(encoding="utf-8")) == torch.load(
        path, weights_only=True)["config"]


def test_export_through_the_public_api(tmp_path):
    model, _ = loaded("graphemes_sdp")
    path = export(model, tmp_path / "voice.pth", format="coqui", step=7)
    assert torch.load(path, weights_only=True)["step"] == 7
    assert detect_format(path) == "coqui"


def _small_config():
    return preset("coqui_vits").replace(**{
        "text_encoder.hidden_channels": 32, "text_encoder.filter_channels": 64, "text_encoder.n_layers": 1,
        "inter_channels": 32, "posterior_encoder.hidden_channels": 32, "posterior_encoder.n_layers": 1,
        "flow.hidden_channels": 32, "flow.n_layers": 1, "decoder.upsample_initial_channel": 32,
        "n_speakers": 3, "gin_channels": 8, "text.cleaner": "coqui_english_cleaners",
    })


def test_folded_weight_norm_is_re_parametrized_on_export(tmp_path):
    from vits_surgery.models.vits import VITS

    torch.manual_seed(0)
    model = VITS(_small_config(), with_discriminator=False)
    reference = torch.load(export_coqui(model, tmp_path / "a.pth"), weights_only=True)["model"]
    assert remove_weight_norms(model) > 0
    exported = torch.load(export_coqui(model, tmp_path / "b.pth"), weights_only=True)["model"]
    assert set(exported) == set(reference)
    key = "waveform_decoder.ups.0.parametrizations.weight"
    effective = torch._weight_norm(exported[key + ".original1"], exported[key + ".original0"], 0)
    expected = torch._weight_norm(reference[key + ".original1"], reference[key + ".original0"], 0)
    torch.testing.assert_close(effective, expected, rtol=1e-6, atol=1e-7)


def test_native_model_exports_a_coqui_config_that_maps_back(tmp_path):
    config = _small_config()
    cfg = coqui_config_dict(config)
    assert cfg["speakers"] == ["speaker_0", "speaker_1", "speaker_2"]
    assert cfg["model_args"]["use_speaker_embedding"] and cfg["use_speaker_embedding"]
    assert cfg["text_cleaner"] == "english_cleaners" and cfg["model_args"]["out_channels"] == 513
    assert coqui_vocabulary(cfg["characters"], cfg["use_phonemes"])[0] == config.text.symbols
    from vits_surgery.models.vits import VITS

    state = native_to_coqui(VITS(config, with_discriminator=False).state_dict())
    back = config_from_coqui(cfg, state)
    # Coqui's Graphemes table names its BOS/EOS; its glow-tts deterministic layout is the only one
    expected = config.replace(**{"text.eos": "<EOS>", "text.bos": "<BOS>", "name": "coqui",
                                 "duration_predictor.deterministic_style": "glow_tts"})
    assert back == expected


def test_models_coqui_cannot_build_are_refused():
    with pytest.raises(ConversionError, match="inter_channels 16 != text_encoder.hidden_channels 32"):
        coqui_config_dict(preset("tiny"))


# ----------------------------------------------------------------------------- loading variants
def test_bare_state_dict_needs_its_config_json(tmp_path):
    original = _original("multispeaker_dp_rb2")
    torch.save(dict(original["model"]), tmp_path / "model_file.pth")
    with pytest.raises(ConversionError, match="config_path"):
        load_coqui(tmp_path / "model_file.pth")
    (tmp_path / "config.json").write_text(json.dumps(original["config"]), encoding="utf-8")
    model, report = load(tmp_path / "model_file.pth", return_report=True)
    reference, _ = loaded("multispeaker_dp_rb2")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True))
    assert any("config read from" in n for n in report.notes)


def test_speaker_names_come_from_the_speakers_file(tmp_path):
    original = _original("multispeaker_dp_rb2")
    cfg = {**original["config"], "speakers": []}
    cfg["model_args"] = {**cfg["model_args"], "speakers_file": "/elsewhere/run/speakers.json"}
    torch.save({**original, "config": cfg}, tmp_path / "model.pth")
    (tmp_path / "speakers.json").write_text(json.dumps({"bob": 1, "ann": 0, "dan": 3, "cy": 2}), encoding="utf-8")
    model, report = load_coqui(tmp_path / "model.pth")
    assert model.coqui_config["speakers"] == ["ann", "bob", "cy", "dan"]
    assert "speaker ids: 0=ann, 1=bob, 2=cy, 3=dan" in report.notes


def _save_variant(tmp_path, name: str, change_config=None, change_state=None):
    original = _original(name)
    cfg, state = copy.deepcopy(original["config"]), dict(original["model"])
    if change_config:
        change_config(cfg)
    if change_state:
        change_state(state)
    path = tmp_path / "variant.pth"
    torch.save({**original, "config": cfg, "model": state}, path)
    return path


def test_speaker_encoder_keys_are_dropped_with_a_reason(tmp_path):
    path = _save_variant(tmp_path, "multispeaker_dp_rb2",
                         change_state=lambda s: s.update({"speaker_encoder.fc.weight": torch.zeros(2, 2)}))
    _, report = load_coqui(path)
    assert [k for k, _ in report.dropped] == ["speaker_encoder.fc.weight"]
    assert "speaker encoder" in report.dropped[0][1]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("use_d_vector_file", True, "d-vectors"),
        ("use_language_embedding", True, "language embedding"),
        ("encoder_sample_rate", 44100, "encoder_sample_rate"),
    ],
)
def test_unsupported_coqui_models_are_refused_clearly(tmp_path, field, value, message):
    path = _save_variant(tmp_path, "graphemes_sdp", change_config=lambda c: c["model_args"].update({field: value}))
    with pytest.raises(ConversionError, match=message):
        load_coqui(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("flow.flows.1.post.bias"), "missing keys: flow.flows.1.post.bias"),
        (lambda s: s.update({"flow.flows.0.extra": torch.zeros(1)}), "unexpected keys: flow.flows.0.extra"),
        (lambda s: s.update({"text_encoder.proj.bias": torch.zeros(3)}), r"text_encoder.proj.bias: checkpoint shape \(3,\)"),
        (lambda s: s.update({"mystery.weight": torch.zeros(1)}), "no rule explains: mystery.weight"),
        (lambda s: s.pop("disc.nets.1.conv_post.bias"), "missing keys: discriminator.nets.1.conv_post.bias"),
    ],
)
def test_partial_loads_are_errors_naming_the_key(tmp_path, change, message):
    with pytest.raises(ConversionError, match=message):
        load_coqui(_save_variant(tmp_path, "multispeaker_dp_rb2", change_state=change))


def test_unused_deterministic_dp_speaker_layer(tmp_path):
    """Coqui keeps ``duration_predictor.cond`` with condition_dp_on_speaker=False but ignores it."""
    path = _save_variant(tmp_path, "multispeaker_dp_rb2",
                         change_config=lambda c: c["model_args"].update(condition_dp_on_speaker=False))
    model, report = load_coqui(path)
    assert sorted(k for k, _ in report.dropped) == ["duration_predictor.cond.bias", "duration_predictor.cond.weight"]
    assert not hasattr(model.duration_predictor, "cond")
    exported = torch.load(export_coqui(model, tmp_path / "out.pth"), weights_only=True)["model"]
    original = _original("multispeaker_dp_rb2")["model"]
    assert set(exported) == set(original)
    assert not exported["duration_predictor.cond.weight"].any()
    g = golden("multispeaker_dp_rb2")
    with torch.no_grad():  # durations no longer depend on the speaker
        a = model.infer(g["infer/tokens"], speaker=0, noise_scale=0.0).durations
        b = model.infer(g["infer/tokens"], speaker=3, noise_scale=0.0).durations
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- vocabulary rules
def _chars(cls: str, **kw) -> dict:
    base = {"pad": "_", "eos": "~", "bos": "^", "blank": "#", "punctuations": ".,! ", "phonemes": None,
            "is_unique": False, "is_sorted": False}
    return {**base, "characters_class": f"TTS.tts.{cls}", **kw}


# Vocabularies printed by coqui-tts 0.28.0's TTSTokenizer.init_from_config for these configs.
@pytest.mark.parametrize(
    ("chars", "expected"),
    [
        (_chars("utils.text.characters.Graphemes", characters="cbaabc", is_unique=True, is_sorted=True),
         "_ ~ ^ # a b c . , ! ␠"),
        (_chars("utils.text.characters.Graphemes", characters="cbaabc", is_sorted=True),
         "_ ~ ^ # a a b b c c . , ! ␠"),
        (_chars("utils.text.characters.Graphemes", characters="cbaabc"), "_ ~ ^ # c b a a b c . , ! ␠"),
        (_chars("utils.text.characters.Graphemes", characters="cba", pad=None, eos=None, bos=None, blank=None,
                is_unique=True, is_sorted=True), "a b c . , ! ␠"),
        (_chars("utils.text.characters.IPAPhonemes", characters="q", phonemes="zyxxa", is_sorted=True),
         "_ ~ ^ # a x x y z . , ! ␠"),
        (_chars("utils.text.characters.IPAPhonemes", characters="cbaab"), "_ ~ ^ # c b a a b . , ! ␠"),
        (_chars("models.vits.VitsCharacters", characters="cbaa", phonemes="zyxa", is_unique=True, is_sorted=True),
         "_ . , ! ␠ c b a a z y x a <BLNK>"),
    ],
)
def test_coqui_vocabulary_rules(chars, expected):
    symbols, _ = coqui_vocabulary(chars, use_phonemes=False)
    assert " ".join(s if s != " " else "␠" for s in symbols) == expected


def test_default_vocabularies():
    graphemes, specials = coqui_vocabulary(None, use_phonemes=False)
    assert len(graphemes) == 67 and graphemes[:4] == ("<PAD>", "<EOS>", "<BOS>", "<BLNK>")
    assert specials == {"pad": "<PAD>", "eos": "<EOS>", "bos": "<BOS>", "blank": "<BLNK>"}
    phonemes, _ = coqui_vocabulary(None, use_phonemes=True)
    assert len(phonemes) == 132 and phonemes[4:7] == ("a", "b", "c")
    vits, specials = coqui_vocabulary(_chars("models.vits.VitsCharacters", characters="ab", blank="#"), False)
    assert vits[-1] == "<BLNK>" and specials["blank"] == "<BLNK>" and specials["bos"] is None

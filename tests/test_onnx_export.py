"""Export to a Piper voice (``export_onnx``): graph interface, parity with ``infer``, the voice
JSON, the round trip through our own Piper importer, and the voice running in Piper itself.

Parity target (tiny and joe): onnxruntime on the exported file with scales [0, length_scale, 0]
against ``VITS.infer(noise_scale=0, noise_scale_w=0)``: same length, max abs difference <= TOL
(tiny) or JOE_TOL (the joe voice).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import vits_surgery
from vits_surgery.config import preset
from vits_surgery.convert.onnx_export import OnnxExportError, export_onnx, piper_voice_dict
from vits_surgery.convert.piper import REGROWN_ORGAN_PREFIXES
from vits_surgery.models.commons import has_weight_norm
from vits_surgery.models.vits import VITS

ort = pytest.importorskip(
    "onnxruntime", reason="onnxruntime comes with the onnx/dev extras: pip install '.[onnx]'"
)
onnx = pytest.importorskip("onnx", reason="onnx comes with the onnx/dev extras: pip install '.[onnx]'")

# Measured max abs differences (x86-64 CPU, torch 2.13, onnxruntime): tiny models <= 5.2e-7,
# the joe voice <= 1.2e-5; the tolerances keep a margin of about 4-10x.
TOL = 5e-6
JOE_TOL = 5e-5


def _tiny(n_speakers: int = 0, seed: int = 0, **overrides) -> VITS:
    """A tiny model whose weights are moved off their init (flows and splines not the identity)."""
    torch.manual_seed(seed)
    cfg = preset("tiny", n_speakers=n_speakers, gin_channels=8 if n_speakers else 0, **overrides)
    model = VITS(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session, ids, scales, lengths=None, sid=None) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64)
    ids = ids[None] if ids.ndim == 1 else ids
    feeds = {
        "input": ids,
        "input_lengths": np.asarray(
            lengths if lengths is not None else [ids.shape[1]] * ids.shape[0], np.int64
        ),
        "scales": np.asarray(scales, np.float32),
    }
    if sid is not None:
        feeds["sid"] = np.asarray(sid, np.int64)
    return session.run(None, feeds)[0]


def _ours(model, ids, length_scale=1.0, lengths=None, speaker=None) -> np.ndarray:
    tokens = torch.as_tensor(ids)
    tokens = tokens.unsqueeze(0) if tokens.dim() == 1 else tokens
    with torch.inference_mode():
        out = model.infer(
            tokens,
            lengths=lengths,
            speaker=speaker,
            noise_scale=0.0,
            noise_scale_w=0.0,
            length_scale=length_scale,
        )
    return out.audio.numpy()  # [B, 1, N]


def _effective_weights(model: VITS) -> dict[str, torch.Tensor]:
    """Every inference weight as the layer uses it (weight norm folded), by native key."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith(tuple(REGROWN_ORGAN_PREFIXES)) or key.endswith(".original1"):
            continue
        if key.endswith(".parametrizations.weight.original0"):
            path = key[: -len(".parametrizations.weight.original0")]
            out[path + ".weight"] = model.get_submodule(path).weight.detach()
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------------------- tiny
@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    model = _tiny()
    path = export_onnx(model, tmp_path_factory.mktemp("tiny") / "tiny.onnx", phoneme_type="text")
    return model, path


def test_graph_has_piper_interface(tiny_export) -> None:
    _, path = tiny_export
    proto = onnx.load(str(path))
    inputs = {i.name: i.type.tensor_type for i in proto.graph.input}
    assert list(inputs) == ["input", "input_lengths", "scales"]  # no sid: single speaker
    assert inputs["input"].elem_type == onnx.TensorProto.INT64
    assert [d.dim_param for d in inputs["input"].shape.dim] == ["batch_size", "phonemes"]
    assert (
        inputs["scales"].elem_type == onnx.TensorProto.FLOAT and inputs["scales"].shape.dim[0].dim_value == 3
    )
    (out,) = proto.graph.output
    dims = out.type.tensor_type.shape.dim
    assert out.name == "output" and [d.dim_value or d.dim_param for d in dims] == ["batch_size", 1, 1, "time"]
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {15}
    assert sum(n.op_type == "RandomNormalLike" for n in proto.graph.node) == 2  # duration + prior noise
    assert path.with_name(path.name + ".json").is_file()


@pytest.mark.parametrize("n_tokens", [5, 23])
def test_tiny_matches_infer_at_zero_noise(tiny_export, n_tokens: int) -> None:
    model, path = tiny_export
    session = _session(path)
    ids = torch.randint(
        0, model.config.text_encoder.n_vocab, (n_tokens,), generator=torch.Generator().manual_seed(n_tokens)
    )
    for length_scale in (1.0, 2.5):
        ref = _run(session, ids.numpy(), [0, length_scale, 0])
        ours = _ours(model, ids.tolist(), length_scale)
        assert ref.shape == (1, 1, *ours.shape[1:])  # Piper's [B, 1, 1, N]
        assert np.abs(ref.reshape(-1) - ours.reshape(-1)).max() <= TOL
        assert np.abs(ref).max() > 1e-3  # not a silent graph


def test_batch_of_two_lengths_matches_infer(tiny_export) -> None:
    model, path = tiny_export
    ids = torch.randint(1, 60, (2, 11), generator=torch.Generator().manual_seed(3))
    lengths = [11, 7]
    ref = _run(_session(path), ids.numpy(), [0, 1.7, 0], lengths=lengths)
    ours = _ours(model, ids, 1.7, lengths=torch.tensor(lengths))
    assert ref.shape == (2, 1, 1, ours.shape[-1])
    assert np.abs(ref[:, 0] - ours).max() <= TOL


def test_noise_is_sampled_in_the_graph_and_zero_noise_is_deterministic(tiny_export) -> None:
    model, path = tiny_export
    session = _session(path)
    ids = list(range(4, 20))
    first, second = _run(session, ids, [0, 1, 0]), _run(session, ids, [0, 1, 0])
    assert np.array_equal(first, second)
    noisy = [_run(session, ids, [0.667, 1, 0]) for _ in range(2)]
    assert noisy[0].shape == first.shape and not np.allclose(noisy[0], noisy[1])  # randn inside the graph


def test_multi_speaker_graph_takes_sid(tmp_path) -> None:
    model = _tiny(n_speakers=3, seed=1)
    path = export_onnx(model, tmp_path / "ms.onnx", phoneme_type="text", speaker_names=["ann", "bob", "cy"])
    session = _session(path)
    assert [i.name for i in session.get_inputs()] == ["input", "input_lengths", "scales", "sid"]
    ids = list(range(10, 24))
    outs = []
    for speaker in (0, 2):
        ref = _run(session, ids, [0, 1.5, 0], sid=[speaker])
        ours = _ours(model, ids, 1.5, speaker=speaker)
        assert ref.shape[-1] == ours.shape[-1] and np.abs(ref.reshape(-1) - ours.reshape(-1)).max() <= TOL
        outs.append(ref)
    assert outs[0].shape != outs[1].shape or not np.allclose(outs[0], outs[1])
    voice = json.loads(path.with_name(path.name + ".json").read_text())
    assert voice["num_speakers"] == 3 and voice["speaker_id_map"] == {"ann": 0, "bob": 1, "cy": 2}


def test_callers_model_is_unchanged(tmp_path) -> None:
    model = _tiny(seed=2)
    model.train()
    model.decoder.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    export_onnx(model, tmp_path / "m.onnx", voice_config=False)
    assert not (tmp_path / "m.onnx.json").exists()
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert has_weight_norm(model.decoder.ups[0]) and has_weight_norm(model.flow.flows[0].enc.in_layers[0])
    assert model.training and grads == {n: p.requires_grad for n, p in model.named_parameters()}
    model.eval()
    ids = list(range(3, 15))
    assert (
        np.abs(
            _ours(model, ids).reshape(-1) - _run(_session(tmp_path / "m.onnx"), ids, [0, 1, 0]).reshape(-1)
        ).max()
        <= TOL
    )


def test_round_trip_through_our_piper_importer(tiny_export) -> None:
    model, path = tiny_export
    back, report = vits_surgery.load(path, return_report=True)
    assert report.source_format == "piper-onnx"
    assert back.config == model.config  # architecture and text front end from the voice JSON
    ours, theirs = _effective_weights(model), _effective_weights(back)
    assert ours.keys() == theirs.keys()
    worst = max((ours[k] - theirs[k]).abs().max().item() for k in ours)
    assert worst <= 1e-6
    ids = list(range(5, 30))
    assert np.abs(_ours(model, ids) - _ours(back, ids)).max() <= 1e-5


VARIANT = {
    "duration_predictor.stochastic": False,
    "decoder.resblock": "1",
    "decoder.resblock_dilation_sizes": ((1, 3, 5), (1, 3, 5)),
}


@pytest.mark.parametrize("n_speakers", [0, 2])
def test_deterministic_duration_and_resblock1_round_trip(tmp_path, n_speakers: int) -> None:
    model = _tiny(n_speakers=n_speakers, seed=5, **VARIANT)
    path = export_onnx(model, tmp_path / "v.onnx", phoneme_type="text")
    ids, speaker = list(range(3, 21)), (1 if n_speakers else None)
    ref = _run(_session(path), ids, [0, 1.2, 0], sid=None if speaker is None else [speaker]).reshape(-1)
    ours = _ours(model, ids, 1.2, speaker=speaker).reshape(-1)
    assert ref.shape == ours.shape and np.abs(ref - ours).max() <= TOL
    back = vits_surgery.load(path)
    assert back.config == model.config
    a, b = _effective_weights(model), _effective_weights(back)
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_max_inference_frames_is_kept(tmp_path) -> None:
    model = _tiny(seed=6)
    model.max_inference_frames = 9  # Coqui's max_inference_len, set by the Coqui loader
    path = export_onnx(model, tmp_path / "cap.onnx", voice_config=False)
    ids = list(range(3, 40))
    ref, ours = _run(_session(path), ids, [0, 2.0, 0]).reshape(-1), _ours(model, ids, 2.0).reshape(-1)
    assert ref.shape == ours.shape == (model.audio_length(torch.tensor(9)).item(),)
    assert np.abs(ref - ours).max() <= TOL


def test_coqui_checkpoint_exports(tmp_path) -> None:
    from pathlib import Path

    model = vits_surgery.load(Path(__file__).parent / "fixtures" / "coqui" / "graphemes_sdp" / "model.pth")
    path = export_onnx(model, tmp_path / "coqui.onnx", phoneme_type="text")
    ids = list(range(10, 30))
    ref, ours = _run(_session(path), ids, [0, 1, 0]).reshape(-1), _ours(model, ids).reshape(-1)
    assert ref.shape == ours.shape and np.abs(ref - ours).max() <= TOL
    assert vits_surgery.load(path).config == model.config


def test_lora_adapters_are_merged_into_the_export(tmp_path) -> None:
    from vits_surgery.surgery.lora import inject_lora, lora_layers, lora_parameters, lora_state

    model = _tiny(seed=4)
    inject_lora(model, {"decoder": 2, "text_encoder": 2})
    with torch.no_grad():
        for _, p in lora_parameters(model):
            p.normal_(0, 0.2)
    ids = list(range(2, 18))
    path = export_onnx(model, tmp_path / "lora.onnx", voice_config=False)
    ref = _run(_session(path), ids, [0, 1, 0]).reshape(-1)
    assert np.abs(ref - _ours(model, ids).reshape(-1)).max() <= TOL
    layers = lora_layers(model)
    assert layers and not any(lora_state(m).merged for m in layers.values())  # adapters kept, unmerged
    names = {t.name for t in onnx.load(str(path)).graph.initializer}
    assert not any("lora" in n for n in names)


def test_public_entry_points(tmp_path) -> None:
    assert vits_surgery.export_onnx is export_onnx
    model = _tiny(seed=7)
    out = vits_surgery.export(model, tmp_path / "e.onnx", format="piper-onnx", phoneme_type="text")
    assert out == tmp_path / "e.onnx" and (tmp_path / "e.onnx.json").is_file()


def test_edited_voice_json_is_honoured_or_refused(tiny_export, tmp_path) -> None:
    import shutil

    from vits_surgery.convert.report import ConversionError

    model, path = tiny_export
    onnx_path = shutil.copy(path, tmp_path / "edit.onnx")
    voice = json.loads(path.with_name(path.name + ".json").read_text(encoding="utf-8"))
    voice["inference"]["length_scale"] = 1.4  # a user's edit of the inference settings is kept
    (tmp_path / "edit.onnx.json").write_text(json.dumps(voice), encoding="utf-8")
    assert vits_surgery.load(onnx_path).config.length_scale == 1.4
    voice["audio"]["sample_rate"] = 22050  # disagrees with the embedded model config
    (tmp_path / "edit.onnx.json").write_text(json.dumps(voice), encoding="utf-8")
    with pytest.raises(ConversionError, match="disagrees with the voice"):
        vits_surgery.load(onnx_path)


def test_only_piper_markers_may_map_to_no_id() -> None:
    from vits_surgery.convert.piper_voice import PiperConfigError, PiperVoiceConfig

    base = {
        "audio": {"sample_rate": 16000},
        "num_symbols": 10,
        "phoneme_type": "text",
        "espeak": {"voice": "en-us"},
    }
    ok = PiperVoiceConfig.from_dict({**base, "phoneme_id_map": {"^": [], "_": [0], "$": [], "a": [4]}})
    assert ok.phoneme_id_map["^"] == ()
    with pytest.raises(PiperConfigError, match="non-empty list"):
        PiperVoiceConfig.from_dict({**base, "phoneme_id_map": {"_": [0], "a": []}})


# ----------------------------------------------------------------------------- voice JSON and text
def test_character_model_needs_explicit_text_phoneme_type(tmp_path) -> None:
    model = _tiny()
    with pytest.raises(OnnxExportError, match="phoneme_type='text'"):
        export_onnx(model, tmp_path / "c.onnx")
    with pytest.raises(OnnxExportError, match="reads characters"):
        export_onnx(model, tmp_path / "c.onnx", phoneme_type="espeak")
    with pytest.raises(OnnxExportError, match="phoneme_type must be one of"):
        export_onnx(model, tmp_path / "c.onnx", phoneme_type="ipa")
    assert not list(tmp_path.iterdir())  # refused before anything is written


def test_language_embeddings_are_refused(tmp_path) -> None:
    model = _tiny()
    object.__setattr__(
        model, "config", model.config.replace(**{"text_encoder.language_embedding_channels": 4})
    )
    with pytest.raises(OnnxExportError, match="language"):
        export_onnx(model, tmp_path / "l.onnx", phoneme_type="text")


def test_missing_onnx_names_the_extra(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"vits-surgery\[onnx\]"):
        export_onnx(_tiny(), tmp_path / "x.onnx", phoneme_type="text")


def test_speaker_names_must_fit_the_model() -> None:
    with pytest.raises(OnnxExportError, match="speaker_names"):
        piper_voice_dict(preset("tiny"), phoneme_type="text", speaker_names=["solo"])
    with pytest.raises(OnnxExportError, match="0..1"):
        piper_voice_dict(
            preset("tiny", n_speakers=2, gin_channels=8), phoneme_type="text", speaker_names={"a": 5}
        )


def test_voice_json_schema(tiny_export) -> None:
    model, path = tiny_export
    voice = json.loads(path.with_name(path.name + ".json").read_text(encoding="utf-8"))
    assert (
        voice["audio"]["sample_rate"] == 16000 and voice["num_symbols"] == model.config.text_encoder.n_vocab
    )
    assert voice["phoneme_type"] == "text" and voice["num_speakers"] == 1 and voice["speaker_id_map"] == {}
    assert voice["inference"] == {"noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.8}
    assert voice["espeak"]["voice"] == "en-us" and voice["hop_length"] == 64 and voice["piper_version"]
    assert voice["vits_surgery"]["config"]["name"] == "tiny"
    from vits_surgery.convert.piper_voice import PiperVoiceConfig

    parsed = PiperVoiceConfig.from_json(path.with_name(path.name + ".json"))  # our importer's validator
    assert parsed.phoneme_id_map["^"] == () and parsed.phoneme_id_map["_"] == (3,)  # Coqui blank, no BOS/EOS


TEXT_CONFIGS = {
    "coqui graphemes, blank": dict(),
    "coqui graphemes, blank + BOS/EOS": {"text.use_bos_eos": True, "text.bos": "<BOS>", "text.eos": "<EOS>"},
    "coqui graphemes, no blank": {"text.add_blank": False},
}


@pytest.mark.parametrize("overrides", TEXT_CONFIGS.values(), ids=TEXT_CONFIGS.keys())
def test_piper_builds_the_models_own_id_sequence(overrides) -> None:
    phoneme_ids = pytest.importorskip(
        "piper.phoneme_ids", reason="piper-tts is in the dev extra: pip install piper-tts"
    )
    from vits_surgery.text.tokenizer import Tokenizer

    cfg = preset("tiny", **overrides)
    voice = piper_voice_dict(cfg, phoneme_type="text")
    text = "Hello, world! It's me."
    assert phoneme_ids.phonemes_to_ids(list(text), voice["phoneme_id_map"]) == Tokenizer(
        cfg.text
    ).ids_from_symbols(list(text))


def test_reserved_marker_in_the_symbol_table_is_refused() -> None:
    from vits_surgery.text.symbols import coqui_graphemes

    cfg = preset("tiny", **{"text.symbols": (*coqui_graphemes(), "$"), "text_encoder.n_vocab": 68})
    with pytest.raises(OnnxExportError, match=r"'\$' \(id 67\) collides"):
        piper_voice_dict(cfg, phoneme_type="text")


def test_vits_phoneme_model_gets_an_espeak_map() -> None:
    phoneme_ids = pytest.importorskip(
        "piper.phoneme_ids", reason="piper-tts is in the dev extra: pip install piper-tts"
    )
    from vits_surgery.config import VITSConfig
    from vits_surgery.text.tokenizer import Tokenizer

    cfg: VITSConfig = preset("vits_ljs")
    voice = piper_voice_dict(cfg)
    assert voice["phoneme_type"] == "espeak" and voice["espeak"]["voice"] == cfg.text.phoneme_language
    phonemes = list("ðə kwˈɪk bɹˈaʊn fˈɑːks.")
    assert phoneme_ids.phonemes_to_ids(phonemes, voice["phoneme_id_map"]) == Tokenizer(
        cfg.text
    ).ids_from_symbols(phonemes)


# ----------------------------------------------------------------------------- Piper runtime
def test_tiny_voice_runs_in_piper(tiny_export) -> None:
    piper = pytest.importorskip("piper", reason="piper-tts is in the dev extra: pip install piper-tts")
    from piper.config import SynthesisConfig

    model, path = tiny_export
    voice = piper.PiperVoice.load(path, config_path=path.with_name(path.name + ".json"))
    chunks = list(voice.synthesize("Hello there."))
    assert chunks and chunks[0].sample_rate == 16000
    audio = np.concatenate([c.audio_float_array for c in chunks])
    assert audio.size > 0 and np.isfinite(audio).all()
    ids = chunks[0].phoneme_ids
    quiet = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, length_scale=1.3, normalize_audio=False)
    theirs = voice.phoneme_ids_to_audio(ids, quiet)
    ours = _ours(model, ids, 1.3).reshape(-1)
    assert theirs.shape == ours.shape and np.abs(theirs - ours).max() <= TOL


# ----------------------------------------------------------------------------- joe
@pytest.fixture(scope="module")
def joe_export(tmp_path_factory, joe_voice):
    onnx_path, json_path = joe_voice
    model = vits_surgery.load(onnx_path)
    out = export_onnx(model, tmp_path_factory.mktemp("joe") / "joe.onnx")
    return model, out, onnx_path, json_path


def _joe_ids(json_path, phonemes: str) -> list[int]:
    from vits_surgery.convert.piper_voice import PiperVoiceConfig

    pm = PiperVoiceConfig.from_json(json_path).phoneme_id_map
    ids = [*pm["^"], *pm["_"]]
    for ph in phonemes:
        ids += [*pm[ph], *pm["_"]]
    return ids + list(pm["$"])


def test_joe_export_matches_infer_and_the_original_voice(joe_export) -> None:
    model, out, onnx_path, json_path = joe_export
    ids = _joe_ids(json_path, "həlˈoʊ wˈɜːld.")
    exported = _run(_session(out), ids, [0, 1, 0]).reshape(-1)
    ours = _ours(model, ids).reshape(-1)
    original = _run(_session(onnx_path), ids, [0, 1, 0]).reshape(-1)
    assert exported.shape == ours.shape == original.shape
    assert np.abs(exported - ours).max() <= JOE_TOL and np.abs(exported - original).max() <= JOE_TOL
    assert np.abs(exported).max() > 0.05  # speech
    voice = json.loads(out.with_name(out.name + ".json").read_text(encoding="utf-8"))
    joe = json.loads(json_path.read_text(encoding="utf-8"))
    assert voice["phoneme_id_map"] == joe["phoneme_id_map"] and voice["espeak"] == joe["espeak"]
    assert voice["language"] == {"code": "en_US"} and voice["phoneme_type"] == "espeak"


def test_joe_export_imports_back_with_the_same_weights(joe_export) -> None:
    model, out, _, _ = joe_export
    back, report = vits_surgery.load(out, return_report=True)
    assert back.config == model.config
    assert set(report.created_prefixes()) == {"posterior_encoder", "duration_predictor", "discriminator"}
    ours, theirs = _effective_weights(model), _effective_weights(back)
    assert ours.keys() == theirs.keys() and len(ours) > 300
    assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) <= 1e-6


def test_joe_export_runs_in_piper(joe_export) -> None:
    piper = pytest.importorskip("piper", reason="piper-tts is in the dev extra: pip install piper-tts")
    from piper.config import SynthesisConfig

    model, out, _, _ = joe_export
    voice = piper.PiperVoice.load(out, config_path=out.with_name(out.name + ".json"))
    (chunk,) = list(voice.synthesize("Hello world."))
    assert chunk.sample_rate == 22050 and chunk.audio_float_array.size > 0.3 * 22050
    assert np.isfinite(chunk.audio_float_array).all()
    quiet = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, normalize_audio=False)
    theirs = voice.phoneme_ids_to_audio(chunk.phoneme_ids, quiet)
    ours = _ours(model, chunk.phoneme_ids).reshape(-1)
    assert theirs.shape == ours.shape and np.abs(theirs - ours).max() <= JOE_TOL

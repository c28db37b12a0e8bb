"""Key-map machinery, weight-norm forms and safe loading of foreign pickles."""

from __future__ import annotations

import os
import pathlib

import pytest
import torch
from torch.nn.utils.parametrizations import weight_norm

from vits_surgery.convert import detect_format
from vits_surgery.convert.keymap import (
    TRANSFORMS,
    Rule,
    apply_rules,
    fold_weight_norm_pairs,
    legacy_weight_norm_to_parametrized,
    parametrized_to_legacy_weight_norm,
    reconcile,
    split_weight_norm,
)
from vits_surgery.convert.report import ConversionError, ConversionReport
from vits_surgery.convert.safeload import UnsafeCheckpointError, safe_torch_load


def test_rules_rename_reindex_and_drop() -> None:
    rules = [
        Rule(r"flow\.flows\.(?P<i>\d+)\.(?P<rest>.+)", "flow.flows.{i}.{rest}", index={"i": lambda i: i // 2}),
        Rule(r"speaker_encoder\..+", None, reason="speaker encoder is not part of VITS"),
        Rule(r"dec\.(?P<rest>.+)", "decoder.{rest}"),
    ]
    report = ConversionReport("test")
    state = {"flow.flows.6.pre.weight": torch.ones(1), "speaker_encoder.x": torch.ones(1), "dec.ups.0.bias": torch.ones(2)}
    out = apply_rules(state, rules, report)
    assert set(out) == {"flow.flows.3.pre.weight", "decoder.ups.0.bias"}
    assert report.dropped == [("speaker_encoder.x", "speaker encoder is not part of VITS")]
    assert len(report.mapped) == 2


def test_unmatched_keys_are_named() -> None:
    with pytest.raises(ConversionError, match="mystery.weight"):
        apply_rules({"mystery.weight": torch.ones(1)}, [Rule(r"dec\..+", "x")], ConversionReport("t"))


def test_transforms_round_trip() -> None:
    w = torch.randn(5, 4, 1)
    assert torch.equal(TRANSFORMS["linear_to_conv1x1"](TRANSFORMS["conv1x1_to_linear"](w)), w)
    x = torch.randn(3)
    torch.testing.assert_close(TRANSFORMS["log"](TRANSFORMS["exp"](x)), x)
    with pytest.raises(ConversionError):
        TRANSFORMS["conv1x1_to_linear"](torch.randn(5, 4, 3))


@pytest.mark.parametrize("cls", [torch.nn.Conv1d, torch.nn.ConvTranspose1d])
def test_weight_norm_forms_agree_with_torch(cls) -> None:
    conv = weight_norm(cls(4, 6, 3))
    sd = conv.state_dict()
    g, v = sd["parametrizations.weight.original0"], sd["parametrizations.weight.original1"]
    torch.testing.assert_close(fold_weight_norm_pairs(g, v), conv.weight.detach(), rtol=0, atol=0)
    g2, v2 = split_weight_norm(conv.weight.detach())
    torch.testing.assert_close(fold_weight_norm_pairs(g2, v2), conv.weight.detach())
    legacy = parametrized_to_legacy_weight_norm(sd)
    assert set(legacy) == {"bias", "weight_g", "weight_v"}
    assert legacy_weight_norm_to_parametrized(legacy).keys() == sd.keys()


def test_reconcile_splits_folded_weights_and_reports_created() -> None:
    model = torch.nn.Sequential(weight_norm(torch.nn.Conv1d(2, 3, 1)), torch.nn.Conv1d(3, 3, 1))
    expected = model.state_dict()
    plain = torch.nn.Conv1d(2, 3, 1)
    renamed = {"0.weight": plain.weight.detach(), "0.bias": plain.bias.detach()}
    report = ConversionReport("t")
    out = reconcile(renamed, expected, report, create=lambda k: "fresh layer" if k.startswith("1.") else None)
    model.load_state_dict({**expected, **out})
    torch.testing.assert_close(model[0].weight, plain.weight)
    assert {k for k, _ in report.created} == {"1.weight", "1.bias"}
    with pytest.raises(ConversionError, match=r"missing keys: 1\.weight"):
        reconcile(renamed, expected, ConversionReport("t"))
    bad = dict(renamed, **{"0.bias": torch.zeros(7)})
    with pytest.raises(ConversionError, match=r"0\.bias: checkpoint shape \(7,\)"):
        reconcile(bad, expected, ConversionReport("t"), create=lambda k: "x")


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_payload_is_refused_and_never_runs(tmp_path) -> None:
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"text_encoder.emb.weight": torch.zeros(2)}, "x": _Payload(str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        safe_torch_load(path)
    with pytest.raises(UnsafeCheckpointError):
        detect_format(path)
    assert not marker.exists()


def test_posix_path_in_hyper_parameters_is_allowed(tmp_path) -> None:
    path = tmp_path / "old_piper.pth"
    torch.save({"hyper_parameters": {"dataset": [pathlib.PosixPath("/data")]}, "state_dict": {}}, path)
    assert safe_torch_load(path)["hyper_parameters"]["dataset"] == [pathlib.PosixPath("/data")]


@pytest.mark.parametrize("content", [b"", b"hello", None])
def test_corrupt_files_give_one_clear_error(tmp_path, content) -> None:
    path = tmp_path / "broken.pth"
    if content is None:
        good = tmp_path / "good.pth"
        torch.save({"model": {"a": torch.ones(100)}}, good)
        content = good.read_bytes()[:200]
    path.write_bytes(content)
    with pytest.raises(ConversionError, match="broken.pth"):
        safe_torch_load(path)


def test_detect_format_of_foreign_state_dicts(tmp_path) -> None:
    cases = {
        "coqui": {"config": {}, "model": {"text_encoder.emb.weight": torch.zeros(1)}},
        "vits": {"model": {"enc_p.emb.weight": torch.zeros(1)}, "iteration": 1},
        "piper-ckpt": {"state_dict": {"model_g.enc_p.emb.weight": torch.zeros(1)}},
    }
    for fmt, obj in cases.items():
        path = tmp_path / f"{fmt}.pth"
        torch.save(obj, path)
        assert detect_format(path) == fmt
    other = tmp_path / "other.pth"
    torch.save({"model": {"resnet.fc.weight": torch.zeros(1)}}, other)
    with pytest.raises(ConversionError, match="not a recognised VITS checkpoint"):
        detect_format(other)
    with pytest.raises(FileNotFoundError):
        detect_format(tmp_path / "nope.pth")

"""``vits-surgery convert --to piper-onnx``, run as a real process on a tiny native checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import vits_surgery
from vits_surgery.config import preset
from vits_surgery.models.vits import VITS

ort = pytest.importorskip(
    "onnxruntime", reason="onnxruntime comes with the onnx/dev extras: pip install '.[onnx]'"
)
pytest.importorskip("onnx", reason="onnx comes with the onnx/dev extras: pip install '.[onnx]'")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vits_surgery.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    torch.manual_seed(0)
    model = VITS(preset("tiny")).eval()
    folder = tmp_path_factory.mktemp("cli_onnx") / "tiny_native"
    vits_surgery.save(model, folder)
    return model, folder


def test_convert_to_piper_onnx(native, tmp_path) -> None:
    model, folder = native
    out = tmp_path / "voice" / "tiny.onnx"
    proc = cli("convert", str(folder), str(out), "--to", "piper-onnx", "--phoneme-type", "text")
    assert proc.returncode == 0, proc.stderr
    assert "wrote Piper voice" in proc.stdout and out.is_file()
    voice = json.loads(out.with_name("tiny.onnx.json").read_text(encoding="utf-8"))
    assert voice["phoneme_type"] == "text" and voice["audio"]["sample_rate"] == 16000
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ids = np.arange(4, 20, dtype=np.int64)[None]
    feeds = {"input": ids, "input_lengths": np.array([16]), "scales": np.array([0, 1, 0], np.float32)}
    ref = session.run(None, feeds)[0].reshape(-1)
    with torch.inference_mode():
        ours = (
            model.infer(torch.from_numpy(ids), noise_scale=0.0, noise_scale_w=0.0).audio.reshape(-1).numpy()
        )
    assert ref.shape == ours.shape and np.abs(ref - ours).max() <= 1e-3


def test_character_model_without_phoneme_type_is_a_one_line_error(native, tmp_path) -> None:
    _, folder = native
    out = tmp_path / "refused.onnx"
    proc = cli("convert", str(folder), str(out), "--to", "piper-onnx")
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
    assert "phoneme_type='text'" in proc.stderr and not out.exists()
    proc = cli("convert", str(folder), str(tmp_path / "n"), "--phoneme-type", "text")
    assert proc.returncode == 2 and "only applies to --to piper-onnx" in proc.stderr

"""The real joe voice (Piper en_US joe medium, ONNX) imported and run by our own model.

Reference: onnxruntime running the same ONNX file with scales [0, 1, 0] (no noise) on the
same phoneme ids. Target: same length, max abs difference <= TOL (measured <= 2.7e-5 on an x86-64 CPU
with torch 2.13).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the dev extra; install .[dev]")

from vits_surgery import load  # noqa: E402
from vits_surgery.convert.piper_voice import PiperVoiceConfig  # noqa: E402

TOL = 1e-4

# espeak-ng (en-us) phonemes as Piper makes them, one clause each.
SENTENCES = [
    "həlˈoʊ wˈɜːld.",
    "ðə kwˈɪk bɹˈaʊn fˈɑːks dʒˈʌmps ˌoʊvɚ ðə lˈeɪzi dˈɑːɡ.",
]


@pytest.fixture(scope="module")
def joe(joe_voice):
    onnx_path, json_path = joe_voice
    voice = PiperVoiceConfig.from_json(json_path)
    model, report = load(onnx_path, return_report=True)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return voice, model, report, session


def _onnx(session, ids: list[int], length_scale: float = 1.0) -> np.ndarray:
    """onnxruntime's waveform for ``ids`` with no noise (scales [0, length_scale, 0])."""
    x = np.array([ids], dtype=np.int64)
    feeds = {"input": x, "input_lengths": np.array([len(ids)], dtype=np.int64),
             "scales": np.array([0, length_scale, 0], np.float32)}
    return session.run(None, feeds)[0].reshape(-1)


def _ours(model, ids: list[int], length_scale: float = 1.0) -> np.ndarray:
    with torch.inference_mode():
        out = model.infer(torch.tensor([ids]), noise_scale=0.0, noise_scale_w=0.0, length_scale=length_scale)
    return out.audio.reshape(-1).numpy()


def _ids(voice: PiperVoiceConfig, phonemes: str) -> list[int]:
    pm = voice.phoneme_id_map
    ids = [*pm["^"], *pm["_"]]
    for ph in phonemes:
        ids += [*pm[ph], *pm["_"]]
    return ids + list(pm["$"])


def test_report_lists_created_training_organs(joe) -> None:
    _, model, report, _ = joe
    created = report.created_prefixes()
    assert set(created) == {"posterior_encoder", "duration_predictor", "discriminator"}
    assert len(report.mapped) == 350 and not report.dropped
    assert model.config.audio.sample_rate == 22050 and model.config.decoder.resblock == "2"


@pytest.mark.parametrize("phonemes", SENTENCES)
def test_waveform_matches_onnxruntime(joe, phonemes: str) -> None:
    voice, model, _, session = joe
    ids = _ids(voice, phonemes)
    ref, ours = _onnx(session, ids), _ours(model, ids)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= TOL
    assert np.abs(ref).max() > 0.05  # real speech, not silence


def test_length_scale_matches_onnxruntime(joe) -> None:
    voice, model, _, session = joe
    ids = _ids(voice, SENTENCES[0])
    ref, ours = _onnx(session, ids, 1.35), _ours(model, ids, 1.35)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= TOL


def test_text_through_our_tokenizer_matches_onnxruntime(joe) -> None:
    """End to end from text: our Piper-style phonemes and ids, then both runtimes on those ids."""
    from vits_surgery.text.tokenizer import Tokenizer

    _, model, _, session = joe
    ids = Tokenizer.from_config(model.config.text).encode("Surgery on a voice: keep the timbre, change the rhythm.")
    ref, ours = _onnx(session, ids), _ours(model, ids)
    assert ours.shape == ref.shape and ref.size > 22050  # over a second of speech
    assert np.abs(ours - ref).max() <= TOL

"""Evaluation metrics: speaking rate, F0, speaker similarity, WER, optional-extra errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vits_surgery.audio import load_audio
from vits_surgery.evaluate import (
    EVAL_INSTALL,
    count_phones,
    energy_vad,
    evaluate_corpus,
    f0_stats,
    normalize_transcript,
    rate_from_durations,
    semitones,
    speaking_rate,
    word_error_rate,
)
from vits_surgery.evaluate._deps import require

ENV = dict(os.environ, LC_ALL="C")
SENTENCES = [
    "The weather is nice today and the sun is shining.",
    "I would like a cup of coffee with milk please.",
    "He will call you back later this afternoon.",
]
needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="needs the espeak-ng program (apt-get install espeak-ng)"
)
needs_flite = pytest.mark.skipif(
    shutil.which("flite") is None, reason="needs the flite program (apt-get install flite)"
)


@pytest.fixture(scope="module")
def flite_wavs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Three sentences by flite slt (US female) and rms (US male)."""
    if shutil.which("flite") is None:
        pytest.skip("needs the flite program (apt-get install flite)")
    root = tmp_path_factory.mktemp("flite")
    out: dict[str, list[Path]] = {}
    for voice in ("slt", "rms"):
        out[voice] = []
        for i, text in enumerate(SENTENCES):
            path = root / f"{voice}{i}.wav"
            subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True, env=ENV)
            out[voice].append(path)
    return out


# ----------------------------------------------------------------------------- rate
@needs_espeak
def test_rate_follows_espeak_speed(tmp_path: Path) -> None:
    text = "A quiet river runs past the old stone mill at the bottom of the valley."
    rates = {}
    for wpm in (175, 130):
        path = tmp_path / f"s{wpm}.wav"
        subprocess.run(
            ["espeak-ng", "-v", "en-us", "-s", str(wpm), "-w", str(path), text], check=True, env=ENV
        )
        rates[wpm] = speaking_rate(path, text).phones_per_second
    assert rates[175] / rates[130] == pytest.approx(175 / 130, rel=0.10)
    assert 8.0 < rates[175] < 20.0  # plausible phones per second of speech


@needs_espeak
def test_count_phones_same_text_same_count_longer_text_more() -> None:
    one = count_phones("the cat")
    both = count_phones(["the cat", "the cat sat on the mat"])
    assert both[0] == one and 4 <= one <= 6
    assert both[1] > both[0]


def _tone(seconds: float, sr: int, hz: float = 200.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return 0.5 * np.sin(2 * np.pi * hz * t)


def test_energy_vad_trims_and_counts_only_long_gaps_as_pauses() -> None:
    sr = 16000
    rng = np.random.default_rng(0)
    lead, pause, gap = np.zeros(int(0.4 * sr)), np.zeros(int(0.3 * sr)), np.zeros(int(0.05 * sr))
    audio = np.concatenate([lead, _tone(0.5, sr), pause, _tone(0.4, sr), gap, _tone(0.3, sr), lead])
    audio += 1e-5 * rng.standard_normal(audio.size)  # noise floor far below the tone
    vad = energy_vad(audio, sr)
    assert vad.start == pytest.approx(0.4, abs=0.03)
    assert vad.trimmed_seconds == pytest.approx(1.55, abs=0.05)
    assert vad.pause_seconds == pytest.approx(0.3, abs=0.04)  # the 50 ms gap is not a pause
    assert vad.speech_seconds == pytest.approx(1.25, abs=0.06)


def test_energy_vad_of_silence_is_empty() -> None:
    vad = energy_vad(np.zeros(8000), 16000)
    assert not vad.speech.any() and vad.speech_seconds == 0.0


def test_rate_from_durations_scales_inversely_with_length() -> None:
    d = torch.tensor([[3.0, 5.0, 4.0, 0.0], [6.0, 10.0, 8.0, 0.0]])  # second row twice as slow
    rates = rate_from_durations(torch.tensor([12, 12]), d, hop_length=256, sample_rate=22050)
    assert rates.shape == (2,)
    assert rates[0] / rates[1] == pytest.approx(2.0)
    assert rate_from_durations(12, d[0], 256, 22050) == pytest.approx(12 / (12 * 256 / 22050))
    with pytest.raises(ValueError, match="positive total duration"):
        rate_from_durations(3, torch.zeros(4), 256, 22050)


# ----------------------------------------------------------------------------- F0
def test_f0_of_a_sine_and_a_glide() -> None:
    pytest.importorskip("parselmouth", reason="F0 needs the eval extra (praat-parselmouth)")
    sr = 16000
    stats = f0_stats(_tone(1.0, sr, 150.0), sample_rate=sr)
    assert stats.median == pytest.approx(150.0, abs=1.0)
    assert stats.spread_semitones < 0.2
    t = np.arange(2 * sr) / sr
    glide = 0.5 * np.sin(2 * np.pi * (100.0 * t + 25.0 * t**2))  # 100 -> 200 Hz
    g = f0_stats((glide, sr))
    assert g.median == pytest.approx(150.0, rel=0.05)
    assert g.spread_semitones == pytest.approx(semitones(g.p95, g.p5))
    assert 9.0 < g.spread_semitones < 12.0  # most of the octave


def test_f0_of_flite_female_above_male(flite_wavs: dict[str, list[Path]]) -> None:
    pytest.importorskip("parselmouth", reason="F0 needs the eval extra (praat-parselmouth)")
    slt, rms = f0_stats(flite_wavs["slt"]), f0_stats(flite_wavs["rms"])
    assert 150 < slt.median < 195 and 85 < rms.median < 120
    assert semitones(slt.median, rms.median) > 6.0


# ----------------------------------------------------------------------------- speaker + WER
def test_corpus_similarity_self_above_other_and_wer(flite_wavs: dict[str, list[Path]]) -> None:
    pytest.importorskip("resemblyzer", reason="speaker similarity needs the eval extra (resemblyzer)")
    pytest.importorskip("pocketsphinx", reason="WER needs the eval extra (pocketsphinx)")
    slt = flite_wavs["slt"]
    res = evaluate_corpus(slt, SENTENCES, ref_wavs={"self": slt, "other": flite_wavs["rms"]})
    sim = res["similarity"]
    assert sim["self"]["leave_one_out"] and not sim["other"]["leave_one_out"]
    assert sim["self"]["min"] > sim["other"]["max"] + 0.15
    assert sim["self"]["min"] > 0.8
    assert res["wer"] <= 0.15 and res["words"] == sum(len(s.split()) for s in SENTENCES)
    assert res["n"] == 3 and len(res["utterances"]) == 3
    assert {"phones_per_second", "f0_median", "similarity_self", "hypothesis"} <= set(res["utterances"][0])
    assert 8.0 < res["rate"]["phones_per_second"]["mean"] < 20.0
    assert 150 < res["f0"]["median"] < 195


def test_corpus_accepts_arrays_and_checks_lengths(flite_wavs: dict[str, list[Path]]) -> None:
    audio, sr = load_audio(flite_wavs["rms"][0])
    res = evaluate_corpus([audio], SENTENCES[:1], sample_rate=sr, metrics=["rate"])
    assert set(res) == {"n", "rate", "utterances"}
    with pytest.raises(ValueError, match="2 utterances but 1 texts"):
        evaluate_corpus([audio, audio], SENTENCES[:1], sample_rate=sr)
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate_corpus([audio], SENTENCES[:1], sample_rate=sr, metrics=["mos"])


def test_word_error_rate_normalises_text() -> None:
    pytest.importorskip("jiwer", reason="WER needs the eval extra (jiwer)")
    assert normalize_transcript("Dr. Smith paid $5, didn't he?") == "dr smith paid five dollars didn't he"
    assert word_error_rate("Hello, World!", "hello world") == 0.0
    assert word_error_rate(["a b c d"], ["a x c"]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        word_error_rate(["a", "b"], ["a"])


# ----------------------------------------------------------------------------- missing extras
@pytest.mark.parametrize(
    ("module", "call"),
    [
        ("parselmouth", lambda: f0_stats(_tone(0.2, 8000), sample_rate=8000)),
        ("jiwer", lambda: word_error_rate("a b", "a b")),
        ("resemblyzer", None),
        ("pocketsphinx", None),
    ],
)
def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch, module: str, call) -> None:
    from vits_surgery.evaluate import asr, speaker

    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    speaker._encoder.cache_clear()
    asr._decoder.cache_clear()
    if call is None:
        sr = 16000
        call = {
            "resemblyzer": lambda: speaker.speaker_embedding(_tone(0.5, sr), sample_rate=sr),
            "pocketsphinx": lambda: asr.transcribe(_tone(0.5, sr), sample_rate=sr),
        }[module]
    with pytest.raises(ImportError) as info:
        call()
    assert EVAL_INSTALL in str(info.value) and module in str(info.value)
    speaker._encoder.cache_clear()
    asr._decoder.cache_clear()


def test_pkg_resources_breakage_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "needs_pkg_resources_mod.py").write_text("import pkg_resources\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "pkg_resources", None)
    with pytest.raises(ImportError, match=r"setuptools<81"):
        require("needs_pkg_resources_mod", "speaker similarity")

"""Audio front end: file I/O, resampling, spectrogram and mel filterbank."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from vits_surgery.audio import (
    AudioError,
    linear_spectrogram,
    load_audio,
    log_mel,
    mel_filterbank,
    mel_spectrogram,
    num_frames,
    resample,
    save_wav,
    spec_to_mel,
    spectrogram,
)
from vits_surgery.config import AudioConfig, preset


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * sr / len(x))


def _numpy_spectrogram(x: np.ndarray, n_fft: int, hop: int, win: int) -> np.ndarray:
    """Reference: reflect pad, frame, periodic Hann centred in n_fft, rfft, magnitude."""
    pad = (n_fft - hop) // 2
    xp = np.pad(x, (pad, pad), mode="reflect")
    window = np.zeros(n_fft)
    left = (n_fft - win) // 2
    window[left : left + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    n = 1 + (len(xp) - n_fft) // hop
    frames = np.stack([xp[i * hop : i * hop + n_fft] * window for i in range(n)], axis=1)
    spec = np.fft.rfft(frames, axis=0)
    return np.sqrt(spec.real**2 + spec.imag**2 + 1e-6)


# ----------------------------------------------------------------------------- mel filterbank
@pytest.mark.parametrize(
    "sr,n_fft,n_mels,fmin,fmax",
    [
        (22050, 1024, 80, 0.0, None),
        (16000, 256, 20, 0.0, None),
        (22050, 1024, 80, 55.0, 7600.0),
        (44100, 2048, 128, 20.0, 16000.0),
        (16000, 255, 40, 0.0, 8000.0),
    ],
)
def test_mel_filterbank_matches_librosa(sr, n_fft, n_mels, fmin, fmax):
    librosa = pytest.importorskip("librosa", reason="librosa (dev extra) is the reference filterbank")
    ours = mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False, norm="slaney")
    assert ours.shape == (n_mels, n_fft // 2 + 1)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)


def test_mel_filterbank_is_a_fresh_array_and_rejects_bad_range():
    a = mel_filterbank(16000, 256, 20)
    a[:] = 0
    assert mel_filterbank(16000, 256, 20).max() > 0
    with pytest.raises(AudioError, match="fmin"):
        mel_filterbank(16000, 256, 20, fmin=9000.0, fmax=8000.0)


# ----------------------------------------------------------------------------- spectrogram
@pytest.mark.parametrize("n_fft,hop,win", [(1024, 256, 1024), (256, 64, 256), (512, 128, 400)])
def test_linear_spectrogram_matches_numpy_reference(n_fft, hop, win):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3000)) * 0.3
    ours = linear_spectrogram(torch.from_numpy(x), n_fft, hop, win).numpy()  # float64 path
    for b in range(2):
        ref = _numpy_spectrogram(x[b], n_fft, hop, win)
        assert ours[b].shape == ref.shape
        np.testing.assert_allclose(ours[b], ref, rtol=1e-9, atol=1e-9)
    ours32 = linear_spectrogram(torch.from_numpy(x).float().unsqueeze(1), n_fft, hop, win).numpy()
    np.testing.assert_allclose(ours32[0], _numpy_spectrogram(x[0], n_fft, hop, win), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_samples", [1000, 66150, 66151, 256 * 10, 256 * 10 - 1])
def test_frame_count(n_samples):
    wav = torch.zeros(1, n_samples)
    frames = linear_spectrogram(wav, 1024, 256, 1024).shape[-1]
    assert frames == num_frames(n_samples, 1024, 256) == n_samples // 256


def test_spectrogram_rejects_bad_input():
    with pytest.raises(AudioError, match="too short"):
        linear_spectrogram(torch.zeros(1, 100), 1024, 256, 1024)
    with pytest.raises(AudioError, match="shape"):
        linear_spectrogram(torch.zeros(2, 2, 5000), 1024, 256, 1024)


def test_mel_of_sine_peaks_at_its_band_and_config_helpers_agree():
    cfg: AudioConfig = preset("tiny").audio
    wav = torch.from_numpy(_sine(1000.0, cfg.sample_rate, 0.5))[None]  # [1, T]
    mel = mel_spectrogram(wav, cfg)
    assert mel.shape == (1, cfg.n_mels, num_frames(wav.shape[-1], cfg.n_fft, cfg.hop_length))
    fb = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels)
    bin_1k = round(1000.0 * cfg.n_fft / cfg.sample_rate)
    assert int(mel[0, :, 10].argmax()) == int(fb[:, bin_1k].argmax())
    spec = spectrogram(wav, cfg)
    torch.testing.assert_close(mel, spec_to_mel(spec, cfg.sample_rate, cfg.n_fft, cfg.n_mels))
    torch.testing.assert_close(log_mel(wav, cfg), torch.log(torch.clamp(mel, min=1e-5)))
    # silence: every bin is sqrt(1e-6), so each band is its filter's area times 1e-3, floored at 1e-5
    silent = log_mel(torch.zeros(1, 2000, dtype=torch.float64), cfg)[0, :, 0].numpy()
    np.testing.assert_allclose(silent, np.log(np.maximum(fb.sum(axis=1).astype(np.float64) * 1e-3, 1e-5)), rtol=1e-6)


# ----------------------------------------------------------------------------- resampling
@pytest.mark.parametrize("orig,target", [(48000, 22050), (22050, 16000), (16000, 22050), (44100, 44100)])
def test_resample_keeps_sine_frequency(orig, target):
    x = _sine(440.0, orig, 1.0)
    y = resample(x, orig, target)
    assert y.dtype == np.float32
    assert abs(len(y) - len(x) * target / orig) <= 1
    assert abs(_peak_hz(y, target) - 440.0) < 2.0
    assert abs(np.sqrt(np.mean(y[1000:-1000] ** 2)) - 0.5 / np.sqrt(2)) < 0.01


# ----------------------------------------------------------------------------- files
def test_load_stereo_downmix_and_first(tmp_path):
    left, right = _sine(440.0, 22050, 0.2), _sine(660.0, 22050, 0.2, amp=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 22050, subtype="FLOAT")
    mixed, sr = load_audio(path)
    assert sr == 22050 and mixed.ndim == 1 and mixed.dtype == np.float32
    np.testing.assert_allclose(mixed, (left + right) / 2, atol=1e-6)
    first, _ = load_audio(path, mono="first")
    np.testing.assert_allclose(first, left, atol=1e-6)


@pytest.mark.parametrize("subtype,tol", [("PCM_U8", 1 / 64), ("PCM_16", 1e-4), ("PCM_24", 1e-6), ("FLOAT", 1e-7)])
def test_load_bit_depths(tmp_path, subtype, tol):
    x = _sine(300.0, 16000, 0.1, amp=0.8)
    path = tmp_path / f"{subtype}.wav"
    sf.write(path, x, 16000, subtype=subtype)
    y, sr = load_audio(path)
    assert sr == 16000
    np.testing.assert_allclose(y, x, atol=tol)


def test_load_48k_resamples_to_target(tmp_path):
    path = tmp_path / "hi.wav"
    sf.write(path, _sine(1000.0, 48000, 0.5), 48000, subtype="PCM_16")
    y, sr = load_audio(path, sample_rate=22050)
    assert sr == 22050 and abs(len(y) - 22050 * 0.5) <= 1
    assert abs(_peak_hz(y, sr) - 1000.0) < 4.0


def test_load_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match="empty.wav.*empty"):
        load_audio(empty)
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 20)
    with pytest.raises(AudioError, match="notes.wav.*not a readable audio file"):
        load_audio(text)
    with pytest.raises(AudioError, match="missing.wav.*does not exist"):
        load_audio(tmp_path / "missing.wav")
    silent = tmp_path / "nosamples.wav"
    sf.write(silent, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="nosamples.wav.*no samples"):
        load_audio(silent)


def test_load_rejects_nan(tmp_path):
    x = _sine(300.0, 16000, 0.05)
    x[7] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav.*NaN/inf.*index 7"):
        load_audio(path)


def test_save_wav_clips_and_round_trips(tmp_path):
    x = np.array([0.0, 0.5, -0.5, 1.7, -3.0], dtype=np.float32)
    path = save_wav(tmp_path / "sub" / "a.wav", torch.from_numpy(x), 16000)
    info = sf.info(path)
    assert info.subtype == "PCM_16" and info.samplerate == 16000
    y, _ = load_audio(path)
    np.testing.assert_allclose(y, np.clip(x, -1, 1), atol=1e-4)
    path = save_wav(tmp_path / "f.wav", np.stack([x, -x]), 8000, subtype="FLOAT")
    data, _ = sf.read(path, always_2d=True)
    assert data.shape == (5, 2)
    np.testing.assert_allclose(data[:, 1], -np.clip(x, -1, 1))
    with pytest.raises(AudioError, match="NaN"):
        save_wav(tmp_path / "bad.wav", np.array([np.inf, 0.0]), 16000)

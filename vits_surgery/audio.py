"""Audio front end: wav I/O, resampling, linear spectrogram and mel filterbank.

The spectrogram follows the VITS recipe shared by Coqui TTS, the original VITS and Piper:
reflect-pad ``(n_fft - hop) / 2`` samples on each side, ``torch.stft`` with
``center=False``, a periodic Hann window of ``win_length`` samples, one-sided, magnitude
``sqrt(re^2 + im^2 + 1e-6)``. The mel basis is the Slaney-style filterbank (librosa's
``htk=False, norm="slaney"``), implemented here so that runtime needs neither librosa nor
torchaudio. Log compression is ``log(clamp(x, min=1e-5))``.

With ``n_fft - hop`` even, a waveform of ``T`` samples gives ``T // hop`` frames
(:func:`num_frames`).
"""

from __future__ import annotations

import functools
import logging
import math
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from .config import AudioConfig

__all__ = [
    "AudioError",
    "load_audio",
    "save_wav",
    "resample",
    "num_frames",
    "linear_spectrogram",
    "mel_filterbank",
    "spec_to_mel",
    "amp_to_log",
    "spectrogram",
    "mel_spectrogram",
    "log_mel",
]

logger = logging.getLogger(__name__)

SPEC_EPS = 1e-6
"""Added under the square root of the STFT magnitude (VITS ``spectrogram_torch``)."""
LOG_CLIP = 1e-5
"""Floor before the natural log (VITS ``spectral_normalize_torch``, Coqui ``amp_to_db``)."""


class AudioError(ValueError):
    """An audio file or array cannot be used (missing, empty, not audio, NaN/inf)."""


# ----------------------------------------------------------------------------- file I/O
def load_audio(
    path: str | Path, sample_rate: int | None = None, mono: str = "mix"
) -> tuple[np.ndarray, int]:
    """Read any libsndfile format as mono float32 in [-1, 1], optionally resampled.

    Integer PCM (8-, 16-, 24-, 32-bit) is scaled by libsndfile; float files are taken as is.

    Args:
        path: audio file (wav, flac, ogg, ...).
        sample_rate: target rate in Hz; ``None`` keeps the file's rate.
        mono: how to reduce several channels: ``"mix"`` (mean of channels) or ``"first"``.

    Returns:
        ``(audio [T] float32, sample_rate)``.

    Raises:
        AudioError: the file is missing, empty, not audio, has no samples or holds NaN/inf.
    """
    import soundfile as sf

    path = Path(path)
    if mono not in ("mix", "first"):
        raise AudioError(f"mono must be 'mix' or 'first', got {mono!r}")
    if not path.is_file():
        raise AudioError(f"audio file {str(path)!r} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise AudioError(f"audio file {str(path)!r} is empty (0 bytes)")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [T, C]
    except Exception as exc:  # libsndfile raises its own error types
        raise AudioError(f"{str(path)!r} is not a readable audio file: {exc}") from exc
    if data.shape[0] == 0:
        raise AudioError(f"audio file {str(path)!r} contains no samples")
    audio = data.mean(axis=1) if mono == "mix" else data[:, 0]
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    _check_finite(audio, f"audio file {str(path)!r}")
    if sample_rate is not None and sample_rate != sr:
        audio = resample(audio, sr, sample_rate)
        sr = sample_rate
    return audio, int(sr)


def save_wav(
    path: str | Path,
    audio: np.ndarray | torch.Tensor,
    sample_rate: int,
    subtype: str = "PCM_16",
) -> Path:
    """Write a wav file; samples are clipped to [-1, 1].

    Args:
        path: output file; parent folders are created.
        audio: ``[T]`` mono or ``[C, T]`` channel-first samples (numpy or torch).
        sample_rate: rate in Hz.
        subtype: libsndfile subtype, ``"PCM_16"`` (default), ``"PCM_24"``, ``"FLOAT"``...

    Returns:
        The path written.

    Raises:
        AudioError: the array is empty, has more than 2 dims, or holds NaN/inf.
    """
    import soundfile as sf

    if hasattr(audio, "detach"):
        audio = audio.detach().cpu().float().numpy()
    arr = np.asarray(audio, dtype=np.float32)
    if arr.ndim not in (1, 2) or arr.size == 0:
        raise AudioError(f"save_wav needs a non-empty [T] or [C, T] array, got shape {arr.shape}")
    if sample_rate <= 0:
        raise AudioError(f"sample_rate must be positive, got {sample_rate}")
    _check_finite(arr, f"audio for {str(path)!r}")
    arr = np.clip(arr, -1.0, 1.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), arr.T if arr.ndim == 2 else arr, sample_rate, subtype=subtype)
    return path


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling by the exact rational ratio ``target_sr / orig_sr``.

    Args:
        audio: ``[..., T]`` samples; resampled along the last axis.
        orig_sr: input rate in Hz.
        target_sr: output rate in Hz.

    Returns:
        ``[..., ceil(T * target_sr / orig_sr)]`` float32 samples.
    """
    from scipy.signal import resample_poly

    if orig_sr <= 0 or target_sr <= 0:
        raise AudioError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    audio = np.asarray(audio)
    if orig_sr == target_sr:
        return audio.astype(np.float32, copy=False)
    ratio = Fraction(target_sr, orig_sr)
    out = resample_poly(audio, ratio.numerator, ratio.denominator, axis=-1)
    return np.ascontiguousarray(out, dtype=np.float32)


def _check_finite(arr: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.flatnonzero(bad.reshape(-1))[0])
        raise AudioError(f"{what} contains {int(bad.sum())} NaN/inf samples (first at index {first})")


# ----------------------------------------------------------------------------- spectrograms
def num_frames(n_samples: int, n_fft: int, hop_length: int) -> int:
    """Frames :func:`linear_spectrogram` gives for ``n_samples`` samples.

    ``1 + (n_samples + 2 * ((n_fft - hop) // 2) - n_fft) // hop``, which is
    ``n_samples // hop`` when ``n_fft - hop`` is even.
    """
    pad = (n_fft - hop_length) // 2
    return 1 + (n_samples + 2 * pad - n_fft) // hop_length


@functools.lru_cache(maxsize=32)
def _hann(win_length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    import torch

    return torch.hann_window(win_length, periodic=True, device=device, dtype=dtype)


def linear_spectrogram(
    wav: torch.Tensor, n_fft: int, hop_length: int, win_length: int
) -> torch.Tensor:
    """Magnitude STFT exactly as VITS computes the posterior-encoder input.

    Args:
        wav: ``[B, T]`` or ``[B, 1, T]`` waveform (float32 or float64).
        n_fft: FFT size.
        hop_length: hop in samples.
        win_length: Hann window length (``<= n_fft``; centred inside the frame).

    Returns:
        ``[B, n_fft // 2 + 1, num_frames(T)]`` magnitudes ``sqrt(re^2 + im^2 + 1e-6)``.

    Raises:
        AudioError: wrong shape, or a waveform too short for the reflect padding.
    """
    import torch
    import torch.nn.functional as F

    if wav.dim() == 3 and wav.shape[1] == 1:
        wav = wav[:, 0]
    if wav.dim() != 2:
        raise AudioError(f"linear_spectrogram needs [B, T] or [B, 1, T], got shape {tuple(wav.shape)}")
    pad = (n_fft - hop_length) // 2
    if wav.shape[-1] <= pad:
        raise AudioError(
            f"waveform of {wav.shape[-1]} samples is too short for n_fft={n_fft}, hop={hop_length} "
            f"(needs more than {pad} samples)"
        )
    if not wav.is_floating_point():
        wav = wav.float()
    padded = F.pad(wav.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)  # [B, T + 2 pad]
    stft = torch.stft(
        padded,
        n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=_hann(win_length, wav.device, wav.dtype),
        center=False,
        normalized=False,
        onesided=True,
        return_complex=True,
    )  # [B, F, frames]
    return torch.sqrt(stft.real.pow(2) + stft.imag.pow(2) + SPEC_EPS)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear (200/3 Hz per mel) below 1 kHz, logarithmic above."""
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / f_sp
    high = hz >= min_log_hz
    mel[high] = min_log_mel + np.log(hz[high] / min_log_hz) / logstep
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    mel = np.asarray(mel, dtype=np.float64)
    hz = mel * f_sp
    high = mel >= min_log_mel
    hz[high] = min_log_hz * np.exp(logstep * (mel[high] - min_log_mel))
    return hz


@functools.lru_cache(maxsize=32)
def _mel_basis64(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    fft_hz = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)  # [F]
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array([fmin]))[0], _hz_to_mel(np.array([fmax]))[0], n_mels + 2))
    widths = np.diff(edges)  # [n_mels + 1]
    dist = edges[:, None] - fft_hz[None, :]  # [n_mels + 2, F]
    rising = -dist[:-2] / widths[:-1, None]  # [n_mels, F]
    falling = dist[2:] / widths[1:, None]  # [n_mels, F]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # Slaney area normalization
    empty = weights.max(axis=1) <= 0
    if empty.any():
        logger.warning(
            "mel filterbank: %d of %d filters are empty (n_mels=%d too high for n_fft=%d)",
            int(empty.sum()), n_mels, n_mels, n_fft,
        )
    weights.setflags(write=False)
    return weights


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Slaney-scale, Slaney-normalized triangular mel filterbank.

    Equals ``librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin,
    fmax=fmax, htk=False, norm="slaney")``. Results are cached per parameter set.

    Args:
        sample_rate: rate in Hz.
        n_fft: FFT size.
        n_mels: number of mel bands.
        fmin: lowest edge in Hz.
        fmax: highest edge in Hz; ``None`` means ``sample_rate / 2``.

    Returns:
        ``[n_mels, n_fft // 2 + 1]`` float32 weights (a fresh, writable array).
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    if not 0 <= fmin < fmax:
        raise AudioError(f"mel range must satisfy 0 <= fmin ({fmin}) < fmax ({fmax})")
    if n_mels <= 0 or n_fft <= 0:
        raise AudioError(f"n_mels ({n_mels}) and n_fft ({n_fft}) must be positive")
    return _mel_basis64(int(sample_rate), int(n_fft), int(n_mels), float(fmin), float(fmax)).astype(np.float32)


@functools.lru_cache(maxsize=32)
def _mel_basis_torch(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None,
    device: torch.device, dtype: torch.dtype,
) -> torch.Tensor:
    import torch

    return torch.from_numpy(mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)).to(device, dtype)


def spec_to_mel(
    spec: torch.Tensor, sample_rate: int, n_fft: int, n_mels: int,
    fmin: float = 0.0, fmax: float | None = None,
) -> torch.Tensor:
    """Project a linear magnitude spectrogram onto the mel basis (no log).

    Args:
        spec: ``[B, n_fft // 2 + 1, frames]`` magnitudes.
        sample_rate, n_fft, n_mels, fmin, fmax: filterbank parameters (:func:`mel_filterbank`).

    Returns:
        ``[B, n_mels, frames]``.
    """
    n_freq = n_fft // 2 + 1
    if spec.dim() != 3 or spec.shape[1] != n_freq:
        raise AudioError(f"spec_to_mel needs [B, {n_freq}, frames] for n_fft={n_fft}, got {tuple(spec.shape)}")
    basis = _mel_basis_torch(sample_rate, n_fft, n_mels, float(fmin), fmax, spec.device, spec.dtype)
    return basis @ spec  # [n_mels, F] @ [B, F, T] -> [B, n_mels, T]


def amp_to_log(x: torch.Tensor, clip: float = LOG_CLIP) -> torch.Tensor:
    """``log(clamp(x, min=clip))``: the VITS log compression of (mel) magnitudes."""
    import torch

    return torch.log(torch.clamp(x, min=clip))


# ----------------------------------------------------------------------------- AudioConfig helpers
def spectrogram(wav: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """Linear spectrogram ``[B, n_freq, frames]`` with the settings of ``cfg``."""
    return linear_spectrogram(wav, cfg.n_fft, cfg.hop_length, cfg.win_length)


def mel_spectrogram(wav: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """Mel magnitudes ``[B, n_mels, frames]`` (no log) with the settings of ``cfg``."""
    spec = spectrogram(wav, cfg)
    return spec_to_mel(spec, cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.mel_fmin, cfg.mel_fmax)


def log_mel(wav: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """Log-mel ``[B, n_mels, frames]`` = ``log(clamp(mel, 1e-5))``, the VITS mel-loss target."""
    return amp_to_log(mel_spectrogram(wav, cfg))

"""Audio inputs of the evaluation tools: a path, an array with its rate, or ``(array, rate)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import numpy as np

from ..audio import AudioError, load_audio, resample

__all__ = ["AudioLike", "as_audio"]

AudioLike = Union[str, Path, np.ndarray, "tuple[np.ndarray, int]", Any]
"""A wav path, a ``[T]`` numpy array / torch tensor (with ``sample_rate=``), or ``(array, rate)``."""


def as_audio(
    wav: AudioLike, sample_rate: int | None = None, target_sr: int | None = None
) -> tuple[np.ndarray, int]:
    """Mono float32 samples and their rate from any :data:`AudioLike`.

    Args:
        wav: the audio.
        sample_rate: rate of a bare array (ignored for paths and tuples).
        target_sr: resample to this rate (``None`` keeps the rate).

    Returns:
        ``(audio [T] float32, rate)``.

    Raises:
        AudioError: a bare array without ``sample_rate``, or a multi-dimensional array.
    """
    if isinstance(wav, (str, Path)):
        audio, sr = load_audio(wav)
    else:
        if isinstance(wav, tuple):
            wav, sample_rate = wav
        if sample_rate is None:
            raise AudioError(
                "an audio array needs its sample_rate (pass sample_rate= or an (array, rate) tuple)"
            )
        if hasattr(wav, "detach"):
            wav = wav.detach().cpu().float().numpy()
        audio = np.asarray(wav, dtype=np.float32)
        if audio.ndim == 2 and 1 in audio.shape:
            audio = audio.reshape(-1)
        if audio.ndim != 1 or audio.size == 0:
            raise AudioError(f"expected mono audio [T], got an array of shape {audio.shape}")
        sr = int(sample_rate)
    if target_sr is not None and target_sr != sr:
        audio, sr = resample(audio, sr, target_sr), target_sr
    return audio, sr

"""F0 statistics with Praat's autocorrelation pitch tracker (``praat-parselmouth``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._audio import AudioLike, as_audio
from ._deps import require

__all__ = ["F0Stats", "f0_track", "f0_stats", "semitones"]


def semitones(f_hz: float, ref_hz: float) -> float:
    """Interval from ``ref_hz`` to ``f_hz`` in semitones: ``12 * log2(f / ref)``."""
    if f_hz <= 0 or ref_hz <= 0:
        raise ValueError(f"semitones need positive frequencies, got {f_hz} and {ref_hz}")
    return 12.0 * math.log2(f_hz / ref_hz)


@dataclass(frozen=True)
class F0Stats:
    """Statistics of voiced F0 frames.

    Attributes:
        median: median F0 in Hz.
        p5: 5th percentile in Hz.
        p95: 95th percentile in Hz.
        spread_hz: ``p95 - p5``.
        spread_semitones: ``12 * log2(p95 / p5)``.
        voiced_frames: frames the statistics come from.
    """

    median: float
    p5: float
    p95: float
    spread_hz: float
    spread_semitones: float
    voiced_frames: int


def f0_track(
    wav: AudioLike,
    sample_rate: int | None = None,
    floor_hz: float = 50.0,
    ceiling_hz: float = 500.0,
    time_step: float = 0.01,
) -> np.ndarray:
    """Voiced F0 values of one utterance (Praat ``To Pitch (ac)``).

    Args:
        wav: the audio (path, array with ``sample_rate``, or ``(array, rate)``).
        sample_rate: rate of a bare array.
        floor_hz: pitch floor.
        ceiling_hz: pitch ceiling.
        time_step: seconds between frames.

    Returns:
        [V] F0 in Hz of the voiced frames (unvoiced frames dropped).

    Raises:
        ImportError: ``praat-parselmouth`` is missing (names the install command).
    """
    parselmouth = require("parselmouth", "F0 statistics")
    audio, sr = as_audio(wav, sample_rate)
    sound = parselmouth.Sound(audio.astype(np.float64), sampling_frequency=float(sr))
    pitch = sound.to_pitch_ac(time_step=time_step, pitch_floor=floor_hz, pitch_ceiling=ceiling_hz)
    f0 = np.asarray(pitch.selected_array["frequency"], dtype=np.float64)
    return f0[f0 > 0]


def f0_stats(
    wavs: AudioLike | Sequence[AudioLike],
    sample_rate: int | None = None,
    floor_hz: float = 50.0,
    ceiling_hz: float = 500.0,
) -> F0Stats:
    """Median, 5th/95th percentiles and spread of the voiced F0 of one or several utterances.

    Several utterances are pooled frame by frame.

    Args:
        wavs: one audio or a list (paths, arrays with ``sample_rate``, ``(array, rate)``).
        sample_rate: rate of bare arrays.
        floor_hz: pitch floor.
        ceiling_hz: pitch ceiling.

    Returns:
        :class:`F0Stats` (NaN fields when nothing is voiced).
    """
    items = [wavs] if _is_single(wavs) else list(wavs)
    tracks = [f0_track(w, sample_rate, floor_hz, ceiling_hz) for w in items]
    f0 = np.concatenate(tracks) if tracks else np.zeros(0)
    if f0.size == 0:
        nan = float("nan")
        return F0Stats(nan, nan, nan, nan, nan, 0)
    p5, med, p95 = (float(v) for v in np.percentile(f0, [5, 50, 95]))
    return F0Stats(med, p5, p95, p95 - p5, semitones(p95, p5), int(f0.size))


def _is_single(wavs: object) -> bool:
    if isinstance(wavs, (str, np.ndarray)) or hasattr(wavs, "detach") or hasattr(wavs, "__fspath__"):
        return True
    return isinstance(wavs, tuple) and len(wavs) == 2 and isinstance(wavs[1], int)

"""Speaking rate: phones per second, from audio (energy VAD) or from predicted durations.

Phones are counted on the text (espeak-ng IPA through ``phonemizer``, no stress, no
punctuation), so every voice reading a sentence gets the same count. Speech time comes from an
energy voice-activity detector on the span from the first to the last speech frame; silent
gaps of at least ``min_pause`` seconds inside it are pauses and do not count as speech.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._audio import AudioLike, as_audio

_espeak_logger = logging.getLogger(__name__ + ".espeak")
_espeak_logger.setLevel(logging.ERROR)  # "words count mismatch" notes do not affect phone counts

__all__ = [
    "RateResult",
    "VADResult",
    "count_phones",
    "energy_vad",
    "speaking_rate",
    "rate_from_durations",
]


@dataclass(frozen=True)
class VADResult:
    """Frame-level speech decision of :func:`energy_vad`.

    Attributes:
        speech: [F] bool, True where a frame is speech.
        hop_seconds: seconds per frame step.
        start: seconds of the first speech frame (0 if none).
        end: seconds where the last speech frame ends (0 if none).
        pause_seconds: total length of the silent gaps >= min_pause inside [start, end].
    """

    speech: np.ndarray
    hop_seconds: float
    start: float
    end: float
    pause_seconds: float

    @property
    def trimmed_seconds(self) -> float:
        """First-to-last speech span."""
        return max(0.0, self.end - self.start)

    @property
    def speech_seconds(self) -> float:
        """Trimmed span minus the pauses."""
        return max(0.0, self.trimmed_seconds - self.pause_seconds)


@dataclass(frozen=True)
class RateResult:
    """Speaking rate of one utterance.

    Attributes:
        phones: phones in the text.
        speech_seconds: speech time (trimmed span minus pauses).
        trimmed_seconds: first-to-last speech span.
        phones_per_second: ``phones / speech_seconds``.
        phones_per_second_trimmed: ``phones / trimmed_seconds``.
    """

    phones: int
    speech_seconds: float
    trimmed_seconds: float
    phones_per_second: float
    phones_per_second_trimmed: float


@functools.lru_cache(maxsize=4)
def _phone_backend(language: str) -> Any:
    from phonemizer.backend import EspeakBackend
    from phonemizer.backend.espeak.wrapper import EspeakWrapper

    from ..text.phonemize import PhonemizerError, espeak_paths

    if not EspeakBackend.is_available():
        library, data = espeak_paths()
        if library is None:
            raise PhonemizerError("counting phones needs espeak-ng: `apt-get install espeak-ng`")
        EspeakWrapper.set_library(library)
        if data is not None:
            EspeakWrapper.set_data_path(data)
    return EspeakBackend(
        language,
        with_stress=False,
        preserve_punctuation=False,
        language_switch="remove-flags",
        logger=_espeak_logger,
    )


def count_phones(texts: str | list[str], language: str = "en-us") -> int | list[int]:
    """Number of phones espeak-ng reads in each text (IPA, no stress or punctuation).

    Args:
        texts: one text or a list of texts.
        language: espeak-ng voice.

    Returns:
        One count, or a list of counts for a list.
    """
    from phonemizer.separator import Separator

    single = isinstance(texts, str)
    batch = [texts] if single else list(texts)
    sep = Separator(phone=" ", word=" | ", syllable="")
    out = _phone_backend(language).phonemize(batch, separator=sep, strip=True)
    counts = [sum(1 for p in s.split() if p != "|") for s in out]
    return counts[0] if single else counts


def energy_vad(
    audio: np.ndarray,
    sample_rate: int,
    frame_seconds: float = 0.025,
    hop_seconds: float = 0.010,
    threshold_db: float = 40.0,
    min_pause: float = 0.150,
) -> VADResult:
    """Energy voice-activity detection: frames within ``threshold_db`` of the loudest frame.

    Args:
        audio: [T] samples.
        sample_rate: Hz.
        frame_seconds: analysis window.
        hop_seconds: frame step.
        threshold_db: a frame is speech when its RMS is at most this far below the maximum.
        min_pause: silent gaps inside the speech span at least this long are pauses.

    Returns:
        :class:`VADResult`.
    """
    x = np.asarray(audio, dtype=np.float64)
    win, hop = max(1, round(frame_seconds * sample_rate)), max(1, round(hop_seconds * sample_rate))
    if x.size < win:
        x = np.pad(x, (0, win - x.size))
    n = 1 + (x.size - win) // hop
    frames = np.lib.stride_tricks.as_strided(x, (n, win), (x.strides[0] * hop, x.strides[0]))  # [F, W]
    db = 10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-12)  # [F]
    speech = db > db.max() - threshold_db
    if db.max() < -100.0 or not speech.any():  # digital silence
        return VADResult(np.zeros(n, dtype=bool), hop / sample_rate, 0.0, 0.0, 0.0)
    idx = np.flatnonzero(speech)
    first, last = int(idx[0]), int(idx[-1])
    gaps = np.diff(idx) - 1  # silent frames between consecutive speech frames
    min_frames = min_pause * sample_rate / hop
    pause_frames = float(gaps[gaps >= min_frames].sum())
    step = hop / sample_rate
    return VADResult(speech, step, first * step, last * step + win / sample_rate, pause_frames * step)


def speaking_rate(
    wav: AudioLike,
    text: str,
    sample_rate: int | None = None,
    language: str = "en-us",
    phones: int | None = None,
    **vad_kwargs: float,
) -> RateResult:
    """Phones per second of speech of one utterance.

    Args:
        wav: the audio (path, array with ``sample_rate``, or ``(array, rate)``).
        text: what it says (normalised text: espeak and the voice must read it alike).
        sample_rate: rate of a bare array.
        language: espeak-ng voice for the phone count.
        phones: the phone count, if already known (skips the phonemizer).
        **vad_kwargs: options of :func:`energy_vad`.

    Returns:
        :class:`RateResult`.
    """
    audio, sr = as_audio(wav, sample_rate)
    n = count_phones(text, language) if phones is None else int(phones)
    vad = energy_vad(audio, sr, **vad_kwargs)
    speech, trimmed = vad.speech_seconds, vad.trimmed_seconds
    return RateResult(
        phones=n,
        speech_seconds=speech,
        trimmed_seconds=trimmed,
        phones_per_second=n / speech if speech > 0 else float("nan"),
        phones_per_second_trimmed=n / trimmed if trimmed > 0 else float("nan"),
    )


def rate_from_durations(
    n_phones: int | torch.Tensor | np.ndarray,
    durations: torch.Tensor | np.ndarray,
    hop_length: int,
    sample_rate: int,
) -> float | np.ndarray:
    """Phones per second implied by predicted durations: ``n_phones / (sum(d) * hop / sr)``.

    Args:
        n_phones: phones of the text, scalar or [B].
        durations: [T_x] or [B, T_x] frames per token (e.g. ``InferenceOutput.durations``,
            padding zero).
        hop_length: waveform samples per frame.
        sample_rate: Hz.

    Returns:
        A float for one utterance, else [B] array.
    """
    d = (
        durations.detach().cpu().double().numpy()
        if isinstance(durations, torch.Tensor)
        else np.asarray(durations, float)
    )
    n = n_phones.detach().cpu().numpy() if isinstance(n_phones, torch.Tensor) else np.asarray(n_phones, float)
    seconds = d.sum(axis=-1) * hop_length / sample_rate
    if np.any(seconds <= 0):
        raise ValueError(f"durations sum to {seconds} seconds; a rate needs a positive total duration")
    rate = n / seconds
    return float(rate) if np.ndim(rate) == 0 else rate

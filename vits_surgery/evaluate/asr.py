"""Intelligibility: word error rate of an offline recognizer (pocketsphinx 5 + jiwer).

pocketsphinx 5 bundles its US-English acoustic model, language model and dictionary, so no
download is needed. Its absolute WER on TTS of read text is high (rare words, no adaptation):
compare WERs of voices on the same sentences only.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..text.cleaners import convert_to_ascii
from ..text.numbers import normalize_numbers
from ._audio import AudioLike, as_audio
from ._deps import require

__all__ = ["ASR_SR", "normalize_transcript", "transcribe", "word_error_rate"]

ASR_SR = 16000
"""Rate of pocketsphinx's default acoustic model."""

_NON_WORD = re.compile(r"[^a-z' ]+")
_SPACES = re.compile(r"\s+")


def normalize_transcript(text: str) -> str:
    """Lower-case words for WER: numbers spelled out, punctuation (except apostrophes) removed.

    Example:
        >>> normalize_transcript("Dr. Smith paid $5, didn't he?")
        "dr smith paid five dollars didn't he"
    """
    text = normalize_numbers(convert_to_ascii(text)).lower().replace("-", " ")
    text = _NON_WORD.sub(" ", text)
    words = [w.strip("'") for w in _SPACES.split(text)]
    return " ".join(w for w in words if w)


@functools.lru_cache(maxsize=1)
def _decoder() -> Any:
    pocketsphinx = require("pocketsphinx", "word error rate")
    return pocketsphinx.Decoder(samprate=ASR_SR, loglevel="FATAL")


def transcribe(wav: AudioLike, sample_rate: int | None = None) -> str:
    """Recognise one utterance with pocketsphinx's bundled US-English models.

    Args:
        wav: the audio (path, array with ``sample_rate``, or ``(array, rate)``).
        sample_rate: rate of a bare array.

    Returns:
        The hypothesis, normalised by :func:`normalize_transcript`.

    Raises:
        ImportError: ``pocketsphinx`` is missing (names the install command).
    """
    audio, _ = as_audio(wav, sample_rate, target_sr=ASR_SR)
    peak = float(np.max(np.abs(audio))) or 1.0
    pcm = (np.clip(audio / peak * 0.9, -1.0, 1.0) * 32767.0).astype("<i2")
    decoder = _decoder()
    decoder.start_utt()
    decoder.process_raw(pcm.tobytes(), full_utt=True)
    decoder.end_utt()
    hyp = decoder.hyp()
    return normalize_transcript(hyp.hypstr if hyp is not None else "")


def word_error_rate(references: str | Sequence[str], hypotheses: str | Sequence[str]) -> float:
    """Pooled WER (errors / reference words) after :func:`normalize_transcript` on both sides.

    Raises:
        ValueError: different numbers of references and hypotheses, or no reference words.
        ImportError: ``jiwer`` is missing (names the install command).
    """
    jiwer = require("jiwer", "word error rate")
    refs = [references] if isinstance(references, str) else list(references)
    hyps = [hypotheses] if isinstance(hypotheses, str) else list(hypotheses)
    if len(refs) != len(hyps):
        raise ValueError(f"got {len(refs)} references but {len(hyps)} hypotheses")
    refs = [normalize_transcript(r) for r in refs]
    hyps = [normalize_transcript(h) for h in hyps]
    if not any(refs):
        raise ValueError("the references hold no words: WER is undefined")
    keep = [i for i, r in enumerate(refs) if r]  # jiwer rejects empty references
    return float(jiwer.wer([refs[i] for i in keep], [hyps[i] for i in keep]))

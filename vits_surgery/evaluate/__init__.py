"""Transplant metrics: speaking rate, F0, speaker similarity and intelligibility.

Speaking rate and the phone counts need only the core dependencies (phonemizer + espeak-ng).
The other metrics need the optional ``eval`` extra (``pip install "vits_surgery[eval]"``):
``praat-parselmouth`` (F0), ``resemblyzer`` (speaker embeddings, model shipped in the wheel),
``pocketsphinx`` + ``jiwer`` (word error rate, models shipped in the wheel). A missing package
raises an ImportError that names the install command when its metric is first used.

Example:
    >>> from vits_surgery.evaluate import evaluate_corpus
    >>> res = evaluate_corpus(wavs, texts, ref_wavs={"recipient": r_wavs})  # doctest: +SKIP
    >>> res["rate"]["phones_per_second"]["mean"], res["f0"]["median"]  # doctest: +SKIP
"""

from __future__ import annotations

from .._lazy import lazy_attributes

_LAZY = {
    "EVAL_INSTALL": "vits_surgery.evaluate._deps:EVAL_INSTALL",
    "RateResult": "vits_surgery.evaluate.rate:RateResult",
    "VADResult": "vits_surgery.evaluate.rate:VADResult",
    "count_phones": "vits_surgery.evaluate.rate:count_phones",
    "energy_vad": "vits_surgery.evaluate.rate:energy_vad",
    "speaking_rate": "vits_surgery.evaluate.rate:speaking_rate",
    "rate_from_durations": "vits_surgery.evaluate.rate:rate_from_durations",
    "F0Stats": "vits_surgery.evaluate.pitch:F0Stats",
    "f0_track": "vits_surgery.evaluate.pitch:f0_track",
    "f0_stats": "vits_surgery.evaluate.pitch:f0_stats",
    "semitones": "vits_surgery.evaluate.pitch:semitones",
    "speaker_embedding": "vits_surgery.evaluate.speaker:speaker_embedding",
    "speaker_embeddings": "vits_surgery.evaluate.speaker:speaker_embeddings",
    "speaker_centroid": "vits_surgery.evaluate.speaker:speaker_centroid",
    "cosine_similarity": "vits_surgery.evaluate.speaker:cosine_similarity",
    "similarity_to": "vits_surgery.evaluate.speaker:similarity_to",
    "normalize_transcript": "vits_surgery.evaluate.asr:normalize_transcript",
    "transcribe": "vits_surgery.evaluate.asr:transcribe",
    "word_error_rate": "vits_surgery.evaluate.asr:word_error_rate",
    "evaluate_corpus": "vits_surgery.evaluate.corpus:evaluate_corpus",
    "summary": "vits_surgery.evaluate.corpus:summary",
}

__all__ = list(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)

"""Unusable-donor checks: each returns :class:`Finding` objects with a plain-language reason.

A finding's ``severity`` is ``"unusable"`` (a transplant from this donor would fail or learn
the wrong thing), ``"warning"`` (usable, with a caveat) or ``"ok"``. The thresholds are keyword
arguments with the defaults below; every finding records the measured value and the limit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Finding",
    "FolderScan",
    "scan_audio_files",
    "check_amount",
    "check_sample_rate",
    "check_clipping",
    "check_language",
    "check_text_language",
    "english_word_share",
    "check_transcripts",
    "unusable",
]

SEVERITIES = ("ok", "warning", "unusable")


@dataclass(frozen=True)
class Finding:
    """One check's result.

    Attributes:
        check: ``amount``, ``sample_rate``, ``clipping``, ``language`` or ``transcripts``.
        severity: ``ok``, ``warning`` or ``unusable``.
        message: what was measured and why it matters.
        value: the measured value.
        limit: the threshold it was compared with.
    """

    check: str
    severity: str
    message: str
    value: float = math.nan
    limit: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def unusable(findings: Sequence[Finding]) -> list[Finding]:
    """The findings that make the donor unusable."""
    return [f for f in findings if f.severity == "unusable"]


@dataclass(frozen=True)
class FolderScan:
    """Headers of every donor file (no decoding).

    Attributes:
        n_files: files listed; n_readable: files soundfile could open.
        total_seconds: audio length of the readable files.
        sample_rate: the median native sample rate (0 if none was readable).
        unreadable: up to 5 paths that could not be opened.
    """

    n_files: int
    n_readable: int
    total_seconds: float
    sample_rate: int
    unreadable: tuple[str, ...] = ()


def scan_audio_files(paths: Sequence[str | Path]) -> FolderScan:
    """Read the header of every file: count, total length and native sample rate."""
    import soundfile as sf

    seconds, rates, bad = 0.0, [], []
    for p in paths:
        try:
            info = sf.info(str(p))
        except Exception:  # noqa: BLE001 - any unreadable file is reported, not raised
            bad.append(str(p))
            continue
        seconds += info.frames / max(info.samplerate, 1)
        rates.append(info.samplerate)
    rate = int(np.median(rates)) if rates else 0
    return FolderScan(len(paths), len(rates), seconds, rate, tuple(bad[:5]))


def check_amount(total_seconds: float, min_seconds: float = 60.0, warn_seconds: float = 300.0) -> Finding:
    """Too little audio: under ``min_seconds`` unusable, under ``warn_seconds`` a warning."""
    minutes = total_seconds / 60.0
    if total_seconds < min_seconds:
        return Finding("amount", "unusable", f"too little audio: {total_seconds:.1f} s of audio, a transplant "
                       f"needs at least {min_seconds:.0f} s (a few minutes is better)", total_seconds, min_seconds)
    if total_seconds < warn_seconds:
        return Finding("amount", "warning", f"little audio: {minutes:.1f} min; expect the donor's traits to come "
                       f"through only partly (>= {warn_seconds / 60:.0f} min recommended)", total_seconds, warn_seconds)
    return Finding("amount", "ok", f"{minutes:.1f} min of audio", total_seconds, warn_seconds)


def check_sample_rate(native_rate: int, voice_rate: int, min_fraction: float = 0.5) -> Finding:
    """A sample rate far below the voice's: under ``min_fraction`` of it unusable, below it a warning."""
    if native_rate <= 0:
        return Finding("sample_rate", "unusable", "no readable audio file", 0.0, voice_rate * min_fraction)
    if native_rate < min_fraction * voice_rate:
        return Finding("sample_rate", "unusable", f"sample rate {native_rate} Hz is far below the voice's "
                       f"{voice_rate} Hz: the decoder would learn to leave out everything above "
                       f"{native_rate // 2} Hz", native_rate, min_fraction * voice_rate)
    if native_rate < voice_rate:
        return Finding("sample_rate", "warning", f"sample rate {native_rate} Hz is below the voice's {voice_rate} Hz "
                       f"(upsampled: no content above {native_rate // 2} Hz)", native_rate, voice_rate)
    return Finding("sample_rate", "ok", f"sample rate {native_rate} Hz (voice {voice_rate} Hz)", native_rate, voice_rate)


def clipped_fraction(audio: np.ndarray, level: float | None = None) -> float:
    """Fraction of samples at or above the clipping level (of full scale)."""
    from ..data.dataset import CLIP_LEVEL

    x = np.abs(np.asarray(audio, dtype=np.float64))
    return float(np.mean(x >= (CLIP_LEVEL if level is None else level))) if x.size else 0.0


def check_clipping(audios: Sequence[np.ndarray], max_share: float = 0.2) -> Finding:
    """Clipping: the share of utterances whose samples sit at full scale (native samples, not resampled).

    An utterance counts as clipped when more than the dataset's ``CLIP_FRACTION`` of its
    samples reach ``CLIP_LEVEL`` (the rule :class:`~vits_surgery.data.TextAudioDataset` counts).
    More than ``max_share`` of the sample clipped is unusable; any clipped utterance a warning.
    """
    from ..data.dataset import CLIP_FRACTION

    if not audios:
        return Finding("clipping", "ok", "no audio to check", 0.0, max_share)
    fractions = [clipped_fraction(a) for a in audios]
    share = float(np.mean([f > CLIP_FRACTION for f in fractions]))
    worst = max(fractions)
    if share > max_share:
        return Finding("clipping", "unusable", f"clipping: {100 * share:.0f}% of the sampled utterances are clipped "
                       f"(up to {100 * worst:.1f}% of samples at full scale); the decoder would learn the "
                       f"distortion", share, max_share)
    if share > 0:
        return Finding("clipping", "warning", f"{100 * share:.0f}% of the sampled utterances are clipped", share, max_share)
    return Finding("clipping", "ok", "no clipping", share, max_share)


def check_language(
    donor_wer: float, recipient_wer: float, max_wer: float = 0.75, max_gap: float = 0.35, language: str = "en-us"
) -> Finding:
    """A different language: the recognizer (``language``) fails on the donor but not on the voice.

    Unusable when the donor's word error rate is at least ``max_wer`` *and* at least
    ``max_gap`` above the recipient's on the same texts (so a recognizer that is poor on
    both does not condemn the donor).
    """
    if not (math.isfinite(donor_wer) and math.isfinite(recipient_wer)):
        return Finding("language", "ok", "not measured (no recognizer)", math.nan, max_wer)
    gap = donor_wer - recipient_wer
    if donor_wer >= max_wer and gap >= max_gap:
        return Finding("language", "unusable", f"different language or unintelligible: a {language} recognizer "
                       f"gets {100 * donor_wer:.0f}% word errors on the donor but {100 * recipient_wer:.0f}% on the "
                       f"voice reading the same texts", donor_wer, max_wer)
    if gap >= max_gap:
        return Finding("language", "warning", f"the donor is much harder to recognize than the voice "
                       f"(WER {donor_wer:.2f} vs {recipient_wer:.2f}): accent, noise or wrong transcripts", donor_wer, max_wer)
    return Finding("language", "ok", f"WER {donor_wer:.2f} (voice {recipient_wer:.2f} on the same texts)", donor_wer, max_wer)


@functools.lru_cache(maxsize=1)
def _english_words() -> frozenset[str]:
    """The words of the English pronouncing dictionary pocketsphinx ships."""
    import os

    from ..evaluate._deps import require

    pocketsphinx = require("pocketsphinx", "the transcript language check")
    path = Path(pocketsphinx.get_model_path()) / "en-us" / "cmudict-en-us.dict"
    with open(os.fspath(path), encoding="utf-8", errors="replace") as f:
        return frozenset(line.split(" ", 1)[0].split("(", 1)[0] for line in f if line.strip())


def english_word_share(texts: Sequence[str]) -> float:
    """Share of the words of ``texts`` found in an English pronouncing dictionary (NaN: no words)."""
    from ..evaluate.asr import normalize_transcript

    words = [w for t in texts for w in normalize_transcript(t).split()]
    if not words:
        return math.nan
    known = _english_words()
    return sum(w in known for w in words) / len(words)


def check_text_language(share: float, min_share: float = 0.7) -> Finding:
    """Transcripts in another language: too few of their words are English words."""
    if not math.isfinite(share):
        return Finding("language", "ok", "transcript language not measured", share, min_share)
    if share < min_share:
        return Finding("language", "unusable", f"different language: only {100 * share:.0f}% of the transcript "
                       f"words are English words; the voice speaks English", share, min_share)
    return Finding("language", "ok", f"{100 * share:.0f}% of the transcript words are English", share, min_share)


def check_transcripts(n_texts: int, n_unencodable: int, max_share: float = 0.2, example: str = "") -> Finding:
    """Transcripts the voice's tokenizer cannot encode (another script or phoneme set)."""
    share = n_unencodable / max(n_texts, 1)
    if share > max_share:
        return Finding("transcripts", "unusable", f"{100 * share:.0f}% of the transcripts use symbols the voice does "
                       f"not know (another language or script?) {example}".rstrip(), share, max_share)
    if n_unencodable:
        return Finding("transcripts", "warning", f"{n_unencodable} transcript(s) skipped: unknown symbols {example}".rstrip(),
                       share, max_share)
    return Finding("transcripts", "ok", "every transcript encodes", share, max_share)

"""Speaker-independent forced alignment with pocketsphinx 5's bundled US English model.

Two passes per utterance: a word-level pass over the transcript (``set_align_text``), then a
phone-level pass (``set_alignment``) that yields word and phone segments in 10 ms frames. Leading
and trailing silence are cut off by energy first. A pass whose result does not contain every
transcript word is retried with wider beams, then without filler (silence) words (the pauses
inside the utterance are then absorbed by the words around them); a phone pass that fails is
retried with more silence kept around the speech, and as a last resort the word segments are
returned without phones.

Words missing from the CMU dictionary are added with a pronunciation from the phonemizer
(espeak-ng IPA mapped to CMU phones), or from the spelling when espeak-ng is unavailable.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .phones import ipa_to_arpa, letters_to_arpa
from .segments import PhoneSpan, WordSpan, transcript_words

__all__ = ["AlignmentError", "AlignerSettings", "PASSES", "forced_align"]

logger = logging.getLogger(__name__)

#: The acoustic model's sample rate.
MODEL_RATE = 16000
#: pocketsphinx frame shift in seconds.
FRAME_SECONDS = 0.01


class AlignmentError(RuntimeError):
    """No pass aligned every word of the transcript."""


@dataclass(frozen=True)
class AlignerSettings:
    """One alignment pass: pocketsphinx beams and whether filler words (silences) may occur."""

    beam: float = 1e-48
    wbeam: float = 7e-29
    pbeam: float = 1e-48
    fillers: bool = True


#: The passes tried in order until one aligns every word.
PASSES: tuple[AlignerSettings, ...] = (
    AlignerSettings(),
    AlignerSettings(beam=1e-80, wbeam=1e-60, pbeam=1e-80),
    AlignerSettings(beam=1e-80, wbeam=1e-60, pbeam=1e-80, fillers=False),
)

# energy trim of the filler-free pass: frames within this many dB of the loudest are speech
_TRIM_DB = 40.0
#: Frames of silence kept around the speech: tight first; a wider margin when the phone pass fails.
TRIM_MARGINS = (0, 5)
_FILLER = re.compile(r"^(<s>|</s>|<sil>|\[.*\]|\+.*\+)$")


@functools.lru_cache(maxsize=4)
def _decoder(settings: AlignerSettings):
    try:
        from pocketsphinx import Decoder
    except ImportError as exc:  # pragma: no cover - the extra is documented
        raise ImportError("forced alignment needs pocketsphinx>=5 (`pip install pocketsphinx`)") from exc
    return Decoder(
        samprate=MODEL_RATE, loglevel="FATAL", beam=settings.beam, wbeam=settings.wbeam,
        pbeam=settings.pbeam, fsgusefiller=settings.fillers,
    )


def _pronounce(word: str, language: str) -> list[str]:
    """CMU phones for a word outside the dictionary."""
    try:
        from ..text.phonemize import phonemize

        phones = ipa_to_arpa(phonemize(word, language=language, with_stress=False, preserve_punctuation=False))
    except Exception as exc:  # noqa: BLE001 - no espeak-ng: spell it
        logger.debug("phonemizer unavailable for %r (%s); using the spelling", word, exc)
        phones = []
    return phones or letters_to_arpa(word) or ["AH"]


def _add_missing(decoder, words: Sequence[str], language: str) -> None:
    for w in set(words):
        if decoder.lookup_word(w) is None:
            phones = " ".join(_pronounce(w, language))
            logger.debug("adding %r as %s", w, phones)
            decoder.add_word(w, phones, True)


def _run(decoder, pcm: bytes, words: Sequence[str]):
    """Word pass, then phone pass: the alignment, the word segments alone (the phone pass
    failed), or ``None`` (the word pass did not reach every word)."""
    try:
        decoder.set_align_text(" ".join(words))
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        segs = [s for s in (decoder.seg() or []) if not _FILLER.match(s.word)]
    except RuntimeError as err:  # pocketsphinx reports a search that found no path this way
        logger.debug("word pass failed: %s", err)
        return None
    if [re.sub(r"\(\d+\)$", "", s.word) for s in segs] != list(words):
        return None
    try:
        decoder.set_alignment()
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        return decoder.get_alignment()
    except RuntimeError as err:
        logger.debug("phone pass failed: %s", err)
        return [(s.word, s.start_frame, s.end_frame + 1 - s.start_frame) for s in segs]


def _trim(pcm: np.ndarray, margin: int = 0) -> tuple[int, int]:
    """Sample range [a, b) between the first and last frame within ``_TRIM_DB`` of the loudest."""
    hop = int(MODEL_RATE * FRAME_SECONDS)
    n = len(pcm) // hop
    if n < 3:
        return 0, len(pcm)
    frames = pcm[: n * hop].astype(np.float64).reshape(n, hop)
    db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-3)
    speech = np.nonzero(db > db.max() - _TRIM_DB)[0]
    return max(int(speech[0]) - margin, 0) * hop, min(int(speech[-1] + 1) + margin, n) * hop


def _spans(alignment, offset: float) -> list[WordSpan]:
    out = []
    for w in alignment:
        name, start, duration = (w.name, w.start, w.duration) if hasattr(w, "name") else w
        name = re.sub(r"\(\d+\)$", "", name)
        if _FILLER.match(name):
            continue
        phones = tuple(
            PhoneSpan(p.name, offset + p.start * FRAME_SECONDS, offset + (p.start + p.duration) * FRAME_SECONDS)
            for p in w
        ) if hasattr(w, "name") else ()
        out.append(WordSpan(name, offset + start * FRAME_SECONDS, offset + (start + duration) * FRAME_SECONDS, phones))
    return out


def forced_align(
    audio: np.ndarray,
    sample_rate: int,
    text: str,
    language: str = "en-us",
    passes: Sequence[AlignerSettings] = PASSES,
) -> list[WordSpan]:
    """Word and phone segments of ``text`` in ``audio``.

    Args:
        audio: [N] mono waveform (float in [-1, 1] or int16).
        sample_rate: its rate (resampled to 16 kHz here).
        text: the transcript; split into words by :func:`transcript_words`.
        language: espeak-ng voice that pronounces out-of-dictionary words.
        passes: the settings tried in order (default :data:`PASSES`).

    Returns:
        One :class:`WordSpan` per transcript word, in order, with CMU phones.

    Raises:
        AlignmentError: no pass aligned every word.
        ValueError: the transcript has no word.
    """
    from ..audio import resample

    words = transcript_words(text)
    if not words:
        raise ValueError(f"transcript {text!r} has no word to align")
    x = np.asarray(audio)
    if x.dtype != np.int16:
        x = x.astype(np.float32)
        if sample_rate != MODEL_RATE:
            x = resample(x, sample_rate, MODEL_RATE)
        x = (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)
    elif sample_rate != MODEL_RATE:
        x = (np.clip(resample(x.astype(np.float32) / 32768.0, sample_rate, MODEL_RATE), -1, 1) * 32767).astype(np.int16)
    words_only = None
    for k, settings in enumerate(passes):
        decoder = _decoder(settings)
        _add_missing(decoder, words, language)
        for margin in TRIM_MARGINS:
            a, b = _trim(x, margin)
            result = _run(decoder, x[a:b].tobytes(), words)
            if result is None:
                continue
            if k:
                logger.info("forced alignment needed pass %d (%s) for %r", k + 1, settings, text[:60])
            if not isinstance(result, list):
                return _spans(result, a / MODEL_RATE)
            words_only = words_only or _spans(result, a / MODEL_RATE)
    if words_only is not None:
        logger.info("no phone alignment for %r: word segments only", text[:60])
        return words_only
    raise AlignmentError(f"pocketsphinx could not align every word of {text[:80]!r} in {len(x) / MODEL_RATE:.2f} s")

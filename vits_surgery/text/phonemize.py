"""espeak-ng phonemization: the ``phonemizer`` wrapper (VITS, Coqui, HF) and Piper's clauses.

The espeak-ng shared library is found, in order, at ``$PHONEMIZER_ESPEAK_LIBRARY``, on the
system (``apt-get install espeak-ng``), or in the PyPI package ``espeakng-loader`` (a
self-contained espeak-ng 1.52 build with its data; ``pip install espeakng-loader``).

Phonemes depend on the espeak-ng version: 1.51 (Debian 12) and 1.52 differ on some vowels
(``ɔː``/``oː``), and Piper's own bundled build adds a linking glide ``ʲ`` that upstream
espeak-ng does not produce. :func:`piper_phonemes` therefore uses Piper's bridge when the
``piper-tts`` package is installed and otherwise reproduces Piper's clause handling on
upstream espeak-ng.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import re
import threading
import unicodedata
from typing import Any

__all__ = [
    "PhonemizerError",
    "espeak_paths",
    "phonemize",
    "phonemize_batch",
    "piper_phonemes",
]

logger = logging.getLogger(__name__)
_espeak_logger = logging.getLogger(__name__ + ".espeak")
_espeak_logger.setLevel(logging.ERROR)  # phonemizer's "words count mismatch" notes are benign

_INSTALL_HINT = (
    "install espeak-ng with `apt-get install espeak-ng` (or `pip install espeakng-loader`)"
)


class PhonemizerError(RuntimeError):
    """espeak-ng or the phonemizer package is missing or failed."""


@functools.lru_cache(maxsize=1)
def espeak_paths() -> tuple[str | None, str | None]:
    """Locate the espeak-ng shared library and its data folder.

    Returns:
        ``(library_path, data_path)``; ``data_path`` is ``None`` when the library's built-in
        default applies; ``(None, None)`` when no library is found.
    """
    env = os.environ.get("PHONEMIZER_ESPEAK_LIBRARY")
    if env:
        return env, os.environ.get("ESPEAK_DATA_PATH")
    for name in ("espeak-ng", "espeak"):
        found = ctypes.util.find_library(name)
        if found:
            return found, os.environ.get("ESPEAK_DATA_PATH")
    try:
        import espeakng_loader
    except ImportError:
        return None, None
    return str(espeakng_loader.get_library_path()), str(espeakng_loader.get_data_path())


def _require_library() -> tuple[str, str | None]:
    library, data = espeak_paths()
    if library is None:
        raise PhonemizerError(f"the espeak-ng library was not found: {_INSTALL_HINT}")
    return library, data


# ----------------------------------------------------------------------------- phonemizer
@functools.lru_cache(maxsize=8)
def _backend(language: str, with_stress: bool, preserve_punctuation: bool) -> Any:
    try:
        from phonemizer.backend import EspeakBackend
        from phonemizer.backend.espeak.wrapper import EspeakWrapper
    except ImportError as exc:
        raise PhonemizerError(
            "phonemization needs the `phonemizer` package (`pip install phonemizer`) and espeak-ng"
        ) from exc
    library, data = _require_library()
    if not EspeakBackend.is_available():  # not on the system: point phonemizer at ours
        EspeakWrapper.set_library(library)
        if data is not None:
            EspeakWrapper.set_data_path(data)
    try:
        return EspeakBackend(
            language,
            preserve_punctuation=preserve_punctuation,
            with_stress=with_stress,
            language_switch="remove-flags",
            logger=_espeak_logger,
        )
    except RuntimeError as exc:
        raise PhonemizerError(f"espeak-ng could not start voice {language!r}: {exc}") from exc


def phonemize_batch(
    texts: list[str],
    language: str = "en-us",
    *,
    with_stress: bool = True,
    preserve_punctuation: bool = True,
) -> list[str]:
    """IPA phonemes of several texts through ``phonemizer``'s espeak backend.

    Args:
        texts: input texts (already cleaned).
        language: espeak-ng voice, e.g. ``"en-us"``, ``"en-gb"``, ``"de"``.
        with_stress: keep the primary/secondary stress marks.
        preserve_punctuation: keep ``;:,.!?¡¿—…"«»“”`` in the output.

    Returns:
        One phoneme string per text, words separated by spaces.

    Raises:
        PhonemizerError: ``phonemizer`` or espeak-ng is missing, or the voice is unknown.
    """
    backend = _backend(language, with_stress, preserve_punctuation)
    return list(backend.phonemize(list(texts), strip=True))


def phonemize(
    text: str,
    language: str = "en-us",
    *,
    with_stress: bool = True,
    preserve_punctuation: bool = True,
) -> str:
    """IPA phonemes of one text (see :func:`phonemize_batch`)."""
    return phonemize_batch([text], language, with_stress=with_stress, preserve_punctuation=preserve_punctuation)[0]


# ----------------------------------------------------------------------------- Piper
_CLAUSE_PUNCTUATION = ".?!,:;"
_SPACED_DASH = re.compile(r"\s+[\u2013\u2014]+\s+")
_SENTENCE_END = ".?!"
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_PHONEMES_IPA = 2


class _EspeakClauses:
    """Clause-by-clause IPA from ``espeak_TextToPhonemes`` (process-wide, locked)."""

    def __init__(self) -> None:
        library, data = _require_library()
        try:
            self.lib = ctypes.CDLL(library)
        except OSError as exc:
            raise PhonemizerError(f"cannot load espeak-ng from {library!r}: {exc}") from exc
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        self.lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode() if data else None, 0
        )
        if rate <= 0:
            raise PhonemizerError(f"espeak-ng ({library!r}) failed to initialize; {_INSTALL_HINT}")
        self.voice: str | None = None
        self.lock = threading.Lock()

    def clauses(self, text: str, voice: str) -> list[tuple[str, str]]:
        """``[(phonemes, terminator)]`` per clause; terminator is one of ``.?!,:;`` or ''.

        A spaced em/en dash ends a clause like a semicolon (as Piper reports it).
        """
        with self.lock:
            if voice != self.voice:
                if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                    raise PhonemizerError(f"espeak-ng has no voice {voice!r}")
                self.voice = voice
            parts = _SPACED_DASH.split(text)
            out: list[tuple[str, str]] = []
            for i, part in enumerate(parts):
                clauses = self._part(part)
                if i < len(parts) - 1 and clauses and not clauses[-1][1]:
                    clauses[-1] = (clauses[-1][0], ";")
                out.extend(clauses)
            return out

    def _part(self, text: str) -> list[tuple[str, str]]:
        raw = text.encode("utf-8")
        buf = ctypes.create_string_buffer(raw)
        base = ctypes.addressof(buf)
        ptr = ctypes.c_void_p(base)
        out, start = [], 0
        while ptr.value is not None:
            phonemes = self.lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, _PHONEMES_IPA)
            end = len(raw) if ptr.value is None else max(start, ptr.value - base)
            chunk = raw[start:end].decode("utf-8", "replace")
            if ptr.value is not None:
                chunk = chunk[:-1]  # espeak reads one character past the clause it returns
            out.append(((phonemes or b"").decode("utf-8"), _terminator(chunk)))
            start = end
        return out


def _terminator(chunk: str) -> str:
    """The clause-ending mark espeak reports: first of the trailing punctuation run.

    An ellipsis ends a clause without a mark, as it does in Piper.
    """
    stripped = chunk.rstrip().rstrip("\"')»”’")
    i = len(stripped)
    while i > 0 and stripped[i - 1] in _CLAUSE_PUNCTUATION:
        i -= 1
    run = stripped[i:]
    if not run or run.startswith(".."):
        return ""
    return run[0]


@functools.lru_cache(maxsize=1)
def _espeak_clauses() -> _EspeakClauses:
    return _EspeakClauses()


@functools.lru_cache(maxsize=1)
def _piper_bridge() -> Any:
    try:
        from pathlib import Path

        import piper
        from piper import espeakbridge
    except ImportError:
        return None
    espeakbridge.initialize(str(Path(piper.__file__).parent / "espeak-ng-data"))
    return espeakbridge


def _piper_clauses(text: str, voice: str, backend: str) -> list[tuple[str, str, bool]]:
    bridge = _piper_bridge() if backend in ("auto", "piper") else None
    if bridge is not None:
        bridge.set_voice(voice)
        return list(bridge.get_phonemes(text))
    if backend == "piper":
        raise PhonemizerError("backend='piper' needs the `piper-tts` package (`pip install piper-tts`)")
    clauses = []
    for phonemes, term in _espeak_clauses().clauses(text, voice):
        clauses.append((phonemes, term, term in _SENTENCE_END and term != ""))
    return clauses


def piper_phonemes(text: str, voice: str = "en-us", backend: str = "auto") -> list[list[str]]:
    """Phonemes the way Piper makes them: one list of codepoints per sentence.

    espeak-ng IPA per clause; each clause is followed by its punctuation (``.?!,:;``);
    clauses inside a sentence are joined by a space after their punctuation; the result
    is NFD-decomposed into single codepoints, so combining marks are separate items.

    Args:
        text: raw text (Piper does no other cleaning).
        voice: espeak-ng voice, the ``espeak.voice`` of a Piper ``.onnx.json``.
        backend: ``"auto"`` (Piper's bridge when ``piper-tts`` is installed, else
            libespeak-ng), ``"piper"`` or ``"espeak"``.

    Returns:
        ``[[codepoint, ...] per sentence]``.

    Raises:
        PhonemizerError: espeak-ng is missing, or the voice is unknown.
    """
    if backend not in ("auto", "piper", "espeak"):
        raise ValueError(f"backend must be 'auto', 'piper' or 'espeak', got {backend!r}")
    sentences: list[str] = []
    current = ""
    ended = False
    for phonemes, term, end_of_sentence in _piper_clauses(text, voice, backend):
        current += phonemes + term
        ended = end_of_sentence
        if end_of_sentence:
            sentences.append(current)
            current = ""
        elif term:
            current += " "
    if current or not ended:
        sentences.append(current)
    return [list(unicodedata.normalize("NFD", s)) for s in sentences]

"""Text cleaners: normalize raw text before (optional) phonemization and tokenization.

Registered cleaners (:func:`get_cleaner`):

* ``basic_cleaners``: lowercase, collapse whitespace.
* ``transliteration_cleaners``: ASCII transliteration, lowercase, collapse whitespace.
* ``english_cleaners``: Coqui TTS's English pipeline (lowercase, times, numbers, money,
  abbreviations, ``; : -`` to ``, , space``, ``&`` to "and", drop ``<>()[]"``, collapse
  whitespace). Letters outside ASCII are kept, as Coqui keeps them.
* ``coqui_english_cleaners``: ``english_cleaners`` as coqui-tts 0.28's ``TTSTokenizer``
  applies it to single-language models: it passes ``lang=None`` to the cleaner, which then
  skips abbreviation expansion ("Dr." stays "dr."). Use it for token parity with Coqui.
* ``english_cleaners_ascii``: ASCII transliteration, then ``english_cleaners``.
* ``english_cleaners2``: the original VITS pipeline (ASCII, lowercase, abbreviations,
  numbers, then espeak-ng phonemes with stress and punctuation, collapse whitespace).
* ``phoneme_cleaners``: Coqui's pre-phonemizer cleaner (numbers, abbreviations, symbols;
  case kept).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from .._names import did_you_mean
from .numbers import normalize_numbers

__all__ = [
    "ABBREVIATIONS",
    "CLEANERS",
    "get_cleaner",
    "clean",
    "lowercase",
    "collapse_whitespace",
    "convert_to_ascii",
    "expand_abbreviations",
    "normalize_numbers",
    "basic_cleaners",
    "transliteration_cleaners",
    "english_cleaners",
    "coqui_english_cleaners",
    "english_cleaners_ascii",
    "english_cleaners2",
    "phoneme_cleaners",
]

ABBREVIATIONS: dict[str, str] = {
    "mrs": "misess",
    "mr": "mister",
    "dr": "doctor",
    "st": "saint",
    "co": "company",
    "jr": "junior",
    "maj": "major",
    "gen": "general",
    "drs": "doctors",
    "rev": "reverend",
    "lt": "lieutenant",
    "hon": "honorable",
    "sgt": "sergeant",
    "capt": "captain",
    "esq": "esquire",
    "ltd": "limited",
    "col": "colonel",
    "ft": "fort",
}
"""Abbreviation (without the period) -> spoken form; matched case-insensitively."""

_ABBREVIATION_RE = re.compile(
    r"\b(" + "|".join(sorted(ABBREVIATIONS, key=len, reverse=True)) + r")\.", re.IGNORECASE
)
_WHITESPACE_RE = re.compile(r"\s+")
_AUX_SYMBOLS_RE = re.compile(r'[<>()\[\]"]+')
_SYMBOLS = {";": ",", ":": ",", "-": " ", "&": " and "}
_ASCII_MAP = {
    "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O", "ß": "ss", "ð": "d",
    "Ð": "D", "þ": "th", "Þ": "Th", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ı": "i",
    "“": '"', "”": '"', "„": '"', "«": '"', "»": '"', "‘": "'", "’": "'", "‚": "'",
    "—": "-", "–": "-", "‐": "-", "‑": "-", "…": "...", "\u00a0": " ", "\u2009": " ",
}


def lowercase(text: str) -> str:
    """Lowercase."""
    return text.lower()


def collapse_whitespace(text: str) -> str:
    """Replace runs of whitespace by one space and strip both ends."""
    return _WHITESPACE_RE.sub(" ", text).strip()


def convert_to_ascii(text: str) -> str:
    """Transliterate Latin letters and typographic punctuation to ASCII.

    Accents are stripped (``"café" -> "cafe"``), ligatures expanded, curly quotes and
    dashes straightened. Characters with no reasonable ASCII form (other scripts) are
    kept, so that the tokenizer can report them.
    """
    out = []
    for ch in text:
        if ch.isascii():
            out.append(ch)
        elif ch in _ASCII_MAP:
            out.append(_ASCII_MAP[ch])
        else:
            base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
            out.append(base if base and base.isascii() else ch)
    return "".join(out)


def expand_abbreviations(text: str) -> str:
    """Expand the titles in :data:`ABBREVIATIONS` (``"Dr." -> "doctor"``)."""
    return _ABBREVIATION_RE.sub(lambda m: ABBREVIATIONS[m.group(1).lower()], text)


def _replace_symbols(text: str) -> str:
    for src, dst in _SYMBOLS.items():
        text = text.replace(src, dst)
    return text


def _remove_aux_symbols(text: str) -> str:
    return _AUX_SYMBOLS_RE.sub("", text)


# ----------------------------------------------------------------------------- cleaners
def basic_cleaners(text: str) -> str:
    """Lowercase and collapse whitespace."""
    return collapse_whitespace(lowercase(text))


def transliteration_cleaners(text: str) -> str:
    """ASCII transliteration, lowercase, collapse whitespace."""
    return collapse_whitespace(lowercase(convert_to_ascii(text)))


def english_cleaners(text: str) -> str:
    """Coqui-style English normalization (see the module docstring)."""
    return _english(text, abbreviations=True)


def coqui_english_cleaners(text: str) -> str:
    """:func:`english_cleaners` without abbreviation expansion (coqui-tts 0.28 tokenizer)."""
    return _english(text, abbreviations=False)


def _english(text: str, abbreviations: bool) -> str:
    text = lowercase(text)
    text = normalize_numbers(text)
    if abbreviations:
        text = expand_abbreviations(text)
    text = _replace_symbols(text)
    text = _remove_aux_symbols(text)
    return collapse_whitespace(text)


def english_cleaners_ascii(text: str) -> str:
    """ASCII transliteration followed by :func:`english_cleaners`."""
    return english_cleaners(convert_to_ascii(text))


def english_cleaners2(text: str, language: str = "en-us") -> str:
    """Original-VITS English pipeline ending in espeak-ng phonemes (stress, punctuation kept).

    Raises:
        PhonemizerError: espeak-ng or the ``phonemizer`` package is not available.
    """
    from .phonemize import phonemize

    text = lowercase(convert_to_ascii(text))
    text = normalize_numbers(expand_abbreviations(text))
    return collapse_whitespace(phonemize(text, language=language))


def phoneme_cleaners(text: str) -> str:
    """Coqui's cleaner for phoneme input: numbers, abbreviations, symbols; case kept."""
    text = normalize_numbers(text)
    text = expand_abbreviations(text)
    text = _replace_symbols(text)
    text = _remove_aux_symbols(text)
    return collapse_whitespace(text)


CLEANERS: dict[str, Callable[[str], str]] = {
    "basic_cleaners": basic_cleaners,
    "transliteration_cleaners": transliteration_cleaners,
    "english_cleaners": english_cleaners,
    "coqui_english_cleaners": coqui_english_cleaners,
    "english_cleaners_ascii": english_cleaners_ascii,
    "english_cleaners2": english_cleaners2,
    "phoneme_cleaners": phoneme_cleaners,
}
"""Name -> cleaner function."""

PHONEMIZING_CLEANERS = frozenset({"english_cleaners2"})
"""Cleaners whose output is already phonemes (the tokenizer must not phonemize again)."""


def get_cleaner(name: str) -> Callable[[str], str]:
    """Look a cleaner up by name.

    Raises:
        KeyError: unknown name; the message lists the available cleaners.
    """
    try:
        return CLEANERS[name]
    except KeyError:
        hint = did_you_mean(name, CLEANERS)
        raise KeyError(
            f"unknown text cleaner {name!r}{hint} (available: {', '.join(sorted(CLEANERS))})"
        ) from None


def clean(text: str, names: str | list[str] | tuple[str, ...] | None) -> str:
    """Apply one cleaner, several in order, or none (``None``)."""
    if names is None:
        return text
    for name in [names] if isinstance(names, str) else names:
        text = get_cleaner(name)(text)
    return text

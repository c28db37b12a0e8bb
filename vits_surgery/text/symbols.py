"""Symbol tables (id -> symbol) of the VITS implementations we read and write.

Each function returns a fresh tuple whose index is the token id. Some tables contain a
symbol twice (original VITS has the apostrophe at ids 174 and 176; Coqui's
``VitsCharacters`` repeats ASCII letters inside its IPA block). Every implementation builds
its symbol -> id lookup with a plain dict over the table, so the **last** occurrence wins;
:func:`symbol_to_id` does the same.

Sources (facts, see ``/work/shared/reference/formats.md`` §7 and Appendix D):

* Coqui TTS 0.28 ``Graphemes`` (the ``VitsConfig()`` default, 67 symbols),
  ``VitsCharacters`` (182) and ``IPAPhonemes`` (132).
* Original VITS ``text/symbols.py`` (178 symbols).
* Piper 1.8 ``DEFAULT_PHONEME_ID_MAP`` (166 entries; voices ship their own map).
"""

from __future__ import annotations

__all__ = [
    "COQUI_PAD",
    "COQUI_EOS",
    "COQUI_BOS",
    "COQUI_BLANK",
    "COQUI_PUNCTUATIONS",
    "COQUI_IPA_CHARACTERS",
    "coqui_graphemes",
    "coqui_vits_characters",
    "coqui_ipa_phonemes",
    "vits_symbols",
    "piper_default_phoneme_id_map",
    "symbol_to_id",
]

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# ----------------------------------------------------------------------------- Coqui
COQUI_PAD = "<PAD>"
COQUI_EOS = "<EOS>"
COQUI_BOS = "<BOS>"
COQUI_BLANK = "<BLNK>"
COQUI_PUNCTUATIONS = "!'(),-.:;? "
"""Coqui's default punctuation set (the last one is a space)."""

# Coqui's IPA character string (vowels, non-pulmonic, pulmonic, suprasegmentals, other
# symbols, diacritics) in its own order. U+0303 is a combining tilde.
COQUI_IPA_CHARACTERS = (
    "iyɨʉɯuɪʏʊeøɘəɵɤoɛœɜɞʌɔæɐaɶɑɒᵻ"
    "ʘɓǀɗǃʄǂɠǁʛ"
    "pbtdʈɖcɟkɡqɢʔɴŋɲɳnɱmʙrʀⱱɾɽɸβfvθðszʃʒʂʐçʝxɣχʁħʕhɦɬɮʋɹɻjɰlɭʎʟ"
    "ˈˌːˑ"
    "ʍwɥʜʢʡɕʑɺɧ"
    "ʲ\u0303ɚ˞ɫ"
)


def coqui_graphemes() -> tuple[str, ...]:
    """Coqui ``Graphemes()`` vocabulary, the default of ``VitsConfig()`` (67 symbols).

    Layout: ``<PAD> <EOS> <BOS> <BLNK>``, ``A-Z a-z``, then ``!'(),-.:;?`` and space.
    """
    return (COQUI_PAD, COQUI_EOS, COQUI_BOS, COQUI_BLANK, *_LETTERS, *COQUI_PUNCTUATIONS)


def coqui_vits_characters() -> tuple[str, ...]:
    """Coqui ``VitsCharacters()`` vocabulary (182 symbols, 157 distinct).

    Layout: ``<PAD>``, punctuation, ``A-Z a-z``, the IPA block (which repeats 25 ASCII
    letters; the later id wins on lookup), ``<BLNK>``. No BOS/EOS.
    """
    return (COQUI_PAD, *COQUI_PUNCTUATIONS, *_LETTERS, *COQUI_IPA_CHARACTERS, COQUI_BLANK)


def coqui_ipa_phonemes() -> tuple[str, ...]:
    """Coqui ``IPAPhonemes()`` vocabulary (132 symbols).

    Layout: ``<PAD> <EOS> <BOS> <BLNK>``, the distinct IPA characters sorted by code point,
    then punctuation.
    """
    ipa = sorted(set(COQUI_IPA_CHARACTERS))
    return (COQUI_PAD, COQUI_EOS, COQUI_BOS, COQUI_BLANK, *ipa, *COQUI_PUNCTUATIONS)


# ----------------------------------------------------------------------------- original VITS
_VITS_PAD = "_"
_VITS_PUNCTUATION = ';:,.!?¡¿—…"«»“” '
# 109 IPA symbols and modifiers, ids 69-177. U+0329 (combining vertical line below) sits
# between the two apostrophes, ids 174-176.
_VITS_IPA = (
    "ɑɐɒæɓʙβɔɕçɗɖðʤəɘɚɛɜɝɞɟʄɡɠɢʛɦɧħɥʜɨɪʝɭɬɫɮʟɱɯɰŋɳɲɴøɵɸθœɶʘɹɺɾɻʀʁɽʂʃʈʧʉʊʋⱱʌɣɤʍχʎʏʑʐʒʔʡʕʢǀǁǂǃ"
    "ˈˌːˑʼʴʰʱʲʷˠˤ˞↓↑→↗↘'\u0329'ᵻ"
)


def vits_symbols() -> tuple[str, ...]:
    """Original VITS ``symbols`` (178): ``_``, 15 punctuation marks + space, letters, IPA.

    Id 0 (``_``) is the pad and the interleaved blank; id 16 is the space. The apostrophe
    appears at ids 174 and 176 and looks up as 176.
    """
    return (_VITS_PAD, *_VITS_PUNCTUATION, *_LETTERS, *_VITS_IPA)


# ----------------------------------------------------------------------------- Piper
# Single-codepoint symbols of ids 0-160 in id order (U+03xx combining marks escaped).
_PIPER_SINGLE = (
    "_^$ !'(),-.:;?"
    "abcdefhijklmnopqrstuvwxyz"
    "æçðøħŋœǀǁǂǃɐɑɒɓɔɕɖɗɘəɚɛɜɞɟɠɡɢɣɤɥɦɧɨɪɫɬɭɮɯɰɱɲɳɴɵɶɸɹɺɻɽɾʀʁʂʃʄʈʉʊʋʌʍʎʏʐʑʒʔʕʘʙʛʜʝʟʡʢʲ"
    "ˈˌːˑ˞βθχᵻⱱ"
    "0123456789"
    "\u0327\u0303\u032a\u032f\u0329ʰˤε↓#\"↑\u033a\u033bgʦX\u031d\u030aɝʷ"
)
_PIPER_DIPHTHONGS = ("aɪ", "aʊ", "ɔɪ", "eɪ", "oʊ")
"""Ids 161-165, used only by Piper's ``vowel_clusters`` option."""


def piper_default_phoneme_id_map() -> dict[str, tuple[int, ...]]:
    """Piper 1.8 ``DEFAULT_PHONEME_ID_MAP`` (166 entries, ids 0-165).

    ``_`` 0 (pad, interleaved), ``^`` 1 (BOS), ``$`` 2 (EOS), space 3. Prefer the
    ``phoneme_id_map`` shipped in each voice's ``.onnx.json``.
    """
    symbols = (*_PIPER_SINGLE, *_PIPER_DIPHTHONGS)
    return {s: (i,) for i, s in enumerate(symbols)}


# ----------------------------------------------------------------------------- helpers
def symbol_to_id(symbols: tuple[str, ...] | list[str]) -> dict[str, int]:
    """Symbol -> id lookup in which the last occurrence of a repeated symbol wins.

    Args:
        symbols: an id -> symbol table.

    Returns:
        A dict mapping each distinct symbol to its id.
    """
    return {s: i for i, s in enumerate(symbols)}

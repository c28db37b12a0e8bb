"""ARPAbet <-> IPA, as far as the two line up, and the sequence matching the mapping uses.

The tables are written for US English (CMU dictionary phones, espeak-ng ``en-us`` IPA). They
only have to be good enough to pair phones with tokens; where they disagree the matching
(:func:`match_sequences`) absorbs the difference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["ARPA_TO_IPA", "arpa_to_ipa", "ipa_to_arpa", "letters_to_arpa", "match_sequences", "is_vowel"]

#: CMU phone (stress digit removed) -> IPA string.
ARPA_TO_IPA: dict[str, str] = {
    "AA": "ɑ", "AE": "æ", "AH": "ʌ", "AO": "ɔ", "AW": "aʊ", "AY": "aɪ", "EH": "ɛ", "ER": "ɚ",
    "EY": "eɪ", "IH": "ɪ", "IY": "i", "OW": "oʊ", "OY": "ɔɪ", "UH": "ʊ", "UW": "u",
    "B": "b", "CH": "tʃ", "D": "d", "DH": "ð", "F": "f", "G": "ɡ", "HH": "h", "JH": "dʒ",
    "K": "k", "L": "l", "M": "m", "N": "n", "NG": "ŋ", "P": "p", "R": "ɹ", "S": "s", "SH": "ʃ",
    "T": "t", "TH": "θ", "V": "v", "W": "w", "Y": "j", "Z": "z", "ZH": "ʒ",
}

# IPA (espeak en-us) -> CMU, longest match first; extra spellings espeak uses.
_IPA_EXTRA = {
    "ə": "AH", "ɐ": "AH", "ɜ": "ER", "ɝ": "ER", "ɾ": "T", "ʔ": "T", "ɫ": "L", "a": "AA", "o": "OW",
    "e": "EH", "ɒ": "AA", "x": "HH", "ç": "HH", "r": "R", "g": "G", "ᵻ": "IH", "ɬ": "L", "n̩": "N",
    "əl": "AH L", "ɚ": "ER", "ɔː": "AO", "iə": "IY AH", "ʊɹ": "UH R", "ɛɹ": "EH R", "ɪɹ": "IH R",
    "aɪɚ": "AY ER", "aɪə": "AY AH", "oːɹ": "AO R", "ɑːɹ": "AA R", "ɔːɹ": "AO R",
}
_IPA_TO_ARPA: dict[str, str] = {**{v: k for k, v in ARPA_TO_IPA.items()}, **_IPA_EXTRA}
_IGNORED_IPA = set("ˈˌːˑʲ\u0303\u0329-_ ")
_VOWELS = set("aeiouyæɑɐɒɔəɚɛɜɝɞɪʊʌᵻøœɘɵɤɯɨʉ")

# A last resort for words the phonemizer cannot say: one phone per letter (or digraph).
_LETTERS = {
    "ch": "CH", "sh": "SH", "th": "TH", "ph": "F", "ng": "NG", "ck": "K", "qu": "K W", "ee": "IY",
    "oo": "UW", "a": "AE", "b": "B", "c": "K", "d": "D", "e": "EH", "f": "F", "g": "G", "h": "HH",
    "i": "IH", "j": "JH", "k": "K", "l": "L", "m": "M", "n": "N", "o": "AA", "p": "P", "q": "K",
    "r": "R", "s": "S", "t": "T", "u": "AH", "v": "V", "w": "W", "x": "K S", "y": "IY", "z": "Z",
}
_DIGITS = ["Z IH R OW", "W AH N", "T UW", "TH R IY", "F AO R", "F AY V", "S IH K S", "S EH V AH N",
           "EY T", "N AY N"]


def is_vowel(symbol: str) -> bool:
    """A vowel symbol (IPA) or a CMU vowel."""
    if symbol[:2].upper() in ("AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY",
                              "OW", "OY", "UH", "UW") and symbol.isupper():
        return True
    return bool(symbol) and symbol[0] in _VOWELS


def arpa_to_ipa(phone: str) -> str:
    """IPA of one CMU phone (``"AH0"`` -> ``"ʌ"``); unknown labels come back lower-cased."""
    base = phone.rstrip("012").upper()
    return ARPA_TO_IPA.get(base, phone.lower())


def ipa_to_arpa(ipa: str) -> list[str]:
    """CMU phones of an IPA string (stress, length and word marks ignored; unknown dropped)."""
    chars = "".join(c for c in ipa if c not in _IGNORED_IPA)
    out: list[str] = []
    i = 0
    longest = max(len(k) for k in _IPA_TO_ARPA)
    while i < len(chars):
        for n in range(min(longest, len(chars) - i), 0, -1):
            hit = _IPA_TO_ARPA.get(chars[i : i + n])
            if hit is not None:
                out.extend(hit.split())
                i += n
                break
        else:
            i += 1
    return out


def letters_to_arpa(word: str) -> list[str]:
    """A crude spelling-based pronunciation (digits are spoken one by one)."""
    out: list[str] = []
    i = 0
    w = word.lower()
    while i < len(w):
        if w[i].isdigit():
            out.extend(_DIGITS[int(w[i])].split())
            i += 1
            continue
        two = _LETTERS.get(w[i : i + 2]) if i + 1 < len(w) else None
        if two is not None:
            out.extend(two.split())
            i += 2
            continue
        one = _LETTERS.get(w[i])
        if one is not None:
            out.extend(one.split())
        i += 1
    return out


def _default_cost(a: str, b: str) -> float:
    if a == b:
        return 0.0
    if is_vowel(a) == is_vowel(b):
        return 0.6
    return 1.0


def match_sequences(
    a: Sequence[str], b: Sequence[str], cost: Callable[[str, str], float] = _default_cost
) -> list[int]:
    """For every item of ``b``, the index of the item of ``a`` it pairs with (edit distance).

    Substitutions pair items; an item of ``b`` left unpaired takes the index of the nearest
    paired item before it (the first ones: of the one after). The result never decreases.

    Args:
        a, b: symbol sequences (``a`` non-empty).
        cost: substitution cost of a pair (insertions and deletions cost 1).

    Returns:
        ``len(b)`` indices into ``a``.
    """
    n, m = len(a), len(b)
    if n == 0:
        raise ValueError("match_sequences needs a non-empty first sequence")
    inf = float("inf")
    d = [[inf] * (m + 1) for _ in range(n + 1)]
    d[0] = [float(j) for j in range(m + 1)]
    for i in range(1, n + 1):
        d[i][0] = float(i)
        ai, row, prev = a[i - 1], d[i], d[i - 1]
        for j in range(1, m + 1):
            row[j] = min(prev[j - 1] + cost(ai, b[j - 1]), prev[j] + 1.0, row[j - 1] + 1.0)
    pair: list[int | None] = [None] * m
    i, j = n, m
    while i > 0 and j > 0:
        if d[i][j] == d[i - 1][j - 1] + cost(a[i - 1], b[j - 1]):
            pair[j - 1] = i - 1
            i, j = i - 1, j - 1
        elif d[i][j] == d[i - 1][j] + 1.0:
            i -= 1
        else:
            j -= 1
    first = next((p for p in pair if p is not None), 0)
    out, last = [], first
    for p in pair:
        last = max(last, p) if p is not None else last
        out.append(last)
    return out

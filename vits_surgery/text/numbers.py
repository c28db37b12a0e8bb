"""English number normalization: digits to words.

Readings follow the LJSpeech-era convention used by Coqui TTS's ``english_cleaners``
(numbers between 1000 and 3000 are read as years, "1999" -> "nineteen ninety nine";
groups are joined with commas, "one million, two hundred thousand"; "$5.50" -> "five
dollars fifty cents"; times get "a m"/"p m"). Where that convention loses information we
read more carefully: decimal digits are read one by one ("2.05" -> "two point zero five"),
"5-3" is not "five minus three", and "%" becomes "percent".
"""

from __future__ import annotations

import re

__all__ = ["cardinal", "ordinal", "year", "normalize_numbers"]

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = (
    "", "thousand", "million", "billion", "trillion", "quadrillion", "quintillion",
    "sextillion", "septillion", "octillion", "nonillion", "decillion",
)
_ORDINAL_IRREGULAR = {
    "one": "first", "two": "second", "three": "third", "five": "fifth",
    "eight": "eighth", "nine": "ninth", "twelve": "twelfth",
}


def _below_thousand(n: int) -> str:
    """Words for 0 < n < 1000 (no "and": "one hundred one")."""
    parts = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        parts.append(f"{_ONES[hundreds]} hundred")
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        parts.append(_TENS[tens] + (f" {_ONES[ones]}" if ones else ""))
    elif rest:
        parts.append(_ONES[rest])
    return " ".join(parts)


def cardinal(n: int) -> str:
    """Cardinal words: ``cardinal(1200000) == "one million, two hundred thousand"``.

    Negative numbers get "minus". Numbers beyond the decillions are read digit by digit.
    """
    if n < 0:
        return "minus " + cardinal(-n)
    if n < 1000:
        return _ONES[n] if n < 20 else _below_thousand(n)
    if n >= 1000 ** len(_SCALES):
        return " ".join(_ONES[int(d)] for d in str(n))
    n, units = divmod(n, 1000)
    groups = []
    scale = 1
    while n:
        n, group = divmod(n, 1000)
        if group:
            groups.append(f"{_below_thousand(group)} {_SCALES[scale]}")
        scale += 1
    words = ", ".join(reversed(groups))
    if units:  # a last group without hundreds joins with a space: "five thousand one"
        words += (" " if units < 100 else ", ") + _below_thousand(units)
    return words


def ordinal(n: int) -> str:
    """Ordinal words: ``ordinal(21) == "twenty first"``, ``ordinal(100) == "one hundredth"``."""
    words = cardinal(n)
    head, _, last = words.rpartition(" ")
    if last in _ORDINAL_IRREGULAR:
        last = _ORDINAL_IRREGULAR[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return f"{head} {last}" if head else last


def year(n: int) -> str:
    """Year-style reading for 1000 < n < 3000 ("nineteen oh five"), cardinal otherwise."""
    if not 1000 < n < 3000:
        return cardinal(n)
    if n == 2000 or 2000 < n < 2010:
        return cardinal(n)
    high, low = divmod(n, 100)
    if low == 0:
        return f"{cardinal(high)} hundred"
    if low < 10:
        return f"{cardinal(high)} oh {_ONES[low]}"
    return f"{cardinal(high)} {cardinal(low)}"


def _plural(words: str) -> str:
    head, _, last = words.rpartition(" ")
    last = last[:-1] + "ies" if last.endswith("y") else last + "s"
    return f"{head} {last}" if head else last


def _digits(s: str) -> str:
    return " ".join(_ONES[int(d)] for d in s)


# ----------------------------------------------------------------------------- patterns
_THOUSANDS_SEP = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_TIME = re.compile(r"\b(\d{1,2}):(\d{2})\b(?:\s*([ap])\.?\s?m\b\.?)?", re.IGNORECASE)
_MONEY = re.compile(
    r"([$£€¥])\s?(\d+)(?:\.(\d+))?(?:\s+(thousand|million|billion|trillion)\b)?", re.IGNORECASE
)
_PERCENT = re.compile(r"(\d)\s?%")
_DECIMAL = re.compile(r"(\d+)\.(\d+)")
_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_NEGATIVE = re.compile(r"(?<![\w.-])-(?=\d)")
_PLURAL_NUMBER = re.compile(r"\b(\d+)'?s\b")
_NUMBER = re.compile(r"\d+")

_CURRENCY = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "€": ("euro", "euros", "cent", "cents"),
    "¥": ("yen", "yen", "sen", "sen"),
}


def _time(m: re.Match[str]) -> str:
    hour, minute, half = int(m.group(1)), int(m.group(2)), m.group(3)
    if hour > 23 or minute > 59:
        return m.group(0)
    if half is None:
        half = "a" if hour < 12 else "p"
    words = cardinal(hour % 12 or 12)
    if minute:
        words += f" oh {_ONES[minute]}" if minute < 10 else f" {cardinal(minute)}"
    return f"{words} {half.lower()} m"


def _money(m: re.Match[str]) -> str:
    unit, units, sub, subs = _CURRENCY[m.group(1)]
    whole, frac, scale = int(m.group(2)), m.group(3), m.group(4)
    if scale:  # "$5 million", "$1.5 billion"
        amount = cardinal(whole) + (f" point {_digits(frac)}" if frac else "")
        return f"{amount} {scale.lower()} {units}"
    if frac is not None and len(frac) > 2:
        return f"{cardinal(whole)} point {_digits(frac)} {units}"
    cents = int(frac.ljust(2, "0")) if frac else 0
    parts = []
    if whole or not cents:
        parts.append(f"{cardinal(whole)} {unit if whole == 1 else units}")
    if cents:
        parts.append(f"{cardinal(cents)} {sub if cents == 1 else subs}")
    return " ".join(parts)


def _number(m: re.Match[str]) -> str:
    return year(int(m.group(0)))


def normalize_numbers(text: str) -> str:
    """Spell out times, money, percentages, decimals, ordinals, plurals and integers.

    Args:
        text: input text (any case).

    Returns:
        The text with every digit sequence replaced by words.

    Examples:
        >>> normalize_numbers("$5.50 on the 21st of May 1999")
        'five dollars fifty cents on the twenty first of May nineteen ninety nine'
    """
    text = _THOUSANDS_SEP.sub("", text)
    text = _TIME.sub(_time, text)
    text = _MONEY.sub(_money, text)
    text = _PERCENT.sub(r"\1 percent", text)
    text = _DECIMAL.sub(lambda m: f"{cardinal(int(m.group(1)))} point {_digits(m.group(2))}", text)
    text = _ORDINAL.sub(lambda m: ordinal(int(m.group(1))), text)
    text = _NEGATIVE.sub("minus ", text)
    text = _PLURAL_NUMBER.sub(lambda m: _plural(year(int(m.group(1)))), text)
    return _NUMBER.sub(_number, text)

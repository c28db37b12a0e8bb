"""Text front end: symbol tables, cleaners, espeak-ng phonemizer wrapper and tokenizer.

Submodules are imported on first use so that ``import vits_surgery.text.symbols`` (used by
the config presets) stays free of optional dependencies.
"""

from __future__ import annotations

from .._lazy import lazy_attributes

_LAZY = {
    "Tokenizer": "vits_surgery.text.tokenizer:Tokenizer",
    "UnknownSymbolError": "vits_surgery.text.tokenizer:UnknownSymbolError",
    "get_cleaner": "vits_surgery.text.cleaners:get_cleaner",
    "piper_phonemes": "vits_surgery.text.phonemize:piper_phonemes",
    "PhonemizerError": "vits_surgery.text.phonemize:PhonemizerError",
}

__all__ = list(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)

"""Text front end: symbol tables, cleaners, espeak-ng phonemizer wrapper and tokenizer.

Submodules are imported on first use so that ``import vits_surgery.text.symbols`` (used by
the config presets) stays free of optional dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Tokenizer": "vits_surgery.text.tokenizer:Tokenizer",
    "UnknownSymbolError": "vits_surgery.text.tokenizer:UnknownSymbolError",
    "get_cleaner": "vits_surgery.text.cleaners:get_cleaner",
    "piper_phonemes": "vits_surgery.text.phonemize:piper_phonemes",
    "PhonemizerError": "vits_surgery.text.phonemize:PhonemizerError",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'vits_surgery.text' has no attribute {name!r}")
    module_name, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

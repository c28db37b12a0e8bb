"""Deprecated aliases: old names keep working for one release, with a ``DeprecationWarning``."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["moved_names", "warn_renamed", "REMOVED_IN"]

#: The release that drops the aliases.
REMOVED_IN = "0.3"


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new``."""
    warnings.warn(
        f"{old} is deprecated and will be removed in vits_surgery {REMOVED_IN}; use {new}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def moved_names(old_module: str, targets: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for a module whose names moved.

    Args:
        old_module: the deprecated module's ``__name__``.
        targets: old name -> ``"new.module:new_name"`` (or ``"new.module"`` for the same name).
    """

    def __getattr__(name: str) -> Any:
        target = targets.get(name)
        if target is None:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        module, _, attr = target.partition(":")
        attr = attr or name
        warn_renamed(f"{old_module}.{name}", f"{module}.{attr}")
        return getattr(importlib.import_module(module), attr)

    return __getattr__

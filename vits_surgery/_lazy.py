"""Lazy package attributes (PEP 562): names resolve to their module on first use."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(
    package: str, targets: Mapping[str, str], names: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``(__getattr__, __dir__)`` for attributes imported on first access.

    Args:
        package: the package's ``__name__``.
        targets: attribute -> ``"module.path:attr"``, or a submodule name relative to
            ``package`` whose attribute of the same name is meant.
        names: the package's ``__all__`` (what ``dir()`` lists).
    """

    def __getattr__(name: str) -> Any:
        target = targets.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module_name, _, attr = target.partition(":")
        if not attr:
            module_name, attr = f"{package}.{module_name}", name
        value = getattr(importlib.import_module(module_name), attr)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(names)

    return __getattr__, __dir__

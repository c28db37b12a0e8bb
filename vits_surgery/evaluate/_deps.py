"""Optional dependencies of the evaluation tools, imported on first use with clear errors."""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

__all__ = ["EVAL_INSTALL", "require"]

EVAL_INSTALL = 'pip install "vits_surgery[eval]"'
"""The command that installs every optional package :mod:`vits_surgery.evaluate` uses."""

#: import name -> PyPI distribution that provides it
_DISTRIBUTIONS = {
    "parselmouth": "praat-parselmouth",
    "resemblyzer": "resemblyzer",
    "pocketsphinx": "pocketsphinx",
    "jiwer": "jiwer",
}

_PKG_RESOURCES_FIX = (
    "resemblyzer imports `webrtcvad`, whose module imports `pkg_resources`, which setuptools 81 "
    'and newer no longer ship; fix it with `pip install "setuptools<81"` (what the eval extra pins) '
    "or `pip install --force-reinstall --no-deps webrtcvad-wheels`"
)


def require(module: str, feature: str) -> ModuleType:
    """Import an optional module or raise an ImportError that says how to install it.

    Args:
        module: import name (``"parselmouth"``, ``"resemblyzer"``, ``"pocketsphinx"``, ``"jiwer"``).
        feature: what needs it, for the message (``"F0 statistics"``).

    Returns:
        The imported module.

    Raises:
        ImportError: the module (or one of its own imports) is missing; the message names the
            PyPI package and the install command ``pip install "vits_surgery[eval]"``.
    """
    dist = _DISTRIBUTIONS.get(module, module)
    try:
        with warnings.catch_warnings():
            # resemblyzer's imports warn about deprecated scipy / pkg_resources namespaces
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            return importlib.import_module(module)
    except ImportError as exc:
        if getattr(exc, "name", None) == "pkg_resources":
            raise ImportError(
                f"{feature} needs {dist!r}, which failed to import: {_PKG_RESOURCES_FIX}."
            ) from exc
        missing = getattr(exc, "name", None) or module
        raise ImportError(
            f"{feature} needs the optional package {dist!r} (import {missing!r} failed); "
            f"install the evaluation extra with `{EVAL_INSTALL}`."
        ) from exc

"""Safe reading of foreign PyTorch pickles.

Every ``.pth`` / ``.ckpt`` goes through :func:`safe_torch_load`: ``torch.load`` with
``weights_only=True`` plus a small allow-list of plain, code-free types that real VITS
checkpoints carry (old Piper files pickle a ``pathlib.PosixPath`` in their
hyper-parameters). Anything else that would need arbitrary code to unpickle is refused
with a clear message, and the payload never runs.
"""

from __future__ import annotations

import collections
import pathlib
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from .report import ConversionError

__all__ = ["safe_torch_load", "UnsafeCheckpointError", "ALLOWED_GLOBALS"]

#: Plain data types admitted beyond torch's own weights-only set.
ALLOWED_GLOBALS: list[Any] = [
    pathlib.PosixPath,
    pathlib.PurePosixPath,
    pathlib.WindowsPath,
    pathlib.PureWindowsPath,
    collections.OrderedDict,
    collections.defaultdict,
]


class UnsafeCheckpointError(ConversionError):
    """The file needs arbitrary code to unpickle; it was not executed."""


def safe_torch_load(path: str | Path) -> Any:
    """Load a torch pickle without executing code.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the pickle references a non-allow-listed global (named).
        ConversionError: truncated / corrupt / not a torch file (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    if path.stat().st_size == 0:
        raise ConversionError(f"{path} is empty (0 bytes): not a checkpoint")
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        m = re.search(r"(?:Unsupported global|GLOBAL) ?:? ?(?:GLOBAL )?([\w.]+)", text)
        what = m.group(1) if m else "an unsupported object"
        raise UnsafeCheckpointError(
            f"refusing to load {path}: unpickling it would need to run code ({what}); "
            "vits_surgery only reads plain tensors and containers. If you trust the file, convert it "
            "yourself with torch.load(weights_only=False) and torch.save of the state dict."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError, TypeError) as err:
        raise ConversionError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {type(err).__name__}: {err}"
        ) from None

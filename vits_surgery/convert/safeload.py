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


#: Leading bytes of files that users rename to ``.pth`` by mistake, and what they are.
_FOREIGN_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"RIFF", "a RIFF (WAV/AVI) file"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"ONNX", "an ONNX file"),
    (b"<", "an HTML/XML page (a download that returned a web page?)"),
    (b"{", "a JSON file"),
)


def _sniff(path: Path) -> str | None:
    """What the file is when it cannot be a torch file (zip archive or legacy pickle), else None."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return None  # torch >= 1.6 zip archive, or a legacy pickle (protocol 2+)
    if len(head) >= 9 and head[8:9] == b"{":
        return "a safetensors file (load it with its .safetensors name)"
    for magic, what in _FOREIGN_MAGIC:
        if head.startswith(magic):
            return what
    return f"an unknown file type (first bytes {head[:8]!r})"


def safe_torch_load(path: str | Path) -> Any:
    """Load a torch pickle without executing code.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the pickle references a non-allow-listed global (named), or
            holds an instruction a plain weights file never needs.
        ConversionError: empty, truncated, corrupt or not a torch file (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    if path.stat().st_size == 0:
        raise ConversionError(f"{path} is empty (0 bytes): not a checkpoint")
    what = _sniff(path)
    if what is not None:
        raise ConversionError(f"{path} is not a PyTorch checkpoint: it looks like {what}")
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise _unpickling_error(path, str(err)) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError, TypeError) as err:
        raise ConversionError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {type(err).__name__}: {err}"
        ) from None


def _unpickling_error(path: Path, text: str) -> ConversionError:
    """The error for a weights-only unpickling failure: a code payload, or a broken stream."""
    m = re.search(r"(?:Unsupported global|GLOBAL) ?:? ?(?:GLOBAL )?([\w.]+)", text)
    if m:
        return UnsafeCheckpointError(
            f"refusing to load {path}: unpickling it would need to run code ({m.group(1)}); nothing was "
            "executed. vits_surgery only reads plain tensors and containers. If you trust the file, convert "
            "it yourself with torch.load(weights_only=False) and torch.save of the state dict."
        )
    op = re.search(r"Unsupported operand (\d+)", text)
    if op:
        return UnsafeCheckpointError(
            f"refusing to load {path}: its pickle stream holds an instruction (opcode {op.group(1)}) that a "
            "plain weights file never uses; the file is corrupt or carries code. Nothing was executed."
        )
    if "invalid load key" in text or "truncated" in text or "MARK" in text:
        return ConversionError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?)")
    return UnsafeCheckpointError(
        f"refusing to load {path}: a weights-only load failed ({text.strip().splitlines()[-1][:200] if text.strip() else 'no detail'}); "
        "nothing was executed"
    )

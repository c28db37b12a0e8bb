"""Native checkpoint format, atomic writes and training-run housekeeping.

A native voice is a directory holding ``model.safetensors`` (or that file alone). The file's
metadata carries everything needed to rebuild the model: ``vits_surgery_config`` (the
:class:`~vits_surgery.config.VITSConfig` JSON) and ``vits_surgery_format_version``. Loading
never unpickles anything.

A training checkpoint is a directory ``<out_dir>/checkpoints/step_<NNNNNNNN>/`` with
``model.safetensors`` (the whole model, discriminator included), ``trainer_state.pt``
(optimizers, schedulers, grad scaler, step, RNG states, data position; plain tensors and
Python containers, readable with ``torch.load(weights_only=True)``) and ``plan.json``. Each
file is written to a temporary name, flushed, fsync-ed and renamed; the directory itself is
assembled under a temporary name and renamed into place, so a crash never leaves a
half-written checkpoint where a resume would find it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import VITSConfig

__all__ = [
    "FORMAT_VERSION",
    "MODEL_FILE",
    "STATE_FILE",
    "CheckpointError",
    "OutDirLock",
    "atomic_write",
    "save",
    "load_native",
    "load_native_with_report",
    "load_state_strict",
    "read_native",
    "save_trainer_state",
    "load_trainer_state",
    "checkpoint_dirs",
    "latest_checkpoint",
    "prune_checkpoints",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
_CONFIG_KEY = "vits_surgery_config"
_VERSION_KEY = "vits_surgery_format_version"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, of another format, or locked by another run."""


# ----------------------------------------------------------------------------- atomic files
def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write a file atomically: ``write(f)`` into a temp file beside it, fsync, rename.

    Args:
        path: destination.
        write: called with the open binary temp file.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- model weights
def _model_file(path: Path, reading: bool = False) -> Path:
    """The weights file of a native path: ``<dir>/model.safetensors`` or a ``.safetensors`` file
    (when ``reading``, any existing file)."""
    return path if path.suffix == ".safetensors" or (reading and path.is_file()) else path / MODEL_FILE


def save(model: nn.Module, path: str | Path, metadata: Mapping[str, str] | None = None) -> Path:
    """Save a model in the native format.

    Args:
        model: a :class:`~vits_surgery.models.vits.VITS` (its ``config`` goes in the metadata).
        path: a directory (``model.safetensors`` is written inside) or a ``.safetensors`` file.
        metadata: extra string metadata (e.g. the plan JSON).

    Returns:
        The path of the written ``.safetensors`` file.
    """
    from safetensors.torch import save as st_save

    config = getattr(model, "config", None)
    if not isinstance(config, VITSConfig):
        raise TypeError(f"save() needs a VITS model with a VITSConfig in .config, got {type(model).__name__}")
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta[_CONFIG_KEY] = json.dumps(config.to_dict(), ensure_ascii=False)
    meta[_VERSION_KEY] = str(FORMAT_VERSION)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    blob = st_save(tensors, metadata=meta)
    return atomic_write(_model_file(Path(path)), lambda f: f.write(blob))


def read_native(path: str | Path) -> tuple[dict[str, torch.Tensor], VITSConfig, dict[str, str]]:
    """Read a native ``model.safetensors``: (state dict, config, metadata).

    Raises:
        FileNotFoundError: no model file at ``path``.
        CheckpointError: the file lacks vits_surgery metadata or has a newer format version.
    """
    from safetensors import safe_open

    file = _model_file(Path(path), reading=True)
    if not file.is_file():
        raise FileNotFoundError(f"no native model file at {file}")
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(
            f"{file} is not a readable safetensors file ({file.stat().st_size} bytes; truncated or corrupt?): {err}"
        ) from None
    if _CONFIG_KEY not in meta:
        raise CheckpointError(f"{file} has no {_CONFIG_KEY!r} metadata: it was not written by vits_surgery.save")
    version = int(meta.get(_VERSION_KEY, "1"))
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{file} has format version {version}; this vits_surgery reads up to {FORMAT_VERSION}: upgrade it"
        )
    return tensors, VITSConfig.from_json(meta[_CONFIG_KEY]), meta


def load_native(path: str | Path, with_discriminator: bool | None = None):
    """Rebuild a :class:`~vits_surgery.models.vits.VITS` from a native checkpoint (eval mode).

    Args:
        path: a directory holding ``model.safetensors`` or the file itself.
        with_discriminator: build the discriminator; None = when the file holds its weights.
            A discriminator the file lacks is an error (strict loading).
    """
    return load_native_with_report(Path(path), with_discriminator=with_discriminator)[0]


def load_native_with_report(path: Path, with_discriminator: bool | None = None, **_: Any):
    """:func:`load_native` plus a :class:`~vits_surgery.convert.report.ConversionReport`."""
    from .convert.report import ConversionReport
    from .models.vits import VITS

    tensors, config, _ = read_native(path)
    has_disc = any(k.startswith("discriminator.") for k in tensors)
    build_disc = has_disc if with_discriminator is None else with_discriminator
    if build_disc and not has_disc:
        raise CheckpointError(f"{path} holds no discriminator weights (with_discriminator=True)")
    if not build_disc:
        tensors = {k: v for k, v in tensors.items() if not k.startswith("discriminator.")}
    model = VITS(config, with_discriminator=build_disc)
    load_state_strict(model, tensors, _model_file(Path(path), reading=True))
    model.eval()
    report = ConversionReport(source_format="native", source_path=str(path))
    report.mapped.extend((k, k, "") for k in tensors)
    return model, report


def load_state_strict(model: nn.Module, tensors: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """``model.load_state_dict(tensors, strict=True)`` with an error naming ``source`` and the keys.

    Raises:
        CheckpointError: missing, unexpected or misshaped keys (listed).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    misshaped = [
        f"{k}: file {tuple(v.shape)} != model {tuple(expected[k].shape)}"
        for k, v in tensors.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    problems = []
    for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("misshaped", misshaped)):
        if keys:
            problems.append(f"{what}: {', '.join(keys[:10])}" + (f" ... ({len(keys)} in all)" if len(keys) > 10 else ""))
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(problems))
    model.load_state_dict(dict(tensors), strict=True)


# ----------------------------------------------------------------------------- trainer state
def save_trainer_state(state: Mapping[str, Any], path: str | Path) -> Path:
    """Atomically ``torch.save`` a trainer state (tensors and plain containers only)."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    data = buffer.getvalue()
    return atomic_write(path, lambda f: f.write(data))


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    """Load a trainer state with ``torch.load(weights_only=True)`` (never runs code)."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no trainer state at {path}")
    from .convert.report import ConversionError
    from .convert.safeload import safe_torch_load

    try:
        state = safe_torch_load(path)
    except ConversionError as err:
        raise CheckpointError(f"cannot read the trainer state: {err}") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path} is not a vits_surgery trainer state (no 'step' entry)")
    return state


# ----------------------------------------------------------------------------- run directories
def checkpoint_dirs(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` (an out_dir or its ``checkpoints/``), by step."""
    root = Path(root)
    if (root / "checkpoints").is_dir():
        root = root / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and (child / MODEL_FILE).is_file() and (child / STATE_FILE).is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The highest-step complete checkpoint under ``root``, or None."""
    found = checkpoint_dirs(root)
    return found[-1][1] if found else None


def step_dir(root: str | Path, step: int) -> Path:
    """``<root>/checkpoints/step_<NNNNNNNN>``."""
    return Path(root) / "checkpoints" / f"step_{step:08d}"


def commit_dir(tmp: Path, final: Path) -> Path:
    """Rename a fully written temporary checkpoint directory into place (replacing ``final``)."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


def prune_checkpoints(root: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints (0 keeps all). Returns the deleted.

    Incomplete ``step_*`` directories older than the newest checkpoint (a deletion cut short
    by a crash) are deleted too.
    """
    if keep_last <= 0:
        return []
    found = checkpoint_dirs(root)
    doomed = [p for _, p in found[: max(0, len(found) - keep_last)]]
    if found:
        complete = {p for _, p in found}
        parent = found[-1][1].parent
        for child in parent.iterdir():
            m = _STEP_DIR.match(child.name)
            if m and child.is_dir() and child not in complete and int(m.group(1)) < found[-1][0]:
                doomed.append(child)
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


class OutDirLock:
    """An exclusive lock on a training output directory (``<out_dir>/.lock`` with the PID).

    A lock whose process is dead (same host) is stale and is taken over with a warning; a live
    one raises :class:`CheckpointError` naming the PID.
    """

    _held: set[str] = set()  # lock paths held by this process

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / ".lock"
        self.acquired = False

    def acquire(self) -> OutDirLock:
        """Take the lock or raise :class:`CheckpointError`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._check_existing(key)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {socket.gethostname()}\n")
            self.acquired = True
            OutDirLock._held.add(key)
            return self
        raise CheckpointError(f"could not take the lock {self.path}")

    def _check_existing(self, key: str) -> None:
        try:
            pid_text, _, host = self.path.read_text().strip().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            pid, host = -1, ""
        same_host = host in ("", socket.gethostname())
        if pid == os.getpid() and key in OutDirLock._held:
            raise CheckpointError(
                f"{self.path.parent} is already used by another trainer in this process; "
                "use a different out_dir or let the first fit() finish"
            )
        if pid != os.getpid() and same_host and _pid_alive(pid):
            raise CheckpointError(
                f"{self.path.parent} is locked by a running trainer (PID {pid}); use a different "
                f"out_dir, or delete {self.path} if that process is not a trainer"
            )
        if not same_host:
            raise CheckpointError(f"{self.path.parent} is locked by PID {pid} on host {host}; use another out_dir")
        logger.warning("taking over the stale lock %s (PID %s is gone)", self.path, pid)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def release(self) -> None:
        """Remove the lock file if we hold it."""
        if self.acquired:
            OutDirLock._held.discard(str(self.path.resolve()))
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            self.acquired = False

    def __enter__(self) -> OutDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

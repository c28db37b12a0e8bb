"""Training-run housekeeping: checkpoint folders, the trainer state file, the out_dir lock.

A training checkpoint is a directory ``<out_dir>/checkpoints/step_<NNNNNNNN>/`` with
``model.safetensors`` (the whole model in the native format, discriminator included),
``trainer_state.pt`` (optimizers, schedulers, grad scaler, step, RNG states, data position;
plain tensors and Python containers, readable with ``torch.load(weights_only=True)``) and
``plan.json``. Each file is written to a temporary name, flushed, fsync-ed and renamed; the
directory itself is assembled under a temporary name and renamed into place, so a crash never
leaves a half-written checkpoint where a resume would find it.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .. import _files
from ..convert.native import MODEL_FILE, CheckpointError

__all__ = [
    "STATE_FILE",
    "OutDirLock",
    "save_trainer_state",
    "load_trainer_state",
    "checkpoint_dirs",
    "latest_checkpoint",
    "step_dir",
    "commit_dir",
    "prune_checkpoints",
]

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")


# ----------------------------------------------------------------------------- trainer state
def save_trainer_state(state: Mapping[str, Any], path: str | Path) -> Path:
    """Atomically ``torch.save`` a trainer state (tensors and plain containers only)."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    data = buffer.getvalue()
    return _files.atomic_write(path, lambda f: f.write(data))


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    """Load a trainer state with ``torch.load(weights_only=True)`` (never runs code)."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no trainer state at {path}")
    from ..convert.report import ConversionError
    from ..convert.safeload import safe_torch_load

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
    _files.fsync_dir(final.parent)
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

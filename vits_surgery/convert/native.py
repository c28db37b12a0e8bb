"""The native format: one self-describing ``model.safetensors``.

A native voice is a directory holding ``model.safetensors`` (or that file alone). The file's
metadata carries everything needed to rebuild the model: ``vits_surgery_config`` (the
:class:`~vits_surgery.config.VITSConfig` JSON) and ``vits_surgery_format_version``. Loading
never unpickles anything.

Training checkpoints (folders of this file plus the trainer state) are run housekeeping:
see :mod:`vits_surgery.surgery.rundir`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import _files
from ..config import VITSConfig

__all__ = [
    "FORMAT_VERSION",
    "MODEL_FILE",
    "CheckpointError",
    "save",
    "load_native",
    "load_native_with_report",
    "load_state_strict",
    "read_native",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
_CONFIG_KEY = "vits_surgery_config"
_VERSION_KEY = "vits_surgery_format_version"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, of another format, or locked by another run."""


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
    return _files.atomic_write(_model_file(Path(path)), lambda f: f.write(blob))


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
    from ..models.vits import VITS
    from .report import ConversionReport

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



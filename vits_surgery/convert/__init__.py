"""Load any supported VITS checkpoint into :class:`~vits_surgery.models.vits.VITS`, and export.

``load(path)`` detects the format:

- native: a ``model.safetensors`` (or a folder holding one) written by :func:`vits_surgery.save`;
- Coqui TTS: a trainer ``.pth`` with ``config`` and ``model``, or a bare state dict with a
  ``config.json`` beside it;
- original VITS: ``G_*.pth`` (``enc_p.`` keys) with its JSON config (``D_*.pth`` beside it is
  loaded as the discriminator);
- Piper: a Lightning ``.ckpt`` (``model_g.`` keys) or an ONNX voice (``.onnx`` + ``.onnx.json``);
- Hugging Face ``VitsModel`` folders (``config.json`` + ``model.safetensors``).

Every converter is strict and returns a :class:`ConversionReport` of mapped, dropped and
created keys.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .report import ConversionError, ConversionReport

if TYPE_CHECKING:  # pragma: no cover
    from ..models.vits import VITS

__all__ = ["load", "export", "convert", "detect_format", "ConversionReport", "ConversionError", "FORMATS"]

#: format name -> module implementing ``load_<fmt>(path, **kw) -> (VITS, ConversionReport)``
FORMATS = {
    "native": "vits_surgery.convert.native",
    "coqui": "vits_surgery.convert.coqui",
    "vits": "vits_surgery.convert.vits",
    "piper-ckpt": "vits_surgery.convert.piper",
    "piper-onnx": "vits_surgery.convert.piper",
    "hf": "vits_surgery.convert.hf",
}

_LOADERS = {
    "native": "load_native_with_report",
    "coqui": "load_coqui",
    "vits": "load_vits",
    "piper-ckpt": "load_piper_ckpt",
    "piper-onnx": "load_piper_onnx",
    "hf": "load_hf",
}

_EXPORTERS = {
    "native": ("vits_surgery.convert.native", "save"),
    "coqui": ("vits_surgery.convert.coqui", "export_coqui"),
    "piper-onnx": ("vits_surgery.convert.onnx_export", "export_onnx"),
}


def _looks_native_safetensors(path: Path) -> bool:
    """True when the file carries vits_surgery metadata.

    Raises:
        ConversionError: the file is not a readable safetensors file (empty, truncated, corrupt).
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        size = path.stat().st_size
        raise ConversionError(
            f"{path} is not a readable safetensors file ({size} bytes; truncated or corrupt?): {err}"
        ) from None
    return "vits_surgery_config" in meta


def detect_format(path: str | Path) -> str:
    """Name of the checkpoint format at ``path`` (see :data:`FORMATS`).

    Raises:
        FileNotFoundError: nothing at ``path``.
        ConversionError: not a recognised VITS checkpoint (says what was found).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            if _looks_native_safetensors(path / "model.safetensors"):
                return "native"
            if (path / "config.json").is_file():
                return "hf"
        onnx = sorted(path.glob("*.onnx"))
        if onnx:
            return "piper-onnx"
        raise ConversionError(f"{path} is a folder without model.safetensors or an .onnx voice")
    suffix = path.suffix.lower()
    if suffix == ".onnx" or path.name.endswith(".onnx.json"):
        return "piper-onnx"
    if suffix == ".safetensors":
        if _looks_native_safetensors(path):
            return "native"
        if (path.parent / "config.json").is_file():
            return "hf"
        raise ConversionError(f"{path} is a safetensors file without vits_surgery metadata or an HF config.json")
    if suffix == ".ckpt":
        return "piper-ckpt"
    return _detect_pickle(path)


def _detect_pickle(path: Path) -> str:
    from .safeload import safe_torch_load

    obj = safe_torch_load(path)
    state = obj
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        state = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state = obj["state_dict"]
    keys = [k for k in state if isinstance(k, str)] if isinstance(state, dict) else []
    if any(k.startswith("model_g.") for k in keys):
        return "piper-ckpt"
    if any(k.startswith(("text_encoder.", "waveform_decoder.", "disc.nets.")) for k in keys):
        return "coqui"
    if any(k.startswith(("enc_p.", "dec.", "enc_q.")) for k in keys):
        return "vits"
    if any(k.startswith("discriminators.") for k in keys):
        raise ConversionError(
            f"{path} holds only an original-VITS discriminator (D_*.pth); load the generator G_*.pth, "
            "the D file beside it is picked up automatically"
        )
    shown = ", ".join(keys[:5]) or type(obj).__name__
    raise ConversionError(f"{path} is not a recognised VITS checkpoint (first keys: {shown})")


def load(
    path: str | Path,
    format: str = "auto",  # noqa: A002 - the user-facing name
    return_report: bool = False,
    **kwargs: Any,
) -> VITS | tuple[VITS, ConversionReport]:
    """Load a voice from any supported format.

    Args:
        path: checkpoint file or folder.
        format: "auto" or one of :data:`FORMATS`.
        return_report: also return the :class:`ConversionReport`.
        **kwargs: format-specific options (e.g. ``config_path`` for Coqui bare state dicts).

    Returns:
        The model (in eval mode), or ``(model, report)``.
    """
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    module = importlib.import_module(FORMATS[fmt])
    model, report = getattr(module, _LOADERS[fmt])(Path(path), **kwargs)
    return (model, report) if return_report else model


def export(model: VITS, path: str | Path, format: str = "native", **kwargs: Any) -> Path:  # noqa: A002
    """Write ``model`` in ``format`` ("native", "coqui" or "piper-onnx"); ``kwargs`` go to its exporter."""
    if format not in _EXPORTERS:
        raise ConversionError(f"cannot export to {format!r}; choose one of {', '.join(_EXPORTERS)}")
    module_name, fn = _EXPORTERS[format]
    return getattr(importlib.import_module(module_name), fn)(model, Path(path), **kwargs)


def convert(src: str | Path, dst: str | Path, format: str = "native", **kwargs: Any) -> ConversionReport:  # noqa: A002
    """Load ``src`` (any format) and write it to ``dst`` in ``format``; returns the load report."""
    model, report = load(src, return_report=True, **kwargs)
    export(model, dst, format=format)
    return report


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON config with a clear error on malformed content."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConversionError(f"cannot read JSON config {path}: {err}") from None

"""Coqui TTS VITS checkpoints (coqui-tts 0.28 and the releases before it) <-> vits_surgery.

Facts the converter relies on (observed by running coqui-tts 0.28.0):

- A trainer checkpoint is a dict ``{"config", "model", "optimizer", "scheduler", "scaler",
  "step", "epoch", "date"}``; ``config`` is the plain dict of ``VitsConfig``. Released models
  may ship a bare state dict with a ``config.json`` beside it.
- Organ names equal ours except ``waveform_decoder`` (``decoder``), ``emb_g``
  (``speaker_embedding``) and ``disc`` (``discriminator``). Weight norm is either
  ``parametrizations.weight.original0/1`` (0.2x+) or ``weight_g``/``weight_v`` (older files);
  spectral-normed discriminators keep ``weight_orig``/``weight_u``/``weight_v``.
- Coqui fixes what its config does not name: 4 flow blocks, an SDP of width 192 (kernel 3,
  3 DDS layers, 4 spline flows, 10 bins, tail 5), a deterministic predictor of width 256
  (glow-tts layout), attention window 4, latent width = ``hidden_channels``.
- The vocabulary comes from ``config["characters"]`` (see :func:`coqui_vocabulary`); Coqui's
  tokenizer calls the cleaner with ``lang=None``, so ``english_cleaners`` does not expand
  abbreviations (our ``coqui_english_cleaners``).
"""

from __future__ import annotations

import copy
import datetime
import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._files import atomic_write, atomic_write_text
from .coqui_config import (
    COQUI_CLEANERS,
    config_from_coqui,
    coqui_config_dict,
    coqui_vocabulary,
    refuse_unsupported,
)
from .keymap import WN_G, WN_V, Rule, apply_rules, split_weight_norm
from .report import ConversionError, ConversionReport

if TYPE_CHECKING:  # pragma: no cover
    from ..config import VITSConfig
    from ..models.vits import VITS

__all__ = [
    "COQUI_RULES",
    "EXPORT_RULES",
    "COQUI_CLEANERS",
    "coqui_vocabulary",
    "config_from_coqui",
    "coqui_config_dict",
    "coqui_to_native",
    "native_to_coqui",
    "load_coqui",
    "export_coqui",
]

logger = logging.getLogger(__name__)

_ORGANS = r"(?P<organ>text_encoder|duration_predictor|posterior_encoder|flow)"
_SPEAKER_ENCODER_REASON = "Coqui speaker encoder (speaker-consistency loss); not part of the VITS voice"

#: Coqui key -> native key (applied after legacy weight-norm names are normalised).
COQUI_RULES: list[Rule] = [
    Rule(r"speaker_encoder\..+", None, reason=_SPEAKER_ENCODER_REASON),
    Rule(r"waveform_decoder\.(?P<rest>.+)", "decoder.{rest}"),
    Rule(r"disc\.(?P<rest>.+)", "discriminator.{rest}"),
    Rule(r"emb_g\.weight", "speaker_embedding.weight"),
    Rule(_ORGANS + r"\.(?P<rest>.+)", "{organ}.{rest}"),
]

#: native key -> Coqui key (export).
EXPORT_RULES: list[Rule] = [
    Rule(r"decoder\.(?P<rest>.+)", "waveform_decoder.{rest}"),
    Rule(r"discriminator\.(?P<rest>.+)", "disc.{rest}"),
    Rule(r"speaker_embedding\.weight", "emb_g.weight"),
    Rule(_ORGANS + r"\.(?P<rest>.+)", "{organ}.{rest}"),
]

#: Coqui ``text_cleaner`` -> our cleaner giving the same text under Coqui's tokenizer.
# ----------------------------------------------------------------------------- state dicts
def _normalise_legacy_weight_norm(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """``x.weight_g`` + ``x.weight_v`` pairs -> parametrization names; spectral-norm keys stay."""
    out: dict[str, torch.Tensor] = {}
    pairs = 0
    for key, value in state.items():
        base, _, leaf = key.rpartition(".")
        partner = {"weight_g": "weight_v", "weight_v": "weight_g"}.get(leaf)
        if partner is not None and f"{base}.{partner}" in state:
            out[base + (WN_G if leaf == "weight_g" else WN_V)] = value
            pairs += leaf == "weight_g"
        else:
            out[key] = value
    return out, pairs


def _to_legacy_weight_norm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(WN_G):
            key = key[: -len(WN_G)] + ".weight_g"
        elif key.endswith(WN_V):
            key = key[: -len(WN_V)] + ".weight_v"
        out[key] = value
    return out


_UNUSED_DP_COND = (
    "condition_dp_on_speaker=False: Coqui builds the deterministic duration predictor's speaker layer "
    "but never uses it at inference"
)


def _unused_dp_cond(config: VITSConfig) -> bool:
    """Coqui's glow-tts predictor has ``cond`` whenever the model has speakers."""
    dp = config.duration_predictor
    return config.n_speakers > 0 and not dp.stochastic and not dp.condition_on_speaker


def coqui_to_native(
    state: Mapping[str, torch.Tensor],
    report: ConversionReport,
    source: str = "checkpoint",
    config: VITSConfig | None = None,
) -> dict[str, torch.Tensor]:
    """Rename a Coqui VITS state dict (either weight-norm style) to native keys.

    With ``config``, tensors Coqui stores but never uses for it are dropped (and reported).
    """
    normalised, pairs = _normalise_legacy_weight_norm(state)
    if pairs:
        report.notes.append(f"legacy weight norm (weight_g/weight_v): {pairs} layers converted")
    if config is not None and _unused_dp_cond(config):
        for key in [k for k in normalised if k.startswith("duration_predictor.cond.")]:
            del normalised[key]
            report.dropped.append((key, _UNUSED_DP_COND))
    return apply_rules(normalised, COQUI_RULES, report, source)


def _add_unused_dp_cond(state: dict[str, torch.Tensor], config: VITSConfig) -> None:
    """Zero ``duration_predictor.cond`` for Coqui's strict load (a no-op layer, see ``_UNUSED_DP_COND``)."""
    if _unused_dp_cond(config):
        width = config.text_encoder.hidden_channels
        state["duration_predictor.cond.weight"] = torch.zeros(width, config.gin_channels, 1)
        state["duration_predictor.cond.bias"] = torch.zeros(width)
        logger.info("duration_predictor.cond written as zeros (%s)", _UNUSED_DP_COND)


def native_to_coqui(
    state: Mapping[str, torch.Tensor], legacy_weight_norm: bool = False
) -> dict[str, torch.Tensor]:
    """Native state dict -> Coqui keys (parametrized weight norm unless ``legacy_weight_norm``)."""
    out = apply_rules(state, EXPORT_RULES, ConversionReport("native"), "model")
    return _to_legacy_weight_norm(out) if legacy_weight_norm else out


# ----------------------------------------------------------------------------- loading
def _read_checkpoint(path: Path, config_path: str | Path | None) -> tuple[dict, dict, list[str]]:
    """(state dict, Coqui config dict, notes) from a trainer dict or a bare state dict + JSON."""
    from . import read_json
    from .safeload import safe_torch_load

    obj = safe_torch_load(path)
    notes: list[str] = []
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        state, cfg = dict(obj["model"]), obj.get("config")
        notes.append(f"Coqui trainer checkpoint: step {obj.get('step')}, epoch {obj.get('epoch')}, date {obj.get('date')}")
    elif isinstance(obj, Mapping):
        state, cfg = dict(obj), None
    else:
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a Coqui checkpoint dict")
    if config_path is not None or not isinstance(cfg, Mapping):
        cfg_file = Path(config_path) if config_path is not None else path.parent / "config.json"
        if not cfg_file.is_file():
            raise ConversionError(
                f"{path} carries no Coqui config: pass config_path= or put its config.json beside it "
                f"(looked for {cfg_file})"
            )
        cfg = read_json(cfg_file)
        notes.append(f"config read from {cfg_file}")
    if cfg.get("model", "vits") != "vits":
        raise ConversionError(f"{path}: the Coqui config is for model {cfg.get('model')!r}, not 'vits'")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{path}: the state dict holds non-tensor entries: {bad[:5]}")
    return state, dict(cfg), notes


def _speaker_names(cfg: Mapping[str, Any], path: Path) -> tuple[list[str], Path] | None:
    """Speaker names from Coqui's ``speakers_file`` (name -> id, JSON or torch), when the config lists none.

    The file is looked up where the config says, then beside the checkpoint.
    """
    from . import read_json
    from .safeload import safe_torch_load

    name = (cfg.get("model_args") or {}).get("speakers_file") or cfg.get("speakers_file")
    if not name or cfg.get("speakers"):
        return None
    for candidate in (Path(name), path.parent / Path(name).name):
        if candidate.is_file():
            data = read_json(candidate) if candidate.suffix == ".json" else safe_torch_load(candidate)
            if isinstance(data, Mapping) and all(isinstance(v, int) for v in data.values()):
                return [k for k, _ in sorted(data.items(), key=lambda kv: kv[1])], candidate
    return None


_FRESH_DISCRIMINATOR = "no discriminator in the Coqui checkpoint: created fresh (train it before adversarial fine-tuning)"


def _fresh_discriminator(state: Mapping[str, torch.Tensor]):
    """``create`` callback: a discriminator is created only when the checkpoint has none at all."""
    if any(k.startswith("discriminator.") for k in state):
        return None  # a partial discriminator is an error like any missing key
    return lambda key: _FRESH_DISCRIMINATOR if key.startswith("discriminator.") else None


def load_coqui(path: str | Path, config_path: str | Path | None = None, **_: Any) -> tuple[VITS, ConversionReport]:
    """Load a Coqui TTS VITS checkpoint.

    Accepts the trainer's dict (``config`` + ``model``) or a bare state dict with its
    ``config.json`` (``config_path`` or beside the file; an explicit ``config_path`` wins
    over an embedded config). The model carries ``max_inference_frames`` (Coqui
    ``max_inference_len``) and ``coqui_config`` (the source config dict, which
    :func:`export_coqui` starts from).

    Returns:
        (VITS in eval mode, ConversionReport)

    Raises:
        ConversionError: unsupported model (d-vectors, language embeddings), or a missing,
            unexpected or misshaped key (all named).
    """
    from .vits import build_and_load

    path = Path(path)
    state, cfg, notes = _read_checkpoint(path, config_path)
    refuse_unsupported(cfg, state, str(path))
    report = ConversionReport("coqui", str(path))
    report.notes.extend(notes)
    found = _speaker_names(cfg, path)
    if found is not None:
        cfg = {**cfg, "speakers": found[0]}
        report.notes.append(f"speaker names read from {found[1]}")
    config = config_from_coqui(cfg, state, report.notes)
    renamed = coqui_to_native(state, report, str(path), config)
    model = build_and_load(config, renamed, report, create=_fresh_discriminator(renamed), source=str(path))
    if report.created_prefixes().get("discriminator"):
        report.notes.append("generator-only checkpoint: the discriminator is freshly initialised")
    max_len = (cfg.get("model_args") or {}).get("max_inference_len")
    model.max_inference_frames = None if max_len is None else int(max_len)
    model.coqui_config = copy.deepcopy(cfg)
    return model, report


def _export_state(model: VITS, include_discriminator: bool) -> dict[str, torch.Tensor]:
    """The model's state dict with weight norm as parametrizations.

    Layers whose weight norm was folded (:func:`~vits_surgery.models.commons.remove_weight_norms`)
    are split back into ``g = ||w||``, ``v = w``, as re-applying weight norm would.
    """
    from ..models.commons import has_weight_norm

    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    for name, module in model.named_modules():
        if getattr(module, "_vits_surgery_weight_norm", False) and not has_weight_norm(module):
            g, v = split_weight_norm(state.pop(f"{name}.weight"))
            state[name + WN_G], state[name + WN_V] = g, v
    if not include_discriminator:
        state = {k: v for k, v in state.items() if not k.startswith("discriminator.")}
    return state


def export_coqui(
    model: VITS,
    path: str | Path,
    *,
    base_config: Mapping[str, Any] | None = None,
    include_discriminator: bool | None = None,
    legacy_weight_norm: bool = False,
    step: int = 0,
    epoch: int = 0,
    config_path: str | Path | None = None,
) -> Path:
    """Write ``model`` as a Coqui trainer checkpoint that ``Vits.load_checkpoint(strict=True)`` loads.

    Args:
        model: the voice.
        path: the ``.pth`` to write (atomically).
        base_config: Coqui config dict whose unmodelled fields to keep (default: the config the
            model was loaded from, ``model.coqui_config``, if any).
        include_discriminator: write ``disc.*`` (default: when the model has a discriminator).
        legacy_weight_norm: write ``weight_g``/``weight_v`` names (Coqui before 0.2x).
        step, epoch: stored in the checkpoint.
        config_path: also write the config as JSON there (Coqui's ``config.json``).

    Returns:
        The written path.
    """
    import json

    path = Path(path)
    has_disc = getattr(model, "discriminator", None) is not None
    include = has_disc if include_discriminator is None else bool(include_discriminator)
    if include and not has_disc:
        raise ConversionError("include_discriminator=True but the model has no discriminator")
    base = base_config if base_config is not None else getattr(model, "coqui_config", None)
    cfg = coqui_config_dict(model.config, base, include, getattr(model, "max_inference_frames", None))
    state = native_to_coqui(_export_state(model, include), legacy_weight_norm)
    _add_unused_dp_cond(state, model.config)
    blob = {"config": cfg, "model": state, "optimizer": None, "scheduler": None, "scaler": None,
            "step": int(step), "epoch": int(epoch), "date": datetime.date.today().strftime("%B %d, %Y")}
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    if config_path is not None:
        atomic_write_text(Path(config_path), json.dumps(cfg, indent=4, ensure_ascii=False) + "\n")
    return path



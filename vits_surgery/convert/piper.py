"""Piper voices: ONNX (``.onnx`` + ``.onnx.json``) and Lightning ``.ckpt`` -> vits_surgery.

Piper's model code is the original VITS with the same key names, so both paths reuse the
original-VITS key map (:mod:`vits_surgery.convert.vits`):

- ``.ckpt``: strip ``model_g.`` / ``model_d.``, build the config from ``hyper_parameters``;
  old Piper files pickle a ``PosixPath`` there, admitted by the allow-list loader.
- ``.onnx``: weights are recovered from the graph (:mod:`vits_surgery.convert.onnx_graph`).
  An inference graph lacks the organs only training needs: the posterior encoder, the
  duration predictor's posterior flows and its first ConvFlow (unused in reverse), and the
  discriminator. They are created fresh and listed in the report;
  :func:`vits_surgery.regrow` trains them from the voice itself.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import TextConfig, VITSConfig, preset
from .piper_voice import PiperVoiceConfig
from .report import ConversionError, ConversionReport
from .vits import build_and_load, config_from_vits_json, vits_to_native

__all__ = ["load_piper_onnx", "load_piper_ckpt", "config_from_piper_voice", "REGROWN_ORGAN_PREFIXES"]

#: Native key prefixes an ONNX voice lacks (and why).
REGROWN_ORGAN_PREFIXES: dict[str, str] = {
    "posterior_encoder.": "not in an inference graph: regrow it before training",
    "duration_predictor.post_": "SDP posterior flows are training-only: regrow them before training",
    "duration_predictor.flows.1.": "the first ConvFlow is unused at inference (VITS drops it): regrow it",
    "discriminator.": "no discriminator in a voice: created fresh",
}


def _voice_text_config(voice: PiperVoiceConfig) -> TextConfig:
    pairs = tuple(sorted((k, tuple(v)) for k, v in voice.phoneme_id_map.items()))
    return TextConfig(
        symbols=(),
        style="piper",
        add_blank=True,
        pad="_",
        blank="_",
        bos="^",
        eos="$",
        use_bos_eos=True,
        use_phonemes=voice.phoneme_type == "espeak",
        phoneme_language=voice.espeak_voice or "en-us",
        cleaner=None,
        phoneme_id_map=pairs,
    )


def config_from_piper_voice(voice: PiperVoiceConfig, base: VITSConfig | None = None) -> VITSConfig:
    """Model config of a Piper voice: the quality preset's architecture, the voice's text and rates.

    Args:
        voice: the parsed ``.onnx.json``.
        base: architecture to start from (default: ``piper_low`` for x_low/low voices,
            else ``piper_medium``).
    """
    if base is None:
        base = preset("piper_low" if voice.quality in ("x_low", "low") else "piper_medium")
    n_speakers = voice.num_speakers if voice.num_speakers > 1 else 0
    cfg = base.replace(
        **{
            "audio.sample_rate": voice.sample_rate,
            "text_encoder.n_vocab": voice.num_symbols,
            "n_speakers": n_speakers,
            "gin_channels": 512 if n_speakers else 0,  # Piper's multi-speaker default
            "noise_scale": voice.noise_scale,
            "noise_scale_w": voice.noise_w,
            "length_scale": voice.length_scale,
        }
    )
    return dataclasses.replace(cfg, text=_voice_text_config(voice), name=f"piper:{voice.language_code or 'voice'}")


def _created_for_onnx(key: str) -> str | None:
    for prefix, reason in REGROWN_ORGAN_PREFIXES.items():
        if key.startswith(prefix):
            return reason
    return None


def _find_voice_json(path: Path) -> Path:
    for candidate in (path.with_name(path.name + ".json"), path.with_suffix(".json"), path.parent / "config.json"):
        if candidate.is_file():
            return candidate
    raise ConversionError(f"{path}: a Piper voice needs its JSON config beside it ({path.name}.json)")


def _exported_config(voice_json: Path, voice: PiperVoiceConfig) -> VITSConfig | None:
    """The model config a voice written by :func:`vits_surgery.export_onnx` carries, or None.

    The architecture and (for non-Piper text front ends) the tokenizer come from that config;
    the inference scales and a Piper phoneme map come from the voice, which a user may edit.
    """
    from . import read_json

    section = read_json(voice_json).get("vits_surgery")
    if not isinstance(section, dict) or "config" not in section:
        return None
    try:
        config = VITSConfig.from_dict(section["config"])
    except (TypeError, ValueError, KeyError) as err:
        raise ConversionError(
            f"{voice_json}: 'vits_surgery.config' is not a valid model config ({err})"
        ) from None
    if (config.text_encoder.n_vocab, config.audio.sample_rate) != (voice.num_symbols, voice.sample_rate):
        raise ConversionError(
            f"{voice_json}: 'vits_surgery.config' disagrees with the voice (num_symbols {voice.num_symbols}, "
            f"sample_rate {voice.sample_rate}); remove the 'vits_surgery' section or restore the values"
        )
    config = config.replace(
        noise_scale=voice.noise_scale, noise_scale_w=voice.noise_w, length_scale=voice.length_scale
    )
    if config.text.style == "piper":
        config = dataclasses.replace(config, text=_voice_text_config(voice))
    return config


def load_piper_onnx(path: Path, config_path: str | Path | None = None):
    """Import a Piper ONNX voice.

    Args:
        path: ``<voice>.onnx`` (or a folder holding one).
        config_path: the voice JSON (default: ``<voice>.onnx.json`` beside it).

    Returns:
        (VITS, ConversionReport); the report lists the organs created fresh.
    """
    from .onnx_graph import recover_onnx_weights

    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.onnx"))
        if not found:
            raise ConversionError(f"{path}: no .onnx file in this folder")
        path = found[0]
    if path.name.endswith(".onnx.json"):
        path = path.with_name(path.name[: -len(".json")])
    voice_json = Path(config_path) if config_path else _find_voice_json(path)
    voice = PiperVoiceConfig.from_json(voice_json)
    config = _exported_config(voice_json, voice) or config_from_piper_voice(voice)
    rec = recover_onnx_weights(path)
    report = ConversionReport("piper-onnx", str(path))
    state = vits_to_native(rec.state_dict, None, report, str(path))
    model = build_and_load(config, state, report, create=_created_for_onnx, source=str(path))
    report.notes.append(
        f"{len(rec.folded_weight_norm_keys)} weight-normed layers were stored folded in the graph and re-split"
    )
    report.notes.append("organs missing from an inference graph were created fresh: run vits_surgery.regrow")
    return model, report


def _literal(value: Any) -> Any:
    """LightningCLI may store tuple hparams as their repr (``"(8, 8, 4)"``); Piper literal-evals them."""
    if isinstance(value, str) and value.strip().startswith(("(", "[")):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ConversionError(f"cannot parse Piper hyper-parameter value {value!r}") from None
    return value


def _hparams_to_vits_json(hp: Mapping[str, Any]) -> dict[str, Any]:
    model_keys = (
        "inter_channels", "hidden_channels", "filter_channels", "n_heads", "n_layers", "kernel_size",
        "p_dropout", "resblock", "resblock_kernel_sizes", "resblock_dilation_sizes", "upsample_rates",
        "upsample_initial_channel", "upsample_kernel_sizes", "gin_channels", "use_sdp",
    )
    n_speakers = int(hp.get("num_speakers", 1))
    data = {
        "sampling_rate": int(hp.get("sample_rate", 22050)),
        "filter_length": int(hp.get("filter_length", 1024)),
        "win_length": int(hp.get("win_length", 1024)),
        "hop_length": int(hp.get("hop_length", 256)),
        "n_mel_channels": int(hp.get("mel_channels", 80)),
        "mel_fmin": float(hp.get("mel_fmin", 0.0)),
        "mel_fmax": hp.get("mel_fmax"),
        "add_blank": True,
        "n_speakers": n_speakers if n_speakers > 1 else 0,
        "text_cleaners": [],
    }
    model = {k: _literal(hp[k]) for k in model_keys if k in hp}
    model["n_vocab"] = int(hp.get("num_symbols", 256))
    train = {"segment_size": int(hp.get("segment_size", 8192))}
    return {"data": data, "model": model, "train": train}


def load_piper_ckpt(path: Path, config_path: str | Path | None = None):
    """Import a Piper Lightning checkpoint (generator + discriminator).

    Args:
        path: the ``.ckpt``.
        config_path: optional voice JSON for the phoneme map (default: ``config.json`` or a
            ``*.onnx.json`` beside the checkpoint, if present).
    """
    from .safeload import safe_torch_load

    path = Path(path)
    obj = safe_torch_load(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise ConversionError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    state = obj["state_dict"]
    hp = obj.get("hyper_parameters") or {}
    report = ConversionReport("piper-ckpt", str(path))
    gen = {k[len("model_g.") :]: v for k, v in state.items() if k.startswith("model_g.")}
    disc = {k[len("model_d.") :]: v for k, v in state.items() if k.startswith("model_d.")}
    other = [k for k in state if not k.startswith(("model_g.", "model_d."))]
    for key in other:
        report.dropped.append((key, "not a VITS generator/discriminator tensor (e.g. Piper 1.8 model_mrd)"))
    if not gen:
        raise ConversionError(f"{path}: no model_g.* tensors in the checkpoint")
    hps = _hparams_to_vits_json(hp)
    if "enc_p.emb.weight" in gen:
        hps["model"]["n_vocab"] = int(gen["enc_p.emb.weight"].shape[0])
    if "emb_g.weight" in gen:  # Piper builds gin 512 for several speakers even when the hparam says 0
        hps["model"]["gin_channels"] = int(gen["emb_g.weight"].shape[1])
    config = config_from_vits_json(hps, name="piper")
    voice_json = Path(config_path) if config_path else None
    if voice_json is None:
        found = sorted(path.parent.glob("*.onnx.json")) + [path.parent / "config.json"]
        voice_json = next((p for p in found if p.is_file()), None)
    if voice_json is not None:
        voice = PiperVoiceConfig.from_json(voice_json)
        config = dataclasses.replace(config, text=_voice_text_config(voice))
    else:
        config = dataclasses.replace(config, text=preset("piper_medium").text)
        report.notes.append("no voice JSON beside the checkpoint: Piper's default phoneme_id_map is assumed")
    native = vits_to_native(gen, disc or None, report, str(path))
    created = None if disc else (lambda k: "no discriminator in the checkpoint: created fresh"
                                 if k.startswith("discriminator.") else None)
    model = build_and_load(config, native, report, create=created, source=str(path))
    return model, report

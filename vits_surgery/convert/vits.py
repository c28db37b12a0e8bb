"""Original VITS (``G_*.pth`` / ``D_*.pth`` + JSON config) <-> vits_surgery.

Key layout facts (original VITS, also Piper's ``model_g.`` / ``model_d.``):

- organs ``enc_p``, ``enc_q``, ``flow``, ``dp``, ``dec``, ``emb_g``; discriminator
  ``discriminators.{i}`` in a separate file;
- the flow list keeps parameter-less Flip modules: couplings sit at ``flow.flows.{0,2,4,6}``;
- the SDP's ``flows`` / ``post_flows`` are ``[ElementwiseAffine(m, logs), (ConvFlow, Flip) x n]``:
  ConvFlows at odd indices ``1, 3, 5, 7``;
- the decoder's speaker projection is ``dec.cond`` (Coqui: ``cond_layer``);
- weight norm in the legacy ``weight_g`` / ``weight_v`` form.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import (
    AudioConfig,
    DecoderConfig,
    DurationPredictorConfig,
    FlowConfig,
    PosteriorEncoderConfig,
    TextConfig,
    TextEncoderConfig,
    VITSConfig,
)
from .keymap import (
    Rule,
    apply_rules,
    legacy_weight_norm_to_parametrized,
    parametrized_to_legacy_weight_norm,
    reconcile,
)
from .report import ConversionError, ConversionReport

__all__ = [
    "GENERATOR_RULES",
    "DISCRIMINATOR_RULES",
    "config_from_vits_json",
    "vits_to_native",
    "native_to_vits",
    "load_vits",
    "build_and_load",
]

_ORGANS = {"enc_p": "text_encoder", "enc_q": "posterior_encoder", "dec": "decoder", "dp": "duration_predictor"}

#: original generator key -> native key
GENERATOR_RULES: list[Rule] = [
    Rule(r"flow\.flows\.(?P<i>\d+)\.(?P<rest>.+)", "flow.flows.{i}.{rest}", index={"i": lambda i: i // 2}),
    Rule(r"dp\.(?P<f>flows|post_flows)\.0\.m", "duration_predictor.{f}.0.translation"),
    Rule(r"dp\.(?P<f>flows|post_flows)\.0\.logs", "duration_predictor.{f}.0.log_scale"),
    Rule(
        r"dp\.(?P<f>flows|post_flows)\.(?P<i>\d+)\.(?P<rest>.+)",
        "duration_predictor.{f}.{i}.{rest}",
        index={"i": lambda i: (i + 1) // 2},
    ),
    Rule(r"dec\.cond\.(?P<rest>.+)", "decoder.cond_layer.{rest}"),
    Rule(r"emb_g\.weight", "speaker_embedding.weight"),
    *[Rule(rf"{src}\.(?P<rest>.+)", f"{dst}.{{rest}}") for src, dst in _ORGANS.items()],
]

#: native generator key -> original key (export)
EXPORT_RULES: list[Rule] = [
    Rule(r"flow\.flows\.(?P<i>\d+)\.(?P<rest>.+)", "flow.flows.{i}.{rest}", index={"i": lambda i: 2 * i}),
    Rule(r"duration_predictor\.(?P<f>flows|post_flows)\.0\.translation", "dp.{f}.0.m"),
    Rule(r"duration_predictor\.(?P<f>flows|post_flows)\.0\.log_scale", "dp.{f}.0.logs"),
    Rule(
        r"duration_predictor\.(?P<f>flows|post_flows)\.(?P<i>\d+)\.(?P<rest>.+)",
        "dp.{f}.{i}.{rest}",
        index={"i": lambda i: 2 * i - 1},
    ),
    Rule(r"decoder\.cond_layer\.(?P<rest>.+)", "dec.cond.{rest}"),
    Rule(r"speaker_embedding\.weight", "emb_g.weight"),
    *[Rule(rf"{dst}\.(?P<rest>.+)", f"{src}.{{rest}}") for src, dst in _ORGANS.items()],
]

DISCRIMINATOR_RULES: list[Rule] = [
    Rule(r"discriminators\.(?P<i>\d+)\.(?P<rest>.+)", "discriminator.nets.{i}.{rest}"),
]


def _get(d: Mapping[str, Any], key: str, default: Any) -> Any:
    value = d.get(key, default)
    return default if value is None and default is not None else value


def config_from_vits_json(hps: Mapping[str, Any], name: str = "vits") -> VITSConfig:
    """Build a :class:`VITSConfig` from an original VITS (or Piper training) config dict.

    Args:
        hps: the JSON with ``data`` and ``model`` sections (``configs/ljs_base.json``).
    """
    if "model" not in hps or "data" not in hps:
        raise ConversionError("an original VITS config needs 'data' and 'model' sections")
    m, d = hps["model"], hps["data"]
    hidden = int(_get(m, "hidden_channels", 192))
    n_speakers = int(_get(d, "n_speakers", 0))
    # SynthesizerTrn builds its conditioning layers whenever gin_channels != 0, speakers or not
    gin = int(_get(m, "gin_channels", 0))
    from ..text.symbols import vits_symbols

    symbols = vits_symbols()
    n_vocab = int(_get(m, "n_vocab", hps.get("n_vocab", len(symbols))))
    return VITSConfig(
        audio=AudioConfig(
            sample_rate=int(d["sampling_rate"]),
            n_fft=int(d["filter_length"]),
            win_length=int(d["win_length"]),
            hop_length=int(d["hop_length"]),
            n_mels=int(_get(d, "n_mel_channels", 80)),
            mel_fmin=float(_get(d, "mel_fmin", 0.0)),
            mel_fmax=None if d.get("mel_fmax") is None else float(d["mel_fmax"]),
        ),
        text=TextConfig(
            symbols=symbols if n_vocab == len(symbols) else (),
            style="vits",
            add_blank=bool(_get(d, "add_blank", True)),
            pad="_",
            blank="_",
            use_phonemes="english_cleaners2" in list(_get(d, "text_cleaners", [])),
            cleaner=(list(_get(d, "text_cleaners", ["english_cleaners2"])) or [None])[0],
        ),
        text_encoder=TextEncoderConfig(
            n_vocab=n_vocab,
            hidden_channels=hidden,
            filter_channels=int(_get(m, "filter_channels", 768)),
            n_heads=int(_get(m, "n_heads", 2)),
            n_layers=int(_get(m, "n_layers", 6)),
            kernel_size=int(_get(m, "kernel_size", 3)),
            p_dropout=float(_get(m, "p_dropout", 0.1)),
        ),
        duration_predictor=DurationPredictorConfig(
            stochastic=bool(_get(m, "use_sdp", True)), filter_channels=hidden, deterministic_style="vits"
        ),
        posterior_encoder=PosteriorEncoderConfig(hidden_channels=hidden),
        flow=FlowConfig(hidden_channels=hidden),
        decoder=DecoderConfig(
            resblock=str(_get(m, "resblock", "1")),
            resblock_kernel_sizes=tuple(_get(m, "resblock_kernel_sizes", (3, 7, 11))),
            resblock_dilation_sizes=tuple(tuple(x) for x in _get(m, "resblock_dilation_sizes", [[1, 3, 5]] * 3)),
            upsample_rates=tuple(_get(m, "upsample_rates", (8, 8, 2, 2))),
            upsample_initial_channel=int(_get(m, "upsample_initial_channel", 512)),
            upsample_kernel_sizes=tuple(_get(m, "upsample_kernel_sizes", (16, 16, 4, 4))),
        ),
        inter_channels=int(_get(m, "inter_channels", 192)),
        n_speakers=n_speakers,
        gin_channels=gin,
        segment_size=int(_get(hps.get("train", {}), "segment_size", 8192)) // int(d["hop_length"]),
        noise_scale=0.667,
        noise_scale_w=0.8,
        name=name,
    )


def vits_to_native(
    generator: Mapping[str, torch.Tensor],
    discriminator: Mapping[str, torch.Tensor] | None,
    report: ConversionReport,
    source: str = "checkpoint",
) -> dict[str, torch.Tensor]:
    """Rename original-layout state dicts (weight norm parametrized) to native keys."""
    out = apply_rules(legacy_weight_norm_to_parametrized(generator), GENERATOR_RULES, report, source)
    if discriminator is not None:
        out.update(apply_rules(legacy_weight_norm_to_parametrized(discriminator), DISCRIMINATOR_RULES, report, source))
    return out


def native_to_vits(state: Mapping[str, torch.Tensor], legacy_weight_norm: bool = True) -> tuple[dict, dict]:
    """Native state dict -> (original generator dict, original discriminator dict)."""
    report = ConversionReport("native")
    gen = {k: v for k, v in state.items() if not k.startswith("discriminator.")}
    disc = {k[len("discriminator.nets.") :]: v for k, v in state.items() if k.startswith("discriminator.nets.")}
    g = apply_rules(gen, EXPORT_RULES, report, "model")
    d = {f"discriminators.{k}": v for k, v in disc.items()}
    if legacy_weight_norm:
        g, d = parametrized_to_legacy_weight_norm(g), parametrized_to_legacy_weight_norm(d)
    return g, d


def build_and_load(
    config: VITSConfig,
    state: dict[str, torch.Tensor],
    report: ConversionReport,
    create: Any = None,
    source: str = "checkpoint",
):
    """Build a VITS for ``config`` and load ``state`` strictly (after :func:`reconcile`)."""
    from ..models.vits import VITS

    model = VITS(config, with_discriminator=True)
    expected = model.state_dict()
    fixed = reconcile(state, expected, report, create=create, source=source)
    merged = {**expected, **fixed}
    model.load_state_dict(merged, strict=True)
    return model.eval()


def _discriminator_created(key: str) -> str | None:
    if key.startswith("discriminator."):
        return "no discriminator in the source: created fresh (train it before adversarial fine-tuning)"
    return None


def load_vits(path: Path, config_path: str | Path | None = None, discriminator_path: str | Path | None = None):
    """Load an original VITS generator ``G_*.pth`` with its JSON config.

    The config is ``config_path`` or a ``config.json`` beside the file; the discriminator
    is ``discriminator_path`` or the ``D_<step>.pth`` beside a ``G_<step>.pth``.

    Returns:
        (VITS, ConversionReport)
    """
    from . import read_json
    from .safeload import safe_torch_load

    path = Path(path)
    cfg_file = Path(config_path) if config_path else path.parent / "config.json"
    if not cfg_file.is_file():
        raise ConversionError(f"{path}: an original VITS checkpoint needs its JSON config (looked for {cfg_file})")
    obj = safe_torch_load(path)
    gen = obj.get("model", obj) if isinstance(obj, dict) else obj
    d_file = Path(discriminator_path) if discriminator_path else None
    if d_file is None and path.name.startswith("G_"):
        candidate = path.with_name("D_" + path.name[2:])
        d_file = candidate if candidate.is_file() else None
    disc = None
    if d_file is not None:
        dobj = safe_torch_load(d_file)
        disc = dobj.get("model", dobj)
    report = ConversionReport("vits", str(path))
    hps = read_json(cfg_file)
    if "n_vocab" not in hps.get("model", {}) and "enc_p.emb.weight" in gen:
        hps = {**hps, "model": {**hps["model"], "n_vocab": int(gen["enc_p.emb.weight"].shape[0])}}
    config = config_from_vits_json(hps)
    state = vits_to_native(gen, disc, report, str(path))
    model = build_and_load(config, state, report, create=_discriminator_created, source=str(path))
    if disc is None:
        report.notes.append("generator-only checkpoint: the discriminator is freshly initialised")
    return model, report

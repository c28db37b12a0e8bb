"""Hugging Face ``transformers`` ``VitsModel`` folders (MMS-TTS and converted VITS) -> vits_surgery.

A folder holds ``config.json`` (``VitsConfig``), ``model.safetensors`` and, when the tokenizer
was saved, ``vocab.json`` + ``tokenizer_config.json``. Only ``safetensors`` is needed to read
it; ``transformers`` is never imported.

Layout differences from the native (original-VITS / Coqui) names, all handled by the rules below:

- attention projections are ``nn.Linear`` ``{q,k,v,out}_proj`` [C, C] where ours are kernel-1
  convolutions ``conv_{q,k,v,o}`` [C, C, 1] (transform ``linear_to_conv1x1``);
- ``nn.LayerNorm`` ``weight``/``bias`` where ours are ``gamma``/``beta`` (text encoder
  ``layer_norm`` / ``final_layer_norm``, the DDS norms, the deterministic predictor);
- renamed sub-modules: ``embed_tokens`` -> ``emb``, ``project`` -> ``proj``, ``conv_pre`` /
  ``conv_proj`` / ``conv_dds`` -> ``pre`` / ``proj`` / ``convs``, ``convs_dilated`` ->
  ``convs_sep``, ``convs_pointwise`` -> ``convs_1x1``, ``translate`` -> ``translation``,
  ``wavenet`` -> ``enc``, coupling ``conv_post`` -> ``post``, ``upsampler`` -> ``ups``,
  decoder ``cond`` -> ``cond_layer``, ``embed_speaker`` -> ``speaker_embedding``;
- flow and SDP flow indices already equal ours (HF inlines the flips, like Coqui);
- the WaveNet layers are weight-normed (``parametrizations.weight.original0/1``; hub files
  may carry the legacy ``weight_g``/``weight_v``, also accepted); the decoder is stored with
  its weight norm folded into plain ``weight`` tensors and is re-split into (g, v);
- HF ships no discriminator: one is created fresh and listed in the report (a
  ``finetune-hf-vits`` training checkpoint's ``discriminator.discriminators.*`` is mapped).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from .keymap import Rule, apply_rules, legacy_weight_norm_to_parametrized
from .report import ConversionError, ConversionReport

if TYPE_CHECKING:  # pragma: no cover
    from ..models.vits import VITS

__all__ = ["HF_RULES", "HF_DEFAULTS", "config_from_hf", "text_config_from_hf", "hf_to_native", "load_hf"]

_P = r"(?P<p>weight|bias)"
_TE = r"text_encoder\.encoder\.layers\.(?P<i>\d+)\."
_TE_DST = "text_encoder.encoder.{{kind}}.{i}."

# DDS conv stacks of the SDP: (HF container regex, native container) x (HF inner, native inner)
_DDS_CONTAINERS = (
    (r"(?P<post>(?:post_)?)conv_dds", "{post}convs"),
    (r"(?P<f>(?:post_)?flows\.\d+)\.conv_dds", "{f}.convs"),
)
_DDS_INNER = (
    (r"convs_dilated\.(?P<j>\d+)\." + _P, "convs_sep.{j}.{p}"),
    (r"convs_pointwise\.(?P<j>\d+)\." + _P, "convs_1x1.{j}.{p}"),
    (r"(?P<n>norms_[12])\.(?P<j>\d+)\.weight", "{n}.{j}.gamma"),
    (r"(?P<n>norms_[12])\.(?P<j>\d+)\.bias", "{n}.{j}.beta"),
)

_TEXT_ENCODER_RULES = [
    Rule(r"text_encoder\.embed_tokens\.weight", "text_encoder.emb.weight"),
    Rule(_TE + r"attention\.(?P<m>[qkv])_proj\.weight", "text_encoder.encoder.attn_layers.{i}.conv_{m}.weight",
         transform="linear_to_conv1x1"),
    Rule(_TE + r"attention\.(?P<m>[qkv])_proj\.bias", "text_encoder.encoder.attn_layers.{i}.conv_{m}.bias"),
    Rule(_TE + r"attention\.out_proj\.weight", "text_encoder.encoder.attn_layers.{i}.conv_o.weight",
         transform="linear_to_conv1x1"),
    Rule(_TE + r"attention\.out_proj\.bias", "text_encoder.encoder.attn_layers.{i}.conv_o.bias"),
    Rule(_TE + r"attention\.(?P<e>emb_rel_[kv])", "text_encoder.encoder.attn_layers.{i}.{e}"),
    Rule(_TE + r"layer_norm\.weight", "text_encoder.encoder.norm_layers_1.{i}.gamma"),
    Rule(_TE + r"layer_norm\.bias", "text_encoder.encoder.norm_layers_1.{i}.beta"),
    Rule(_TE + r"feed_forward\.(?P<c>conv_[12])\." + _P, "text_encoder.encoder.ffn_layers.{i}.{c}.{p}"),
    Rule(_TE + r"final_layer_norm\.weight", "text_encoder.encoder.norm_layers_2.{i}.gamma"),
    Rule(_TE + r"final_layer_norm\.bias", "text_encoder.encoder.norm_layers_2.{i}.beta"),
    Rule(r"text_encoder\.project\." + _P, "text_encoder.proj.{p}"),
]

_DP = r"duration_predictor\."
_DURATION_RULES = [
    *[
        Rule(_DP + c_src + r"\." + i_src, "duration_predictor." + c_dst + "." + i_dst)
        for c_src, c_dst in _DDS_CONTAINERS
        for i_src, i_dst in _DDS_INNER
    ],
    # SDP: conv_pre / conv_proj of the predictor, its posterior branch, and each ConvFlow
    Rule(_DP + r"(?P<post>(?:post_)?)conv_(?P<m>pre|proj)\." + _P, "duration_predictor.{post}{m}.{p}"),
    Rule(_DP + r"(?P<f>(?:post_)?flows\.\d+)\.conv_(?P<m>pre|proj)\." + _P, "duration_predictor.{f}.{m}.{p}"),
    Rule(_DP + r"(?P<f>(?:post_)?flows\.\d+)\.translate", "duration_predictor.{f}.translation"),
    Rule(_DP + r"(?P<f>(?:post_)?flows\.\d+)\.log_scale", "duration_predictor.{f}.log_scale"),
    # deterministic predictor (its ``proj`` keeps the name) and the speaker projection
    Rule(_DP + r"(?P<n>norm_[12])\.weight", "duration_predictor.{n}.gamma"),
    Rule(_DP + r"(?P<n>norm_[12])\.bias", "duration_predictor.{n}.beta"),
    Rule(_DP + r"(?P<m>conv_1|conv_2|proj|cond)\." + _P, "duration_predictor.{m}.{p}"),
]

_LATENT_RULES = [
    Rule(r"flow\.flows\.(?P<i>\d+)\.conv_(?P<m>pre|post)\." + _P, "flow.flows.{i}.{m}.{p}"),
    Rule(r"flow\.flows\.(?P<i>\d+)\.wavenet\.(?P<rest>.+)", "flow.flows.{i}.enc.{rest}"),
    Rule(r"posterior_encoder\.conv_(?P<m>pre|proj)\." + _P, "posterior_encoder.{m}.{p}"),
    Rule(r"posterior_encoder\.wavenet\.(?P<rest>.+)", "posterior_encoder.enc.{rest}"),
]

_DECODER_RULES = [
    Rule(r"decoder\.upsampler\.(?P<i>\d+)\.(?P<rest>.+)", "decoder.ups.{i}.{rest}"),
    Rule(r"decoder\.cond\.(?P<rest>.+)", "decoder.cond_layer.{rest}"),
    Rule(r"decoder\.(?P<rest>(?:conv_pre|conv_post|resblocks)\..+)", "decoder.{rest}"),
    Rule(r"embed_speaker\.weight", "speaker_embedding.weight"),
]

# finetune-hf-vits ``VitsModelForPreTraining`` (formats.md §9): the original D with
# ``conv_post`` renamed ``final_conv``. Transformers' own VitsModel has no discriminator.
_DISCRIMINATOR_RULES = [
    Rule(r"discriminator\.discriminators\.(?P<i>\d+)\.final_conv\.(?P<rest>.+)",
         "discriminator.nets.{i}.conv_post.{rest}"),
    Rule(r"discriminator\.discriminators\.(?P<i>\d+)\.(?P<rest>.+)", "discriminator.nets.{i}.{rest}"),
]

#: HF ``VitsModel`` key -> native key.
HF_RULES: list[Rule] = [
    *_TEXT_ENCODER_RULES, *_DURATION_RULES, *_LATENT_RULES, *_DECODER_RULES, *_DISCRIMINATOR_RULES,
]

#: ``VitsConfig`` defaults (transformers 5.24), used for fields a config.json omits.
HF_DEFAULTS: dict[str, Any] = {
    "vocab_size": 38, "hidden_size": 192, "num_hidden_layers": 6, "num_attention_heads": 2,
    "window_size": 4, "use_bias": True, "ffn_dim": 768, "ffn_kernel_size": 3, "flow_size": 192,
    "spectrogram_bins": 513, "hidden_act": "relu", "hidden_dropout": 0.1, "layer_norm_eps": 1e-5,
    "use_stochastic_duration_prediction": True, "num_speakers": 1, "speaker_embedding_size": 0,
    "upsample_initial_channel": 512, "upsample_rates": [8, 8, 2, 2], "upsample_kernel_sizes": [16, 16, 4, 4],
    "resblock_kernel_sizes": [3, 7, 11], "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "leaky_relu_slope": 0.1, "depth_separable_channels": 2, "depth_separable_num_layers": 3,
    "duration_predictor_flow_bins": 10, "duration_predictor_tail_bound": 5.0,
    "duration_predictor_kernel_size": 3, "duration_predictor_dropout": 0.5, "duration_predictor_num_flows": 4,
    "duration_predictor_filter_channels": 256, "prior_encoder_num_flows": 4,
    "prior_encoder_num_wavenet_layers": 4, "posterior_encoder_num_wavenet_layers": 16,
    "wavenet_kernel_size": 5, "wavenet_dilation_rate": 1, "wavenet_dropout": 0.0, "speaking_rate": 1.0,
    "noise_scale": 0.667, "noise_scale_duration": 0.8, "sampling_rate": 16000,
}

# Fields whose other values our model cannot represent: field -> (required value, why).
_FIXED = {
    "hidden_act": ("relu", "the text encoder's feed-forward uses ReLU"),
    "use_bias": (True, "the attention projections carry biases"),
    "depth_separable_channels": (2, "the SDP flows act on (duration, noise) pairs"),
    "layer_norm_eps": (1e-5, "the channel LayerNorm uses eps 1e-5"),
}


def _hf_value(hf: Mapping[str, Any], key: str) -> Any:
    value = hf.get(key)
    return HF_DEFAULTS[key] if value is None else value


def _check_supported(hf: Mapping[str, Any]) -> None:
    if hf.get("model_type", "vits") != "vits":
        raise ConversionError(f"config.json has model_type {hf.get('model_type')!r}; expected 'vits' (VitsModel)")
    for key, (required, why) in _FIXED.items():
        value = _hf_value(hf, key)
        same = math.isclose(value, required) if isinstance(required, float) else value == required
        if not same:
            raise ConversionError(f"HF config {key}={value!r} is not supported: vits_surgery needs {required!r} ({why})")


def _duration_config(hf: Mapping[str, Any]) -> DurationPredictorConfig:
    v = functools.partial(_hf_value, hf)
    return DurationPredictorConfig(
        stochastic=bool(v("use_stochastic_duration_prediction")), filter_channels=int(v("hidden_size")),
        kernel_size=int(v("duration_predictor_kernel_size")), p_dropout=float(v("duration_predictor_dropout")),
        n_flows=int(v("duration_predictor_num_flows")), num_bins=int(v("duration_predictor_flow_bins")),
        tail_bound=float(v("duration_predictor_tail_bound")), dds_layers=int(v("depth_separable_num_layers")),
        deterministic_filter_channels=int(v("duration_predictor_filter_channels")), deterministic_style="vits",
    )


def _decoder_config(hf: Mapping[str, Any]) -> DecoderConfig:
    v = functools.partial(_hf_value, hf)
    return DecoderConfig(
        resblock="1",  # HF implements only ResBlock1
        resblock_kernel_sizes=tuple(int(k) for k in v("resblock_kernel_sizes")),
        resblock_dilation_sizes=tuple(tuple(int(d) for d in ds) for ds in v("resblock_dilation_sizes")),
        upsample_rates=tuple(int(r) for r in v("upsample_rates")),
        upsample_initial_channel=int(v("upsample_initial_channel")),
        upsample_kernel_sizes=tuple(int(k) for k in v("upsample_kernel_sizes")),
        leaky_slope=float(v("leaky_relu_slope")),
    )


def config_from_hf(hf: Mapping[str, Any], text: TextConfig | None = None, name: str = "hf") -> VITSConfig:
    """Build a :class:`VITSConfig` from an HF ``VitsConfig`` dict (``config.json``).

    Args:
        hf: the parsed ``config.json``; missing fields take :data:`HF_DEFAULTS`.
        text: text front end (default: ``hf`` style with no symbol table).
        name: informational config name.

    Raises:
        ConversionError: a field our model cannot represent (named with its value).
    """
    _check_supported(hf)
    v = functools.partial(_hf_value, hf)
    hidden, bins = int(v("hidden_size")), int(v("spectrogram_bins"))
    n_fft = 2 * (bins - 1)
    rates = tuple(int(r) for r in v("upsample_rates"))
    n_speakers = int(v("num_speakers"))
    wavenet = {"kernel_size": int(v("wavenet_kernel_size")), "dilation_rate": int(v("wavenet_dilation_rate")),
               "p_dropout": float(v("wavenet_dropout")), "hidden_channels": hidden}
    return VITSConfig(
        audio=AudioConfig(sample_rate=int(v("sampling_rate")), n_fft=n_fft, win_length=n_fft,
                          hop_length=math.prod(rates)),
        text=text or TextConfig(style="hf", pad=None, blank=None, cleaner=None),
        text_encoder=TextEncoderConfig(
            n_vocab=int(v("vocab_size")), hidden_channels=hidden, filter_channels=int(v("ffn_dim")),
            n_heads=int(v("num_attention_heads")), n_layers=int(v("num_hidden_layers")),
            kernel_size=int(v("ffn_kernel_size")), p_dropout=float(v("hidden_dropout")),
            window_size=int(v("window_size")),
        ),
        duration_predictor=_duration_config(hf),
        posterior_encoder=PosteriorEncoderConfig(n_layers=int(v("posterior_encoder_num_wavenet_layers")), **wavenet),
        flow=FlowConfig(n_flows=int(v("prior_encoder_num_flows")),
                        n_layers=int(v("prior_encoder_num_wavenet_layers")), **wavenet),
        decoder=_decoder_config(hf),
        inter_channels=int(v("flow_size")),
        # HF builds embed_speaker only for num_speakers > 1, but the conditioning layers
        # whenever speaker_embedding_size > 0 (then unused for one speaker, as here)
        n_speakers=n_speakers if n_speakers > 1 else 0,
        gin_channels=int(v("speaker_embedding_size")),
        noise_scale=float(v("noise_scale")),
        noise_scale_w=float(v("noise_scale_duration")),
        length_scale=1.0 / float(v("speaking_rate")),
        name=name,
    )


def text_config_from_hf(folder: Path, vocab_size: int, report: ConversionReport) -> TextConfig:
    """Text front end of an HF folder from ``vocab.json`` (+ ``tokenizer_config.json``).

    ``VitsTokenizer`` interleaves id 0 (a real symbol in MMS vocabularies) when ``add_blank``;
    ids at or past the embedding size (``<pad>`` in MMS) are not model symbols and are left out.
    """
    from . import read_json

    vocab_file = folder / "vocab.json"
    if not vocab_file.is_file():
        report.notes.append("no vocab.json in the folder: the text front end is unknown, pass token ids")
        return TextConfig(style="hf", pad=None, blank=None, cleaner=None)
    vocab = read_json(vocab_file)
    tok_file = folder / "tokenizer_config.json"
    tok = read_json(tok_file) if tok_file.is_file() else {}
    by_id = {int(i): s for s, i in vocab.items() if 0 <= int(i) < vocab_size}
    symbols = tuple(by_id.get(i, "") for i in range(max(by_id, default=-1) + 1))
    gaps = [i for i, s in enumerate(symbols) if s == ""]
    if gaps:
        report.notes.append(f"vocab.json has no symbol for ids {gaps[:10]}: they decode to ''")
    if tok.get("is_uroman"):
        report.notes.append("this vocabulary expects uroman-romanised input (not done by vits_surgery)")
    first = symbols[0] if symbols else None
    return TextConfig(
        symbols=symbols, style="hf", add_blank=bool(tok.get("add_blank", True)), pad=first, blank=first,
        use_phonemes=bool(tok.get("phonemize", False)), phoneme_language=str(tok.get("language") or "en-us"),
        # VitsTokenizer's normalize lower-cases; basic_cleaners also collapses runs of spaces
        cleaner="basic_cleaners" if tok.get("normalize", True) else None,
    )


def hf_to_native(state: Mapping[str, torch.Tensor], report: ConversionReport, source: str = "model") -> dict:
    """Rename an HF ``VitsModel`` state dict to native keys (weight norm as parametrizations)."""
    return apply_rules(legacy_weight_norm_to_parametrized(state), HF_RULES, report, source)


def _created(key: str) -> str | None:
    if key.startswith("discriminator."):
        return "HF VitsModel ships no discriminator: created fresh (train it before adversarial fine-tuning)"
    return None


def _resolve(path: Path) -> tuple[Path, Path]:
    path = Path(path)
    weights = path / "model.safetensors" if path.is_dir() else path
    folder = weights.parent
    if not weights.is_file():
        raise ConversionError(f"{path}: no model.safetensors (an HF VitsModel folder needs one)")
    if not (folder / "config.json").is_file():
        raise ConversionError(f"{folder}: no config.json beside {weights.name} (an HF VitsModel folder needs one)")
    return weights, folder


def load_hf(path: Path, **options: Any) -> tuple[VITS, ConversionReport]:
    """Load an HF ``VitsModel`` folder (or its ``model.safetensors``) as a native VITS.

    Args:
        path: the folder holding ``config.json`` + ``model.safetensors`` (+ ``vocab.json``).
        **options: none are accepted (the folder is self-describing); any given is an error.

    Returns:
        (VITS, ConversionReport); the report lists the fresh discriminator.

    Raises:
        ConversionError: unsupported config values, unknown / missing / misshaped keys.
    """
    from safetensors.torch import load_file

    from . import read_json
    from .vits import build_and_load

    if options:
        raise ConversionError(f"HF VitsModel folders take no loading options (got {', '.join(sorted(options))})")
    weights, folder = _resolve(path)
    report = ConversionReport("hf", str(folder))
    hf = read_json(folder / "config.json")
    try:
        state = load_file(str(weights))
    except Exception as err:  # noqa: BLE001 - safetensors raises several error types
        raise ConversionError(f"cannot read {weights}: {err}") from None
    text = text_config_from_hf(folder, int(_hf_value(hf, "vocab_size")), report)
    config = config_from_hf(hf, text=text, name=f"hf:{folder.name}")
    native = hf_to_native(state, report, str(weights))
    model = build_and_load(config, native, report, create=_created, source=str(weights))
    folded = [k for k in state if k.startswith(("decoder.upsampler.", "decoder.resblocks.")) and k.endswith(".weight")]
    if folded:
        report.notes.append(f"{len(folded)} decoder weights were stored with weight norm folded: re-split into (g, v)")
    return model, report

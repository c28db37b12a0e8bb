"""Export a :class:`~vits_surgery.models.vits.VITS` as a Piper voice: ``<name>.onnx`` + ``<name>.onnx.json``.

The graph has Piper's interface, so Piper's runtime (``piper.PiperVoice``) loads it like a
voice it trained:

- inputs ``input`` (int64 ``[B, T]`` token ids), ``input_lengths`` (int64 ``[B]``),
  ``scales`` (float32 ``[3]``: ``noise_scale, length_scale, noise_w``) and, for
  multi-speaker models only, ``sid`` (int64 ``[B]``);
- output ``output``: float32 ``[B, 1, 1, N]`` waveform in [-1, 1] (Piper's layout), zero past
  each item's length; ``T`` and ``N`` (and ``B``) are dynamic axes.

Inside the graph the noise is drawn with ``RandomNormalLike`` as Piper voices do; with
``scales = [0, length_scale, 0]`` the output is deterministic and equals
:meth:`VITS.infer` with ``noise_scale=0, noise_scale_w=0``. Weight norm is folded and LoRA
adapters merged in a copy of the organs: the caller's model is not changed.

Node and initializer names follow the original VITS / Piper module names (``enc_p``, ``dp``,
``flow.flows.{0,2,4,6}``, ``dec``, ``emb_g``), so the file imports back through
:func:`vits_surgery.load` like any Piper voice. The voice JSON also carries the model's full
config under ``"vits_surgery"`` (Piper ignores unknown keys), which the importer uses to
rebuild the exact architecture and text front end.

Exporter: with torch 2.13 the TorchScript-based exporter works
(``torch.onnx.export(..., dynamo=False)``, opset 15, as Piper's own ``export_onnx``; torch
warns that it is deprecated). The dynamo exporter, torch's default since 2.9, stops with
``No module named 'onnxscript'``: that package is not part of the ``onnx`` extra. The
TorchScript exporter also names nodes by module scope (``/enc_p/encoder/...``), the form
Piper graphs have and :mod:`~vits_surgery.convert.onnx_graph` reads.

Text front end: Piper turns text into ids with ``^ _ (ids(p) _)* $`` through the voice's
``phoneme_id_map``. For models with Piper's text front end the map is the model's own (or
Piper's default). For other models the map is built from the symbol table so that Piper
assembles exactly the model's sequence layout (``_`` = the interleaved blank, ``^``/``$`` =
BOS/EOS or no id); what cannot be reproduced is the text normalisation: Piper phonemizes with
its own espeak-ng (``phoneme_type="espeak"``) or feeds raw NFD codepoints without the model's
cleaner (``phoneme_type="text"``). Character models are therefore refused unless
``phoneme_type="text"`` is asked for explicitly.

Example:
    >>> model = vits_surgery.load(find_joe_voice()[0])
    >>> export_onnx(model, "joe_again.onnx")   # also writes joe_again.onnx.json
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._files import atomic_write, atomic_write_text
from .onnx_layout import OnnxExportError, to_piper_layout

if TYPE_CHECKING:  # pragma: no cover
    from ..config import TextConfig, VITSConfig
    from ..models.vits import VITS

__all__ = ["export_onnx", "piper_voice_dict", "OnnxExportError", "OPSET", "PIPER_VERSION"]

logger = logging.getLogger(__name__)

OPSET = 15
"""ONNX opset of the exported graph (Piper voices use 15)."""

PIPER_VERSION = "1.0.0"
"""``piper_version`` written to the voice JSON: the voice format of released Piper voices."""

_INSTALL_HINT = "pip install 'vits-surgery[onnx]'"
_PIPER_BOS, _PIPER_PAD, _PIPER_EOS = "^", "_", "$"
_PHONEME_TYPES = ("espeak", "text")


# ----------------------------------------------------------------------------- the graph
class _PiperGraph(nn.Module):
    """Inference of a VITS with Piper's inputs; holds folded copies of the inference organs."""

    def __init__(self, model: VITS) -> None:
        super().__init__()
        self.text_encoder = model.text_encoder
        self.duration_predictor = model.duration_predictor
        self.flow = model.flow
        self.decoder = model.decoder
        self.speaker_embedding = model.speaker_embedding
        self.dp_uses_speaker = model.config.duration_predictor.condition_on_speaker
        self.stochastic = model.config.duration_predictor.stochastic
        self.max_frames = model.max_inference_frames
        self._audio_length = model.audio_length

    def forward(
        self,
        tokens: torch.Tensor,
        lengths: torch.Tensor,
        scales: torch.Tensor,
        sid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Same arithmetic as :meth:`VITS.infer`, with traceable masks and in-graph noise.

        Args:
            tokens: [B, T_x] int64; lengths: [B] int64; scales: [3] float32; sid: [B] int64.

        Returns:
            [B, 1, 1, N] waveform, zero past each item's samples.
        """
        noise_scale, length_scale, noise_w = scales[0], scales[1], scales[2]
        g = None if sid is None else self.speaker_embedding(sid).unsqueeze(-1)  # [B, gin, 1]
        enc = self.text_encoder(tokens, lengths)
        dp_noise = torch.randn_like(enc.mask.expand(-1, 2, -1))  # [B, 2, T_x]
        g_dp = g if self.dp_uses_speaker else None
        if self.stochastic:  # forward is infer in this copy (see _inference_copy)
            logw = self.duration_predictor(enc.hidden, enc.mask, g=g_dp, noise_scale=noise_w, noise=dp_noise)
        else:  # the deterministic predictor's infer is its forward; it takes no noise
            logw = self.duration_predictor(enc.hidden, enc.mask, g_dp)  # [B, 1, T_x]
        w = torch.exp(logw) * enc.mask * length_scale
        w_ceil = torch.ceil(w).squeeze(1)  # [B, T_x]
        y_lengths = torch.clamp_min(w_ceil.sum(dim=1), 1).long()  # [B]
        frames = torch.arange(y_lengths.max(), device=tokens.device)  # [T_y]
        y_mask = (frames.unsqueeze(0) < y_lengths.unsqueeze(1)).unsqueeze(1).to(enc.m_p.dtype)  # [B, 1, T_y]
        from ..models.commons import generate_path

        path = generate_path(w_ceil, enc.mask.transpose(1, 2) * y_mask)  # [B, T_x, T_y]
        m_e, logs_e = torch.matmul(enc.m_p, path), torch.matmul(enc.logs_p, path)  # [B, C, T_y]
        z_p = m_e + torch.randn_like(m_e) * torch.exp(logs_e) * noise_scale
        z = self.flow(z_p, y_mask, g=g, reverse=True).z * y_mask
        if self.max_frames is not None:  # Coqui's max_inference_len cuts after the flow, as infer does
            z, y_lengths = z[:, :, : self.max_frames], y_lengths.clamp(max=self.max_frames)
        audio = self.decoder(z, g=g)  # [B, 1, N]
        samples = torch.arange(audio.shape[-1], device=tokens.device)  # [N]
        keep = samples.unsqueeze(0) < self._audio_length(y_lengths).unsqueeze(1)  # [B, N]
        return (audio * keep.unsqueeze(1).to(audio.dtype)).unsqueeze(1)  # [B, 1, 1, N]


def _inference_copy(model: VITS) -> VITS:
    """A CPU float32 copy of the inference organs with LoRA merged and weight norm folded."""
    from ..models.commons import own_weight_norm_classes, remove_weight_norms

    shell = copy.copy(model)  # shares nothing mutable below: every organ is deep-copied
    shell._modules = {}
    for name in ("text_encoder", "duration_predictor", "flow", "decoder", "speaker_embedding"):
        organ = getattr(model, name)
        shell._modules[name] = None if organ is None else copy.deepcopy(organ).float().cpu()
    shell._modules["posterior_encoder"] = shell._modules["discriminator"] = None
    from ..models.lora import merge_adapters

    merge_adapters(shell, "the exported weights")
    own_weight_norm_classes(shell)  # the organs are deep copies: keep the caller's layers intact
    folded = remove_weight_norms(shell)
    logger.debug("folded weight norm of %d layers", folded)
    if model.config.duration_predictor.stochastic:
        # run the SDP's inference through __call__, so the traced nodes carry its module scope
        shell.duration_predictor.forward = shell.duration_predictor.infer
    for p in shell.parameters():
        p.requires_grad_(False)
    return shell.eval()


def _check_exportable(model: VITS) -> None:
    cfg = model.config
    if cfg.text_encoder.language_embedding_channels:
        raise OnnxExportError(
            "this model has language embeddings (text_encoder.language_embedding_channels="
            f"{cfg.text_encoder.language_embedding_channels}), and a Piper voice graph has no language input; "
            "export a single-language model"
        )
    if cfg.n_speakers > 0 and model.speaker_embedding is None:  # pragma: no cover - VITS builds it
        raise OnnxExportError("the config has speakers but the model has no speaker_embedding")


# ----------------------------------------------------------------------------- voice JSON
def _is_phoneme_model(text: TextConfig) -> bool:
    from ..text.cleaners import PHONEMIZING_CLEANERS

    return text.style == "piper" or text.use_phonemes or text.cleaner in PHONEMIZING_CLEANERS


def _piper_style_map(text: TextConfig) -> dict[str, list[int]]:
    from ..text.symbols import piper_default_phoneme_id_map

    pairs = dict(text.phoneme_id_map) if text.phoneme_id_map else piper_default_phoneme_id_map()
    out = {s: list(ids) for s, ids in pairs.items()}
    for role, symbol, default in (
        ("bos", text.bos, _PIPER_BOS),
        ("pad", text.pad, _PIPER_PAD),
        ("eos", text.eos, _PIPER_EOS),
    ):
        if (symbol or default) not in out:
            raise OnnxExportError(f"the model's phoneme_id_map has no {role} symbol {symbol or default!r}")
        out[default] = list(out[symbol or default])
    if not text.add_blank:
        out[_PIPER_PAD] = []
    return out


def _symbol_table_map(text: TextConfig) -> dict[str, list[int]]:
    """Piper map reproducing the model's sequence layout: ``_`` blank, ``^``/``$`` BOS/EOS (or none)."""
    from ..text.symbols import symbol_to_id
    from ..text.tokenizer import Tokenizer

    if not text.symbols:
        raise OnnxExportError(
            "the model has no symbol table (text.symbols is empty), so no phoneme_id_map can be written; "
            "pass voice_config=False to write the graph only"
        )
    table = symbol_to_id(text.symbols)
    bos_eos = []
    for role, symbol in (("bos", text.bos), ("eos", text.eos)):
        if text.use_bos_eos and symbol not in table:
            raise OnnxExportError(f"text.{role} is {symbol!r}, which is not in the model's symbol table")
        bos_eos.append([table[symbol]] if text.use_bos_eos else [])
    blank = [Tokenizer(text).blank_id] if text.add_blank else []
    out = {_PIPER_BOS: bos_eos[0], _PIPER_PAD: blank, _PIPER_EOS: bos_eos[1]}
    for symbol, i in table.items():
        if len(symbol) != 1:  # "<PAD>", "<BLNK>": never a Piper phoneme
            continue
        if symbol in out:
            if symbol == text.pad or out[symbol] == [i]:
                continue
            raise OnnxExportError(
                f"the model's symbol {symbol!r} (id {i}) collides with Piper's reserved marker {symbol!r} "
                "(^ BOS, _ pad, $ EOS); such a voice cannot be expressed as a Piper phoneme_id_map"
            )
        out[symbol] = [i]
    return out


def _text_section(text: TextConfig, phoneme_type: str | None) -> tuple[str, dict[str, list[int]]]:
    phonemes = _is_phoneme_model(text)
    if phoneme_type is None:
        if not phonemes:
            raise OnnxExportError(
                "this model reads characters (text.use_phonemes is False), and Piper voices read espeak-ng "
                "phonemes; pass phoneme_type='text' (--phoneme-type text) to write a character voice (Piper then feeds the raw "
                "text's NFD codepoints, without the model's cleaner), or voice_config=False for the graph only"
            )
        phoneme_type = "espeak"
    if phoneme_type not in _PHONEME_TYPES:
        raise OnnxExportError(
            f"phoneme_type must be one of {', '.join(_PHONEME_TYPES)}; got {phoneme_type!r}"
        )
    if phoneme_type == "espeak" and not phonemes:
        raise OnnxExportError(
            "phoneme_type='espeak' needs a phoneme model, but this model reads characters "
            "(text.use_phonemes is False); use phoneme_type='text'"
        )
    return phoneme_type, _piper_style_map(text) if text.style == "piper" else _symbol_table_map(text)


def _speaker_map(n_speakers: int, names: Sequence[str] | Mapping[str, int] | None) -> dict[str, int]:
    if names is None:
        return {}
    out = dict(names) if isinstance(names, Mapping) else {str(n): i for i, n in enumerate(names)}
    bad = {
        k: v
        for k, v in out.items()
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n_speakers
    }
    if not n_speakers or bad:
        raise OnnxExportError(
            f"speaker_names must give ids in 0..{n_speakers - 1} of this {n_speakers}-speaker model; got {bad or out}"
        )
    return out


def piper_voice_dict(
    config: VITSConfig,
    phoneme_type: str | None = None,
    speaker_names: Sequence[str] | Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The Piper voice JSON (``<voice>.onnx.json``) of a model config.

    Args:
        config: the model's config.
        phoneme_type: ``"espeak"`` or ``"text"``; default ``"espeak"`` for phoneme models and
            a refusal for character models (see the module docstring).
        speaker_names: names of a multi-speaker model's speakers (a list in id order or a
            name -> id mapping), written as ``speaker_id_map``.

    Returns:
        A JSON-ready dict in Piper's schema, plus a ``"vits_surgery"`` section with the full
        config (``{"version", "config"}``).

    Raises:
        OnnxExportError: the text front end cannot be written as a Piper map (says why).
    """
    phoneme_type, id_map = _text_section(config.text, phoneme_type)
    language = re.fullmatch(r"piper:([a-z]{2,3}_[A-Z]{2})", config.name)
    voice: dict[str, Any] = {
        "dataset": config.name,
        "audio": {"sample_rate": config.audio.sample_rate},
        "espeak": {"voice": config.text.phoneme_language},
        "inference": {
            "noise_scale": config.noise_scale,
            "length_scale": config.length_scale,
            "noise_w": config.noise_scale_w,
        },
        "phoneme_type": phoneme_type,
        "phoneme_map": {},
        "phoneme_id_map": id_map,
        "num_symbols": config.text_encoder.n_vocab,
        "num_speakers": max(1, config.n_speakers),
        "speaker_id_map": _speaker_map(config.n_speakers, speaker_names),
        "hop_length": config.audio.hop_length,
        "piper_version": PIPER_VERSION,
        "vits_surgery": {"version": _version(), "config": config.to_dict()},
    }
    if language:
        voice["language"] = {"code": language.group(1)}
    return voice


# ----------------------------------------------------------------------------- export
def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError as err:
        raise ImportError(f"exporting to ONNX needs the 'onnx' package: {_INSTALL_HINT}") from err
    return onnx


def _example_inputs(model: VITS, tokens: int = 8) -> tuple[torch.Tensor, ...]:
    n_vocab = model.config.text_encoder.n_vocab
    ids = torch.tensor([[1 + i % max(1, n_vocab - 1) for i in range(tokens)]], dtype=torch.long)
    args: tuple[torch.Tensor, ...] = (ids, torch.tensor([tokens]), torch.tensor([0.667, 1.0, 0.8]))
    if model.config.n_speakers > 0:
        args += (torch.tensor([0]),)
    return args


def _version() -> str:
    from .. import __version__

    return __version__


def _trace(graph: _PiperGraph, args: tuple[torch.Tensor, ...], out: str) -> None:
    """``torch.onnx.export`` (TorchScript exporter) with Piper's names and dynamic axes."""
    names = ["input", "input_lengths", "scales", "sid"][: len(args)]
    axes = {name: {0: "batch_size"} for name in names if name != "scales"}
    axes["input"][1] = "phonemes"
    axes["output"] = {0: "batch_size", 3: "time"}
    with torch.no_grad(), warnings.catch_warnings():
        # shape checks become trace constants (intended: B, T and N stay dynamic in the graph)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        torch.onnx.export(
            graph,
            args,
            out,
            input_names=names,
            output_names=["output"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )


def export_onnx(
    model: VITS,
    path: str | os.PathLike[str],
    *,
    phoneme_type: str | None = None,
    speaker_names: Sequence[str] | Mapping[str, int] | None = None,
    voice_config: bool = True,
) -> Path:
    """Write ``model`` as a Piper voice: ``path`` (ONNX graph) and ``<path>.json``.

    Args:
        model: any :class:`VITS` (imported, trained, transplanted; LoRA adapters are merged
            into the exported weights). It is not modified.
        path: the ``.onnx`` file to write; its folder is created.
        phoneme_type: Piper's text front end for the voice JSON, ``"espeak"`` or ``"text"``
            (default: ``"espeak"`` for phoneme models; character models need ``"text"``).
        speaker_names: speaker names of a multi-speaker model (``speaker_id_map``).
        voice_config: also write ``<path>.json``; False writes the graph only.

    Returns:
        ``path``.

    Raises:
        ImportError: the ``onnx`` package is missing (``pip install 'vits-surgery[onnx]'``).
        OnnxExportError: the model cannot be a Piper voice (language embeddings), or its text
            front end cannot be written as a Piper map (the message says what to pass).
    """
    onnx = _require_onnx()
    _check_exportable(model)
    path = Path(path)
    voice = piper_voice_dict(model.config, phoneme_type, speaker_names) if voice_config else None
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = _PiperGraph(_inference_copy(model)).eval()

    def write(tmp: str) -> None:
        _trace(graph, _example_inputs(model), tmp)
        proto = onnx.load(tmp)
        renamed = to_piper_layout(proto, list(graph.state_dict()), graph.text_encoder)
        proto.producer_name, proto.producer_version = "vits_surgery", _version()
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
        logger.info("exported %s: %d nodes, %d named initializers", path, len(proto.graph.node), renamed)

    atomic_write(path, write, by_path=True)
    if voice is not None:
        text = json.dumps(voice, ensure_ascii=False, indent=2) + "\n"
        atomic_write_text(path.with_name(path.name + ".json"), text)
    return path

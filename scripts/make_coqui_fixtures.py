"""Build golden fixtures from Coqui TTS's VITS for converter and parity tests.

Runs only in an environment that has ``coqui-tts`` (0.28.0 was used); the library never imports it::

    COQUI_VENV/bin/python scripts/make_coqui_fixtures.py --out tests/fixtures/coqui

For every spec in ``SPECS`` it builds a small Coqui ``Vits`` model, fills every parameter with seeded
random values, and writes ``<out>/<name>/``:

* ``model.pth`` -- ``{"config", "model", "optimizer", "scheduler", "scaler", "step", "epoch", "date"}``
  written by Coqui's own ``trainer.io.save_model``;
* ``config.json`` -- ``Coqpit.save_json`` of the model's config;
* ``golden.pt`` -- flat ``dict[str, Tensor | int | float]`` (``torch.load(weights_only=True)``);
* ``meta.json`` -- the strings (texts, decoded tokens, speaker names) and how each golden was made.

Large weight tensors are stored *compactly*: each one is a strided view (``as_strided``) into its own
short random vector, so a few hundred bytes per row stand for a full matrix. The values are ordinary
float32 numbers; only the memory layout differs from a trainer-written file (call ``.contiguous()``
where a contiguous tensor is needed). Without this the hard-coded 192-channel stochastic duration
predictor and the fixed-size discriminator would make every fixture 5-190 MB.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

try:
    import TTS
    from scipy.io import wavfile
    from scipy.signal import resample_poly
    from trainer.io import save_model
    from TTS.config.shared_configs import BaseAudioConfig
    from TTS.tts.configs.shared_configs import CharactersConfig
    from TTS.tts.configs.vits_config import VitsArgs, VitsConfig
    from TTS.tts.layers.losses import VitsGeneratorLoss
    from TTS.tts.models.vits import Vits
    from TTS.tts.utils.helpers import segment
    from TTS.tts.utils.text import characters as coqui_chars
    from TTS.utils.audio import torch_transforms
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise SystemExit(f"This script needs coqui-tts (tested with 0.28.0); import failed: {exc}") from exc

LOG = logging.getLogger("make_coqui_fixtures")

SENTENCE = "Dr. Smith's dog, aged 3, barked!"
BATCH_SENTENCES = ("Good night.", "Hi there, Bob!")
TRAIN_TEXTS = ("Hello world.", "Good morning!")
TRAIN_SECONDS = (0.6, 0.45)
FORCED_DURATION_PATTERN = (0.5, 1.0, 1.7, 2.2, 0.2, 3.0)
COMPACT_MIN_NUMEL = 512
LOGW_MEAN, LOGW_STD = 0.0, 0.6  # calibrated log-duration statistics on SENTENCE (1-6 frames per token)
DECODER_PRE_TANH_STD = 0.4
COMPACT_STRIDES = (5, 3, 2, 1)  # strides of the non-singleton dims of a compact view (innermost = 1)
CHECKPOINT_STEP = 1000
CHECKPOINT_EPOCH = 1
SPEAKER_NAMES = ("p225", "p226", "p227", "p228")


@dataclass(frozen=True)
class FixtureSpec:
    """One fixture: how to build the config and what to do with the checkpoint."""

    name: str
    seed: int
    build_config: Callable[[], VitsConfig]
    legacy_weight_norm: bool = False
    drop_discriminator: bool = False
    infer_speaker: int | None = None
    batch_speakers: tuple[int, ...] | None = None
    train_speakers: tuple[int, ...] | None = None
    golden_prefixes: tuple[str, ...] = ("infer/", "forced/", "batch/", "train/", "organ/")
    notes: list[str] = field(default_factory=list)


def _audio(sample_rate: int, fft: int, win: int, hop: int, mels: int, fmin: float, fmax: float | None) -> BaseAudioConfig:
    return BaseAudioConfig(
        sample_rate=sample_rate, fft_size=fft, win_length=win, hop_length=hop,
        num_mels=mels, mel_fmin=fmin, mel_fmax=fmax,
    )


def config_graphemes_sdp() -> VitsConfig:
    """Default grapheme vocabulary, stochastic duration predictor, ResBlock 1, 22050 Hz."""
    args = VitsArgs(
        hidden_channels=32, hidden_channels_ffn_text_encoder=64, num_heads_text_encoder=2,
        num_layers_text_encoder=2, kernel_size_text_encoder=3, num_layers_posterior_encoder=4,
        num_layers_flow=2, upsample_initial_channel_decoder=64, use_sdp=True,
    )
    return VitsConfig(model_args=args, audio=_audio(22050, 1024, 1024, 256, 80, 0.0, None))


def config_multispeaker_dp_rb2() -> VitsConfig:
    """4 speakers, deterministic DP, ResBlock 2, upsample [8, 8, 4], 16 kHz, n_fft 512."""
    args = VitsArgs(
        out_channels=257, hidden_channels=48, hidden_channels_ffn_text_encoder=96, num_heads_text_encoder=3,
        num_layers_text_encoder=3, kernel_size_text_encoder=5, num_layers_posterior_encoder=3,
        dilation_rate_posterior_encoder=2, kernel_size_flow=3, num_layers_flow=2, spec_segment_size=24,
        use_sdp=False, length_scale=1.15, resblock_type_decoder="2",
        resblock_kernel_sizes_decoder=[3, 5, 7], resblock_dilation_sizes_decoder=[[1, 2], [2, 6], [3, 12]],
        upsample_rates_decoder=[8, 8, 4], upsample_kernel_sizes_decoder=[16, 16, 8],
        upsample_initial_channel_decoder=64, periods_multi_period_discriminator=[2, 3, 5],
        use_speaker_embedding=True, speaker_embedding_channels=24,
    )
    return VitsConfig(
        model_args=args, audio=_audio(16000, 512, 512, 256, 64, 0.0, 8000.0),
        use_speaker_embedding=True, speakers=list(SPEAKER_NAMES), kl_loss_alpha=1.5, mel_loss_alpha=40.0,
    )


def config_legacy_genonly() -> VitsConfig:
    """Same architecture as graphemes_sdp, saved without discriminator (init_discriminator=False)."""
    config = config_graphemes_sdp()
    config.model_args.init_discriminator = False
    return config


def config_phonemes() -> VitsConfig:
    """espeak en-us phonemes, english_cleaners, VitsCharacters vocabulary, blanks, max_inference_len."""
    chars = CharactersConfig(
        characters_class="TTS.tts.models.vits.VitsCharacters", pad=coqui_chars._pad, eos=None, bos=None,
        blank=coqui_chars._blank, characters=coqui_chars._characters, punctuations=coqui_chars._punctuations,
        phonemes=coqui_chars._phonemes, is_unique=False, is_sorted=True,
    )
    args = VitsArgs(
        hidden_channels=64, hidden_channels_ffn_text_encoder=128, num_heads_text_encoder=2,
        num_layers_text_encoder=2, num_layers_posterior_encoder=4, num_layers_flow=3,
        upsample_initial_channel_decoder=64, use_sdp=True, max_inference_len=100, spec_segment_size=16,
        init_discriminator=False,
    )
    return VitsConfig(
        model_args=args, audio=_audio(22050, 1024, 800, 256, 80, 0.0, 8000.0), use_phonemes=True,
        phoneme_language="en-us", text_cleaner="english_cleaners", characters=chars, add_blank=True,
    )


SPECS = (
    FixtureSpec("graphemes_sdp", 1001, config_graphemes_sdp),
    FixtureSpec(
        "multispeaker_dp_rb2", 1002, config_multispeaker_dp_rb2,
        infer_speaker=2, batch_speakers=(1, 3), train_speakers=(0, 3),
    ),
    FixtureSpec(
        "legacy_weightnorm_genonly", 1001, config_legacy_genonly, legacy_weight_norm=True,
        drop_discriminator=True, golden_prefixes=("infer/",),
        notes=[
            "same seed as graphemes_sdp: every generator tensor equals graphemes_sdp's, so all "
            "graphemes_sdp goldens apply; golden.pt holds only the infer/ goldens",
            "state dict keys rewritten from parametrizations.weight.original0/1 to weight_g/weight_v",
        ],
    ),
    FixtureSpec("phonemes", 1004, config_phonemes),
)


# ---------------------------------------------------------------------------------------------------
# Random weights
# ---------------------------------------------------------------------------------------------------


def _compact_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Strides of a compact view: the non-singleton dims get the tail of ``COMPACT_STRIDES``."""
    big = [d for d, n in enumerate(shape) if n > 1]
    if len(big) > len(COMPACT_STRIDES):
        raise ValueError(f"Cannot build a compact view for shape {shape}: more than 4 non-singleton dims.")
    strides = [1] * len(shape)
    for d, s in zip(big, COMPACT_STRIDES[len(COMPACT_STRIDES) - len(big):], strict=True):
        strides[d] = s
    return tuple(strides)


def compact_random(shape: tuple[int, ...], std: float, generator: torch.Generator) -> torch.Tensor:
    """A float32 tensor of ``shape`` whose values are a strided view into a short N(0, std) vector.

    Element ``[i0, ..., ik]`` is ``base[sum(i_j * stride_j)]``, so the storage holds about
    ``sum(shape_j * stride_j)`` numbers instead of ``prod(shape)``.
    """
    strides = _compact_strides(shape)
    extent = sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) + 1
    base = torch.randn(extent, generator=generator) * std
    return base.as_strided(shape, strides)


def _fan_in(shape: tuple[int, ...]) -> int:
    return max(1, math.prod(shape) // shape[0])


def _value_std(name: str, shape: tuple[int, ...]) -> float:
    """Scale of the random values of parameter ``name`` (keeps activations O(1) through the model)."""
    if name.endswith(("emb_rel_k", "emb_rel_v")):
        return shape[-1] ** -0.5
    if name == "text_encoder.emb.weight":
        return shape[1] ** -0.5
    if name == "emb_g.weight":
        return 1.0
    if name.endswith((".beta", ".translation", ".log_scale")):
        return 0.1
    if name.endswith(".bias"):
        return 0.1
    gain = next((g for pattern, g in _WEIGHT_GAINS if pattern in name), 1.0)
    return gain / math.sqrt(_fan_in(shape))


# Smaller weights where unit gain saturates outputs: flow/SDP-spline heads (zero-initialised in Coqui),
# the prior/posterior statistics (exp(logs) explodes otherwise) and the tanh output of the decoder.
_WEIGHT_GAINS = (
    (".post.weight", 0.5), ("flows.", 0.5), ("text_encoder.proj.weight", 0.4),
    ("posterior_encoder.proj.weight", 0.4), ("waveform_decoder.conv_post.weight", 0.3),
)


def _random_tensor(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    std = _value_std(name, shape)
    if name.endswith(".gamma"):
        return 1.0 + 0.1 * torch.randn(shape, generator=generator)
    if math.prod(shape) >= COMPACT_MIN_NUMEL and not name.endswith("emb.weight"):
        return compact_random(shape, std, generator)
    return torch.randn(shape, generator=generator) * std


def randomize_parameters(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Overwrite every parameter with seeded random values; return the tensors to store.

    Weight-norm magnitudes (``original0``) are set to ``|v| * U(0.8, 1.2)`` so the effective weight
    has the same scale as ``v``. The returned dict maps state-dict keys to the (possibly compact)
    tensors whose values equal the model's parameters.
    """
    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    stored: dict[str, torch.Tensor] = {}
    for name, param in params.items():
        if name.endswith("original0"):
            continue
        stored[name] = _random_tensor(name, tuple(param.shape), generator)
        if name.endswith("original1"):  # the magnitude right after its direction
            g_name = name[: -len("original1")] + "original0"
            v = stored[name]
            norm = v.reshape(v.shape[0], -1).norm(dim=1).reshape(params[g_name].shape)
            stored[g_name] = norm * (0.8 + 0.4 * torch.rand(norm.shape, generator=generator))
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(stored[name])
    return stored


def calibrate_durations(model: Vits, stored: dict[str, torch.Tensor], spec: FixtureSpec) -> None:
    """Set the duration predictor's output affine so ``logw`` on ``SENTENCE`` has a set mean and std.

    Random weights otherwise give every token the same ceil'd duration (or 20 frames). Only the
    last affine is touched: SDP ``flows.0.translation/log_scale`` channel 0 (the logw channel),
    deterministic DP ``proj.weight/bias``. The other weights stay as drawn.
    """
    model.eval()
    tokens, lengths = _tokens(model, [SENTENCE])
    sid = _speaker_ids(spec.infer_speaker)
    g = model.emb_g(sid).unsqueeze(-1) if sid is not None else None
    dp = model.duration_predictor
    with torch.no_grad():
        x, _, _, x_mask = model.text_encoder(tokens, lengths)
        if model.args.use_sdp:
            affine = dp.flows[0]
            affine.translation[0] = 0.0
            affine.log_scale[0] = 0.0
            raw = dp(x, x_mask, g=g, reverse=True, noise_scale=0.0)[x_mask.bool()]
            affine.log_scale[0] = math.log(raw.std().item() / LOGW_STD)
            affine.translation[0] = raw.mean().item() - LOGW_MEAN * math.exp(affine.log_scale[0].item())
            names = ("duration_predictor.flows.0.translation", "duration_predictor.flows.0.log_scale")
        else:
            raw = (dp(x, x_mask, g=g) - dp.proj.bias.view(1, -1, 1) * x_mask)[x_mask.bool()]
            scale = LOGW_STD / raw.std().item()
            dp.proj.weight.mul_(scale)
            dp.proj.bias.fill_(LOGW_MEAN - scale * raw.mean().item())
            names = ("duration_predictor.proj.weight", "duration_predictor.proj.bias")
    params = dict(model.named_parameters())
    for name in names:
        stored[name] = params[name].detach().clone()


def calibrate_decoder(model: Vits, stored: dict[str, torch.Tensor], spec: FixtureSpec) -> None:
    """Make ``waveform_decoder.conv_post`` zero-sum and scale it to a pre-tanh std of 0.4.

    With random weights the post-``leaky_relu`` input is mostly positive, so an unconstrained
    ``conv_post`` (no bias in Coqui) gives a large DC offset or a saturated tanh.
    """
    gen = torch.Generator().manual_seed(spec.seed + 11)
    z = torch.randn(1, model.args.hidden_channels, 20, generator=gen)
    sid = _speaker_ids(spec.infer_speaker)
    g = model.emb_g(sid).unsqueeze(-1) if sid is not None else None
    dec = model.waveform_decoder
    captured: list[torch.Tensor] = []
    hook = dec.conv_post.register_forward_hook(lambda _m, _i, out: captured.append(out))
    with torch.no_grad():
        dec.conv_post.weight.sub_(dec.conv_post.weight.mean())
        dec(z, g=g)
        dec.conv_post.weight.mul_(DECODER_PRE_TANH_STD / captured[0].std().item())
    hook.remove()
    stored["waveform_decoder.conv_post.weight"] = dec.conv_post.weight.detach().clone()


# ---------------------------------------------------------------------------------------------------
# Randomness capture, dropout, audio
# ---------------------------------------------------------------------------------------------------

_NOISE_PURPOSE = {
    ("PosteriorEncoder", "forward"): "posterior_eps",
    ("StochasticDurationPredictor", "forward"): "sdp_e_q",
    (None, "rand_segments"): "segment_u",
}


@contextmanager
def record_noise() -> Iterator[list[tuple[str, str, torch.Tensor]]]:
    """Record every tensor drawn by ``torch.randn``, ``torch.randn_like`` and ``torch.rand``.

    Yields a list that fills with ``(purpose, draw_function, tensor)`` in draw order.
    """
    draws: list[tuple[str, str, torch.Tensor]] = []
    originals = {fn: getattr(torch, fn) for fn in ("randn", "randn_like", "rand")}

    def wrap(fn_name: str) -> Callable[..., torch.Tensor]:
        def drawn(*args: Any, **kwargs: Any) -> torch.Tensor:
            out = originals[fn_name](*args, **kwargs)
            frame = sys._getframe(1)
            owner = type(frame.f_locals["self"]).__name__ if "self" in frame.f_locals else None
            purpose = _NOISE_PURPOSE.get((owner, frame.f_code.co_name), f"{owner}.{frame.f_code.co_name}")
            draws.append((purpose, fn_name, out.detach().clone()))
            return out

        return drawn

    for fn_name in originals:
        setattr(torch, fn_name, wrap(fn_name))
    try:
        yield draws
    finally:
        for fn_name, fn in originals.items():
            setattr(torch, fn_name, fn)


def train_mode_without_dropout(model: nn.Module) -> int:
    """``model.train()`` then every ``nn.Dropout`` back to eval; returns how many were switched."""
    model.train()
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.eval()
            count += 1
    return count


def espeak_speech(text: str, sample_rate: int, num_samples: int) -> np.ndarray:
    """``espeak-ng -v en-us -w`` speech (22050 Hz), resampled to ``sample_rate``, cut/padded to length."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True, capture_output=True)
        rate, data = wavfile.read(path)
    audio = data.astype(np.float64) / 32768.0
    if rate != sample_rate:
        gcd = math.gcd(rate, sample_rate)
        audio = resample_poly(audio, sample_rate // gcd, rate // gcd)
    start = int(np.argmax(np.abs(audio) > 1e-3))  # skip leading silence
    audio = audio[start: start + num_samples]
    audio = np.pad(audio, (0, num_samples - audio.shape[0]))
    return audio.astype(np.float32)


def _tokens(model: Vits, texts: tuple[str, ...] | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [model.tokenizer.text_to_ids(t) for t in texts]
    pad = model.tokenizer.characters.pad_id
    tokens = torch.full((len(ids), max(len(i) for i in ids)), pad, dtype=torch.long)
    for row, seq in enumerate(ids):
        tokens[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return tokens, torch.tensor([len(i) for i in ids], dtype=torch.long)


def _speaker_ids(speakers: tuple[int, ...] | int | None) -> torch.Tensor | None:
    if speakers is None:
        return None
    return torch.tensor(speakers if isinstance(speakers, tuple) else [speakers], dtype=torch.long)


# ---------------------------------------------------------------------------------------------------
# Goldens
# ---------------------------------------------------------------------------------------------------


def _set_inference_noise(model: Vits) -> None:
    """Noise 0 for the prior sample and the SDP (attributes read by ``Vits.inference``)."""
    model.inference_noise_scale = 0.0
    model.inference_noise_scale_dp = 0.0


def golden_inference(model: Vits, spec: FixtureSpec) -> dict[str, Any]:
    """Batch-1 inference, forced durations, and a batch of two sentences, all at noise 0."""
    model.eval()
    _set_inference_noise(model)
    tokens, lengths = _tokens(model, [SENTENCE])
    sid = _speaker_ids(spec.infer_speaker)
    out = model.inference(tokens, aux_input={"x_lengths": lengths, "speaker_ids": sid})
    gold: dict[str, Any] = {
        "infer/tokens": tokens, "infer/token_lengths": lengths,
        "infer/wav": out["model_outputs"], "infer/w_ceil": out["durations"],
        "infer/y_lengths": out["y_mask"].sum(dim=(1, 2)).long(), "infer/y_mask_frames": out["y_mask"].shape[-1],
        "infer/z": out["z"], "infer/z_p": out["z_p"],
        "infer/noise_scale": model.inference_noise_scale, "infer/noise_scale_dp": model.inference_noise_scale_dp,
        "infer/length_scale": float(model.length_scale),
        "infer/max_inference_len": -1 if model.max_inference_len is None else int(model.max_inference_len),
    }
    if not torch.equal(out["z_p"], out["m_p"]):
        raise RuntimeError("At noise 0, z_p should equal the expanded m_p.")
    if sid is not None:
        gold["infer/speaker_ids"] = sid
    gold.update(_golden_forced(model, sid))
    btokens, blengths = _tokens(model, list(BATCH_SENTENCES))
    bsid = _speaker_ids(spec.batch_speakers)
    batch = model.inference(btokens, aux_input={"x_lengths": blengths, "speaker_ids": bsid})
    gold.update({
        "batch/tokens": btokens, "batch/token_lengths": blengths, "batch/wav": batch["model_outputs"],
        "batch/w_ceil": batch["durations"], "batch/y_lengths": batch["y_mask"].sum(dim=(1, 2)).long(),
    })
    if bsid is not None:
        gold["batch/speaker_ids"] = bsid
    return gold


def _golden_forced(model: Vits, sid: torch.Tensor | None) -> dict[str, Any]:
    """``aux_input["durations"]`` (fractional, ceil'd by Coqui) on ``BATCH_SENTENCES[1]``."""
    tokens, lengths = _tokens(model, [BATCH_SENTENCES[1]])
    pattern = torch.tensor(FORCED_DURATION_PATTERN)
    durations = pattern.repeat(tokens.shape[1] // len(pattern) + 1)[: tokens.shape[1]].unsqueeze(0)
    out = model.inference(tokens, aux_input={"x_lengths": lengths, "speaker_ids": sid, "durations": durations})
    return {
        "forced/tokens": tokens, "forced/durations": durations, "forced/wav": out["model_outputs"],
        "forced/w_ceil": out["durations"], "forced/y_lengths": out["y_mask"].sum(dim=(1, 2)).long(),
        "forced/z": out["z"],
    }


def training_batch(model: Vits, spec: FixtureSpec) -> dict[str, Any]:
    """A Coqui-style batch (as ``VitsDataset.collate_fn`` pads it) with spec/mel from the model."""
    audio = model.config.audio
    lengths = [round(s * audio.sample_rate) for s in TRAIN_SECONDS]
    pad = float(model.tokenizer.characters.pad_id)  # Coqui pads the waveform with the token pad id
    waveform = torch.full((len(lengths), 1, max(lengths)), pad)
    for row, (text, n) in enumerate(zip(TRAIN_TEXTS, lengths, strict=True)):
        waveform[row, 0, :n] = torch.from_numpy(espeak_speech(text, audio.sample_rate, n))
    tokens, token_lengths = _tokens(model, TRAIN_TEXTS)
    wav_lengths = torch.tensor(lengths, dtype=torch.long)
    batch = {
        "tokens": tokens, "token_lens": token_lengths, "waveform": waveform, "waveform_lens": wav_lengths,
        "waveform_rel_lens": wav_lengths / wav_lengths.max(), "speaker_ids": _speaker_ids(spec.train_speakers),
        "d_vectors": None, "language_ids": None,
    }
    return model.format_batch_on_device(batch)


def _noise_golden(draws: list[tuple[str, str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    gold: dict[str, torch.Tensor] = {}
    order: list[dict[str, Any]] = []
    for purpose, fn_name, tensor in draws:
        if f"train/noise/{purpose}" in gold:
            raise RuntimeError(f"Noise purpose {purpose!r} drawn twice in one training forward.")
        gold[f"train/noise/{purpose}"] = tensor
        order.append({"purpose": purpose, "function": f"torch.{fn_name}", "shape": list(tensor.shape)})
    return gold, order


def golden_training(model: Vits, spec: FixtureSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """One generator forward in train mode (dropout off), noise recorded, Coqui's generator losses."""
    batch = training_batch(model, spec)
    n_dropout = train_mode_without_dropout(model)
    criterion = VitsGeneratorLoss(model.config)
    has_disc = hasattr(model, "disc")
    with record_noise() as draws:
        if has_disc:
            disc_criterion = model.get_criterion()[0]
            outputs, disc_losses = model.train_step(batch, disc_criterion, 0)
        else:
            outputs = model.forward(
                batch["tokens"], batch["token_lens"], batch["spec"], batch["spec_lens"], batch["waveform"],
                aux_input={"d_vectors": None, "speaker_ids": batch["speaker_ids"], "language_ids": None},
            )
    gold, order = _noise_golden(draws)
    losses, mel_slice, mel_slice_hat = _generator_losses(model, batch, outputs, criterion)
    if has_disc:
        _, step_losses = model.train_step(batch, criterion, 1)
        for key in ("loss_kl", "loss_mel", "loss_duration"):
            if not torch.equal(step_losses[key], losses[key]):
                raise RuntimeError(f"{key}: train_step {step_losses[key]} != recomputed {losses[key]}")
        losses = step_losses
        gold["train/loss_disc"] = disc_losses["loss_disc"].detach()
    gold.update(_training_tensors(batch, outputs, losses, mel_slice, mel_slice_hat, model))
    meta = {"noise_draws": order, "dropout_modules_set_to_eval": n_dropout, "discriminator_run": has_disc}
    return gold, meta


def _generator_losses(
    model: Vits, batch: dict[str, Any], outputs: dict[str, Any], criterion: VitsGeneratorLoss
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """What ``Vits.train_step(optimizer_idx=1)`` computes, without the discriminator terms."""
    audio = model.config.audio
    mel_slice = segment(batch["mel"].float(), outputs["slice_ids"], model.spec_segment_size, pad_short=True)
    mel_slice_hat = torch_transforms.wav_to_mel(
        y=outputs["model_outputs"].float(), n_fft=audio.fft_size, sample_rate=audio.sample_rate,
        num_mels=audio.num_mels, hop_length=audio.hop_length, win_length=audio.win_length,
        fmin=audio.mel_fmin, fmax=audio.mel_fmax, center=False,
    )
    losses = criterion(
        mel_slice=mel_slice_hat, mel_slice_hat=mel_slice, z_p=outputs["z_p"], logs_q=outputs["logs_q"],
        m_p=outputs["m_p"], logs_p=outputs["logs_p"], z_len=batch["spec_lens"], scores_disc_fake=[],
        feats_disc_fake=[], feats_disc_real=[], loss_duration=outputs["loss_duration"],
    )
    return losses, mel_slice, mel_slice_hat


def _training_tensors(
    batch: dict[str, Any], outputs: dict[str, Any], losses: dict[str, Any],
    mel_slice: torch.Tensor, mel_slice_hat: torch.Tensor, model: Vits,
) -> dict[str, Any]:
    gold: dict[str, Any] = {
        "train/" + k: batch[v] for k, v in {
            "tokens": "tokens", "token_lengths": "token_lens", "waveform": "waveform",
            "waveform_lengths": "waveform_lens", "waveform_rel_lens": "waveform_rel_lens", "spec": "spec",
            "spec_lengths": "spec_lens", "mel": "mel",
        }.items()
    }
    if batch["speaker_ids"] is not None:
        gold["train/speaker_ids"] = batch["speaker_ids"]
    for key in ("slice_ids", "alignments", "z", "z_p", "m_p", "logs_p", "m_q", "logs_q", "loss_duration",
                "model_outputs", "waveform_seg"):
        gold[f"train/{key}"] = outputs[key]
    gold.update({"train/mel_slice": mel_slice, "train/mel_slice_hat": mel_slice_hat})
    for key in ("loss_kl", "loss_mel", "loss_duration", "loss_gen", "loss_feat", "loss"):
        value = losses[key]
        gold[f"train/gen/{key}"] = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    config = model.config
    for alpha in ("kl_loss_alpha", "mel_loss_alpha", "dur_loss_alpha", "gen_loss_alpha", "feat_loss_alpha"):
        gold[f"train/{alpha}"] = float(config[alpha])
    gold["train/spec_segment_size"] = int(model.spec_segment_size)
    gold["train/hop_length"] = int(config.audio.hop_length)
    return gold


def golden_organs(model: Vits, spec: FixtureSpec, train_gold: dict[str, Any]) -> dict[str, Any]:
    """Per-organ outputs in eval mode: text encoder, duration predictor, flow, decoder.

    The posterior encoder has no dropout and no randomness besides ``eps``, so ``train/m_q`` and
    ``train/logs_q`` already are its golden outputs for ``train/spec``.
    """
    model.eval()
    gen = torch.Generator().manual_seed(spec.seed + 7)
    hidden = model.args.hidden_channels
    tokens, lengths = _tokens(model, [SENTENCE])
    g_inf = model.emb_g(_speaker_ids(spec.infer_speaker)).unsqueeze(-1) if spec.infer_speaker is not None else None
    g_train = (model.emb_g(_speaker_ids(spec.train_speakers)).unsqueeze(-1)
               if spec.train_speakers is not None else None)
    gold: dict[str, Any] = {}
    with torch.no_grad():
        x, m_p, logs_p, x_mask = model.text_encoder(tokens, lengths)
        gold.update({"organ/text_encoder/x": x, "organ/text_encoder/m_p": m_p,
                     "organ/text_encoder/logs_p": logs_p, "organ/text_encoder/x_mask": x_mask})
        if model.args.use_sdp:
            logw = model.duration_predictor(x, x_mask, g=g_inf, reverse=True, noise_scale=0.0)
        else:
            logw = model.duration_predictor(x, x_mask, g=g_inf)
        gold["organ/duration_predictor/logw"] = logw
        z_in = torch.randn(2, hidden, 40, generator=gen)
        flow_lengths = torch.tensor([40, 33])
        mask = (torch.arange(40)[None, :] < flow_lengths[:, None]).float().unsqueeze(1)
        gold.update({"organ/flow/z_in": z_in, "organ/flow/lengths": flow_lengths,
                     "organ/flow/forward": model.flow(z_in, mask, g=g_train),
                     "organ/flow/reverse": model.flow(z_in, mask, g=g_train, reverse=True)})
        z_dec = torch.randn(1, hidden, 10, generator=gen)
        gold.update({"organ/decoder/z_in": z_dec, "organ/decoder/wav": model.waveform_decoder(z_dec, g=g_inf)})
    return gold


# ---------------------------------------------------------------------------------------------------
# Checkpoint, verification, main
# ---------------------------------------------------------------------------------------------------


class _StoredState:
    """Hands ``trainer.io.save_model`` a prepared state dict (values equal to the model's)."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self._state = state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


def checkpoint_state(model: Vits, stored: dict[str, torch.Tensor], spec: FixtureSpec) -> dict[str, torch.Tensor]:
    """Model state dict with compact tensors, optionally legacy-renamed and without ``disc.*``."""
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        tensor = stored.get(key, value)
        if not torch.equal(tensor, value):
            raise RuntimeError(f"Stored tensor for {key} differs from the model parameter.")
        if spec.drop_discriminator and key.startswith("disc."):
            continue
        if spec.legacy_weight_norm:
            key = key.replace(".parametrizations.weight.original0", ".weight_g")
            key = key.replace(".parametrizations.weight.original1", ".weight_v")
        state[key] = tensor
    return state


def verify_reload(out_dir: Path, spec: FixtureSpec) -> None:
    """Load config.json + model.pth with Coqui's own loader and re-check the inference goldens."""
    torch_transforms.mel_basis.clear()
    config = VitsConfig()
    config.load_json(str(out_dir / "config.json"))
    model = Vits(config)
    model.load_checkpoint(config, str(out_dir / "model.pth"), eval=True, strict=True)
    gold = torch.load(out_dir / "golden.pt", weights_only=True)
    again = _float32(golden_inference(model, spec))
    mismatched = [k for k in gold if k in again and not torch.equal(torch.as_tensor(again[k]), torch.as_tensor(gold[k]))]
    if mismatched:
        raise RuntimeError(f"{out_dir.name}: reloaded model does not reproduce {mismatched}")


def _strings(model: Vits, gold: dict[str, Any]) -> dict[str, Any]:
    tok = model.tokenizer

    def decode(tokens: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        return [tok.decode(row[:n].tolist()) for row, n in zip(tokens, lengths, strict=True)]

    cleaned = tok.text_cleaner(SENTENCE, lang=None) if tok.text_cleaner is not None else SENTENCE
    phonemes = tok.phonemizer.phonemize(cleaned, separator="", language=None) if tok.phonemizer else None
    return {
        "infer_text": SENTENCE, "infer_cleaned": cleaned, "infer_phonemes": phonemes,
        "infer_decoded": decode(gold["infer/tokens"], gold["infer/token_lengths"]),
        "batch_texts": list(BATCH_SENTENCES),
        "batch_decoded": decode(gold["batch/tokens"], gold["batch/token_lengths"]),
        "train_texts": list(TRAIN_TEXTS),
        "train_decoded": decode(gold["train/tokens"], gold["train/token_lengths"]),
        "vocabulary": list(tok.characters.vocab), "num_chars": int(tok.characters.num_chars),
        "speaker_names": list(model.speaker_manager.name_to_id) if model.speaker_manager else [],
    }


def _float32(gold: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in gold.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().clone().contiguous()
            value = value.float() if value.is_floating_point() else value
        out[key] = value
    return out


def build_fixture(spec: FixtureSpec, root: Path) -> dict[str, Any]:
    """Build, run and write one fixture folder; return its golden dict."""
    torch_transforms.mel_basis.clear()  # Coqui caches mel bases by n_fft/fmax only, not sample rate
    torch_transforms.hann_window.clear()
    torch.manual_seed(spec.seed)
    model = Vits(spec.build_config())
    stored = randomize_parameters(model, spec.seed)
    calibrate_durations(model, stored, spec)
    calibrate_decoder(model, stored, spec)
    gold = golden_inference(model, spec)
    train_gold, train_meta = golden_training(model, spec)
    gold.update(train_gold)
    gold.update(golden_organs(model, spec, train_gold))
    strings = _strings(model, gold)
    gold = _float32({k: v for k, v in gold.items() if k.startswith(spec.golden_prefixes)})
    out_dir = root / spec.name
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.save_json(str(out_dir / "config.json"))
    save_model(model.config, _StoredState(checkpoint_state(model, stored, spec)), str(out_dir / "model.pth"),
               current_step=CHECKPOINT_STEP, epoch=CHECKPOINT_EPOCH)
    torch.save(gold, out_dir / "golden.pt")
    meta = {
        "name": spec.name, "seed": spec.seed, "coqui_tts": TTS.__version__, "torch": torch.__version__,
        "espeak_ng": _espeak_version(), "legacy_weight_norm": spec.legacy_weight_norm,
        "discriminator_keys_removed": spec.drop_discriminator, "notes": spec.notes,
        "dropout": "model.train(), then every torch.nn.Dropout module set to eval() (p kept in the config)",
        "inference": "model.eval(); model.inference_noise_scale = model.inference_noise_scale_dp = 0.0",
        "golden_prefixes": list(spec.golden_prefixes), **train_meta, "strings": strings,
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    verify_reload(out_dir, spec)
    sizes = {p.name: p.stat().st_size for p in sorted(out_dir.iterdir())}
    LOG.info("%s: %s", spec.name, sizes)
    return gold


def _espeak_version() -> str:
    done = subprocess.run(["espeak-ng", "--version"], check=True, capture_output=True, text=True)
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/coqui"), help="output root folder")
    parser.add_argument("--only", nargs="*", default=None, help="fixture names to build (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    names = {s.name for s in SPECS}
    unknown = set(args.only or []) - names
    if unknown:
        parser.error(f"Unknown fixture name(s) {sorted(unknown)}; known: {sorted(names)}.")
    built: dict[str, dict[str, Any]] = {}
    for spec in SPECS:
        if args.only is None or spec.name in args.only:
            built[spec.name] = build_fixture(spec, args.out)
    if "graphemes_sdp" in built and "legacy_weightnorm_genonly" in built:
        ref, legacy = built["graphemes_sdp"], built["legacy_weightnorm_genonly"]
        differing = [k for k in legacy if not torch.equal(torch.as_tensor(legacy[k]), torch.as_tensor(ref[k]))]
        if differing:
            raise RuntimeError(f"legacy_weightnorm_genonly differs from graphemes_sdp in {differing}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Configuration dataclasses and named presets.

Every number a VITS organ needs lives here, in a nested, frozen dataclass. Constructors of
the organs take their own slice (``TextEncoder(cfg.text_encoder, ...)``). Compatibility
quirks of a source format are named fields whose comment cites the source.

Configs round-trip through JSON (:meth:`VITSConfig.to_dict` / :meth:`VITSConfig.from_dict`);
unknown keys are an error that names the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

__all__ = [
    "AudioConfig",
    "TextConfig",
    "TextEncoderConfig",
    "DurationPredictorConfig",
    "PosteriorEncoderConfig",
    "FlowConfig",
    "DecoderConfig",
    "DiscriminatorConfig",
    "VITSConfig",
    "ConfigError",
    "PRESETS",
    "preset",
]
from ._names import did_you_mean


class ConfigError(ValueError):
    """A configuration value is invalid or inconsistent."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class AudioConfig:
    """Audio front end (the same for Coqui, original VITS and Piper)."""

    sample_rate: int = 22050
    """Sampling rate in Hz."""
    n_fft: int = 1024
    """FFT size; the linear spectrogram has ``n_fft // 2 + 1`` bins."""
    win_length: int = 1024
    """Hann window length in samples."""
    hop_length: int = 256
    """Hop in samples; one spectrogram frame per hop (equals the decoder's total upsampling)."""
    n_mels: int = 80
    """Mel bands of the mel loss."""
    mel_fmin: float = 0.0
    """Lowest mel frequency in Hz."""
    mel_fmax: float | None = None
    """Highest mel frequency in Hz; ``None`` means ``sample_rate / 2``."""

    def __post_init__(self) -> None:
        _check(self.sample_rate > 0, f"audio.sample_rate must be positive, got {self.sample_rate}")
        _check(self.hop_length > 0, f"audio.hop_length must be positive, got {self.hop_length}")
        _check(
            self.win_length <= self.n_fft,
            f"audio.win_length ({self.win_length}) must not exceed audio.n_fft ({self.n_fft})",
        )
        _check(
            self.hop_length <= self.n_fft,
            f"audio.hop_length ({self.hop_length}) must not exceed audio.n_fft ({self.n_fft})",
        )
        fmax = self.sample_rate / 2 if self.mel_fmax is None else self.mel_fmax
        _check(
            0 <= self.mel_fmin < fmax <= self.sample_rate / 2,
            f"audio mel range must satisfy 0 <= mel_fmin ({self.mel_fmin}) < mel_fmax ({fmax})"
            f" <= sample_rate/2 ({self.sample_rate / 2})",
        )

    @property
    def n_freq(self) -> int:
        """Number of linear-spectrogram bins."""
        return self.n_fft // 2 + 1


@dataclass(frozen=True)
class TextConfig:
    """How text becomes token ids.

    ``symbols[i]`` is the symbol of id ``i``. ``style`` selects how a sequence is built:
    ``"coqui"`` (optional BOS/EOS, blank interleave with the blank symbol), ``"vits"``
    (blank interleave with id 0, no BOS/EOS), ``"piper"`` (``^`` + ids each followed by
    ``_`` + ``$``, through ``phoneme_id_map``).
    """

    symbols: tuple[str, ...] = ()
    """The id -> symbol table; empty means "not known" (ids must be given directly)."""
    style: str = "coqui"
    """Sequence building: "coqui", "vits", "piper" or "hf"."""
    add_blank: bool = True
    """Interleave the blank token between symbols (and at both ends)."""
    pad: str | None = "<PAD>"
    """Padding symbol, if the table has one."""
    blank: str | None = "<BLNK>"
    """Blank symbol interleaved when ``add_blank``."""
    bos: str | None = None
    """Beginning-of-sequence symbol added when ``use_bos_eos``."""
    eos: str | None = None
    """End-of-sequence symbol added when ``use_bos_eos``."""
    use_bos_eos: bool = False
    """Add BOS/EOS (Coqui's ``enable_eos_bos_chars``)."""
    use_phonemes: bool = False
    """Run the espeak-ng phonemizer before tokenizing."""
    phoneme_language: str = "en-us"
    """espeak-ng voice of the phonemizer."""
    cleaner: str | None = "english_cleaners"
    """Text cleaner name (see ``vits_surgery.text.cleaners``); ``None`` for none."""
    phoneme_id_map: tuple[tuple[str, tuple[int, ...]], ...] = ()
    """Piper's ``phoneme_id_map`` (symbol -> ids), as sorted pairs."""

    def __post_init__(self) -> None:
        _check(
            self.style in ("coqui", "vits", "piper", "hf"),
            f"text.style must be one of coqui, vits, piper, hf; got {self.style!r}",
        )


@dataclass(frozen=True)
class TextEncoderConfig:
    """Prior text encoder: embedding, relative-position transformer, projection."""

    n_vocab: int = 67
    """Embedding rows (symbols)."""
    hidden_channels: int = 192
    filter_channels: int = 768
    """FFN inner width."""
    n_heads: int = 2
    n_layers: int = 6
    kernel_size: int = 3
    """FFN conv kernel."""
    p_dropout: float = 0.1
    window_size: int = 4
    """Relative attention window (VITS: 4, i.e. 9 relative positions)."""
    language_embedding_channels: int = 0
    """Coqui: width of a language embedding concatenated to the token embedding (0 = none)."""

    def __post_init__(self) -> None:
        _check(self.n_vocab > 0, f"text_encoder.n_vocab must be positive, got {self.n_vocab}")
        _check(
            self.hidden_channels % self.n_heads == 0,
            f"text_encoder.hidden_channels ({self.hidden_channels}) must be divisible by "
            f"text_encoder.n_heads ({self.n_heads})",
        )
        _check(self.kernel_size % 2 == 1, f"text_encoder.kernel_size must be odd, got {self.kernel_size}")


@dataclass(frozen=True)
class DurationPredictorConfig:
    """Stochastic (SDP) or deterministic duration predictor."""

    stochastic: bool = True
    """SDP (VITS default) or the deterministic predictor (``use_sdp=False``)."""
    filter_channels: int = 192
    """SDP hidden width (the original forces it to the text encoder width)."""
    kernel_size: int = 3
    p_dropout: float = 0.5
    n_flows: int = 4
    """ConvFlow layers (SDP)."""
    num_bins: int = 10
    """Rational-quadratic spline bins (SDP)."""
    tail_bound: float = 5.0
    """Spline tail bound (SDP)."""
    dds_layers: int = 3
    """Layers of each dilated depth-separable conv stack (SDP)."""
    deterministic_filter_channels: int = 256
    """Hidden width of the deterministic predictor."""
    condition_on_speaker: bool = True
    """Coqui ``condition_dp_on_speaker``: feed the speaker vector to the predictor."""
    detach_input: bool = True
    """Stop duration-loss gradients at the text encoder (VITS ``x.detach()``)."""
    drop_last_flow_at_inference: bool = True
    """VITS removes one ConvFlow in reverse ("remove a useless vflow"); original, Coqui, Piper, HF."""
    deterministic_style: str = "vits"
    """Deterministic predictor layout: "vits" (original/Piper/HF keys) or "glow_tts" (Coqui)."""

    def __post_init__(self) -> None:
        _check(self.n_flows >= 1, f"duration_predictor.n_flows must be >= 1, got {self.n_flows}")
        _check(
            self.deterministic_style in ("vits", "glow_tts"),
            f"duration_predictor.deterministic_style must be 'vits' or 'glow_tts', "
            f"got {self.deterministic_style!r}",
        )


@dataclass(frozen=True)
class PosteriorEncoderConfig:
    """Posterior encoder: 1x1 conv, WaveNet, projection to (m_q, logs_q)."""

    hidden_channels: int = 192
    kernel_size: int = 5
    dilation_rate: int = 1
    n_layers: int = 16
    p_dropout: float = 0.0


@dataclass(frozen=True)
class FlowConfig:
    """Residual-coupling normalizing flow (mean-only, channel flips between layers)."""

    n_flows: int = 4
    hidden_channels: int = 192
    kernel_size: int = 5
    dilation_rate: int = 1
    n_layers: int = 4
    """WaveNet layers inside each coupling layer."""
    p_dropout: float = 0.0
    mean_only: bool = True


@dataclass(frozen=True)
class DecoderConfig:
    """HiFi-GAN generator."""

    resblock: str = "1"
    """"1" (ResBlock1, two convs per dilation) or "2" (ResBlock2, one)."""
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2)
    upsample_initial_channel: int = 512
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4)
    conv_post_bias: bool = False
    """Original VITS, Coqui and Piper build ``conv_post`` without a bias."""
    final_leaky_slope: float = 0.01
    """Original VITS calls ``F.leaky_relu`` with its default 0.01 before ``conv_post``."""
    leaky_slope: float = 0.1
    """LeakyReLU slope inside the generator."""

    def __post_init__(self) -> None:
        _check(self.resblock in ("1", "2"), f"decoder.resblock must be '1' or '2', got {self.resblock!r}")
        _check(
            len(self.upsample_rates) == len(self.upsample_kernel_sizes),
            f"decoder.upsample_rates ({list(self.upsample_rates)}) and decoder.upsample_kernel_sizes "
            f"({list(self.upsample_kernel_sizes)}) must have the same length",
        )
        _check(
            len(self.resblock_kernel_sizes) == len(self.resblock_dilation_sizes),
            f"decoder.resblock_kernel_sizes ({list(self.resblock_kernel_sizes)}) and "
            f"decoder.resblock_dilation_sizes must have the same length",
        )
        _check(
            self.upsample_initial_channel // 2 ** len(self.upsample_rates) >= 1,
            f"decoder.upsample_initial_channel ({self.upsample_initial_channel}) is too small for "
            f"{len(self.upsample_rates)} upsampling stages",
        )

    @property
    def hop_length(self) -> int:
        """Total upsampling factor (samples per latent frame)."""
        return math.prod(self.upsample_rates)


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Multi-period (+ one scale) discriminator as VITS uses it."""

    periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    use_spectral_norm: bool = False
    period_channels: tuple[int, ...] = (32, 128, 512, 1024, 1024)
    """Output channels of the period discriminator's (5,1) convs."""
    period_kernel_size: int = 5
    period_stride: int = 3
    scale_channels: tuple[int, ...] = (16, 64, 256, 1024, 1024, 1024)
    """Output channels of the scale discriminator's convs."""
    scale_kernel_sizes: tuple[int, ...] = (15, 41, 41, 41, 41, 5)
    scale_strides: tuple[int, ...] = (1, 4, 4, 4, 4, 1)
    scale_groups: tuple[int, ...] = (1, 4, 16, 64, 256, 1)

    def __post_init__(self) -> None:
        n = len(self.scale_channels)
        _check(
            len(self.scale_kernel_sizes) == n and len(self.scale_strides) == n and len(self.scale_groups) == n,
            "discriminator.scale_channels, scale_kernel_sizes, scale_strides and scale_groups "
            "must have the same length",
        )


@dataclass(frozen=True)
class VITSConfig:
    """A whole VITS model: front end, organs and inference defaults."""

    audio: AudioConfig = field(default_factory=AudioConfig)
    text: TextConfig = field(default_factory=TextConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    duration_predictor: DurationPredictorConfig = field(default_factory=DurationPredictorConfig)
    posterior_encoder: PosteriorEncoderConfig = field(default_factory=PosteriorEncoderConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    inter_channels: int = 192
    """Latent z channels (prior/posterior/flow)."""
    n_speakers: int = 0
    """Speaker embedding rows; 0 = single speaker (no embedding)."""
    gin_channels: int = 0
    """Speaker conditioning width; 0 = no conditioning."""
    segment_size: int = 32
    """Latent frames decoded per item in training (x hop = waveform samples)."""
    noise_scale: float = 0.667
    """Default prior noise at inference."""
    noise_scale_w: float = 0.8
    """Default SDP noise at inference."""
    length_scale: float = 1.0
    """Default duration multiplier at inference."""
    name: str = "custom"
    """Preset or source name (informational)."""

    def __post_init__(self) -> None:
        _check(
            self.decoder.hop_length == self.audio.hop_length,
            f"the product of decoder.upsample_rates {list(self.decoder.upsample_rates)} is "
            f"{self.decoder.hop_length}, but audio.hop_length is {self.audio.hop_length}; they must be equal",
        )
        _check(
            (self.n_speakers == 0) or self.gin_channels > 0,
            f"n_speakers={self.n_speakers} needs gin_channels > 0",
        )
        _check(self.segment_size > 0, f"segment_size must be positive, got {self.segment_size}")
        if self.text.symbols and self.text.style != "piper":
            _check(
                len(self.text.symbols) <= self.text_encoder.n_vocab,
                f"text.symbols has {len(self.text.symbols)} entries but text_encoder.n_vocab is "
                f"{self.text_encoder.n_vocab}",
            )

    @property
    def spec_channels(self) -> int:
        """Linear-spectrogram bins fed to the posterior encoder."""
        return self.audio.n_freq

    # ----------------------------------------------------------------- serialization
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        return _to_plain(self)

    def to_json(self, path: str | Path | None = None, indent: int = 2) -> str:
        """Serialize to JSON; also write it to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VITSConfig:
        """Build from a dict made by :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        return _from_plain(cls, data, "")

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> VITSConfig:
        """Parse JSON text or a JSON file."""
        p = Path(text_or_path) if not str(text_or_path).lstrip().startswith("{") else None
        text = p.read_text(encoding="utf-8") if p is not None else str(text_or_path)
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> VITSConfig:
        """Copy with fields changed; nested fields by dotted name (``"decoder.resblock"``)."""
        return _replace_dotted(self, changes)


# ----------------------------------------------------------------------------- helpers
def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_to_plain(v) for v in obj]
    return obj


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be an object, got {type(value).__name__}")
        return _from_plain(tp, value, where + ".")
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where} must have {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is not None and type(None) in get_args(tp):  # X | None
        if value is None:
            return None
        inner = [a for a in get_args(tp) if a is not type(None)][0]
        return _coerce(inner, value, where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where} must be {tp.__name__}, got {value!r}")
    return value


def _from_plain(cls: Any, data: dict[str, Any], prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        hint = did_you_mean(prefix + key, [prefix + n for n in names])
        raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
    kwargs = {k: _coerce(hints[k], v, prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def _replace_dotted(obj: Any, changes: dict[str, Any]) -> Any:
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    names = {f.name for f in fields(obj)}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if head not in names:
            raise ConfigError(f"unknown config key {key!r}")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, sub in nested.items():
        direct[head] = _replace_dotted(direct.get(head, getattr(obj, head)), sub)
    return dataclasses.replace(obj, **direct)


# ----------------------------------------------------------------------------- presets
def _coqui_vits() -> VITSConfig:
    """Coqui TTS ``VitsConfig()`` defaults (coqui-tts 0.28.0): 67 graphemes, add_blank."""
    from .text.symbols import coqui_graphemes

    symbols = coqui_graphemes()
    return VITSConfig(
        text=TextConfig(symbols=symbols, style="coqui", add_blank=True, cleaner=None),
        text_encoder=TextEncoderConfig(n_vocab=len(symbols)),
        noise_scale=0.667,
        noise_scale_w=1.0,  # Coqui inference_noise_scale_dp
        name="coqui_vits",
    )


def _vits_ljs() -> VITSConfig:
    """Original VITS ``configs/ljs_base.json`` (178 symbols, english_cleaners2)."""
    from .text.symbols import vits_symbols

    symbols = vits_symbols()
    return VITSConfig(
        text=TextConfig(
            symbols=symbols, style="vits", add_blank=True, pad="_", blank="_",
            use_phonemes=True, cleaner="english_cleaners2",
        ),
        text_encoder=TextEncoderConfig(n_vocab=len(symbols)),
        noise_scale=0.667,
        noise_scale_w=0.8,
        name="vits_ljs",
    )


def _piper(quality: str) -> VITSConfig:
    """Piper presets (piper-tts 1.8 ``ModelAudioConfig``): medium / low (x-low widths)."""
    narrow = quality == "low"
    width = 96 if narrow else 192
    return VITSConfig(
        audio=AudioConfig(sample_rate=16000 if narrow else 22050),
        text=TextConfig(style="piper", add_blank=True, pad="_", blank="_", bos="^", eos="$",
                        use_bos_eos=True, use_phonemes=True, cleaner=None),
        text_encoder=TextEncoderConfig(
            n_vocab=256, hidden_channels=width, filter_channels=384 if narrow else 768
        ),
        duration_predictor=DurationPredictorConfig(filter_channels=width),
        posterior_encoder=PosteriorEncoderConfig(hidden_channels=width),
        flow=FlowConfig(hidden_channels=width),
        decoder=DecoderConfig(
            resblock="2",
            resblock_kernel_sizes=(3, 5, 7),
            resblock_dilation_sizes=((1, 2), (2, 6), (3, 12)),
            upsample_rates=(8, 8, 4),
            upsample_initial_channel=256,
            upsample_kernel_sizes=(16, 16, 8),
        ),
        inter_channels=width,
        noise_scale=0.667,
        noise_scale_w=0.8,
        name=f"piper_{quality}",
    )


def _tiny() -> VITSConfig:
    """A small model for tests: forward + backward well under a second on a CPU."""
    from .text.symbols import coqui_graphemes

    symbols = coqui_graphemes()
    return VITSConfig(
        audio=AudioConfig(sample_rate=16000, n_fft=256, win_length=256, hop_length=64, n_mels=20),
        text=TextConfig(symbols=symbols, style="coqui", add_blank=True, cleaner="english_cleaners"),
        text_encoder=TextEncoderConfig(
            n_vocab=len(symbols), hidden_channels=32, filter_channels=64, n_heads=2, n_layers=2
        ),
        duration_predictor=DurationPredictorConfig(filter_channels=32, n_flows=2),
        posterior_encoder=PosteriorEncoderConfig(hidden_channels=32, n_layers=3),
        flow=FlowConfig(n_flows=2, hidden_channels=32, n_layers=2),
        decoder=DecoderConfig(
            resblock="2",
            resblock_kernel_sizes=(3, 5),
            resblock_dilation_sizes=((1, 2), (2, 6)),
            upsample_rates=(4, 4, 4),
            upsample_initial_channel=64,
            upsample_kernel_sizes=(8, 8, 8),
        ),
        discriminator=DiscriminatorConfig(
            periods=(2, 3),
            period_channels=(8, 16, 16, 16, 16),
            scale_channels=(8, 16, 16, 16, 16, 16),
            scale_groups=(1, 4, 4, 4, 4, 1),
        ),
        inter_channels=16,
        segment_size=16,
        name="tiny",
    )


PRESETS = {
    "tiny": _tiny,
    "coqui_vits": _coqui_vits,
    "vits_ljs": _vits_ljs,
    "piper_medium": lambda: _piper("medium"),
    "piper_low": lambda: _piper("low"),
}


def preset(name: str, **overrides: Any) -> VITSConfig:
    """A named preset, optionally with dotted overrides.

    Args:
        name: one of ``PRESETS`` ("tiny", "coqui_vits", "vits_ljs", "piper_medium", "piper_low").
        **overrides: dotted field names, e.g. ``preset("tiny", **{"decoder.resblock": "1"})``.

    Raises:
        ConfigError: unknown preset (with the closest names) or invalid override.
    """
    if name not in PRESETS:
        hint = did_you_mean(name, PRESETS, n=3)
        raise ConfigError(f"unknown preset {name!r}{hint} (available: {', '.join(PRESETS)})")
    cfg = PRESETS[name]()
    return cfg.replace(**overrides) if overrides else cfg

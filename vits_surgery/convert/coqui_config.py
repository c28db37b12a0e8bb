"""Coqui TTS ``VitsConfig`` dicts <-> :class:`~vits_surgery.config.VITSConfig`.

Import side: :func:`config_from_coqui` (sizes Coqui does not put in its config are read from the
tensors) and :func:`coqui_vocabulary` (the token table Coqui's ``TTSTokenizer`` builds). Export
side: :func:`coqui_config_dict` writes a config dict Coqui's ``VitsConfig.from_dict`` accepts and
refuses models Coqui's ``Vits`` cannot build. Facts were observed by running coqui-tts 0.28.0.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Mapping
from typing import Any

import torch

from ..config import (
    AudioConfig,
    ConfigError,
    DecoderConfig,
    DiscriminatorConfig,
    DurationPredictorConfig,
    FlowConfig,
    PosteriorEncoderConfig,
    TextConfig,
    TextEncoderConfig,
    VITSConfig,
)
from .report import ConversionError

__all__ = [
    "COQUI_CLEANERS",
    "coqui_vocabulary",
    "config_from_coqui",
    "coqui_config_dict",
    "refuse_unsupported",
]

logger = logging.getLogger(__name__)

COQUI_CLEANERS: dict[str | None, str | None] = {
    None: None,
    "no_cleaners": None,
    "english_cleaners": "coqui_english_cleaners",
    "basic_cleaners": "basic_cleaners",
    "transliteration_cleaners": "transliteration_cleaners",
    "phoneme_cleaners": "phoneme_cleaners",
}
#: Where our cleaner and Coqui's (called with ``lang=None``) are known to differ (coqui-tts 0.28).
_CLEANER_CAVEATS = {
    "phoneme_cleaners": "ours expands abbreviations (Mr. -> mister), Coqui's tokenizer does not; "
                        "token ids differ on abbreviations",
    "transliteration_cleaners": "ours transliterates to ASCII (ü -> u, — -> -), Coqui's keeps those characters",
}
_CLEANERS_TO_COQUI = {"coqui_english_cleaners": "english_cleaners", "english_cleaners": "english_cleaners"}

_GRAPHEMES = "TTS.tts.utils.text.characters.Graphemes"
_IPA_PHONEMES = "TTS.tts.utils.text.characters.IPAPhonemes"
_VITS_CHARACTERS = "TTS.tts.models.vits.VitsCharacters"
_VITS_BLANK = "<BLNK>"  # VitsCharacters always ends with this blank, whatever the config says
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_PUNCTUATIONS = "!'(),-.:;? "

# Sizes Coqui hard-codes (coqui-tts 0.28 ``Vits.__init__``).
_FLOW_BLOCKS = 4
_SDP_WIDTH = 192
_DP_WIDTH = 256
_DP_KERNEL = 3
_SDP_FLOWS = 4
_WINDOW = 4
_LOSS_ALPHAS = {"kl_loss_alpha": 1.0, "mel_loss_alpha": 45.0, "dur_loss_alpha": 1.0, "gen_loss_alpha": 1.0,
                "feat_loss_alpha": 1.0, "disc_loss_alpha": 1.0}


# ----------------------------------------------------------------------------- vocabulary
def _arrange(body: str, unique: bool, ordered: bool, notes: list[str]) -> list[str]:
    """Coqui ``is_unique`` / ``is_sorted`` applied to the character string."""
    if unique and ordered:
        return sorted(set(body))
    if unique:
        notes.append(
            "characters.is_unique without is_sorted: Coqui orders that vocabulary by Python set order, "
            "which changes between runs; first-occurrence order is used here, token ids may differ"
        )
        return list(dict.fromkeys(body))
    return sorted(body) if ordered else list(body)


def coqui_vocabulary(
    characters: Mapping[str, Any] | None, use_phonemes: bool, notes: list[str] | None = None
) -> tuple[tuple[str, ...], dict[str, str | None]]:
    """The id -> symbol table Coqui's ``TTSTokenizer`` builds from ``config["characters"]``.

    - ``Graphemes`` / ``IPAPhonemes`` (also the defaults, chosen by ``use_phonemes``):
      ``[pad, eos, bos, blank]`` (those set) + arranged characters (``IPAPhonemes`` uses
      ``phonemes`` when set) + punctuations.
    - ``VitsCharacters``: ``[pad] + punctuations + characters + phonemes + ["<BLNK>"]``;
      ``is_unique``/``is_sorted`` and the configured blank are ignored, BOS/EOS are not in it.

    Returns:
        (symbols, specials) where specials maps pad/eos/bos/blank to a symbol or None.
    """
    notes = [] if notes is None else notes
    chars = dict(characters or {})
    if characters is None:  # Coqui's defaults
        chars = {"pad": "<PAD>", "eos": "<EOS>", "bos": "<BOS>", "blank": "<BLNK>", "punctuations": _PUNCTUATIONS,
                 "characters": None if use_phonemes else _LETTERS, "phonemes": None, "is_unique": False,
                 "is_sorted": True}
        if use_phonemes:
            from ..text.symbols import COQUI_IPA_CHARACTERS

            chars["characters"] = COQUI_IPA_CHARACTERS
    cls = chars.get("characters_class") or (_IPA_PHONEMES if use_phonemes else _GRAPHEMES)
    short = cls.rsplit(".", 1)[-1]
    punct = chars.get("punctuations") or ""
    pad = chars.get("pad")
    if short == "VitsCharacters":
        body = (chars.get("characters") or "") + (chars.get("phonemes") or "")
        symbols = ("" if pad is None else pad, *punct, *body, _VITS_BLANK)
        return symbols, {"pad": pad, "eos": None, "bos": None, "blank": _VITS_BLANK}
    if short == "Graphemes":
        body = chars.get("characters") or ""
    elif short == "IPAPhonemes":
        body = chars.get("phonemes") or chars.get("characters") or ""
    else:
        raise ConversionError(
            f"Coqui characters_class {cls!r} is not supported (Graphemes, IPAPhonemes or VitsCharacters)"
        )
    if chars.get("vocab_dict"):
        notes.append("characters.vocab_dict is ignored, as Coqui's VITS tokenizer ignores it")
    specials = {k: chars.get(k) for k in ("pad", "eos", "bos", "blank")}
    head = [s for s in specials.values() if s is not None]
    body_list = _arrange(body, bool(chars.get("is_unique")), bool(chars.get("is_sorted")), notes)
    return (*head, *body_list, *punct), specials


def _text_config(cfg: Mapping[str, Any], n_vocab: int, notes: list[str]) -> TextConfig:
    use_phonemes = bool(cfg.get("use_phonemes"))
    symbols, specials = coqui_vocabulary(cfg.get("characters"), use_phonemes, notes)
    if len(symbols) != n_vocab:
        notes.append(
            f"the config's Coqui vocabulary has {len(symbols)} symbols but the text embedding has {n_vocab} rows: "
            "the symbol table is left empty (pass token ids)"
        )
        logger.warning(notes[-1])
        symbols = ()
    cleaner_name = cfg.get("text_cleaner")
    if cleaner_name in COQUI_CLEANERS:
        cleaner = COQUI_CLEANERS[cleaner_name]
        if cleaner_name in _CLEANER_CAVEATS:
            notes.append(f"Coqui text_cleaner {cleaner_name!r} -> {cleaner!r}: {_CLEANER_CAVEATS[cleaner_name]}")
        elif cleaner != cleaner_name:
            notes.append(f"Coqui text_cleaner {cleaner_name!r} -> {cleaner!r} (the same text as Coqui's tokenizer)")
    else:
        cleaner = None
        notes.append(f"Coqui text_cleaner {cleaner_name!r} has no equivalent here: text is not cleaned")
        logger.warning(notes[-1])
    phonemizer = cfg.get("phonemizer")
    if use_phonemes and phonemizer not in (None, "espeak", "espeak-ng"):
        notes.append(f"Coqui phonemizer {phonemizer!r} is replaced by espeak-ng: phonemes may differ")
        logger.warning(notes[-1])
    if use_phonemes and not cfg.get("phoneme_language"):
        raise ConversionError("the Coqui config sets use_phonemes but no phoneme_language")
    use_bos_eos = bool(cfg.get("enable_eos_bos_chars"))
    for role, needed in (("bos", use_bos_eos), ("eos", use_bos_eos), ("blank", bool(cfg.get("add_blank", True)))):
        if needed and symbols and specials[role] is None:
            notes.append(f"the Coqui vocabulary has no {role} symbol although the config uses one (Coqui itself "
                         "would index past its embedding): encoding text will fail")
    return TextConfig(
        symbols=tuple(symbols), style="coqui", add_blank=bool(cfg.get("add_blank", True)),
        pad=specials["pad"], blank=specials["blank"], bos=specials["bos"], eos=specials["eos"],
        use_bos_eos=use_bos_eos, use_phonemes=use_phonemes,
        phoneme_language=str(cfg.get("phoneme_language") or "en-us"), cleaner=cleaner,
    )


# ----------------------------------------------------------------------------- config
def _arg(args: Mapping[str, Any], key: str, default: Any) -> Any:
    value = args.get(key, default)
    return default if value is None else value


def refuse_unsupported(cfg: Mapping[str, Any], state: Mapping[str, torch.Tensor], source: str) -> None:
    args = cfg.get("model_args") or {}
    if args.get("use_d_vector_file") or cfg.get("use_d_vector_file"):
        raise ConversionError(
            f"{source}: this Coqui model is conditioned on external d-vectors (use_d_vector_file), which "
            "vits_surgery does not support; only speaker-id models (emb_g) load"
        )
    if args.get("use_language_embedding") or any(k.startswith("emb_l.") for k in state):
        raise ConversionError(
            f"{source}: this Coqui model has a language embedding (use_language_embedding / emb_l); "
            "multilingual Coqui models (YourTTS-style) are not supported"
        )
    if args.get("encoder_sample_rate"):
        raise ConversionError(
            f"{source}: encoder_sample_rate={args['encoder_sample_rate']} (Coqui's z interpolation for a "
            "decoder at another rate) is not supported"
        )


def _audio_config(audio: Mapping[str, Any]) -> AudioConfig:
    sr = int(audio.get("sample_rate", 22050))

    def samples(key: str, ms_key: str, default: int) -> int:
        if audio.get(key) is not None:
            return int(audio[key])
        if audio.get(ms_key) is not None:
            return int(float(audio[ms_key]) / 1000 * sr)
        return default

    return AudioConfig(
        sample_rate=sr, n_fft=int(_arg(audio, "fft_size", 1024)),
        win_length=samples("win_length", "frame_length_ms", 1024),
        hop_length=samples("hop_length", "frame_shift_ms", 256),
        n_mels=int(_arg(audio, "num_mels", 80)), mel_fmin=float(_arg(audio, "mel_fmin", 0.0)),
        mel_fmax=None if audio.get("mel_fmax") is None else float(audio["mel_fmax"]),
    )


def _speakers(cfg: Mapping[str, Any], state: Mapping[str, torch.Tensor], notes: list[str]) -> tuple[int, int]:
    """(n_speakers, gin_channels) from ``emb_g.weight``, cross-checked with the config."""
    args = cfg.get("model_args") or {}
    wants = bool(args.get("use_speaker_embedding") or cfg.get("use_speaker_embedding"))
    emb = state.get("emb_g.weight")
    if emb is None:
        if wants:
            raise ConversionError("the Coqui config sets use_speaker_embedding but the checkpoint has no emb_g.weight")
        return 0, 0
    n, gin = int(emb.shape[0]), int(emb.shape[1])
    names = cfg.get("speakers") or []
    if names and len(names) != n:
        notes.append(f"config lists {len(names)} speakers but emb_g has {n} rows; the checkpoint's {n} are used")
    elif names:
        notes.append("speaker ids: " + ", ".join(f"{i}={s}" for i, s in enumerate(names)))
    if int(_arg(args, "speaker_embedding_channels", gin)) != gin:
        notes.append(f"speaker_embedding_channels {args['speaker_embedding_channels']} != emb_g width {gin}; {gin} used")
    return n, gin


def _flow_blocks(state: Mapping[str, torch.Tensor]) -> int:
    ids = {int(k.split(".")[2]) for k in state if k.startswith("flow.flows.") and k.split(".")[2].isdigit()}
    return len(ids) or _FLOW_BLOCKS


def _dp_config(args: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> DurationPredictorConfig:
    pre = state.get("duration_predictor.pre.weight")
    conv = state.get("duration_predictor.conv_1.weight")
    return DurationPredictorConfig(
        stochastic=bool(_arg(args, "use_sdp", True)),
        filter_channels=int(pre.shape[0]) if pre is not None else _SDP_WIDTH,
        kernel_size=_DP_KERNEL, p_dropout=float(_arg(args, "dropout_p_duration_predictor", 0.5)),
        n_flows=_SDP_FLOWS, deterministic_filter_channels=int(conv.shape[0]) if conv is not None else _DP_WIDTH,
        condition_on_speaker=bool(_arg(args, "condition_dp_on_speaker", True)),
        detach_input=bool(_arg(args, "detach_dp_input", True)), deterministic_style="glow_tts",
    )


def _decoder_config(args: Mapping[str, Any]) -> DecoderConfig:
    return DecoderConfig(
        resblock=str(_arg(args, "resblock_type_decoder", "1")),
        resblock_kernel_sizes=tuple(int(k) for k in _arg(args, "resblock_kernel_sizes_decoder", (3, 7, 11))),
        resblock_dilation_sizes=tuple(
            tuple(int(d) for d in ds) for ds in _arg(args, "resblock_dilation_sizes_decoder", [[1, 3, 5]] * 3)
        ),
        upsample_rates=tuple(int(r) for r in _arg(args, "upsample_rates_decoder", (8, 8, 2, 2))),
        upsample_initial_channel=int(_arg(args, "upsample_initial_channel_decoder", 512)),
        upsample_kernel_sizes=tuple(int(k) for k in _arg(args, "upsample_kernel_sizes_decoder", (16, 16, 4, 4))),
    )


def config_from_coqui(
    cfg: Mapping[str, Any], state: Mapping[str, torch.Tensor], notes: list[str] | None = None, name: str = "coqui"
) -> VITSConfig:
    """Build a :class:`VITSConfig` from a Coqui ``VitsConfig`` dict and its (Coqui-named) state dict.

    Sizes the config cannot change in Coqui (flow blocks, duration-predictor widths) and the
    vocabulary and speaker counts are read from the tensors; config facts worth knowing are
    appended to ``notes``.

    Raises:
        ConversionError: an inconsistent or unsupported config (names the field).
    """
    notes = [] if notes is None else notes
    args = cfg.get("model_args") or {}
    hidden = int(_arg(args, "hidden_channels", 192))
    emb = state.get("text_encoder.emb.weight")
    n_vocab = int(emb.shape[0]) if emb is not None else int(_arg(args, "num_chars", 0))
    audio = _audio_config(cfg.get("audio") or {})
    spec_in = state.get("posterior_encoder.pre.weight")
    if spec_in is not None and int(spec_in.shape[1]) != audio.n_freq:
        raise ConversionError(
            f"the posterior encoder takes {int(spec_in.shape[1])} spectrogram bins but audio.fft_size "
            f"{audio.n_fft} gives {audio.n_freq}"
        )
    n_speakers, gin = _speakers(cfg, state, notes)
    try:
        config = VITSConfig(
            audio=audio,
            text=_text_config(cfg, n_vocab, notes),
            text_encoder=TextEncoderConfig(
                n_vocab=n_vocab, hidden_channels=hidden,
                filter_channels=int(_arg(args, "hidden_channels_ffn_text_encoder", 768)),
                n_heads=int(_arg(args, "num_heads_text_encoder", 2)),
                n_layers=int(_arg(args, "num_layers_text_encoder", 6)),
                kernel_size=int(_arg(args, "kernel_size_text_encoder", 3)),
                p_dropout=float(_arg(args, "dropout_p_text_encoder", 0.1)), window_size=_WINDOW,
            ),
            duration_predictor=_dp_config(args, state),
            posterior_encoder=PosteriorEncoderConfig(
                hidden_channels=hidden, kernel_size=int(_arg(args, "kernel_size_posterior_encoder", 5)),
                dilation_rate=int(_arg(args, "dilation_rate_posterior_encoder", 1)),
                n_layers=int(_arg(args, "num_layers_posterior_encoder", 16)),
            ),
            flow=FlowConfig(
                n_flows=_flow_blocks(state), hidden_channels=hidden,
                kernel_size=int(_arg(args, "kernel_size_flow", 5)),
                dilation_rate=int(_arg(args, "dilation_rate_flow", 1)), n_layers=int(_arg(args, "num_layers_flow", 4)),
            ),
            decoder=_decoder_config(args),
            discriminator=DiscriminatorConfig(
                periods=tuple(int(p) for p in _arg(args, "periods_multi_period_discriminator", (2, 3, 5, 7, 11))),
                use_spectral_norm=bool(_arg(args, "use_spectral_norm_disriminator", False)),
            ),
            inter_channels=hidden, n_speakers=n_speakers, gin_channels=gin,
            segment_size=int(_arg(args, "spec_segment_size", 32)),
            noise_scale=float(_arg(args, "inference_noise_scale", 0.667)),
            noise_scale_w=float(_arg(args, "inference_noise_scale_dp", 1.0)),
            length_scale=float(_arg(args, "length_scale", 1.0)), name=name,
        )
    except ConfigError as err:
        raise ConversionError(f"the Coqui config does not describe a valid model: {err}") from None
    _training_notes(cfg, notes)
    return config


def _training_notes(cfg: Mapping[str, Any], notes: list[str]) -> None:
    args = cfg.get("model_args") or {}
    alphas = {k: float(cfg[k]) for k in _LOSS_ALPHAS if cfg.get(k) is not None}
    changed = {k: v for k, v in alphas.items() if v != _LOSS_ALPHAS[k]}
    if changed:
        notes.append("Coqui loss weights differ from the defaults: " + ", ".join(f"{k}={v}" for k, v in changed.items()))
    if cfg.get("lr_gen") is not None:
        notes.append(f"Coqui training: lr_gen={cfg.get('lr_gen')}, lr_disc={cfg.get('lr_disc')}, "
                      f"optimizer={cfg.get('optimizer')}, grad_clip={cfg.get('grad_clip')} (not used by vits_surgery)")
    if args.get("max_inference_len") is not None:
        notes.append(f"max_inference_len={args['max_inference_len']}: infer() decodes at most that many frames "
                     "(model.max_inference_frames)")
    frozen = [k for k in ("freeze_encoder", "freeze_DP", "freeze_PE", "freeze_flow_decoder", "freeze_waveform_decoder")
              if args.get(k)]
    if frozen:
        notes.append("Coqui freeze flags set (not applied; use a SurgeryPlan): " + ", ".join(frozen))



# ----------------------------------------------------------------------------- export
def _exportable(config: VITSConfig) -> list[str]:
    """What a Coqui ``Vits`` cannot build (empty when the config is exportable)."""
    dp, te = config.duration_predictor, config.text_encoder
    hidden = te.hidden_channels
    checks = [
        (config.inter_channels == hidden, f"inter_channels {config.inter_channels} != text_encoder.hidden_channels {hidden}"),
        (config.posterior_encoder.hidden_channels == hidden, "posterior_encoder.hidden_channels differs from hidden_channels"),
        (config.flow.hidden_channels == hidden, "flow.hidden_channels differs from hidden_channels"),
        (config.flow.n_flows == _FLOW_BLOCKS and config.flow.mean_only, f"flow must have {_FLOW_BLOCKS} mean-only blocks"),
        (te.window_size == _WINDOW and te.language_embedding_channels == 0, "text encoder window must be 4, no language"),
        (dp.kernel_size == _DP_KERNEL, f"duration_predictor.kernel_size must be {_DP_KERNEL}"),
        (not dp.stochastic or (dp.filter_channels, dp.n_flows, dp.num_bins, dp.tail_bound, dp.dds_layers)
         == (_SDP_WIDTH, _SDP_FLOWS, 10, 5.0, 3), "the SDP must be Coqui's (width 192, 4 flows, 10 bins, tail 5, 3 DDS layers)"),
        (dp.stochastic or (dp.deterministic_style, dp.deterministic_filter_channels) == ("glow_tts", _DP_WIDTH),
         "the deterministic duration predictor must be glow_tts style, width 256"),
        (dp.drop_last_flow_at_inference, "duration_predictor.drop_last_flow_at_inference must be true"),
        ((config.decoder.conv_post_bias, config.decoder.leaky_slope, config.decoder.final_leaky_slope) == (False, 0.1, 0.01),
         "the decoder must have Coqui's conv_post (no bias) and LeakyReLU slopes"),
        (config.discriminator == DiscriminatorConfig(config.discriminator.periods, config.discriminator.use_spectral_norm),
         "the discriminator must have VITS' default channel sizes"),
        (config.posterior_encoder.p_dropout == 0 and config.flow.p_dropout == 0, "posterior/flow dropout must be 0"),
    ]
    return [msg for ok, msg in checks if not ok]


def _special_roles(text: TextConfig) -> dict[str, str | None] | None:
    """Roles (pad, eos, bos, blank) of the leading multi-character symbols, in Coqui's order."""
    lead = []
    for s in text.symbols:
        if len(s) == 1 or len(lead) == 4:
            break
        lead.append(s)
    wanted = {"pad": text.pad, "eos": text.eos, "bos": text.bos, "blank": text.blank}
    for roles in itertools.combinations(wanted, len(lead)):
        got = dict(zip(roles, lead, strict=True))
        if all(got.get(r) == v for r, v in wanted.items() if v in lead):
            return {r: got.get(r) for r in wanted}
    return None


def _coqui_characters(text: TextConfig) -> dict[str, Any]:
    """A Coqui ``characters`` config whose vocabulary equals ``text.symbols``."""
    sym = list(text.symbols)
    base = {"vocab_dict": None, "punctuations": "", "phonemes": None, "is_unique": False, "is_sorted": False}
    roles = _special_roles(text)
    if roles is not None:
        n_head = sum(v is not None for v in roles.values())
        if all(len(s) == 1 for s in sym[n_head:]):
            return {**base, "characters_class": _GRAPHEMES, **roles, "characters": "".join(sym[n_head:])}
    middle = sym[1:-1]
    if len(sym) >= 2 and sym[-1] == _VITS_BLANK and all(len(s) == 1 for s in middle):
        return {**base, "characters_class": _VITS_CHARACTERS, "pad": sym[0] or None, "eos": None, "bos": None,
                "blank": _VITS_BLANK, "characters": "".join(middle)}
    raise ConversionError(
        "the symbol table cannot be written as a Coqui characters config (it must be [pad, eos, bos, blank] + "
        "single characters, or VitsCharacters' [pad, characters..., <BLNK>])"
    )


def _text_fields(text: TextConfig, n_vocab: int, base: Mapping[str, Any]) -> dict[str, Any]:
    if not text.symbols:
        raise ConversionError("the model has no symbol table (text.symbols is empty); Coqui needs its vocabulary")
    if len(text.symbols) != n_vocab:
        raise ConversionError(f"Coqui sizes the text embedding by its vocabulary: text.symbols has "
                              f"{len(text.symbols)} entries but text_encoder.n_vocab is {n_vocab}")
    if text.style != "coqui":
        logger.warning("text style %r: Coqui's tokenizer will not give the same token ids", text.style)
    chars = base.get("characters")
    same = chars is not None and coqui_vocabulary(chars, text.use_phonemes)[0] == tuple(text.symbols)
    cleaner = _CLEANERS_TO_COQUI.get(text.cleaner, text.cleaner)
    return {
        "characters": copy.deepcopy(chars) if same else _coqui_characters(text),
        "add_blank": text.add_blank, "enable_eos_bos_chars": text.use_bos_eos, "use_phonemes": text.use_phonemes,
        "phoneme_language": text.phoneme_language if text.use_phonemes else base.get("phoneme_language"),
        "phonemizer": "espeak" if text.use_phonemes else base.get("phonemizer"),
        "text_cleaner": cleaner,
    }


def _model_args(config: VITSConfig, include_discriminator: bool, max_len: int | None) -> dict[str, Any]:
    te, dec, dp = config.text_encoder, config.decoder, config.duration_predictor
    return {
        "num_chars": te.n_vocab, "out_channels": config.spec_channels, "spec_segment_size": config.segment_size,
        "hidden_channels": te.hidden_channels, "hidden_channels_ffn_text_encoder": te.filter_channels,
        "num_heads_text_encoder": te.n_heads, "num_layers_text_encoder": te.n_layers,
        "kernel_size_text_encoder": te.kernel_size, "dropout_p_text_encoder": te.p_dropout,
        "dropout_p_duration_predictor": dp.p_dropout,
        "kernel_size_posterior_encoder": config.posterior_encoder.kernel_size,
        "dilation_rate_posterior_encoder": config.posterior_encoder.dilation_rate,
        "num_layers_posterior_encoder": config.posterior_encoder.n_layers,
        "kernel_size_flow": config.flow.kernel_size, "dilation_rate_flow": config.flow.dilation_rate,
        "num_layers_flow": config.flow.n_layers, "resblock_type_decoder": dec.resblock,
        "resblock_kernel_sizes_decoder": list(dec.resblock_kernel_sizes),
        "resblock_dilation_sizes_decoder": [list(d) for d in dec.resblock_dilation_sizes],
        "upsample_rates_decoder": list(dec.upsample_rates),
        "upsample_initial_channel_decoder": dec.upsample_initial_channel,
        "upsample_kernel_sizes_decoder": list(dec.upsample_kernel_sizes),
        "periods_multi_period_discriminator": list(config.discriminator.periods),
        "use_spectral_norm_disriminator": config.discriminator.use_spectral_norm,
        "init_discriminator": include_discriminator, "use_sdp": dp.stochastic,
        "inference_noise_scale": config.noise_scale, "inference_noise_scale_dp": config.noise_scale_w,
        "length_scale": config.length_scale, "max_inference_len": max_len,
        "use_speaker_embedding": config.n_speakers > 0,
        "speaker_embedding_channels": config.gin_channels if config.n_speakers > 0 else 256,
        "condition_dp_on_speaker": dp.condition_on_speaker, "detach_dp_input": dp.detach_input,
        "use_d_vector_file": False, "use_language_embedding": False, "encoder_sample_rate": None,
    }


def coqui_config_dict(
    config: VITSConfig,
    base: Mapping[str, Any] | None = None,
    include_discriminator: bool = True,
    max_inference_len: int | None = None,
) -> dict[str, Any]:
    """A Coqui ``VitsConfig`` dict for ``config`` (``VitsConfig().from_dict`` accepts it).

    Fields vits_surgery does not model (training settings, datasets, test sentences) are kept
    from ``base`` (e.g. the config of the Coqui checkpoint the model was loaded from).

    Raises:
        ConversionError: the model is not something Coqui's ``Vits`` can build (all reasons).
    """
    problems = _exportable(config)
    if problems:
        raise ConversionError("Coqui's VITS cannot represent this model: " + "; ".join(problems))
    out = copy.deepcopy(dict(base or {}))
    a = config.audio
    out["model"] = "vits"
    out["audio"] = {**(out.get("audio") or {}), "sample_rate": a.sample_rate, "fft_size": a.n_fft,
                    "win_length": a.win_length, "hop_length": a.hop_length, "num_mels": a.n_mels,
                    "mel_fmin": a.mel_fmin, "mel_fmax": a.mel_fmax, "frame_length_ms": None, "frame_shift_ms": None}
    out["model_args"] = {**(out.get("model_args") or {}), **_model_args(config, include_discriminator, max_inference_len)}
    out.update(_text_fields(config.text, config.text_encoder.n_vocab, out))
    names = list(out.get("speakers") or [])
    if len(names) != config.n_speakers:
        names = [f"speaker_{i}" for i in range(config.n_speakers)]
    out.update(speakers=names, use_speaker_embedding=config.n_speakers > 0, use_d_vector_file=False,
               speaker_embedding_channels=out["model_args"]["speaker_embedding_channels"])
    return out

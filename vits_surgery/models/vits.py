"""The VITS model: organs composed for training, inference and voice conversion.

Organs are attributes with the names users write (``model.decoder.parameters()``):
``text_encoder``, ``duration_predictor``, ``posterior_encoder``, ``flow``, ``decoder``,
``speaker_embedding`` (multi-speaker models) and ``discriminator`` (when built).

The training forward is split into public steps (:meth:`VITS.encode_text`,
:meth:`VITS.encode_audio`, :meth:`VITS.align`, :meth:`VITS.duration_nll`,
:meth:`VITS.decode_segment`) so a trainer can run each under ``no_grad`` or skip it
when the organs it trains do not need it; :meth:`VITS.forward` runs them all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from ..config import VITSConfig
from .commons import generate_path, length_mask, rand_slice_segments, slice_segments
from .decoder import Generator
from .discriminators import VITSDiscriminator
from .duration import DurationPredictor, StochasticDurationPredictor
from .flow import ResidualCouplingFlow
from .posterior import PosteriorEncoder
from .text_encoder import TextEncoder, TextEncoderOutput

__all__ = ["VITS", "TrainNoise", "VITSTrainOutput", "InferenceOutput", "ORGANS"]

#: Organ attribute names, in data-flow order.
ORGANS = (
    "text_encoder",
    "duration_predictor",
    "posterior_encoder",
    "flow",
    "decoder",
    "speaker_embedding",
    "discriminator",
)


@dataclass
class TrainNoise:
    """Random draws of one training forward, given explicitly for exact reproduction.

    Attributes:
        posterior: [B, C, T_y] standard normal noise of the posterior sample z.
        duration: [B, 2, T_x] standard normal noise of the SDP posterior (e_q).
        segment_starts: [B] latent-frame start of each decoded segment.
    """

    posterior: torch.Tensor | None = None
    duration: torch.Tensor | None = None
    segment_starts: torch.Tensor | None = None


@dataclass
class VITSTrainOutput:
    """Everything the losses need from one training forward (shapes in the field comments)."""

    x_mask: torch.Tensor  # [B, 1, T_x]
    y_mask: torch.Tensor  # [B, 1, T_y]
    m_p: torch.Tensor  # [B, C, T_x] prior mean per token
    logs_p: torch.Tensor  # [B, C, T_x]
    z: torch.Tensor  # [B, C, T_y] posterior sample
    m_q: torch.Tensor  # [B, C, T_y]
    logs_q: torch.Tensor  # [B, C, T_y]
    z_p: torch.Tensor  # [B, C, T_y] flow(z)
    path: torch.Tensor  # [B, T_x, T_y] MAS alignment
    m_p_expanded: torch.Tensor  # [B, C, T_y]
    logs_p_expanded: torch.Tensor  # [B, C, T_y]
    duration_nll: torch.Tensor | None  # [B] summed over tokens
    audio_hat: torch.Tensor | None  # [B, 1, S * hop] decoded segment
    segment_starts: torch.Tensor | None  # [B] latent frames
    g: torch.Tensor | None  # [B, gin, 1]


class InferenceOutput(NamedTuple):
    """Result of :meth:`VITS.infer`."""

    audio: torch.Tensor  # [B, 1, N] zero past audio_lengths
    audio_lengths: torch.Tensor  # [B] samples
    durations: torch.Tensor  # [B, T_x] frames per token (integer-valued float)
    path: torch.Tensor  # [B, T_x, T_y]
    z: torch.Tensor  # [B, C, T_y] latent fed to the decoder
    y_mask: torch.Tensor  # [B, 1, T_y]


class VITS(nn.Module):
    """VITS generator (and optionally its discriminator).

    Args:
        config: the whole model configuration.
        with_discriminator: build the multi-period/scale discriminator (needed to train
            waveform-shaping organs adversarially; not needed for inference).
    """

    def __init__(self, config: VITSConfig, with_discriminator: bool = True) -> None:
        super().__init__()
        self.config = config
        gin = config.gin_channels
        hidden = config.text_encoder.hidden_channels
        self.text_encoder = TextEncoder(config.text_encoder, config.inter_channels)
        self.posterior_encoder = PosteriorEncoder(
            config.posterior_encoder, config.spec_channels, config.inter_channels, gin
        )
        self.flow = ResidualCouplingFlow(config.flow, config.inter_channels, gin)
        dp_cfg = config.duration_predictor
        dp_gin = gin if dp_cfg.condition_on_speaker else 0
        dp_cls = StochasticDurationPredictor if dp_cfg.stochastic else DurationPredictor
        self.duration_predictor = dp_cls(dp_cfg, hidden, dp_gin)
        self.decoder = Generator(config.decoder, config.inter_channels, gin)
        self.speaker_embedding = nn.Embedding(config.n_speakers, gin) if config.n_speakers > 0 else None
        self.discriminator = VITSDiscriminator(config.discriminator) if with_discriminator else None
        #: Default cap on the latent frames :meth:`infer` decodes (None = no cap). Coqui's
        #: ``max_inference_len``: the Coqui loader sets it; it is not part of the config.
        self.max_inference_frames: int | None = None

    # ------------------------------------------------------------------ helpers
    @property
    def hop_length(self) -> int:
        """Waveform samples per latent frame."""
        return self.config.audio.hop_length

    def audio_length(self, frames: torch.Tensor) -> torch.Tensor:
        """Samples the decoder produces from ``frames`` latent frames (any shape, integer).

        ``frames * hop_length`` unless an upsampling kernel minus its rate is odd: then each
        transposed convolution adds a sample (e.g. rates 5,4,4,2 with kernels 10,8,8,4 give
        ``160 * frames + 32``), and Coqui returns those samples too.
        """
        n = frames
        dec = self.config.decoder
        for rate, kernel in zip(dec.upsample_rates, dec.upsample_kernel_sizes, strict=True):
            n = (n - 1) * rate - 2 * ((kernel - rate) // 2) + kernel  # ConvTranspose1d output length
        return n

    def speaker_vector(self, speakers: torch.Tensor | None) -> torch.Tensor | None:
        """Speaker conditioning ``g`` [B, gin, 1] from speaker ids [B], or None."""
        if self.speaker_embedding is None:
            return None
        if speakers is None:
            raise ValueError(
                f"this model has {self.config.n_speakers} speakers: pass speaker ids (0..{self.config.n_speakers - 1})"
            )
        speakers = torch.as_tensor(speakers, device=self.speaker_embedding.weight.device).long().view(-1)
        if int(speakers.min()) < 0 or int(speakers.max()) >= self.config.n_speakers:
            raise ValueError(
                f"speaker id {int(speakers.max())} out of range: this model has {self.config.n_speakers} speakers"
            )
        return self.speaker_embedding(speakers).unsqueeze(-1)  # [B, gin, 1]

    def _dp_g(self, g: torch.Tensor | None) -> torch.Tensor | None:
        return g if self.config.duration_predictor.condition_on_speaker else None

    # ------------------------------------------------------------------ training steps
    def encode_text(self, tokens: torch.Tensor, token_lengths: torch.Tensor) -> TextEncoderOutput:
        """Prior text encoder: hidden states and per-token Gaussian (m_p, logs_p)."""
        return self.text_encoder(tokens, token_lengths)

    def encode_audio(
        self,
        spec: torch.Tensor,
        spec_lengths: torch.Tensor,
        g: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ):
        """Posterior encoder on the linear spectrogram [B, F, T_y]: (z, m_q, logs_q, mask)."""
        return self.posterior_encoder(spec, spec_lengths, g=g, noise=noise, generator=generator)

    @staticmethod
    def prior_log_likelihood(z_p: torch.Tensor, m_p: torch.Tensor, logs_p: torch.Tensor) -> torch.Tensor:
        """log N(z_p[:, :, j]; m_p[:, :, i], exp(logs_p[:, :, i])) summed over channels.

        Args:
            z_p: [B, C, T_y]; m_p, logs_p: [B, C, T_x].

        Returns:
            [B, T_x, T_y] log-likelihood of frame j under token i.
        """
        inv_var = torch.exp(-2.0 * logs_p)  # [B, C, T_x]
        const = torch.sum(-0.5 * math.log(2 * math.pi) - logs_p, dim=1).unsqueeze(-1)  # [B, T_x, 1]
        quad = torch.matmul(inv_var.transpose(1, 2), -0.5 * z_p**2)  # [B, T_x, T_y]
        cross = torch.matmul((m_p * inv_var).transpose(1, 2), z_p)  # [B, T_x, T_y]
        mean_term = torch.sum(-0.5 * m_p**2 * inv_var, dim=1).unsqueeze(-1)  # [B, T_x, 1]
        return quad + cross + const + mean_term

    def align(
        self,
        z_p: torch.Tensor,
        m_p: torch.Tensor,
        logs_p: torch.Tensor,
        x_mask: torch.Tensor,
        y_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Monotonic alignment search on the prior log-likelihood (no gradients).

        Returns:
            [B, T_x, T_y] hard path.
        """
        from ..align import maximum_path

        with torch.no_grad():
            log_p = self.prior_log_likelihood(z_p, m_p, logs_p)  # [B, T_x, T_y]
            attn_mask = x_mask.transpose(1, 2) * y_mask  # [B, T_x, T_y]
            return maximum_path(log_p, attn_mask).detach()

    def duration_nll(
        self,
        hidden: torch.Tensor,
        x_mask: torch.Tensor,
        path: torch.Tensor,
        g: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Duration loss per item [B] (SDP negative log-likelihood or log-duration SSE).

        The input is detached when ``config.duration_predictor.detach_input`` (VITS default).
        """
        durations = path.sum(dim=2).unsqueeze(1)  # [B, 1, T_x]
        return self.duration_nll_of(hidden, x_mask, durations, g, noise, generator)

    def duration_nll_of(
        self,
        hidden: torch.Tensor,
        x_mask: torch.Tensor,
        durations: torch.Tensor,
        g: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """:meth:`duration_nll` given the durations [B, 1, T_x] (frames per token, float) instead
        of the path; the cached cadence step (:mod:`vits_surgery.durations.step`) calls it."""
        g = self._dp_g(g)
        if self.config.duration_predictor.detach_input:
            hidden = hidden.detach()
            g = g.detach() if g is not None else None
        if isinstance(self.duration_predictor, StochasticDurationPredictor):
            return self.duration_predictor.nll(hidden, x_mask, durations, g=g, noise=noise, generator=generator)
        return self.duration_predictor.loss(hidden, x_mask, durations, g=g)

    @staticmethod
    def expand_prior(path: torch.Tensor, m_p: torch.Tensor, logs_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token-level prior to frame level along the path: ([B, C, T_y], [B, C, T_y])."""
        return torch.matmul(m_p, path), torch.matmul(logs_p, path)

    def decode_segment(
        self,
        z: torch.Tensor,
        spec_lengths: torch.Tensor,
        g: torch.Tensor | None = None,
        starts: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode a random ``segment_size`` window of z.

        Returns:
            (audio [B, 1, S * hop], starts [B] in latent frames).
        """
        size = self.config.segment_size
        if starts is None:
            z_slice, starts = rand_slice_segments(z, spec_lengths, size, generator=generator)
        else:
            z_slice = slice_segments(z, starts, size)
        return self.decoder(z_slice, g=g), starts

    def forward(
        self,
        tokens: torch.Tensor,
        token_lengths: torch.Tensor,
        spec: torch.Tensor,
        spec_lengths: torch.Tensor,
        speakers: torch.Tensor | None = None,
        noise: TrainNoise | None = None,
        generator: torch.Generator | None = None,
        decode: bool = True,
        duration: bool = True,
    ) -> VITSTrainOutput:
        """Full training forward.

        Args:
            tokens: [B, T_x] token ids; token_lengths: [B].
            spec: [B, F, T_y] linear spectrogram; spec_lengths: [B].
            speakers: [B] speaker ids (multi-speaker models).
            noise: explicit random draws (see :class:`TrainNoise`); missing parts are sampled.
            generator: RNG for the sampled parts.
            decode: run the decoder on a random segment.
            duration: compute the duration loss.
        """
        noise = noise or TrainNoise()
        g = self.speaker_vector(speakers)
        enc = self.encode_text(tokens, token_lengths)
        z, m_q, logs_q, y_mask = self.encode_audio(spec, spec_lengths, g, noise.posterior, generator)
        z_p = self.flow(z, y_mask, g=g).z
        path = self.align(z_p, enc.m_p, enc.logs_p, enc.mask, y_mask)
        dur = self.duration_nll(enc.hidden, enc.mask, path, g, noise.duration, generator) if duration else None
        m_e, logs_e = self.expand_prior(path, enc.m_p, enc.logs_p)
        audio_hat, starts = (None, None)
        if decode:
            audio_hat, starts = self.decode_segment(z, spec_lengths, g, noise.segment_starts, generator)
        return VITSTrainOutput(
            x_mask=enc.mask, y_mask=y_mask, m_p=enc.m_p, logs_p=enc.logs_p, z=z, m_q=m_q, logs_q=logs_q,
            z_p=z_p, path=path, m_p_expanded=m_e, logs_p_expanded=logs_e, duration_nll=dur,
            audio_hat=audio_hat, segment_starts=starts, g=g,
        )

    # ------------------------------------------------------------------ inference
    def predict_durations(
        self,
        enc: TextEncoderOutput,
        g: torch.Tensor | None = None,
        noise_scale_w: float = 0.8,
        length_scale: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Integer frame counts per token [B, T_x]: ``ceil(exp(logw) * mask * length_scale)``."""
        logw = self.duration_predictor.infer(
            enc.hidden, enc.mask, g=self._dp_g(g), noise_scale=noise_scale_w, generator=generator
        )  # [B, 1, T_x]
        w = torch.exp(logw) * enc.mask * length_scale
        return torch.ceil(w).squeeze(1)  # [B, T_x]

    def _check_tokens(
        self, tokens: torch.Tensor | list, lengths: torch.Tensor | list | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate inference inputs: ([B, T_x] long tokens, [B] long lengths), or a clear ValueError."""
        tokens = torch.as_tensor(tokens)
        if tokens.dim() == 1:
            tokens = tokens.unsqueeze(0)
        if tokens.dim() != 2 or tokens.numel() == 0:
            raise ValueError(f"infer() needs a non-empty [T_x] or [B, T_x] tensor of token ids, got shape {tuple(tokens.shape)}")
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise ValueError(f"infer() needs integer token ids, got dtype {tokens.dtype}")
        tokens = tokens.long()
        n_vocab = self.config.text_encoder.n_vocab
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= n_vocab:
            bad = low if low < 0 else high
            raise ValueError(
                f"token id {bad} is outside this model's vocabulary (0..{n_vocab - 1}); was the text "
                "tokenized with another model's symbol table?"
            )
        if lengths is None:
            lengths = torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.long)
        lengths = torch.as_tensor(lengths).long().view(-1).cpu()
        if lengths.numel() != tokens.shape[0] or int(lengths.min()) < 1 or int(lengths.max()) > tokens.shape[1]:
            raise ValueError(
                f"lengths {lengths.tolist()} must hold one value in 1..{tokens.shape[1]} per row of the "
                f"{tuple(tokens.shape)} tokens"
            )
        return tokens, lengths

    def infer(
        self,
        tokens: torch.Tensor,
        lengths: torch.Tensor | None = None,
        speaker: torch.Tensor | int | None = None,
        noise_scale: float | None = None,
        noise_scale_w: float | None = None,
        length_scale: float | None = None,
        durations: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        max_frames: int | None = None,
    ) -> InferenceOutput:
        """Synthesize speech from token ids.

        Args:
            tokens: [B, T_x] or [T_x] token ids.
            lengths: [B] valid lengths (default: all of T_x).
            speaker: speaker id(s) for multi-speaker models.
            noise_scale: prior noise (default ``config.noise_scale``).
            noise_scale_w: duration-predictor noise (default ``config.noise_scale_w``).
            length_scale: duration multiplier, >1 is slower (default ``config.length_scale``).
            durations: [B, T_x] frames per token; overrides the predictor (and length_scale).
                Fractional values are rounded up (Coqui ``aux_input["durations"]``).
            generator: RNG for the noise.
            max_frames: cap on latent frames decoded (default ``self.max_inference_frames``).
                The flow runs on the whole utterance; only its output is cut before the
                decoder (Coqui ``max_inference_len``).

        Returns:
            :class:`InferenceOutput` with ``audio`` [B, 1, N] and ``durations`` [B, T_x].
        """
        cfg = self.config
        noise_scale = cfg.noise_scale if noise_scale is None else noise_scale
        noise_scale_w = cfg.noise_scale_w if noise_scale_w is None else noise_scale_w
        length_scale = cfg.length_scale if length_scale is None else length_scale
        device = next(self.parameters()).device
        tokens, lengths = self._check_tokens(tokens, lengths)
        tokens, lengths = tokens.to(device), lengths.to(device)
        if speaker is not None:
            speaker = torch.as_tensor(speaker, device=device).long().view(-1).expand(tokens.shape[0])
        g = self.speaker_vector(speaker)
        enc = self.encode_text(tokens, lengths)
        if durations is None:
            w_ceil = self.predict_durations(enc, g, noise_scale_w, length_scale, generator)
        else:
            w = torch.as_tensor(durations, dtype=enc.m_p.dtype, device=device).reshape(tokens.shape)
            w_ceil = torch.ceil(w) * enc.mask.squeeze(1)
        y_lengths = torch.clamp_min(w_ceil.sum(dim=1), 1).long()  # [B]
        y_mask = length_mask(y_lengths, int(y_lengths.max()), enc.m_p.dtype)  # [B, 1, T_y]
        attn_mask = enc.mask.transpose(1, 2) * y_mask  # [B, T_x, T_y]
        path = generate_path(w_ceil, attn_mask)  # [B, T_x, T_y]
        m_e, logs_e = self.expand_prior(path, enc.m_p, enc.logs_p)
        draw_on = generator.device if generator is not None else "cpu"  # the generator's own device
        eps = torch.randn(m_e.shape, generator=generator, device=draw_on, dtype=m_e.dtype).to(device)
        z_p = m_e + eps * torch.exp(logs_e) * noise_scale
        z = self.flow(z_p, y_mask, g=g, reverse=True).z * y_mask
        max_frames = self.max_inference_frames if max_frames is None else max_frames
        if max_frames is not None:  # cut after the flow, as Coqui does
            z, y_mask = z[:, :, :max_frames], y_mask[:, :, :max_frames]
            y_lengths = y_lengths.clamp(max=max_frames)
        audio = self.decoder(z, g=g)  # [B, 1, T_y * hop]
        audio_lengths = self.audio_length(y_lengths)  # [B]
        audio = audio * length_mask(audio_lengths, audio.shape[-1], audio.dtype)
        return InferenceOutput(audio, audio_lengths, w_ceil, path, z, y_mask)

    def voice_conversion(
        self,
        spec: torch.Tensor,
        spec_lengths: torch.Tensor,
        source_speaker: torch.Tensor | int,
        target_speaker: torch.Tensor | int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Convert speech between speakers of a multi-speaker model.

        Posterior encoder and flow with the source speaker, reverse flow and decoder with the
        target speaker.

        Args:
            spec: [B, F, T_y] linear spectrogram of the source speech; spec_lengths: [B].

        Returns:
            [B, 1, T_y * hop] converted audio.
        """
        if self.speaker_embedding is None:
            raise ValueError("voice conversion needs a multi-speaker model (n_speakers > 0)")
        b = spec.shape[0]
        g_src = self.speaker_vector(torch.as_tensor(source_speaker).view(-1).expand(b))
        g_tgt = self.speaker_vector(torch.as_tensor(target_speaker).view(-1).expand(b))
        z, _, _, y_mask = self.encode_audio(spec, spec_lengths, g_src, generator=generator)
        z_p = self.flow(z, y_mask, g=g_src).z
        z_hat = self.flow(z_p, y_mask, g=g_tgt, reverse=True).z
        return self.decoder(z_hat * y_mask, g=g_tgt)

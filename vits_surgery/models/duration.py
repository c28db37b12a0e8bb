"""Duration predictors: the stochastic one of VITS (SDP) and the deterministic one.

The SDP (Kim et al. 2021, "VITS", section 2.2.2 and appendix) models log-durations with a
normalizing flow conditioned on the text hidden states, trained by variational dequantization
and augmentation: a posterior flow turns noise ``e_q`` into ``(u, nu)``, ``u`` in (0, 1)
dequantizes the integer durations ``d`` and ``nu`` augments them; the main flow maps
``(log(d - u), nu)`` to a standard normal. Inference runs the main flow backwards from noise.

Parameter names are Coqui TTS 0.28's: ``flows.0`` is an :class:`ElementwiseAffine`
(``translation``, ``log_scale``), ``flows.1..n`` are :class:`ConvFlow` s; the channel flips
between them carry no parameters and are applied inline.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DurationPredictorConfig
from .dds import DDSConv
from .norms import GlowLayerNorm, LayerNorm
from .splines import unconstrained_rational_quadratic_spline

__all__ = [
    "FlowStep",
    "ElementwiseAffine",
    "ConvFlow",
    "StochasticDurationPredictor",
    "DurationPredictor",
    "LOG_CLAMP_MIN",
    "LOG_DURATION_EPS",
]

LOG_CLAMP_MIN = 1e-5
"""The SDP's log flow takes ``log(max(x, 1e-5))`` (VITS)."""

LOG_DURATION_EPS = 1e-6
"""The deterministic predictor's target is ``log(d + 1e-6)`` (VITS, Coqui)."""

_LOG_2PI = math.log(2 * math.pi)


class FlowStep(NamedTuple):
    """Output of one flow layer."""

    z: torch.Tensor
    """[B, C, T] transformed tensor, zero where masked."""
    logdet: torch.Tensor
    """[B] log |det J| summed over valid positions (0 in reverse)."""


def _standard_normal(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``randn`` shaped ``shape`` with ``like``'s dtype/device, drawn from ``generator`` if given."""
    if generator is None:
        return torch.randn(shape, dtype=like.dtype, device=like.device)
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=generator.device).to(like.device)


def _check_shape(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(tensor.shape)}")


class ElementwiseAffine(nn.Module):
    """``y = translation + exp(log_scale) * x`` per channel (VITS ``ElementwiseAffine``).

    Args:
        channels: C.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.translation = nn.Parameter(torch.zeros(channels, 1))
        self.log_scale = nn.Parameter(torch.zeros(channels, 1))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, reverse: bool = False) -> FlowStep:
        """Args: x [B, C, T], x_mask [B, 1, T]. Returns: :class:`FlowStep`."""
        if reverse:
            z = (x - self.translation) * torch.exp(-self.log_scale) * x_mask
            return FlowStep(z, x.new_zeros(x.shape[0]))
        z = (self.translation + torch.exp(self.log_scale) * x) * x_mask
        return FlowStep(z, torch.sum(self.log_scale * x_mask, dim=[1, 2]))


def _log_flow(x: torch.Tensor, x_mask: torch.Tensor, reverse: bool = False) -> FlowStep:
    """``y = log(max(x, 1e-5))`` (forward) or ``exp(x)`` (reverse), masked."""
    if reverse:
        return FlowStep(torch.exp(x) * x_mask, x.new_zeros(x.shape[0]))
    y = torch.log(torch.clamp_min(x, LOG_CLAMP_MIN)) * x_mask
    return FlowStep(y, torch.sum(-y, dim=[1, 2]))


class ConvFlow(nn.Module):
    """Coupling layer: the second channel half goes through an RQ spline whose parameters a
    DDS conv computes from the first half (and the conditioning).

    Args:
        in_channels: C (even); C/2 channels condition, C/2 are transformed.
        filter_channels: hidden width F of the conditioner.
        kernel_size: DDS kernel.
        n_layers: DDS layers.
        num_bins: spline bins K.
        tail_bound: spline interval half-width.
    """

    def __init__(
        self, in_channels: int, filter_channels: int, kernel_size: int, n_layers: int, num_bins: int = 10,
        tail_bound: float = 5.0,
    ) -> None:
        super().__init__()
        if in_channels % 2 != 0:
            raise ValueError(f"ConvFlow in_channels must be even, got {in_channels}")
        self.half_channels = in_channels // 2
        self.filter_channels = filter_channels
        self.num_bins = num_bins
        self.tail_bound = tail_bound
        self.pre = nn.Conv1d(self.half_channels, filter_channels, 1)
        self.convs = DDSConv(filter_channels, kernel_size, n_layers, p_dropout=0.0)
        self.proj = nn.Conv1d(filter_channels, self.half_channels * (3 * num_bins - 1), 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(
        self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None, reverse: bool = False
    ) -> FlowStep:
        """Args: x [B, C, T], x_mask [B, 1, T], g [B, F, T] or None. Returns: :class:`FlowStep`."""
        x0, x1 = torch.split(x, [self.half_channels, self.half_channels], dim=1)
        h = self.convs(self.pre(x0), x_mask, g=g)  # [B, F, T]
        h = self.proj(h) * x_mask  # [B, half*(3K-1), T]
        b, c, t = x0.shape
        h = h.reshape(b, c, -1, t).permute(0, 1, 3, 2)  # [B, half, T, 3K-1]
        k = self.num_bins
        scale = math.sqrt(self.filter_channels)
        spline = unconstrained_rational_quadratic_spline(
            x1, h[..., :k] / scale, h[..., k : 2 * k] / scale, h[..., 2 * k :],
            inverse=reverse, tails="linear", tail_bound=self.tail_bound,
        )
        z = torch.cat([x0, spline.outputs], dim=1) * x_mask
        if reverse:
            return FlowStep(z, x.new_zeros(b))
        return FlowStep(z, torch.sum(spline.logabsdet * x_mask, dim=[1, 2]))


def _build_flows(cfg: DurationPredictorConfig) -> nn.ModuleList:
    flows = nn.ModuleList([ElementwiseAffine(2)])
    for _ in range(cfg.n_flows):
        flows.append(
            ConvFlow(2, cfg.filter_channels, cfg.kernel_size, cfg.dds_layers, cfg.num_bins, cfg.tail_bound)
        )
    return flows


def _run_flows(
    flows: nn.ModuleList, z: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor, logdet: torch.Tensor | None = None
) -> FlowStep:
    """Forward through ``[affine, conv flow, flip, conv flow, flip, ...]``; logdets added to ``logdet``.

    The accumulation order (start value first, then layer by layer) follows VITS and Coqui so
    float32 sums round identically.
    """
    if logdet is None:
        logdet = z.new_zeros(z.shape[0])
    for i, flow in enumerate(flows):
        step = flow(z, x_mask) if i == 0 else flow(z, x_mask, g=g)
        z, logdet = step.z, logdet + step.logdet
        if i > 0:
            z = torch.flip(z, [1])
    return FlowStep(z, logdet)


def _reverse_flows(
    flows: nn.ModuleList, z: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor, skip_first_conv_flow: bool = False
) -> torch.Tensor:
    """Inverse of :func:`_run_flows`.

    ``skip_first_conv_flow`` leaves out ``flows[1]`` (its flip is kept). That layer only
    transforms channel 1, which the following affine layer keeps separate from channel 0, so
    channel 0 (the log-durations) is the same either way; VITS skips it to save time.
    """
    for i in range(len(flows) - 1, -1, -1):
        if i == 0:
            z = flows[0](z, x_mask, reverse=True).z
            continue
        z = torch.flip(z, [1])
        if not (i == 1 and skip_first_conv_flow):
            z = flows[i](z, x_mask, g=g, reverse=True).z
    return z


class StochasticDurationPredictor(nn.Module):
    """VITS stochastic duration predictor (``dp`` / Coqui ``duration_predictor`` with ``use_sdp``).

    Args:
        cfg: duration-predictor slice of the config (``filter_channels``, ``kernel_size``,
            ``p_dropout``, ``n_flows``, ``num_bins``, ``tail_bound``, ``dds_layers``,
            ``drop_last_flow_at_inference``).
        in_channels: width of the text hidden states ``x`` (including language channels, if any).
        gin_channels: speaker-vector width; 0 = no ``cond`` layer.
        lang_channels: language-vector width (Coqui multilingual ``cond_lang``); 0 = none.
    """

    def __init__(
        self, cfg: DurationPredictorConfig, in_channels: int, gin_channels: int, lang_channels: int = 0
    ) -> None:
        super().__init__()
        self.cfg = cfg
        fc = cfg.filter_channels
        self.pre = nn.Conv1d(in_channels, fc, 1)
        self.proj = nn.Conv1d(fc, fc, 1)
        self.convs = DDSConv(fc, cfg.kernel_size, cfg.dds_layers, p_dropout=cfg.p_dropout)
        self.flows = _build_flows(cfg)
        self.post_pre = nn.Conv1d(1, fc, 1)
        self.post_proj = nn.Conv1d(fc, fc, 1)
        self.post_convs = DDSConv(fc, cfg.kernel_size, cfg.dds_layers, p_dropout=cfg.p_dropout)
        self.post_flows = _build_flows(cfg)
        if gin_channels > 0:
            self.cond = nn.Conv1d(gin_channels, fc, 1)
        if lang_channels > 0:
            self.cond_lang = nn.Conv1d(lang_channels, fc, 1)

    def _condition(
        self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None, lang_emb: torch.Tensor | None
    ) -> torch.Tensor:
        """Text hidden states -> flow conditioning [B, F, T] (zero where masked)."""
        h = self.pre(x)  # [B, F, T]
        if g is not None:
            if not hasattr(self, "cond"):
                raise ValueError("a speaker vector g was given but the duration predictor has gin_channels=0")
            h = h + self.cond(g)
        if lang_emb is not None:
            if not hasattr(self, "cond_lang"):
                raise ValueError("lang_emb was given but the duration predictor has lang_channels=0")
            h = h + self.cond_lang(lang_emb)
        h = self.convs(h, x_mask)
        return self.proj(h) * x_mask

    def nll(
        self,
        x: torch.Tensor,
        x_mask: torch.Tensor,
        durations: torch.Tensor,
        g: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        lang_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Variational upper bound of ``-log p(d | x)`` per item (VITS eq. 15, plus ``log q``).

        Args:
            x: [B, H, T] text hidden states (not detached here).
            x_mask: [B, 1, T].
            durations: [B, 1, T] frame counts (float).
            g: [B, gin, 1] speaker vector or None.
            noise: [B, 2, T] posterior noise ``e_q``; ``randn`` (masked) when None.
            generator: RNG for ``noise``.
            lang_emb: [B, L, 1] language vector or None.

        Returns:
            [B] negative log-likelihood summed over each item's tokens (``nll + log q``).
        """
        b, _, t = x.shape
        _check_shape("durations", durations, (b, 1, t))
        if noise is None:
            noise = _standard_normal((b, 2, t), x, generator)
        _check_shape("noise", noise, (b, 2, t))
        h = self._condition(x, x_mask, g, lang_emb)  # [B, F, T]
        h_w = self.post_proj(self.post_convs(self.post_pre(durations), x_mask)) * x_mask  # [B, F, T]
        e_q = noise * x_mask  # [B, 2, T]
        z_q, logdet_q = _run_flows(self.post_flows, e_q, x_mask, h + h_w)
        z_u, z1 = torch.split(z_q, [1, 1], dim=1)
        u = torch.sigmoid(z_u) * x_mask  # dequantization noise in (0, 1)
        z0 = (durations - u) * x_mask
        logdet_q = logdet_q + torch.sum((F.logsigmoid(z_u) + F.logsigmoid(-z_u)) * x_mask, dim=[1, 2])
        log_q = torch.sum(-0.5 * (_LOG_2PI + e_q.pow(2)) * x_mask, dim=[1, 2]) - logdet_q  # [B]
        log_step = _log_flow(z0, x_mask)
        z, logdet = _run_flows(self.flows, torch.cat([log_step.z, z1], dim=1), x_mask, h, logdet=log_step.logdet)
        nll = torch.sum(0.5 * (_LOG_2PI + z.pow(2)) * x_mask, dim=[1, 2]) - logdet  # [B]
        return nll + log_q

    forward = nll

    def infer(
        self,
        x: torch.Tensor,
        x_mask: torch.Tensor,
        g: torch.Tensor | None = None,
        noise_scale: float = 0.8,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        lang_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sample log-durations by running the main flow backwards.

        With ``cfg.drop_last_flow_at_inference`` the first ConvFlow (the last one in reverse
        order) is skipped, as VITS, Coqui and Piper do ("remove a useless vflow"); it only
        acts on the discarded channel, so ``logw`` does not depend on this choice.

        Args:
            x: [B, H, T] text hidden states.
            x_mask: [B, 1, T].
            g: [B, gin, 1] speaker vector or None.
            noise_scale: multiplies the noise.
            noise: [B, 2, T] standard-normal noise; ``randn`` when None.
            generator: RNG for ``noise``.
            lang_emb: [B, L, 1] language vector or None.

        Returns:
            logw [B, 1, T], zero where masked.
        """
        b, _, t = x.shape
        if noise is None:
            noise = _standard_normal((b, 2, t), x, generator)
        _check_shape("noise", noise, (b, 2, t))
        h = self._condition(x, x_mask, g, lang_emb)
        z = _reverse_flows(self.flows, noise * noise_scale, x_mask, h, self.cfg.drop_last_flow_at_inference)
        return z[:, :1]


class DurationPredictor(nn.Module):
    """Deterministic duration predictor: two conv-ReLU-norm-dropout blocks and a projection.

    ``cfg.deterministic_style`` picks the norm layout: ``"vits"`` (original VITS / Piper,
    gamma/beta [F], eps 1e-5) or ``"glow_tts"`` (Coqui ``use_sdp=False``, gamma/beta
    [1, F, 1], eps 1e-4). Keys: ``conv_1``, ``norm_1``, ``conv_2``, ``norm_2``, ``proj``,
    optional ``cond`` (speaker) and ``cond_lang`` (language).

    Args:
        cfg: duration-predictor slice (``deterministic_filter_channels``, ``kernel_size``,
            ``p_dropout``, ``deterministic_style``).
        in_channels: width of ``x`` (including language channels, if any).
        gin_channels: speaker-vector width; 0 = no ``cond``.
        lang_channels: language-vector width; 0 = no ``cond_lang``.
    """

    def __init__(
        self, cfg: DurationPredictorConfig, in_channels: int, gin_channels: int, lang_channels: int = 0
    ) -> None:
        super().__init__()
        self.cfg = cfg
        fc, k = cfg.deterministic_filter_channels, cfg.kernel_size
        norm = GlowLayerNorm if cfg.deterministic_style == "glow_tts" else LayerNorm
        self.drop = nn.Dropout(cfg.p_dropout)
        self.conv_1 = nn.Conv1d(in_channels, fc, k, padding=k // 2)
        self.norm_1 = norm(fc)
        self.conv_2 = nn.Conv1d(fc, fc, k, padding=k // 2)
        self.norm_2 = norm(fc)
        self.proj = nn.Conv1d(fc, 1, 1)
        if gin_channels > 0:
            self.cond = nn.Conv1d(gin_channels, in_channels, 1)
        if lang_channels > 0:
            self.cond_lang = nn.Conv1d(lang_channels, in_channels, 1)

    def forward(
        self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None,
        lang_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args: x [B, H, T], x_mask [B, 1, T], g [B, gin, 1] or None, lang_emb [B, L, 1] or None.

        Returns:
            logw [B, 1, T], zero where masked.
        """
        if g is not None:
            if not hasattr(self, "cond"):
                raise ValueError("a speaker vector g was given but the duration predictor has gin_channels=0")
            x = x + self.cond(g)
        if lang_emb is not None:
            if not hasattr(self, "cond_lang"):
                raise ValueError("lang_emb was given but the duration predictor has lang_channels=0")
            x = x + self.cond_lang(lang_emb)
        x = self.drop(self.norm_1(torch.relu(self.conv_1(x * x_mask))))  # [B, F, T]
        x = self.drop(self.norm_2(torch.relu(self.conv_2(x * x_mask))))  # [B, F, T]
        return self.proj(x * x_mask) * x_mask  # [B, 1, T]

    def loss(
        self,
        x: torch.Tensor,
        x_mask: torch.Tensor,
        durations: torch.Tensor,
        g: torch.Tensor | None = None,
        lang_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Squared log-duration error per item: ``sum_t (logw - log(d + 1e-6) * mask)^2``.

        Coqui divides the batch sum by ``sum(x_mask)``; that normalisation is the caller's.

        Args:
            x: [B, H, T]; x_mask: [B, 1, T]; durations: [B, 1, T] frame counts; g, lang_emb as
                in :meth:`forward`.

        Returns:
            [B].
        """
        _check_shape("durations", durations, (x.shape[0], 1, x.shape[2]))
        target = torch.log(durations + LOG_DURATION_EPS) * x_mask  # [B, 1, T]
        return torch.sum((self(x, x_mask, g, lang_emb) - target).pow(2), dim=[1, 2])

    def infer(
        self,
        x: torch.Tensor,
        x_mask: torch.Tensor,
        g: torch.Tensor | None = None,
        noise_scale: float = 0.8,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        lang_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Same as :meth:`forward`; ``noise_scale``, ``noise`` and ``generator`` are ignored
        (they exist so both predictors share one inference signature)."""
        return self(x, x_mask, g, lang_emb)

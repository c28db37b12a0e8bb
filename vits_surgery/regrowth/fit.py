"""Training loops of organ regrowth, one per regrowable organ (teacher forcing on synthesized data).

Each ``fit_*`` function trains the parameters it is given (the caller freezes everything
else with :func:`~vits_surgery.surgery.freeze.apply_plan`) and returns the loss per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..losses import discriminator_loss, kl_loss
from ..models.commons import length_mask
from ..models.vits import VITS
from .regrow_data import Utterance, progress_bar, speaker_vectors

__all__ = [
    "FitOptions",
    "FITTERS",
    "PRECISIONS",
    "bf16_autocast",
    "compiled_forward",
    "cpu_has_fast_bf16",
    "resolve_precision",
    "whitened_prior_loss",
    "fit_posterior",
    "fit_duration_posterior",
    "fit_discriminator",
    "posterior_loss",
    "sdp_nll_per_token",
    "segment_pool",
    "frozen_flow",
    "pool_utterances",
    "text_hidden",
]

GRAD_CLIP = 10.0
"""Global gradient-norm clip of every regrowth optimizer."""
PROJ_INIT_SCALE = 0.1
"""Scale of the posterior ``proj`` weights after the data-dependent bias initialisation."""
INIT_UTTERANCES = 32
"""Utterances whose statistics initialise the posterior encoder."""


@dataclass
class FitOptions:
    """Settings shared by the loops.

    Attributes:
        batch_size: crops / sequences / segments per step.
        crop_frames: spectrogram frames per posterior-encoder crop.
        log_std_floor: hinge floor of the posterior ``logs_q``.
        kl_weight: weight of the VITS KL term (per element, teacher alignment) added to the
            posterior loss; 0 = the teacher-z likelihood alone.
        align_weight: weight of the :func:`alignment_loss` added to the posterior loss.
        align_steps: 0 = the alignment loss joins the posterior loss at every step; > 0 = the
            main fit leaves it out and a final phase of this many extra steps adds it (a fresh
            optimizer, warm-up and cosine schedule at ``align_lr_factor`` times the learning
            rate, no re-initialisation): the cheap teacher-z fit does the bulk of the work and
            the dearer alignment term only sharpens the token boundaries at the end.
        align_lr_factor: learning rate of that final phase relative to the main fit's.
        align_temperature: the alignment logits are the prior log-likelihood summed over
            channels divided by this; 1 is the scale MAS itself compares tokens on, the
            number of latent channels gives the per-channel mean.
        align_log_std: what sets the posterior ``logs_q`` while the alignment loss is on:
            "nll" (default) the teacher-z likelihood, as in the main fit, which calibrates the
            spread to the error of predicting the teacher z; "alignment" the alignment loss
            (whose posterior sample is what MAS sees in training) and the floor hinge only,
            the likelihood then treating ``logs_q`` as a constant (:func:`posterior_loss`).
        prior_weight: weight of the :func:`whitened_prior_loss` (the posterior mean pushed
            through the frozen flow, against the teacher ``z_p`` in units of the prior's
            standard deviation) added to the posterior loss.
        segments_per_utterance: discriminator segments cut from each utterance.
        precision: "fp32", "bf16" (the posterior encoder's WaveNet stack under bfloat16
            autocast; its projection and every loss stay float32) or "auto" (bf16 where the
            CPU has native bfloat16 matrix units, AMX or AVX512-BF16, else fp32; always fp32
            on other devices).
        flow_precision: the dtype of the frozen flow that the KL, alignment and prior terms push
            the posterior through: "fp32" (default) the model's flow itself; "bf16" a frozen
            bfloat16 copy with its weight norm folded (the model's own flow is untouched,
            gradients reach the posterior only; not faster in the alignment steps on the joe
            voice, docs/benchmarks.md); "auto" bf16 where ``precision="auto"`` would pick it.
        compile: run the posterior encoder's WaveNet stack through ``torch.compile`` while it
            trains (a one-off compile of about half a minute, then fewer milliseconds per step;
            the weights and state-dict keys are unchanged).
        progress: tqdm bars.
    """

    batch_size: int = 8
    crop_frames: int = 64
    log_std_floor: float = math.log(0.1)
    kl_weight: float = 0.0
    align_weight: float = 0.0
    align_steps: int = 0
    align_lr_factor: float = 1 / 3
    align_temperature: float = 1.0
    align_log_std: str = "nll"
    prior_weight: float = 0.0
    segments_per_utterance: int = 2
    precision: str = "auto"
    flow_precision: str = "fp32"
    compile: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"FitOptions.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.flow_precision not in PRECISIONS:
            raise ValueError(f"FitOptions.flow_precision must be one of {PRECISIONS}, got {self.flow_precision!r}")
        if self.align_log_std not in ALIGN_LOG_STD:
            raise ValueError(f"FitOptions.align_log_std must be one of {ALIGN_LOG_STD}, got {self.align_log_std!r}")
        if self.align_steps < 0:
            raise ValueError(f"FitOptions.align_steps must be >= 0, got {self.align_steps}")
        if self.align_temperature <= 0 or self.align_lr_factor <= 0:
            raise ValueError("FitOptions.align_temperature and align_lr_factor must be > 0, got "
                             f"{self.align_temperature} and {self.align_lr_factor}")


PRECISIONS = ("auto", "fp32", "bf16")
ALIGN_LOG_STD = ("nll", "alignment")


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bfloat16 matrix instructions (AMX tiles or AVX512-BF16),
    where oneDNN runs bfloat16 convolutions faster than float32."""
    probes = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    for probe in probes:
        try:
            if probe is not None and probe():
                return True
        except Exception:  # noqa: BLE001 - a private probe that fails means "unknown": stay in fp32
            continue
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision ``"auto"`` stands for on ``device`` ("bf16" or "fp32")."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"


@contextmanager
def compiled_forward(module: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Swap ``module.forward`` for its ``torch.compile`` version for as long as the context is
    open; parameters and hooks stay where they are."""
    if not enabled:
        yield
        return
    module.forward = torch.compile(module.forward)
    try:
        yield
    finally:
        del module.forward  # back to the class's forward


@contextmanager
def bf16_autocast(module: torch.nn.Module, device: torch.device, enabled: bool = True) -> Iterator[None]:
    """Run ``module`` under bfloat16 autocast and hand its output back as float32, for as long
    as the context is open (forward hooks, removed on exit)."""
    if not enabled:
        yield
        return
    active: list[torch.autocast] = []

    def enter(_module, _args):
        ctx = torch.autocast(device.type, dtype=torch.bfloat16)
        ctx.__enter__()
        active.append(ctx)

    def leave(_module, _args, output):
        active.pop().__exit__(None, None, None)
        return output.float()

    handles = [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        while active:
            active.pop().__exit__(None, None, None)


def frozen_flow(model: VITS, dtype: torch.dtype = torch.float32) -> Callable[..., torch.Tensor]:
    """``(z, mask, g=None) -> z_p`` through a frozen copy of ``model.flow`` in ``dtype``, weight
    norm folded, output float32. Gradients reach ``z`` (and ``g``), never the copy's weights;
    the model's own flow is neither changed nor shared. The copy is built fresh from the config
    and filled with the effective weights (rather than deep-copied), so it shares none of the
    flow's generated weight-norm classes or hooks, whether or not the flow's weight norm is folded.

    Args (of the returned function):
        z: [B, C, T]; mask: [B, 1, T]; g: [B, gin, 1] or None.
    """
    from ..models.commons import remove_weight_norms
    from ..models.flow import ResidualCouplingFlow

    cfg = model.config
    copy = ResidualCouplingFlow(cfg.flow, cfg.inter_channels, cfg.gin_channels)
    remove_weight_norms(copy)
    with torch.no_grad():
        # effective weights: ``getattr`` on a weight-norm layer computes g * v / ||v||
        for name, dst in copy.named_modules():
            src = model.flow.get_submodule(name)
            for attr, tensor in [*dst.named_parameters(recurse=False), *dst.named_buffers(recurse=False)]:
                value = getattr(src, attr)
                if value.shape != tensor.shape:
                    raise ValueError(f"flow copy: {name}.{attr} has shape {tuple(value.shape)} in the model, "
                                     f"{tuple(tensor.shape)} in the copy")
                tensor.copy_(value)
    device = next(model.flow.parameters()).device
    copy = copy.to(device=device, dtype=dtype).requires_grad_(False).eval()

    def run(z: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        g = None if g is None else g.to(dtype)
        return copy(z.to(dtype), mask.to(dtype), g=g).z.float()

    return run


def _run_steps(name: str, params: Sequence[torch.nn.Parameter], step_loss: Callable[[], torch.Tensor],
               steps: int, lr: float, progress: bool) -> list[float]:
    """``steps`` AdamW updates of ``step_loss()`` (warm-up, cosine decay to lr/10); the loss curve."""
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.8, 0.99), eps=1e-9, weight_decay=0.0)
    warmup = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    curve: list[float] = []
    bar = progress_bar(total=steps, desc=f"regrow: {name}", progress=progress)
    for _ in range(steps):
        loss = step_loss()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"regrow: the {name} loss became {loss.item()} after {len(curve)} steps")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        opt.step()
        sched.step()
        curve.append(loss.item())
        bar.set_postfix(loss=f"{curve[-1]:.4f}", refresh=False)
        bar.update(1)
    bar.close()
    return curve


def _randint(high: int, generator: torch.Generator) -> int:
    """Uniform integer in [0, max(1, high))."""
    return int(torch.randint(max(1, high), (1,), generator=generator))


def _pad_stack(tensors: Sequence[torch.Tensor], length: int) -> torch.Tensor:
    """[C, T_i] tensors -> [B, C, length], zero padded."""
    return torch.stack([F.pad(t, (0, length - t.shape[-1])) for t in tensors])


# ----------------------------------------------------------------------------- posterior encoder
def posterior_loss(m_q: torch.Tensor, logs_q: torch.Tensor, z: torch.Tensor, mask: torch.Tensor,
                   log_std_floor: float, fit_log_std: bool = True) -> torch.Tensor:
    """Masked mean over frames and channels of ``-log N(z; m_q, exp(logs_q))`` plus the hinge
    ``relu(log_std_floor - logs_q)^2``.

    Args:
        m_q, logs_q, z: [B, C, T]; mask: [B, 1, T].
        fit_log_std: False = the likelihood takes ``logs_q`` as a constant (its gradient
            reaches ``m_q`` only, weighted by the current precision); the floor hinge still acts.
    """
    s = logs_q if fit_log_std else logs_q.detach()
    nll = 0.5 * math.log(2 * math.pi) + s + 0.5 * (z - m_q) ** 2 * torch.exp(-2.0 * s)  # [B, C, T]
    hinge = torch.relu(log_std_floor - logs_q) ** 2  # [B, C, T]
    return ((nll + hinge) * mask).sum() / (mask.sum() * m_q.shape[1])


@torch.no_grad()
def _data_init_posterior(model: VITS, utts: Sequence[Utterance], log_std_floor: float) -> None:
    """``pre`` standardizes its output on the data; ``proj`` starts at the marginal Gaussian of
    z (per-channel mean and log-std in the bias) with small weights."""
    pe = model.posterior_encoder
    spec = torch.cat([u.spec for u in utts[:INIT_UTTERANCES]], dim=1).unsqueeze(0)  # [1, F, N]
    z = torch.cat([u.z for u in utts[:INIT_UTTERANCES]], dim=1)  # [C, N]
    h = pe.pre(spec)[0]  # [H, N]
    std = h.std(dim=1).clamp_min(1e-5)
    pe.pre.weight.div_(std.view(-1, 1, 1))
    pe.pre.bias.copy_((pe.pre.bias - h.mean(dim=1)) / std)
    c = pe.out_channels
    pe.proj.weight.mul_(PROJ_INIT_SCALE)
    pe.proj.bias[:c] = z.mean(dim=1)
    pe.proj.bias[c:] = z.std(dim=1).clamp_min(math.exp(log_std_floor)).log()


@dataclass
class TeacherPrior:
    """The text prior of one utterance and its teacher alignment.

    Attributes:
        m_p, logs_p: [C, T_x] per token.
        m_e, logs_e: [C, T_y] expanded along the teacher durations.
        token: [T_y] token index of each frame.
    """

    m_p: torch.Tensor
    logs_p: torch.Tensor
    m_e: torch.Tensor
    logs_e: torch.Tensor
    token: torch.Tensor


@torch.no_grad()
def teacher_prior(model: VITS, utts: Sequence[Utterance]) -> list[TeacherPrior]:
    """The frozen text prior of each utterance, expanded along its teacher durations."""
    from ..models.commons import generate_path

    out = []
    for u in utts:
        enc = model.encode_text(u.tokens.unsqueeze(0), torch.tensor([u.tokens.numel()], device=u.tokens.device))
        y_mask = torch.ones(1, 1, u.frames, device=u.spec.device)
        path = generate_path(u.durations.unsqueeze(0), enc.mask.transpose(1, 2) * y_mask)  # [1, T_x, T_y]
        m_e, logs_e = model.expand_prior(path, enc.m_p, enc.logs_p)  # [1, C, T_y]
        out.append(TeacherPrior(enc.m_p[0], enc.logs_p[0], m_e[0], logs_e[0], path[0].argmax(dim=0)))
    return out


@dataclass
class _PosteriorBatch:
    spec: torch.Tensor  # [B, F, S]
    z: torch.Tensor  # [B, C, S] teacher latent
    m_e: torch.Tensor  # [B, C, S] prior along the teacher path
    logs_e: torch.Tensor  # [B, C, S]
    token: torch.Tensor  # [B, S] token index of each frame
    m_p: torch.Tensor  # [B, C, T_x] prior per token (padded)
    logs_p: torch.Tensor  # [B, C, T_x]
    token_mask: torch.Tensor  # [B, T_x]
    lengths: torch.Tensor  # [B]
    g: torch.Tensor | None


def _posterior_batch(model: VITS, utts: Sequence[Utterance], prior: Sequence[TeacherPrior], opts: FitOptions,
                     generator: torch.Generator) -> _PosteriorBatch:
    idx = [_randint(len(utts), generator) for _ in range(opts.batch_size)]
    crops: list[list[torch.Tensor]] = [[], [], [], [], []]
    for i in idx:
        start = _randint(utts[i].frames - opts.crop_frames + 1, generator)
        p = prior[i]
        for slot, t in zip(crops, (utts[i].spec, utts[i].z, p.m_e, p.logs_e, p.token.unsqueeze(0)), strict=True):
            slot.append(t[:, start : start + opts.crop_frames])
    lengths = torch.tensor([c.shape[-1] for c in crops[0]], device=crops[0][0].device)
    width = int(lengths.max())
    spec, z, m_e, logs_e, token = (_pad_stack(c, width) for c in crops)
    t_x = max(prior[i].m_p.shape[-1] for i in idx)
    token_lengths = torch.tensor([prior[i].m_p.shape[-1] for i in idx], device=lengths.device)
    return _PosteriorBatch(
        spec, z, m_e, logs_e, token[:, 0], _pad_stack([prior[i].m_p for i in idx], t_x),
        _pad_stack([prior[i].logs_p for i in idx], t_x), length_mask(token_lengths, t_x)[:, 0],
        lengths, speaker_vectors(model, [utts[i] for i in idx]),
    )


def alignment_loss(z_p: torch.Tensor, batch: _PosteriorBatch, mask: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy of each frame's teacher token among the utterance's tokens, with the
    prior log-likelihood of ``z_p`` (summed over channels, what MAS compares) divided by
    ``temperature`` as logits, masked mean.

    Args:
        z_p: [B, C, S] flow output of the posterior sample; mask: [B, 1, S].
    """
    log_p = VITS.prior_log_likelihood(z_p, batch.m_p, batch.logs_p) / temperature  # [B, T_x, S]
    log_p = log_p.masked_fill(batch.token_mask.unsqueeze(-1) == 0, float("-inf"))
    ce = F.cross_entropy(log_p, batch.token.long(), reduction="none")  # [B, S]
    return (ce * mask[:, 0]).sum() / mask.sum()


def whitened_prior_loss(z_p: torch.Tensor, z_p_teacher: torch.Tensor, logs_e: torch.Tensor,
                        mask: torch.Tensor) -> torch.Tensor:
    """Masked mean of ``0.5 * ((z_p - z_p_teacher) / sigma_p)^2``: the error of the flow output
    in units of the prior's standard deviation along the teacher path, which is the scale MAS
    compares tokens on.

    Args:
        z_p, z_p_teacher, logs_e: [B, C, S]; mask: [B, 1, S].
    """
    err = (z_p - z_p_teacher) * torch.exp(-logs_e)
    return (0.5 * err**2 * mask).sum() / (mask.sum() * z_p.shape[1])


def fit_posterior(model: VITS, utts: Sequence[Utterance], params: Sequence[torch.nn.Parameter], steps: int,
                  lr: float, opts: FitOptions, generator: torch.Generator) -> list[float]:
    """Fit the posterior encoder on random spectrogram crops: the :func:`posterior_loss` of the
    teacher z, plus ``kl_weight`` times the VITS KL (per element) of a posterior sample pushed
    through the frozen flow against the prior along the teacher durations, plus
    ``align_weight`` times the :func:`alignment_loss` of that sample (at every step, or only in
    a final phase of ``opts.align_steps`` extra steps; ``opts.align_log_std`` says whether the
    likelihood or that loss sets ``logs_q`` while it is on), plus ``prior_weight`` times the
    :func:`whitened_prior_loss` of the posterior mean. ``opts.precision`` picks float32 or
    bfloat16 autocast for the encoder's WaveNet stack, ``opts.flow_precision`` the model's flow
    or a frozen bfloat16 copy (:func:`frozen_flow`) for those terms. Returns the loss of every
    step, the final phase's after the main fit's."""
    _data_init_posterior(model, utts, opts.log_std_floor)
    prior = teacher_prior(model, utts)
    device = utts[0].spec.device
    bf16 = resolve_precision(opts.precision, device) == "bf16"
    enc = model.posterior_encoder.enc
    flow_bf16 = resolve_precision(opts.flow_precision, device) == "bf16"
    if flow_bf16 and (opts.kl_weight > 0 or opts.align_weight > 0 or opts.prior_weight > 0):
        flow = frozen_flow(model, torch.bfloat16)
    else:
        def flow(z: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
            return model.flow(z, mask, g=g).z
    final_phase = opts.align_weight > 0 and opts.align_steps > 0

    def make_step(align_weight: float) -> Callable[[], torch.Tensor]:
        sampled = opts.kl_weight > 0 or align_weight > 0
        fit_log_std = not (align_weight > 0 and opts.align_log_std == "alignment")

        def step_loss() -> torch.Tensor:
            b = _posterior_batch(model, utts, prior, opts, generator)
            noise = torch.randn(b.z.shape, generator=generator).to(b.z.device) if sampled else torch.zeros_like(b.z)
            post = model.encode_audio(b.spec, b.lengths, b.g, noise=noise)
            loss = posterior_loss(post.m_q, post.logs_q, b.z, post.mask, opts.log_std_floor, fit_log_std)
            if opts.prior_weight > 0:
                with torch.no_grad():
                    z_p_teacher = flow(b.z, post.mask, b.g)
                z_p_mean = flow(post.m_q, post.mask, b.g)
                loss = loss + opts.prior_weight * whitened_prior_loss(z_p_mean, z_p_teacher, b.logs_e, post.mask)
            if sampled:
                z_p = flow(post.z, post.mask, b.g)  # [B, C, S]
                if opts.kl_weight > 0:
                    loss = loss + opts.kl_weight * kl_loss(z_p, post.logs_q, b.m_e, b.logs_e, post.mask) / b.z.shape[1]
                if align_weight > 0:
                    loss = loss + align_weight * alignment_loss(z_p, b, post.mask, opts.align_temperature)
            return loss

        return step_loss

    with compiled_forward(enc, enabled=opts.compile), bf16_autocast(enc, device, enabled=bf16):
        curve = _run_steps("posterior_encoder", params, make_step(0.0 if final_phase else opts.align_weight),
                           steps, lr, opts.progress)
        if final_phase:
            curve += _run_steps("posterior_encoder (alignment)", params, make_step(opts.align_weight),
                                opts.align_steps, lr * opts.align_lr_factor, opts.progress)
    return curve


# ----------------------------------------------------------------------------- SDP posterior
def _duration_batch(model: VITS, utts: Sequence[Utterance], hidden: Sequence[torch.Tensor], idx: Sequence[int]):
    lengths = torch.tensor([hidden[i].shape[-1] for i in idx], device=hidden[0].device)
    t_x = int(lengths.max())
    x = _pad_stack([hidden[i] for i in idx], t_x)  # [B, H, T_x]
    x_mask = length_mask(lengths, t_x, x.dtype)  # [B, 1, T_x]
    durations = _pad_stack([utts[i].durations.unsqueeze(0) for i in idx], t_x)  # [B, 1, T_x]
    g = speaker_vectors(model, [utts[i] for i in idx])
    return x, x_mask, durations, (g if model.config.duration_predictor.condition_on_speaker else None)


def sdp_nll_per_token(model: VITS, utts: Sequence[Utterance], hidden: Sequence[torch.Tensor] | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """SDP negative log-likelihood of the teacher durations per token (all of ``utts`` in one batch)."""
    if hidden is None:
        hidden = text_hidden(model, utts)
    x, x_mask, durations, g = _duration_batch(model, utts, hidden, range(len(utts)))
    return _sdp_loss(model, x, x_mask, durations, g, generator)


def _sdp_loss(model: VITS, x, x_mask, durations, g, generator) -> torch.Tensor:
    noise = torch.randn(x.shape[0], 2, x.shape[2], generator=generator).to(x.device)  # e_q
    nll = model.duration_predictor.nll(x, x_mask, durations, g=g, noise=noise)  # [B]
    return nll.sum() / x_mask.sum()


@torch.no_grad()
def text_hidden(model: VITS, utts: Sequence[Utterance]) -> list[torch.Tensor]:
    """Frozen text-encoder hidden states [H, T_x] per utterance."""
    out = []
    for u in utts:
        lengths = torch.tensor([u.tokens.numel()], device=u.tokens.device)
        out.append(model.encode_text(u.tokens.unsqueeze(0), lengths).hidden[0])
    return out


def fit_duration_posterior(model: VITS, utts: Sequence[Utterance], params: Sequence[torch.nn.Parameter],
                           steps: int, lr: float, opts: FitOptions, generator: torch.Generator) -> list[float]:
    """Train the SDP posterior flows (and ``flows.1``) by the SDP NLL of the teacher durations."""
    hidden = text_hidden(model, utts)

    def step_loss() -> torch.Tensor:
        idx = [_randint(len(utts), generator) for _ in range(opts.batch_size)]
        x, x_mask, durations, g = _duration_batch(model, utts, hidden, idx)
        return _sdp_loss(model, x, x_mask, durations, g, generator)

    return _run_steps("duration_posterior", params, step_loss, steps, lr, opts.progress)


# ----------------------------------------------------------------------------- discriminator
@torch.no_grad()
def segment_pool(model: VITS, utts: Sequence[Utterance], opts: FitOptions,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(real, fake) [P, 1, S * hop]: synthesized audio segments, and the decoder on the
    posterior's sample of z for the same frames (S = ``config.segment_size``)."""
    size, hop = model.config.segment_size, model.hop_length
    reals, fakes = [], []
    for u in progress_bar(utts, desc="regrow: discriminator data", progress=opts.progress):
        g = speaker_vectors(model, [u])
        lengths = torch.tensor([u.frames], device=u.spec.device)
        post = model.encode_audio(u.spec.unsqueeze(0), lengths, g, generator=generator)  # z: [1, C, T_y]
        starts = [_randint(u.frames - size + 1, generator) for _ in range(opts.segments_per_utterance)]
        z = _pad_stack([post.z[0, :, s : s + size] for s in starts], size)  # [K, C, S]
        fakes.append(model.decoder(z, g=None if g is None else g.expand(len(starts), -1, -1)))
        reals.append(_pad_stack([u.audio[s * hop : (s + size) * hop].unsqueeze(0) for s in starts], size * hop))
    return torch.cat(reals), torch.cat(fakes)


MIN_POOL_UTTERANCES = 64
"""Fewest utterances the discriminator's segment pool is cut from (when there are that many)."""


def pool_utterances(utts: Sequence[Utterance], steps: int, opts: FitOptions,
                    generator: torch.Generator) -> list[Utterance]:
    """A random subset, in order, of the utterances that ``steps`` discriminator steps of
    ``opts.batch_size`` segments can use: ``ceil(steps * batch_size / segments_per_utterance)``
    of them, at least :data:`MIN_POOL_UTTERANCES`, at most all."""
    needed = max(MIN_POOL_UTTERANCES, math.ceil(steps * opts.batch_size / opts.segments_per_utterance))
    if needed >= len(utts):
        return list(utts)
    keep = torch.randperm(len(utts), generator=generator)[:needed].sort().values
    return [utts[int(i)] for i in keep]


def fit_discriminator(model: VITS, utts: Sequence[Utterance], params: Sequence[torch.nn.Parameter], steps: int,
                      lr: float, opts: FitOptions, generator: torch.Generator) -> list[float]:
    """LSGAN discriminator against the frozen generator on a pool of (real, fake) segments,
    cut from as many utterances as the steps can draw from (``steps * batch_size`` segments,
    at least :data:`MIN_POOL_UTTERANCES` utterances): each pool segment costs a decoder pass,
    so a pool larger than the draws would be decoded for nothing."""
    real, fake = segment_pool(model, pool_utterances(utts, steps, opts, generator), opts, generator)

    def step_loss() -> torch.Tensor:
        idx = torch.randint(real.shape[0], (opts.batch_size,), generator=generator)
        out = model.discriminator(real[idx], fake[idx])
        terms = discriminator_loss(out.real_scores, out.fake_scores)
        return terms["disc/real"] + terms["disc/fake"]

    return _run_steps("discriminator", params, step_loss, steps, lr, opts.progress)


#: Regrowable organ -> its training loop.
FITTERS = {
    "posterior_encoder": fit_posterior,
    "duration_posterior": fit_duration_posterior,
    "discriminator": fit_discriminator,
}

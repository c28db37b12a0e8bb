"""Training loops of organ regrowth, one per regrowable organ (teacher forcing on synthesized data).

Each ``fit_*`` function trains the parameters it is given (the caller freezes everything
else with :func:`~vits_surgery.surgery.freeze.apply_plan`) and returns the loss per step.

The posterior encoder's loss has one seam, :attr:`RegrowOptions.extra_terms
<vits_surgery.regrowth.options.RegrowOptions.extra_terms>`: each term is called with the
:class:`PosteriorStep` of the step and returns a scalar added to the loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..losses import discriminator_loss
from ..models.commons import length_mask
from ..models.vits import VITS
from .metrics import duration_batch, sdp_loss, text_hidden
from .options import RegrowOptions, resolve_precision
from .teacher import TeacherUtterance, pad_stack, progress_bar, speaker_vectors

__all__ = [
    "FITTERS",
    "PosteriorStep",
    "bf16_autocast",
    "fit_posterior",
    "fit_duration_posterior",
    "fit_discriminator",
    "posterior_loss",
    "alignment_loss",
    "segment_pool",
    "pool_utterances",
    "teacher_prior",
]

GRAD_CLIP = 10.0
"""Global gradient-norm clip of every regrowth optimizer."""
PROJ_INIT_SCALE = 0.1
"""Scale of the posterior ``proj`` weights after the data-dependent bias initialisation."""
INIT_UTTERANCES = 32
"""Utterances whose statistics initialise the posterior encoder."""


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
def _data_init_posterior(model: VITS, utts: Sequence[TeacherUtterance], log_std_floor: float) -> None:
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
def teacher_prior(model: VITS, utts: Sequence[TeacherUtterance]) -> list[TeacherPrior]:
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


def _posterior_batch(model: VITS, utts: Sequence[TeacherUtterance], prior: Sequence[TeacherPrior], opts: RegrowOptions,
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
    spec, z, m_e, logs_e, token = (pad_stack(c, width) for c in crops)
    t_x = max(prior[i].m_p.shape[-1] for i in idx)
    token_lengths = torch.tensor([prior[i].m_p.shape[-1] for i in idx], device=lengths.device)
    return _PosteriorBatch(
        spec, z, m_e, logs_e, token[:, 0], pad_stack([prior[i].m_p for i in idx], t_x),
        pad_stack([prior[i].logs_p for i in idx], t_x), length_mask(token_lengths, t_x)[:, 0],
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


@dataclass
class PosteriorStep:
    """What an extra term of the posterior encoder's loss sees at one step.

    Attributes:
        model: the voice (everything but the posterior encoder frozen).
        batch: the step's crops: ``spec``, teacher ``z``, the prior along the teacher path
            ``m_e`` / ``logs_e`` [B, C, S], ``token`` [B, S] (teacher token of each frame),
            the prior per token ``m_p`` / ``logs_p`` [B, C, T_x], ``token_mask`` [B, T_x],
            ``lengths`` [B] and the speaker vectors ``g``.
        post: the posterior encoder's output (``z`` is a sample when the step draws one,
            else the mean; ``m_q``, ``logs_q``, ``mask`` [B, 1, S]).
        phase: "main", or "alignment" in the final alignment phase.
        sampled: whether ``post.z`` is a posterior sample.
    """

    model: VITS
    batch: Any
    post: Any
    phase: str
    sampled: bool
    _z_p: torch.Tensor | None = field(default=None, repr=False)

    def flow(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` [B, C, S] through the model's (frozen) flow; gradients reach ``z``."""
        return self.model.flow(z, self.post.mask, g=self.batch.g).z

    @property
    def z_p(self) -> torch.Tensor:
        """The flow output of ``post.z`` [B, C, S] (computed once per step)."""
        if self._z_p is None:
            self._z_p = self.flow(self.post.z)
        return self._z_p


def fit_posterior(model: VITS, utts: Sequence[TeacherUtterance], params: Sequence[torch.nn.Parameter], steps: int,
                  lr: float, opts: RegrowOptions, generator: torch.Generator) -> list[float]:
    """Fit the posterior encoder on random spectrogram crops: the :func:`posterior_loss` of the
    teacher z, plus ``align_weight`` times the :func:`alignment_loss` of a posterior sample
    pushed through the frozen flow (at every step, or only in a final phase of
    ``opts.align_steps`` extra steps; ``opts.align_log_std`` says whether the likelihood or that
    loss sets ``logs_q`` while it is on), plus every term of ``opts.extra_terms``.
    ``opts.precision`` picks float32 or bfloat16 autocast for the encoder's WaveNet stack.
    Returns the loss of every step, the final phase's after the main fit's."""
    _data_init_posterior(model, utts, opts.log_std_floor)
    prior = teacher_prior(model, utts)
    device = utts[0].spec.device
    bf16 = resolve_precision(opts.precision, device) == "bf16"
    enc = model.posterior_encoder.enc
    final_phase = opts.align_weight > 0 and opts.align_steps > 0
    terms_sample = any(getattr(t, "needs_sample", False) for t in opts.extra_terms)

    def make_step(align_weight: float, phase: str) -> Callable[[], torch.Tensor]:
        sampled = terms_sample or align_weight > 0
        fit_log_std = not (align_weight > 0 and opts.align_log_std == "alignment")

        def step_loss() -> torch.Tensor:
            b = _posterior_batch(model, utts, prior, opts, generator)
            noise = torch.randn(b.z.shape, generator=generator).to(b.z.device) if sampled else torch.zeros_like(b.z)
            post = model.encode_audio(b.spec, b.lengths, b.g, noise=noise)
            loss = posterior_loss(post.m_q, post.logs_q, b.z, post.mask, opts.log_std_floor, fit_log_std)
            step = PosteriorStep(model, b, post, phase, sampled)
            if align_weight > 0:
                loss = loss + align_weight * alignment_loss(step.z_p, b, post.mask)
            for term in opts.extra_terms:
                loss = loss + term(step)
            return loss

        return step_loss

    with bf16_autocast(enc, device, enabled=bf16):
        curve = _run_steps("posterior_encoder", params, make_step(0.0 if final_phase else opts.align_weight, "main"),
                           steps, lr, opts.progress)
        if final_phase:
            curve += _run_steps("posterior_encoder (alignment)", params, make_step(opts.align_weight, "alignment"),
                                opts.align_steps, lr * opts.align_lr_factor, opts.progress)
    return curve


# ----------------------------------------------------------------------------- SDP posterior
def fit_duration_posterior(model: VITS, utts: Sequence[TeacherUtterance], params: Sequence[torch.nn.Parameter],
                           steps: int, lr: float, opts: RegrowOptions, generator: torch.Generator) -> list[float]:
    """Train the SDP posterior flows (and ``flows.1``) by the SDP NLL of the teacher durations."""
    hidden = text_hidden(model, utts)

    def step_loss() -> torch.Tensor:
        idx = [_randint(len(utts), generator) for _ in range(opts.batch_size)]
        x, x_mask, durations, g = duration_batch(model, utts, hidden, idx)
        return sdp_loss(model, x, x_mask, durations, g, generator)

    return _run_steps("duration_posterior", params, step_loss, steps, lr, opts.progress)


# ----------------------------------------------------------------------------- discriminator
@torch.no_grad()
def segment_pool(model: VITS, utts: Sequence[TeacherUtterance], opts: RegrowOptions,
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
        z = pad_stack([post.z[0, :, s : s + size] for s in starts], size)  # [K, C, S]
        fakes.append(model.decoder(z, g=None if g is None else g.expand(len(starts), -1, -1)))
        reals.append(pad_stack([u.audio[s * hop : (s + size) * hop].unsqueeze(0) for s in starts], size * hop))
    return torch.cat(reals), torch.cat(fakes)


MIN_POOL_UTTERANCES = 64
"""Fewest utterances the discriminator's segment pool is cut from (when there are that many)."""


def pool_utterances(utts: Sequence[TeacherUtterance], steps: int, opts: RegrowOptions,
                    generator: torch.Generator) -> list[TeacherUtterance]:
    """A random subset, in order, of the utterances that ``steps`` discriminator steps of
    ``opts.batch_size`` segments can use: ``ceil(steps * batch_size / segments_per_utterance)``
    of them, at least :data:`MIN_POOL_UTTERANCES`, at most all."""
    needed = max(MIN_POOL_UTTERANCES, math.ceil(steps * opts.batch_size / opts.segments_per_utterance))
    if needed >= len(utts):
        return list(utts)
    keep = torch.randperm(len(utts), generator=generator)[:needed].sort().values
    return [utts[int(i)] for i in keep]


def fit_discriminator(model: VITS, utts: Sequence[TeacherUtterance], params: Sequence[torch.nn.Parameter], steps: int,
                      lr: float, opts: RegrowOptions, generator: torch.Generator) -> list[float]:
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

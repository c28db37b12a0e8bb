"""Held-out checks of a regrowth: duration recovery through the training path, and the SDP
likelihood of the teacher durations.

Recovery is the fraction of tokens whose MAS duration, through the regrown posterior encoder,
is within ``tolerance`` frames of the teacher's. It is reported over phoneme tokens (the
symbols of the text) and over all tokens (with the interleaved blanks, BOS and EOS), each
labelled as such.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..models.commons import length_mask
from ..models.vits import VITS
from ..surgery.freeze import preserved
from .teacher import TeacherUtterance, pad_stack, speaker_vectors

__all__ = [
    "TOKEN_SETS",
    "duration_recovery",
    "heldout_metrics",
    "sdp_nll_per_token",
    "sdp_loss",
    "duration_batch",
    "text_hidden",
    "special_token_ids",
]

#: What a recovery counts: "phonemes" (the symbols of the text) or "all" (blanks, BOS, EOS too).
TOKEN_SETS = ("phonemes", "all")


def special_token_ids(model: VITS) -> frozenset[int]:
    """Token ids of the voice's front end that stand for no symbol (blank, BOS, EOS)."""
    from ..text import Tokenizer

    return Tokenizer.from_config(model.config).special_ids


def _lengths(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor([n], device=like.device)


def _training_path(model: VITS, u: TeacherUtterance, noise_scale: float, generator: torch.Generator | None):
    """Posterior encoder, flow and MAS on one utterance: (MAS durations [T_x], KL, mean logs_q).

    ``noise_scale`` multiplies the posterior sample's noise: 1 = the training path, 0 = the
    mean (which draws nothing from ``generator``)."""
    from ..losses import kl_loss
    from ..models.posterior import _standard_normal

    g = speaker_vectors(model, [u])
    enc = model.encode_text(u.tokens.unsqueeze(0), _lengths(u.tokens.numel(), u.tokens))
    like = u.z.unsqueeze(0)  # [1, C, T_y], the posterior's shape
    noise = torch.zeros_like(like) if noise_scale == 0 else noise_scale * _standard_normal(like, generator)
    post = model.encode_audio(u.spec.unsqueeze(0), _lengths(u.frames, u.spec), g, noise=noise, generator=generator)
    z_p = model.flow(post.z, post.mask, g=g).z  # [1, C, T_y]
    path = model.align(z_p, enc.m_p, enc.logs_p, enc.mask, post.mask)  # [1, T_x, T_y]
    m_e, logs_e = model.expand_prior(path, enc.m_p, enc.logs_p)  # [1, C, T_y]
    kl = kl_loss(z_p, post.logs_q, m_e, logs_e, post.mask)
    return path.sum(dim=2)[0], float(kl), float(post.logs_q.mean())


def _counts(durations: torch.Tensor, u: TeacherUtterance, tolerance: int, special: torch.Tensor) -> dict[str, int]:
    """Tokens within ``tolerance`` frames, and tokens, per token set."""
    hit = (durations - u.durations).abs() <= tolerance  # [T_x]
    phoneme = ~torch.isin(u.tokens, special)  # [T_x]
    return {"phonemes": int((hit & phoneme).sum()), "all": int(hit.sum()),
            "n_phonemes": int(phoneme.sum()), "n_all": int(hit.numel())}


def _special(model: VITS, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(sorted(special_token_ids(model)), dtype=torch.long, device=like.device)


@torch.no_grad()
def heldout_metrics(
    model: VITS, utterances: Sequence[TeacherUtterance], tolerance: int = 1, generator: torch.Generator | None = None
) -> dict[str, float]:
    """Training-path checks of a posterior encoder on synthesized utterances (eval mode, restored).

    Returns:
        ``recovery_phonemes`` / ``recovery_all_tokens`` (posterior sample, as in training) and
        ``recovery_mean_phonemes`` / ``recovery_mean_all_tokens`` (posterior mean): the fraction
        of phoneme tokens, or of all tokens, whose MAS duration is within ``tolerance`` frames of
        the teacher's; ``kl``: the VITS KL term (per frame and channel) a fine-tuning run would
        start from; ``posterior_log_std``: mean ``logs_q``.
    """
    sums = {"kl": 0.0, "posterior_log_std": 0.0}
    hits = {"sample": {"phonemes": 0, "all": 0}, "mean": {"phonemes": 0, "all": 0}}
    totals = {"phonemes": 0, "all": 0}
    with preserved(model):
        model.eval()
        for u in utterances:
            special = _special(model, u.tokens)
            durations, kl, logs_q = _training_path(model, u, 1.0, generator)
            mean_durations, _, _ = _training_path(model, u, 0.0, generator)
            for which, d in (("sample", durations), ("mean", mean_durations)):
                counts = _counts(d, u, tolerance, special)
                for key in ("phonemes", "all"):
                    hits[which][key] += counts[key]
            totals["phonemes"] += counts["n_phonemes"]
            totals["all"] += counts["n_all"]
            sums["kl"] += kl / len(utterances)
            sums["posterior_log_std"] += logs_q / len(utterances)
    out = {}
    for which, prefix in (("sample", "recovery"), ("mean", "recovery_mean")):
        out[f"{prefix}_phonemes"] = hits[which]["phonemes"] / max(totals["phonemes"], 1)
        out[f"{prefix}_all_tokens"] = hits[which]["all"] / max(totals["all"], 1)
    return {**out, **sums}


@torch.no_grad()
def duration_recovery(
    model: VITS,
    utterances: Sequence[TeacherUtterance],
    tolerance: int = 1,
    sample: bool = True,
    generator: torch.Generator | None = None,
    noise_scale: float = 1.0,
    tokens: str = "phonemes",
) -> float:
    """Fraction of tokens whose MAS duration is within ``tolerance`` frames of the teacher's.

    Runs the training path on each utterance: posterior encoder on its spectrogram (a sample
    of ``z``, or the mean when ``sample`` is False), flow, MAS against the text prior.

    Args:
        model: the voice with a posterior encoder (run in eval mode, restored afterwards).
        utterances: synthesized utterances (:func:`~vits_surgery.regrowth.teacher.synthesize_utterances`).
        tolerance: frames of slack.
        sample: use a posterior sample (the training path) rather than the mean.
        generator: RNG of the posterior sample.
        noise_scale: multiplier of the sample's noise (1 = the training path); unused when
            ``sample`` is False.
        tokens: "phonemes" (the symbols of the text) or "all" (with blanks, BOS and EOS).
    """
    if tokens not in TOKEN_SETS:
        raise ValueError(f"tokens must be one of {TOKEN_SETS}, got {tokens!r}")
    ok = total = 0
    with preserved(model):
        model.eval()
        for u in utterances:
            durations, _, _ = _training_path(model, u, noise_scale if sample else 0.0, generator)
            counts = _counts(durations, u, tolerance, _special(model, u.tokens))
            ok += counts[tokens]
            total += counts[f"n_{tokens}"]
    return ok / max(total, 1)


# ----------------------------------------------------------------------------- SDP likelihood
@torch.no_grad()
def text_hidden(model: VITS, utts: Sequence[TeacherUtterance]) -> list[torch.Tensor]:
    """Frozen text-encoder hidden states [H, T_x] per utterance."""
    out = []
    for u in utts:
        lengths = torch.tensor([u.tokens.numel()], device=u.tokens.device)
        out.append(model.encode_text(u.tokens.unsqueeze(0), lengths).hidden[0])
    return out


def duration_batch(model: VITS, utts: Sequence[TeacherUtterance], hidden: Sequence[torch.Tensor],
                   idx: Sequence[int]):
    """(x [B, H, T_x], x_mask [B, 1, T_x], teacher durations [B, 1, T_x], g or None) of ``utts[idx]``."""
    lengths = torch.tensor([hidden[i].shape[-1] for i in idx], device=hidden[0].device)
    t_x = int(lengths.max())
    x = pad_stack([hidden[i] for i in idx], t_x)  # [B, H, T_x]
    x_mask = length_mask(lengths, t_x, x.dtype)  # [B, 1, T_x]
    durations = pad_stack([utts[i].durations.unsqueeze(0) for i in idx], t_x)  # [B, 1, T_x]
    g = speaker_vectors(model, [utts[i] for i in idx])
    return x, x_mask, durations, (g if model.config.duration_predictor.condition_on_speaker else None)


def sdp_loss(model: VITS, x, x_mask, durations, g, generator) -> torch.Tensor:
    """SDP negative log-likelihood of ``durations`` per token (one noise draw ``e_q``)."""
    noise = torch.randn(x.shape[0], 2, x.shape[2], generator=generator).to(x.device)  # e_q
    nll = model.duration_predictor.nll(x, x_mask, durations, g=g, noise=noise)  # [B]
    return nll.sum() / x_mask.sum()


def sdp_nll_per_token(model: VITS, utts: Sequence[TeacherUtterance], hidden: Sequence[torch.Tensor] | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """SDP negative log-likelihood of the teacher durations per token (all of ``utts`` in one batch)."""
    if hidden is None:
        hidden = text_hidden(model, utts)
    x, x_mask, durations, g = duration_batch(model, utts, hidden, range(len(utts)))
    return sdp_loss(model, x, x_mask, durations, g, generator)

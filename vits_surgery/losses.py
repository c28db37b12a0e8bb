"""VITS losses, returned as namespaced dicts.

Keys: ``gen/kl``, ``gen/dur``, ``gen/mel``, ``gen/adv``, ``gen/fm`` for the generator and
``disc/real``, ``disc/fake`` for the discriminator. :func:`weighted_total` sums them with
weights; a weight of 0 means the term is never computed by the trainer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_WEIGHTS",
    "kl_loss",
    "duration_loss",
    "mel_loss",
    "feature_matching_loss",
    "generator_adversarial_loss",
    "discriminator_loss",
    "weighted_total",
]

#: VITS / Coqui defaults (``kl_loss_alpha`` 1, ``dur_loss_alpha`` 1, ``mel_loss_alpha`` 45,
#: ``gen_loss_alpha`` 1, ``feat_loss_alpha`` 1, ``disc_loss_alpha`` 1).
DEFAULT_WEIGHTS: dict[str, float] = {
    "gen/kl": 1.0,
    "gen/dur": 1.0,
    "gen/mel": 45.0,
    "gen/adv": 1.0,
    "gen/fm": 1.0,
    "disc/real": 1.0,
    "disc/fake": 1.0,
}


def kl_loss(
    z_p: torch.Tensor,
    logs_q: torch.Tensor,
    m_p: torch.Tensor,
    logs_p: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """KL between the posterior (pushed through the flow) and the expanded prior.

    ``sum((logs_p - logs_q - 0.5 + 0.5 (z_p - m_p)^2 exp(-2 logs_p)) * mask) / sum(mask)``

    Args:
        z_p, logs_q: [B, C, T_y] flow output and posterior log-std.
        m_p, logs_p: [B, C, T_y] prior expanded to frames.
        mask: [B, 1, T_y].
    """
    z_p, logs_q, m_p, logs_p, mask = (t.float() for t in (z_p, logs_q, m_p, logs_p, mask))
    kl = logs_p - logs_q - 0.5
    kl = kl + 0.5 * (z_p - m_p) ** 2 * torch.exp(-2.0 * logs_p)  # [B, C, T_y]
    return torch.sum(kl * mask) / torch.sum(mask)


def duration_loss(per_item: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
    """Batch duration loss: per-item sums [B] over the total number of valid tokens."""
    return torch.sum(per_item.float()) / torch.sum(x_mask)


def mel_loss(mel_target: torch.Tensor, mel_hat: torch.Tensor) -> torch.Tensor:
    """L1 between log-mel spectrograms [B, n_mels, T]."""
    return F.l1_loss(mel_hat.float(), mel_target.float())


def feature_matching_loss(
    real_features: Sequence[Sequence[torch.Tensor]], fake_features: Sequence[Sequence[torch.Tensor]]
) -> torch.Tensor:
    """Sum over discriminators and layers of mean |real - fake|, times 2 (VITS).

    The real features are detached: this loss trains the generator only.
    """
    total = torch.zeros((), device=fake_features[0][0].device)
    for reals, fakes in zip(real_features, fake_features, strict=True):
        for r, f in zip(reals, fakes, strict=True):
            total = total + torch.mean(torch.abs(r.detach().float() - f.float()))
    return total * 2


def generator_adversarial_loss(fake_scores: Sequence[torch.Tensor]) -> torch.Tensor:
    """LSGAN generator loss: sum of mean((1 - D(fake))^2)."""
    total = torch.zeros((), device=fake_scores[0].device)
    for d in fake_scores:
        total = total + torch.mean((1 - d.float()) ** 2)
    return total


def discriminator_loss(
    real_scores: Sequence[torch.Tensor], fake_scores: Sequence[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """LSGAN discriminator loss: ``disc/real`` = sum mean((1-D(y))^2), ``disc/fake`` = sum mean(D(y_hat)^2)."""
    real = torch.zeros((), device=real_scores[0].device)
    fake = torch.zeros((), device=real_scores[0].device)
    for dr, dg in zip(real_scores, fake_scores, strict=True):
        real = real + torch.mean((1 - dr.float()) ** 2)
        fake = fake + torch.mean(dg.float() ** 2)
    return {"disc/real": real, "disc/fake": fake}


def weighted_total(losses: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """Weighted sum of the loss terms present in ``losses``.

    Raises:
        KeyError: a loss key has no weight (a typo in a weight name would otherwise silently
            leave a term unweighted).
    """
    missing = [k for k in losses if k not in weights]
    if missing:
        raise KeyError(f"no weight for loss term(s) {missing}; known weights: {sorted(weights)}")
    terms = [weights[k] * v for k, v in losses.items() if weights[k] != 0]
    if not terms:
        raise ValueError("every loss term has weight 0: nothing to optimise")
    return torch.stack([t.float() for t in terms]).sum()

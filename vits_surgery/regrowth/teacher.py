"""Data for organ regrowth: texts, utterances synthesized by the voice, the recovery metric.

:func:`synthesize_utterances` runs the voice's own inference and keeps, per utterance, what
teacher forcing needs: the audio and its linear spectrogram, the latent ``z`` fed to the
decoder and the integer durations. :func:`duration_recovery` checks a posterior encoder
against them: the training path (posterior encoder, flow, MAS against the text prior) should
give back the durations the voice used.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..audio import spectrogram
from ..models.vits import VITS

__all__ = [
    "Utterance",
    "default_texts",
    "tokenize_texts",
    "synthesize_utterances",
    "duration_recovery",
    "heldout_metrics",
    "speaker_vectors",
    "progress_bar",
]

logger = logging.getLogger(__name__)


@dataclass
class Utterance:
    """One utterance synthesized by the voice, with its teacher latents.

    Attributes:
        tokens: [T_x] token ids.
        durations: [T_x] frames per token (integer-valued float).
        z: [C, T_y] latent fed to the decoder.
        audio: [T_y * hop] waveform.
        spec: [F, T_y] linear spectrogram of ``audio``.
        speaker: speaker id for multi-speaker voices, else None.
    """

    tokens: torch.Tensor
    durations: torch.Tensor
    z: torch.Tensor
    audio: torch.Tensor
    spec: torch.Tensor
    speaker: int | None = None

    @property
    def frames(self) -> int:
        """T_y."""
        return int(self.spec.shape[-1])


_SUBJECTS = ("the old captain", "a quiet neighbour", "my younger sister", "the weary traveller", "our teacher",
             "the small committee", "a clever fox", "the night watchman", "every student", "the baker's son",
             "a famous painter", "the tired engineer", "her uncle", "the city council", "a stranger in blue")
_VERBS = ("carried", "described", "painted", "discovered", "repaired", "forgot", "measured", "examined",
          "ordered", "borrowed", "delivered", "remembered", "explained", "watched", "gathered")
_OBJECTS = ("a heavy wooden box", "the broken clock", "seven yellow lanterns", "the strange letter",
            "a basket of ripe plums", "the northern bridge", "an ancient map", "the quarterly report",
            "a bright copper kettle", "the garden fence", "two silver coins", "the village church",
            "a jar of honey", "the evening newspaper", "thirty pages of notes")
_TAILS = ("before the storm arrived", "while the others were sleeping", "at the edge of the harbour",
          "with surprising patience", "during the long winter", "without saying a word", "near the railway station",
          "after a short argument", "as the sun went down", "in the middle of the night", "for the third time",
          "because nobody else would", "although it was raining", "on a cold Tuesday morning", "in great haste")
_FORMS = ("{S} {V} {O} {T}.", "Yesterday, {s} {V} {O}.", "Why has {s} {V} {O} {T}?",
          "{S} {V} {O}, and then {s2} {V2} it.", "Did {s} really say that {s2} {V2} {O}?",
          "{S} {V} {O} {T}, didn't they?")


def default_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` varied English sentences (statements, questions, clauses) from a small grammar.

    The built-in text source of :func:`~vits_surgery.surgery.regrow.regrow`; pass your own
    texts for other languages or a closer match to the voice's training data.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s, s2 = rng.sample(_SUBJECTS, 2)
        v, v2 = rng.sample(_VERBS, 2)
        out.append(
            rng.choice(_FORMS).format(
                S=s[0].upper() + s[1:], s=s, s2=s2, V=v, V2=v2, O=rng.choice(_OBJECTS), T=rng.choice(_TAILS)
            )
        )
    return out


def tokenize_texts(model: VITS, texts: Sequence[str]) -> list[list[int]]:
    """Token ids per text with the voice's own front end (:class:`~vits_surgery.text.Tokenizer`).

    Texts the tokenizer rejects are skipped with a warning.

    Raises:
        ValueError: no text could be tokenized.
    """
    from ..text import Tokenizer, UnknownSymbolError

    tokenizer = Tokenizer.from_config(model.config)
    out = []
    for text in texts:
        try:
            out.append(tokenizer.encode(text))
        except (UnknownSymbolError, ValueError) as err:
            logger.warning("regrow: skipping a text the tokenizer rejects: %s", err)
    if not out:
        raise ValueError("none of the texts could be tokenized for this voice")
    return out


def progress_bar(iterable: Any = None, total: int | None = None, desc: str = "", progress: bool = True) -> Any:
    """A tqdm bar (disabled when ``progress`` is False)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not progress, dynamic_ncols=True, leave=False)


@torch.no_grad()
def synthesize_utterances(
    model: VITS,
    token_seqs: Sequence[Sequence[int]],
    noise_scale: float = 0.667,
    noise_scale_w: float = 0.8,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> list[Utterance]:
    """Synthesize each token sequence with the voice and keep its teacher latents.

    Multi-speaker voices cycle through their speakers.

    Args:
        model: the voice (run in eval mode, restored afterwards).
        token_seqs: token ids per utterance.
        noise_scale, noise_scale_w: inference noise (the natural variation of the data).
        generator: RNG of the noise.
        progress: tqdm bar.

    Returns:
        One :class:`Utterance` per sequence, tensors on the model's device.
    """
    was_training = model.training
    model.eval()
    n_speakers, hop = model.config.n_speakers, model.hop_length
    out = []
    for i, ids in enumerate(progress_bar(token_seqs, desc="regrow: synthesize", progress=progress)):
        speaker = i % n_speakers if n_speakers else None
        res = model.infer(torch.as_tensor(list(ids)), speaker=speaker, noise_scale=noise_scale,
                          noise_scale_w=noise_scale_w, generator=generator)
        t_y = int(res.y_mask.sum())
        audio = res.audio[0, 0, : t_y * hop]  # [N]
        spec = spectrogram(audio.unsqueeze(0), model.config.audio)[0]  # [F, about T_y]
        spec = F.pad(spec, (0, max(0, t_y - spec.shape[-1])), mode="replicate")[:, :t_y]  # [F, T_y]
        tokens = torch.as_tensor(list(ids), dtype=torch.long, device=audio.device)
        out.append(Utterance(tokens, res.durations[0], res.z[0, :, :t_y], audio, spec, speaker))
    model.train(was_training)
    return out


def speaker_vectors(model: VITS, utts: Sequence[Utterance]) -> torch.Tensor | None:
    """The frozen speaker vectors g [B, gin, 1] of ``utts`` (None for single-speaker voices)."""
    if model.speaker_embedding is None:
        return None
    with torch.no_grad():
        return model.speaker_vector(torch.tensor([u.speaker for u in utts]))


def _lengths(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor([n], device=like.device)


def _training_path(model: VITS, u: Utterance, noise_scale: float, generator: torch.Generator | None):
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


@torch.no_grad()
def heldout_metrics(
    model: VITS, utterances: Sequence[Utterance], tolerance: int = 1, generator: torch.Generator | None = None
) -> dict[str, float]:
    """Training-path checks of a posterior encoder on synthesized utterances.

    Returns:
        ``recovery`` (posterior sample, as in training) and ``recovery_mean`` (posterior
        mean): fraction of tokens whose MAS duration is within ``tolerance`` frames of the
        teacher's; ``kl``: the VITS KL term (per frame and channel) a fine-tuning run would
        start from; ``posterior_log_std``: mean ``logs_q``.
    """
    was_training = model.training
    model.eval()
    sums = {"recovery": 0.0, "recovery_mean": 0.0, "kl": 0.0, "posterior_log_std": 0.0}
    tokens = 0
    for u in utterances:
        durations, kl, logs_q = _training_path(model, u, 1.0, generator)
        mean_durations, _, _ = _training_path(model, u, 0.0, generator)
        sums["recovery"] += float(((durations - u.durations).abs() <= tolerance).sum())
        sums["recovery_mean"] += float(((mean_durations - u.durations).abs() <= tolerance).sum())
        sums["kl"] += kl / len(utterances)
        sums["posterior_log_std"] += logs_q / len(utterances)
        tokens += u.tokens.numel()
    sums["recovery"] /= max(tokens, 1)
    sums["recovery_mean"] /= max(tokens, 1)
    model.train(was_training)
    return sums


@torch.no_grad()
def duration_recovery(
    model: VITS,
    utterances: Sequence[Utterance],
    tolerance: int = 1,
    sample: bool = True,
    generator: torch.Generator | None = None,
    noise_scale: float = 1.0,
) -> float:
    """Fraction of tokens whose MAS duration is within ``tolerance`` frames of the teacher's.

    Runs the training path on each utterance: posterior encoder on its spectrogram (a sample
    of ``z``, or the mean when ``sample`` is False), flow, MAS against the text prior.

    Args:
        model: the voice with a posterior encoder (run in eval mode, restored afterwards).
        utterances: synthesized utterances (:func:`synthesize_utterances`).
        tolerance: frames of slack.
        sample: use a posterior sample (the training path) rather than the mean.
        generator: RNG of the posterior sample.
        noise_scale: multiplier of the sample's noise (1 = the training path); unused when
            ``sample`` is False.
    """
    was_training = model.training
    model.eval()
    ok = total = 0
    for u in utterances:
        durations, _, _ = _training_path(model, u, noise_scale if sample else 0.0, generator)
        ok += int(((durations - u.durations).abs() <= tolerance).sum())
        total += durations.numel()
    model.train(was_training)
    return ok / max(total, 1)

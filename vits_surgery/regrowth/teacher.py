"""Teacher synthesis for organ regrowth: texts, and utterances synthesized by the voice itself.

:func:`synthesize_utterances` runs the voice's own inference and keeps, per utterance, what
teacher forcing needs (:class:`TeacherUtterance`): the audio and its linear spectrogram, the
latent ``z`` fed to the decoder and the integer durations. The held-out checks against them
are in :mod:`vits_surgery.regrowth.metrics`.
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
from ..surgery.freeze import preserved

__all__ = [
    "TeacherUtterance",
    "default_texts",
    "tokenize_texts",
    "synthesize_utterances",
    "speaker_vectors",
    "pad_stack",
    "progress_bar",
]

logger = logging.getLogger(__name__)


@dataclass
class TeacherUtterance:
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

    The built-in text source of :func:`~vits_surgery.regrowth.regrow`; pass your own
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
) -> list[TeacherUtterance]:
    """Synthesize each token sequence with the voice and keep its teacher latents.

    Multi-speaker voices cycle through their speakers.

    Args:
        model: the voice (run in eval mode, restored afterwards).
        token_seqs: token ids per utterance.
        noise_scale, noise_scale_w: inference noise (the natural variation of the data).
        generator: RNG of the noise.
        progress: tqdm bar.

    Returns:
        One :class:`TeacherUtterance` per sequence, tensors on the model's device.
    """
    n_speakers, hop = model.config.n_speakers, model.hop_length
    out = []
    with preserved(model):
        model.eval()
        for i, ids in enumerate(progress_bar(token_seqs, desc="regrow: synthesize", progress=progress)):
            out.append(_synthesize_one(model, ids, i % n_speakers if n_speakers else None, hop, noise_scale,
                                       noise_scale_w, generator))
    return out


def _synthesize_one(model: VITS, ids: Sequence[int], speaker: int | None, hop: int, noise_scale: float,
                    noise_scale_w: float, generator: torch.Generator | None) -> TeacherUtterance:
    res = model.infer(torch.as_tensor(list(ids)), speaker=speaker, noise_scale=noise_scale,
                      noise_scale_w=noise_scale_w, generator=generator)
    t_y = int(res.y_mask.sum())
    audio = res.audio[0, 0, : t_y * hop]  # [N]
    spec = spectrogram(audio.unsqueeze(0), model.config.audio)[0]  # [F, about T_y]
    spec = F.pad(spec, (0, max(0, t_y - spec.shape[-1])), mode="replicate")[:, :t_y]  # [F, T_y]
    tokens = torch.as_tensor(list(ids), dtype=torch.long, device=audio.device)
    return TeacherUtterance(tokens, res.durations[0], res.z[0, :, :t_y], audio, spec, speaker)


def speaker_vectors(model: VITS, utts: Sequence[TeacherUtterance]) -> torch.Tensor | None:
    """The frozen speaker vectors g [B, gin, 1] of ``utts`` (None for single-speaker voices)."""
    if model.speaker_embedding is None:
        return None
    with torch.no_grad():
        return model.speaker_vector(torch.tensor([u.speaker for u in utts]))


def pad_stack(tensors: Sequence[torch.Tensor], length: int) -> torch.Tensor:
    """[C, T_i] tensors -> [B, C, length], zero padded."""
    return torch.stack([F.pad(t, (0, length - t.shape[-1])) for t in tensors])


def __getattr__(name: str) -> Any:
    if name == "Utterance":  # deprecated alias (it clashed with vits_surgery.data.Utterance)
        from .._deprecated import warn_renamed

        warn_renamed("vits_surgery.regrowth.teacher.Utterance", "TeacherUtterance")
        return TeacherUtterance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

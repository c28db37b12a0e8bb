"""Per-token durations of recorded speech, and their sums per phone class.

A *duration source* is any callable ``source(model, batch) -> list[Tensor]`` that returns,
for every utterance of a :class:`~vits_surgery.batch.Batch`, its frames per token ``[T_x]``
(the token order of ``batch.tokens``). :func:`mas_durations` is the default: the recipient's
own training-path alignment (posterior encoder mean, flow, monotonic alignment search against
the text prior). A forced aligner can be passed instead wherever a ``duration_source`` is taken.

Phone classes group tokens by what they are in the voice's symbol table: ``vowel``,
``consonant``, ``pause`` (word gaps and punctuation), ``blank`` (the interleaved blank / pad
token) and ``other`` (stress marks, BOS/EOS and anything unclassified).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence

import torch

from ..batch import Batch
from ..durations.mas import posterior_durations

__all__ = ["DurationSource", "PHONE_CLASSES", "mas_durations", "phone_class", "token_classes", "class_frames"]

DurationSource = Callable[[torch.nn.Module, Batch], list[torch.Tensor]]
"""``(model, batch) -> [T_x] frames per token for each utterance``."""

PHONE_CLASSES = ("vowel", "consonant", "pause", "blank", "other")

# Latin and IPA vowel letters (espeak-ng / Piper phoneme inventories); length marks and
# diacritics are "other".
_VOWELS = set("aeiouyæɐɑɒɔəɘɚɛɜɝɞɤɨɪɯɵɶʉʊʌʏøœɷᵻ")
_PAUSE = set(" ,.;:!?-—–…\"'()¡¿«»")


def phone_class(symbol: str) -> str:
    """The class of one symbol of a voice's table (see the module docstring)."""
    if symbol == "" or symbol in ("_", "<BLNK>", "<blank>", "<pad>"):
        return "blank"
    if all(ch in _PAUSE for ch in symbol):
        return "pause"
    base = unicodedata.normalize("NFD", symbol.lower())[0]
    if base in _VOWELS:
        return "vowel"
    if unicodedata.category(base) in ("Lu", "Ll", "Lo"):  # letters; modifier letters (stress, length) are "other"
        return "consonant"
    return "other"


def token_classes(tokenizer: object) -> dict[int, str]:
    """Token id -> phone class for a :class:`~vits_surgery.text.tokenizer.Tokenizer`."""
    inverse = tokenizer._id_to_symbol  # noqa: SLF001 - the tokenizer's own id -> symbol table
    classes = {i: phone_class(s) for i, s in inverse.items()}
    for special in ("blank_id", "pad_id"):
        try:
            classes[int(getattr(tokenizer, special))] = "blank"
        except (ValueError, AttributeError):
            pass
    return classes


@torch.no_grad()
def mas_durations(model: torch.nn.Module, batch: Batch) -> list[torch.Tensor]:
    """Frames per token by the model's own alignment: posterior mean -> flow -> MAS.

    Args:
        model: a :class:`~vits_surgery.models.vits.VITS` with a trained posterior encoder
            (run in eval mode; its train/eval flag is restored).
        batch: the utterances.

    Returns:
        One ``[T_x]`` long tensor per utterance (frames per token, summing to its frames).
    """
    was = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        b = batch.to(device)
        frames = posterior_durations(model, b, g=model.speaker_vector(b.speakers)).cpu()  # the mean: [B, T_x]
    finally:
        model.train(was)
    return [frames[i, : int(n)] for i, n in enumerate(batch.token_lengths)]


def class_frames(
    tokens: Sequence[torch.Tensor], durations: Sequence[torch.Tensor], classes: dict[int, str]
) -> dict[str, float]:
    """Total frames per phone class over utterances (``tokens[i]`` and ``durations[i]`` align)."""
    out = dict.fromkeys(PHONE_CLASSES, 0.0)
    for tok, dur in zip(tokens, durations, strict=True):
        for t, d in zip(tok.tolist(), dur.tolist(), strict=True):
            out[classes.get(int(t), "other")] += float(d)
    return out

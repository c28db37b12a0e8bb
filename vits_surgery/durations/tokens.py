"""Word and phone timings -> integer frame counts per model token.

The model's token sequence holds, besides the phonemes (or letters) of the words, blanks
interspersed between all tokens, BOS/EOS, punctuation and word separators (spaces). The
mapping works in units:

* a *phone unit*: the tokens of one aligned phone (or of a whole word when only word times
  are known). Stress marks go with the phone after them, length marks, palatalisation and
  combining marks with the phone before them.
* a *gap unit*: a run of separators, punctuation and BOS/EOS between words. It receives the
  pause between the words around it (possibly none), so pauses land on these tokens.

A blank belongs to the unit of the token after it (the last one, to the unit before it): a
VITS voice spends the blank before a phone on the transition into it (measured on the joe
voice, ``benchmarks/cadence/alignment_accuracy.py``). Which word a token belongs to is found by matching the phonemes of each transcript
word, pronounced alone, against the sentence's tokens (espeak-ng joins some words, e.g.
"in the" -> ``ɪnðə``). Inside a word, tokens are paired with the aligner's phones the same
way (ARPAbet phones through :data:`~vits_surgery.durations.phones.ARPA_TO_IPA`).

Every unit starts where its word or phone starts and ends where the next unit starts; its
frames are shared among its tokens in proportion to ``weights`` (e.g. the recipient's own
predicted durations). The cumulative boundaries are rounded to frames, so the counts sum to
the utterance's frame count exactly.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .phones import arpa_to_ipa, match_sequences
from .segments import WordSpan

__all__ = ["TokenKinds", "classify_tokens", "token_word_index", "token_durations", "frames_from_boundaries"]

logger = logging.getLogger(__name__)

_STRESS = {"ˈ", "ˌ"}
PHONE, BLANK, EDGE, SEPARATOR, MARK_NEXT, MARK_PREV = "phone", "blank", "edge", "separator", "next", "prev"


@dataclass(frozen=True)
class TokenKinds:
    """Symbol and kind of every token of a sequence.

    Attributes:
        symbols: the symbol of each id (``""`` for a blank).
        kinds: one of ``phone``, ``blank``, ``edge`` (BOS/EOS), ``separator`` (space,
            punctuation), ``next`` (a stress mark), ``prev`` (a modifier of the phone before).
    """

    symbols: tuple[str, ...]
    kinds: tuple[str, ...]


def _symbol_kind(symbol: str) -> str:
    if symbol in _STRESS:
        return MARK_NEXT
    if not symbol or symbol.isspace():
        return SEPARATOR
    cat = unicodedata.category(symbol[0])
    if cat.startswith(("P", "Z", "S", "C")) and cat != "Sk":
        return SEPARATOR
    if cat in ("Lm", "Mn", "Sk"):
        return MARK_PREV
    return PHONE


def classify_tokens(tokenizer, ids: Sequence[int]) -> TokenKinds:
    """Kinds of the tokens ``ids`` built by ``tokenizer`` (see :class:`TokenKinds`)."""
    cfg = tokenizer.cfg
    inverse = tokenizer._id_to_symbol
    ids = [int(i) for i in ids]
    edges: set[int] = set()
    if cfg.style == "piper":
        edges = {tokenizer.id_map[s][0] for s in (cfg.bos or "^", cfg.eos or "$") if s in tokenizer.id_map}
    elif cfg.use_bos_eos:
        edges = {tokenizer.id_map[s][0] for s in (cfg.bos, cfg.eos) if s in tokenizer.id_map}
    interleaved = cfg.add_blank and cfg.style != "piper"
    offset = 1 if (cfg.use_bos_eos and cfg.style != "piper") else 0
    symbols, kinds = [], []
    for pos, i in enumerate(ids):
        blank = cfg.add_blank and i == tokenizer.blank_id and (not interleaved or (pos - offset) % 2 == 0)
        if blank:
            symbols.append("")
            kinds.append(BLANK)
        elif i in edges:
            symbols.append(inverse.get(i, ""))
            kinds.append(EDGE)
        else:
            s = inverse.get(i, "")
            symbols.append(s)
            kinds.append(_symbol_kind(s))
    return TokenKinds(tuple(symbols), tuple(kinds))


def _word_symbols(tokenizer, word: str) -> list[str]:
    try:
        text = tokenizer.normalize(word)
    except Exception:  # noqa: BLE001 - a word the front end refuses is matched by its letters
        text = word
    return [c for c in text if _symbol_kind(c) == PHONE] or [c for c in word if c.isalnum()] or ["?"]


def token_word_index(tokenizer, kinds: TokenKinds, words: Sequence[str]) -> list[int | None]:
    """The transcript word each phone token belongs to (``None`` for other tokens).

    Args:
        tokenizer: the model's :class:`~vits_surgery.text.Tokenizer`.
        kinds: :func:`classify_tokens` of the sequence.
        words: the transcript words, in order.
    """
    a, owner = [], []
    for w, word in enumerate(words):
        syms = _word_symbols(tokenizer, word)
        a.extend(syms)
        owner.extend([w] * len(syms))
    phone_pos = [k for k, kind in enumerate(kinds.kinds) if kind == PHONE]
    out: list[int | None] = [None] * len(kinds.kinds)
    if not phone_pos or not a:
        return out
    pairs = match_sequences(a, [kinds.symbols[k] for k in phone_pos])
    for k, j in zip(phone_pos, pairs, strict=False):
        out[k] = owner[j]
    return out


def _phone_symbols(label: str) -> str:
    core = label.rstrip("012")
    return arpa_to_ipa(label) if core.isascii() and core.isupper() else label


def _phone_index(word: WordSpan, symbols: list[str]) -> list[int]:
    """For the phone tokens of one word, the index of the aligned phone each belongs to."""
    a, owner = [], []
    for p, phone in enumerate(word.phones):
        chars = [c for c in _phone_symbols(phone.label) if _symbol_kind(c) == PHONE]
        a.extend(chars)
        owner.extend([p] * len(chars))
    if not a:
        return [-1] * len(symbols)
    return [owner[j] for j in match_sequences(a, symbols)]


def _units(
    kinds: TokenKinds, word_of: list[int | None], words: Sequence[WordSpan]
) -> list[tuple[float, list[int], bool]]:
    """(start seconds, token positions, is a gap) of every unit, in token order."""
    n = len(kinds.kinds)
    unit_of: list[tuple | None] = [None] * n
    # phone units: (word, phone index or -1)
    for w, span in enumerate(words):
        pos = [k for k in range(n) if word_of[k] == w]
        if not pos:
            continue
        idx = _phone_index(span, [kinds.symbols[k] for k in pos]) if span.phones else [-1] * len(pos)
        for k, p in zip(pos, idx, strict=False):
            unit_of[k] = ("w", w, p)
    last_word, prev = -1, None
    for k in range(n):  # marks and gaps, left to right (blanks below)
        kind = kinds.kinds[k]
        if kind == BLANK:
            continue
        if kind == PHONE:
            last_word = unit_of[k][1]
        elif kind == MARK_NEXT:
            nxt = next((unit_of[j] for j in range(k + 1, n) if kinds.kinds[j] == PHONE), None)
            unit_of[k] = nxt or prev or ("g", last_word)
        elif kind == MARK_PREV and prev is not None:
            unit_of[k] = prev
        else:
            unit_of[k] = ("g", last_word)
        prev = unit_of[k]
    for k in range(n):  # a blank goes with the token after it (the last one: before it)
        if kinds.kinds[k] == BLANK:
            after = unit_of[k + 1] if k + 1 < n else None
            unit_of[k] = after or (unit_of[k - 1] if k else None) or ("g", -1)
    units: list[tuple[float, list[int], bool]] = []
    for k in range(n):
        u = unit_of[k]
        if units and unit_of[units[-1][1][-1]] == u:
            units[-1][1].append(k)
            continue
        if u[0] == "g":
            start = words[u[1]].end if u[1] >= 0 else 0.0
        else:
            span = words[u[1]]
            start = span.phones[u[2]].start if u[2] >= 0 else span.start
        units.append((start, [k], u[0] == "g"))
    return units


def frames_from_boundaries(boundaries: Sequence[float], n_frames: int, min_frames: int = 1) -> torch.Tensor:
    """Integer counts from cumulative token boundaries in frames.

    Args:
        boundaries: ``T + 1`` non-decreasing positions, the first 0, the last ``n_frames``.
        n_frames: the utterance's spectrogram frames.
        min_frames: the fewest frames a token gets.

    Returns:
        [T] long counts, each ``>= min_frames``, summing to ``n_frames``.

    Raises:
        ValueError: ``n_frames < T * min_frames``.
    """
    t = len(boundaries) - 1
    if n_frames < t * min_frames:
        raise ValueError(f"{n_frames} frames cannot give {t} tokens {min_frames} frame(s) each")
    b = [min(max(int(round(x)), 0), n_frames) for x in boundaries]
    b[0], b[-1] = 0, n_frames
    for k in range(1, t + 1):
        b[k] = max(b[k], b[k - 1] + min_frames) if k < t else n_frames
    for k in range(t - 1, 0, -1):
        b[k] = min(b[k], b[k + 1] - min_frames)
    return torch.tensor([b[k + 1] - b[k] for k in range(t)], dtype=torch.long)


def token_durations(
    tokenizer,
    ids: Sequence[int],
    words: Sequence[WordSpan],
    n_frames: int,
    frame_seconds: float,
    weights: Sequence[float] | torch.Tensor | None = None,
    min_frames: int = 1,
) -> torch.Tensor:
    """Frames per token from word (and phone) timings.

    Args:
        tokenizer: the model's tokenizer (it built ``ids``).
        ids: [T] token ids of the utterance.
        words: the transcript words with their times (see :func:`~.segments.transcript_words`).
        n_frames: spectrogram frames of the utterance (the counts sum to this).
        frame_seconds: ``hop_length / sample_rate``.
        weights: [T] relative durations that share a unit's time among its tokens (default:
            equal shares).
        min_frames: the fewest frames a token gets.

    Returns:
        [T] long frame counts.
    """
    kinds = classify_tokens(tokenizer, ids)
    word_of = token_word_index(tokenizer, kinds, [w.text for w in words])
    units = _units(kinds, word_of, words)
    total = n_frames * frame_seconds
    w = torch.ones(len(ids)) if weights is None else torch.as_tensor(weights, dtype=torch.float64).clamp_min(1e-3)
    starts = [0.0] + [min(max(s, 0.0), total) for s, _, _ in units[1:]]
    for k in range(1, len(starts)):
        starts[k] = max(starts[k], starts[k - 1])
    ends = starts[1:] + [total]
    boundaries = [0.0]
    for (_, pos, _), a, b in zip(units, starts, ends, strict=False):
        share = torch.as_tensor([float(w[p]) for p in pos], dtype=torch.float64)
        cum = torch.cumsum(share, 0) / share.sum()
        boundaries.extend(float(a + (b - a) * c) / frame_seconds for c in cum)
    return frames_from_boundaries(boundaries, n_frames, min_frames)

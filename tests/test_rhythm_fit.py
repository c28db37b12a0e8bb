"""The losses and word units of the rhythm-fit experiment (benchmarks/cadence/rhythm_fit.py)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "cadence"))
import rhythm_fit  # noqa: E402

from vits_surgery.config import preset  # noqa: E402
from vits_surgery.durations.segments import transcript_words  # noqa: E402
from vits_surgery.durations.tokens import classify_tokens, token_word_index  # noqa: E402
from vits_surgery.text import Tokenizer  # noqa: E402

# two items; item 0: words 0 (tokens 0-1) and 1 (token 3), token 2 a gap; item 1: one word + padding
DURATIONS = torch.tensor([[3.0, 5.0, 9.0, 4.0], [6.0, 2.0, 0.0, 0.0]])
UNITS = torch.tensor([[0, 0, -1, 1], [0, 0, -1, -1]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
PRED = torch.tensor([[2.0, 4.0, 1.0, 3.0], [1.0, 1.0, 7.0, 7.0]])  # exp(logw)


def test_word_terms_by_hand() -> None:
    loss = rhythm_fit.word_terms(torch.log(PRED), DURATIONS, UNITS)
    words = [(2.5 + 4.5, 8.0), (3.5, 4.0), (1.5 + 1.5, 8.0)]  # (sum of exp + 0.5, target)
    assert loss.item() == pytest.approx(sum(math.log(p / t) ** 2 for p, t in words) / 3, rel=1e-6)


def test_word_and_token_loss_by_hand_and_zero_when_exact() -> None:
    logw = torch.log(PRED).requires_grad_(True)
    loss = rhythm_fit.word_and_token_loss(logw, DURATIONS, UNITS, MASK)
    tokens = [(2.5, 3.0), (4.5, 5.0), (1.5, 9.0), (3.5, 4.0), (1.5, 6.0), (1.5, 2.0)]  # the valid ones
    expected = rhythm_fit.word_terms(torch.log(PRED), DURATIONS, UNITS).item() + sum(
        math.log(p / t) ** 2 for p, t in tokens) / 6
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert float(logw.grad[1, 2:].abs().sum()) == 0.0  # padding gets no gradient
    exact = torch.log((DURATIONS - 0.5).clamp_min(1e-6))  # rounded up at inference: the targets
    assert rhythm_fit.word_and_token_loss(exact, DURATIONS, UNITS, MASK).item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("name", ["tiny", "piper_medium"])
def test_word_units_cover_each_word_and_leave_the_gaps(name: str) -> None:
    tok = Tokenizer.from_config(preset(name))
    text = "Hello big, world."
    ids = tok.encode(text)
    units = rhythm_fit.word_units(tok, ids, transcript_words(text))
    kinds = classify_tokens(tok, ids).kinds
    phone_word = token_word_index(tok, classify_tokens(tok, ids), transcript_words(text))
    assert len(units) == len(ids) and set(units) == {-1, 0, 1, 2}
    for k, kind in enumerate(kinds):
        if kind == "phone":
            assert units[k] == phone_word[k]
        if kind in ("separator", "edge"):
            assert units[k] == -1
    for w in range(3):  # a word's tokens are contiguous (a blank goes with the token after it)
        pos = [k for k, u in enumerate(units) if u == w]
        assert pos == list(range(pos[0], pos[-1] + 1))


def test_gap_units_number_each_pause_run() -> None:
    assert rhythm_fit.gap_units([-1, 0, 0, -1, -1, 1, -1], 2) == [2, 0, 0, 3, 3, 1, 4]


def test_word_terms_with_pause_units_add_a_frame_to_both_sides() -> None:
    units = torch.tensor([rhythm_fit.gap_units([0, 0, -1, 1], 2), [0, 0, -1, -1]])
    units[1, 2:] = -1  # padding stays out
    loss = rhythm_fit.word_terms(torch.log(PRED), DURATIONS, units, plus=1.0)
    counted = [(2.5 + 4.5 + 1, 9.0), (1.5 + 1, 10.0), (3.5 + 1, 5.0), (1.5 + 1.5 + 1, 9.0)]  # words, the pause
    assert loss.item() == pytest.approx(sum(math.log(p / t) ** 2 for p, t in counted) / 4, rel=1e-6)

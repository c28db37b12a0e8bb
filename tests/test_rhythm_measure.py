"""The tempo-blind rhythm measure of the transplant benchmark (benchmarks/transplant/rhythm.py)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "transplant"))
import rhythm  # noqa: E402

WORDS = ["the", "prisoners", "were", "marched", "to", "the", "chapel", "every", "morning"]
PHONES = [2, 8, 2, 5, 2, 2, 5, 4, 5]


def _sentence(durations, pauses=None, start=0.3):
    """Word dicts with the given durations and pauses after each word (none by default)."""
    pauses = pauses or [0.0] * len(durations)
    out, t = [], start
    for w, d, p in zip(WORDS, durations, pauses, strict=False):
        out.append({"word": w, "start": t, "end": t + d})
        t += d + p
    return out


def _profiles(sentences):
    return {f"u{i}": rhythm.sentence_profile(s, PHONES[: len(s)]) for i, s in enumerate(sentences)}


def _donor_durations(seed: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return [list(0.07 * np.array(PHONES) * rng.lognormal(0.0, 0.35, len(PHONES))) for _ in range(4)]


def test_a_global_tempo_change_is_invisible() -> None:
    donor = _donor_durations(0)
    donor_p = _profiles([_sentence(d) for d in donor])
    # the same rhythm, 1.35x faster in one sentence and 0.8x in another
    scaled = _profiles([_sentence([x * f for x in d]) for d, f in zip(donor, [1 / 1.35, 0.8, 1.0, 2.0], strict=True)])
    res = rhythm.compare(scaled, donor_p)
    assert res["corr"] == pytest.approx(1.0, abs=1e-12)
    assert res["distance"] == pytest.approx(0.0, abs=1e-12)
    assert res["words_paired"] == 4 * len(WORDS) and res["sentences_paired"] == 4
    assert np.allclose(rhythm.word_values(donor[0], PHONES), rhythm.word_values(np.array(donor[0]) * 3.0, PHONES))


def test_a_shuffled_rhythm_scores_lower() -> None:
    donor = _donor_durations(1)
    rng = np.random.default_rng(2)
    shuffled = [list(rng.permutation(d)) for d in donor]
    donor_p = _profiles([_sentence(d) for d in donor])
    res = rhythm.compare(_profiles([_sentence(d) for d in shuffled]), donor_p)
    assert res["corr"] < 0.9
    assert res["distance"] > 0.1
    assert rhythm.compare(donor_p, donor_p)["corr"] == pytest.approx(1.0)


def test_word_values_normalise_by_speech_time_and_phones() -> None:
    v = rhythm.word_values([0.2, 0.6, 0.2], [2, 6, 1])
    assert np.allclose(np.exp(v), [0.2 / 2, 0.6 / 6, 0.2 / 1])
    with pytest.raises(ValueError):
        rhythm.word_values([0.1, 0.2], [1])


def test_pause_fraction_of_a_hand_made_segmentation() -> None:
    # words 0.0-0.5, 0.7-1.0, 1.5-2.0: span 2.0 s, pauses 0.2 + 0.5 s
    assert rhythm.pause_fraction([(0.0, 0.5), (0.7, 1.0), (1.5, 2.0)]) == pytest.approx(0.35)
    assert rhythm.pause_fraction([(0.1, 0.4), (0.4, 0.9)]) == pytest.approx(0.0)
    prof = rhythm.sentence_profile(_sentence([0.2] * 3, [0.1, 0.0, 0.0]), [2, 2, 2])
    assert prof["pause_fraction"] == pytest.approx(0.1 / 0.7)


def test_final_lengthening_and_closure() -> None:
    assert rhythm.final_lengthening([0.2, 0.2, 0.2, 0.4], [2, 2, 2, 2]) == pytest.approx(0.2 / 0.125)
    assert rhythm.final_lengthening([0.3, 0.3, 0.3], [3, 3, 3]) == pytest.approx(1.0)
    assert rhythm.closure(0.4, 0.1) == pytest.approx(0.75)
    assert rhythm.closure(0.4, 0.5) == pytest.approx(-0.25)
    assert math.isnan(rhythm.closure(0.0, 0.1))


def test_mismatched_word_sequences_are_skipped() -> None:
    donor = _profiles([_sentence(d) for d in _donor_durations(3)])
    other = {k: dict(v) for k, v in donor.items()}
    other["u0"]["words"] = other["u0"]["words"][:-1]
    res = rhythm.compare(other, donor)
    assert res["sentences_skipped"] == 1 and res["sentences_paired"] == 3


def test_within_sentence_correlation_ignores_sentence_length() -> None:
    donor = _donor_durations(4)
    donor_p = _profiles([_sentence(d) for d in donor])
    other = _donor_durations(5)  # an unrelated rhythm
    # sentences of very different lengths: their values sit at different levels in every set
    unrelated = {}
    for k, uid in enumerate(list(donor_p)):
        n = 3 + 2 * k
        unrelated[uid] = rhythm.sentence_profile(_sentence(other[k][:n]), PHONES[:n])
        donor_p[uid] = rhythm.sentence_profile(_sentence(donor[k][:n]), PHONES[:n])
    res = rhythm.compare(unrelated, donor_p)
    assert res["corr"] > res["corr_within"] + 0.2  # the pooled correlation sees the sentence lengths
    assert rhythm.compare(donor_p, donor_p)["corr_within"] == pytest.approx(1.0)

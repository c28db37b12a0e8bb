"""Donor durations: token mapping, TextGrid input, pocketsphinx forced alignment."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from vits_surgery.config import preset
from vits_surgery.durations import WordSpan, donor_durations, forced_align, read_textgrid, token_durations
from vits_surgery.durations.forced import _pronounce
from vits_surgery.durations.phones import ipa_to_arpa, letters_to_arpa, match_sequences
from vits_surgery.durations.segments import PhoneSpan, transcript_words
from vits_surgery.durations.tokens import classify_tokens, frames_from_boundaries, token_word_index
from vits_surgery.text import Tokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "durations" / "mfa_small.TextGrid"
FRAME = 0.01


def _flite(text: str, path: Path) -> Path:
    subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", str(path)], check=True, capture_output=True)
    return path


def _words_with_pause() -> list[WordSpan]:
    return [WordSpan("hello", 0.10, 0.50), WordSpan("big", 0.50, 0.80), WordSpan("world", 1.40, 1.90)]


@pytest.mark.parametrize("name", ["tiny", "piper_medium"])
def test_mapping_sums_monotonic_and_pauses_on_separators(name: str) -> None:
    tok = Tokenizer.from_config(preset(name))
    text = "Hello big, world."
    ids = tok.encode(text)
    n = 200
    d = token_durations(tok, ids, _words_with_pause(), n, FRAME)
    assert d.dtype == torch.long and d.shape == (len(ids),)
    assert int(d.sum()) == n and int(d.min()) >= 1
    kinds = classify_tokens(tok, ids)
    owner = token_word_index(tok, kinds, transcript_words(text))
    edges = np.concatenate([[0], np.cumsum(d.numpy())])
    words = [w for w in owner if w is not None]
    assert words == sorted(words) and set(words) == {0, 1, 2}  # every word has tokens, in order
    # the 0.6 s pause between "big" and "world" lies on separator / blank tokens
    in_pause = [k for k in range(len(ids)) if edges[k] >= 78 and edges[k + 1] <= 142]
    assert sum(int(d[k]) for k in in_pause) >= 50
    assert all(kinds.kinds[k] in ("blank", "separator") for k in in_pause)
    # "world" starts near 1.40 s
    first_world = owner.index(2)
    assert min(abs(edges[first_world - j] - 140) for j in (0, 1, 2)) <= 2  # its blank or stress mark


def test_mapping_uses_phones_and_weights() -> None:
    tok = Tokenizer.from_config(preset("piper_medium"))
    spans = read_textgrid(FIXTURE)
    ids = tok.encode("Hello world")
    d = token_durations(tok, ids, spans, 150, FRAME)
    kinds = classify_tokens(tok, ids)
    edges = np.concatenate([[0], np.cumsum(d.numpy())])
    # the "l" of hello starts where the L phone starts (0.36 s), give or take its blank
    pos_l = kinds.symbols.index("l")
    assert abs(edges[pos_l] - 36) <= 2 or abs(edges[pos_l - 1] - 36) <= 2
    heavy = torch.ones(len(ids), dtype=torch.float64)
    heavy[pos_l] = 50.0
    d2 = token_durations(tok, ids, spans, 150, FRAME, weights=heavy)
    assert int(d2.sum()) == 150 and int(d2[pos_l]) > int(d[pos_l])


def test_frames_from_boundaries_exact_sum_and_minimum() -> None:
    d = frames_from_boundaries([0, 0.2, 0.3, 0.4, 9.7, 10], 10, min_frames=1)
    assert d.tolist() == [1, 1, 1, 6, 1]
    with pytest.raises(ValueError):
        frames_from_boundaries([0, 1, 2, 3], 2)


def test_word_grouping_follows_espeak_merges() -> None:
    tok = Tokenizer.from_config(preset("piper_medium"))
    text = "printing in the only sense"
    ids = tok.encode(text)
    kinds = classify_tokens(tok, ids)
    owner = [o for o in token_word_index(tok, kinds, transcript_words(text)) if o is not None]
    assert owner == sorted(owner) and set(owner) == set(range(5))


def test_sequence_matching_and_phone_tables() -> None:
    assert match_sequences(list("abc"), list("abxc")) == [0, 1, 1, 2]
    assert ipa_to_arpa("həlˈoʊ") == ["HH", "AH", "L", "OW"]
    assert letters_to_arpa("shrek7") == ["SH", "R", "EH", "K", "S", "EH", "V", "AH", "N"]
    assert _pronounce("grimbly", "en-us")[0] == "G"


def test_textgrid_reader() -> None:
    words = read_textgrid(FIXTURE)
    assert [w.text for w in words] == ["hello", "world"]
    assert words[0].start == pytest.approx(0.2) and words[1].end == pytest.approx(1.3)
    assert [p.label for p in words[1].phones] == ["W", "ER1", "L", "D"]
    assert isinstance(words[0].phones[0], PhoneSpan)


def test_pocketsphinx_alignment_of_flite_speech(tmp_path: Path) -> None:
    from vits_surgery.audio import load_audio

    text = "The quick brown fox jumps over the grimbly dog."
    audio, sr = load_audio(_flite(text, tmp_path / "a.wav"))
    words = forced_align(audio, sr, text)
    assert [w.text for w in words] == transcript_words(text)  # the out-of-dictionary word included
    length = len(audio) / sr
    for a, b in zip(words, words[1:], strict=False):
        assert a.start < a.end <= b.start + 1e-6
    assert words[0].start < 0.5 and words[-1].end > length - 0.5 and words[-1].end <= length + 0.02
    assert all(0.04 <= w.end - w.start <= 1.2 for w in words)
    assert words[7].end - words[7].start > words[6].end - words[6].start  # grimbly > the
    plain = "The quick brown fox jumps over the lazy dog."
    audio, sr = load_audio(_flite(plain, tmp_path / "b.wav"))
    words = forced_align(audio, sr, plain)
    assert [w.text for w in words] == transcript_words(plain)
    for w in words:  # phone segments tile each word
        assert w.phones and w.phones[0].start == pytest.approx(w.start) and w.phones[-1].end == pytest.approx(w.end)
    assert [p.label for p in words[-1].phones] == ["D", "AO", "G"]


def test_donor_durations_contract(tmp_path: Path) -> None:
    from vits_surgery.audio import load_audio, num_frames
    from vits_surgery.models.vits import VITS

    torch.manual_seed(0)
    model = VITS(preset("tiny"), with_discriminator=False)
    texts = ["Hello world.", "A short test, with a pause."]
    items = [(_flite(t, tmp_path / f"{k}.wav"), t) for k, t in enumerate(texts)]
    tok = Tokenizer.from_config(model.config)
    for source in ("auto", "forced", "mas"):
        out = donor_durations(model, items, source=source)
        for (path, text), d in zip(items, out, strict=False):
            audio, _ = load_audio(path)  # flite writes 16 kHz, the tiny preset's rate
            assert d is not None and d.dtype == torch.long and d.shape == (len(tok.encode(text)),)
            assert int(d.sum()) == num_frames(len(audio), 256, 64)
    tg_dir = tmp_path / "tg"
    tg_dir.mkdir()
    (tg_dir / "0.TextGrid").write_text(FIXTURE.read_text())
    out = donor_durations(model, items[:1], source="textgrid", textgrids=tg_dir, weights="uniform")
    assert int(out[0].sum()) == num_frames(len(load_audio(items[0][0])[0]), 256, 64)
    with pytest.raises(ValueError):
        donor_durations(model, items, source="guess")
    # "words" (default) drops the aligner's phone times; "phones" keeps them: other targets
    words = donor_durations(model, items, source="forced", weights="uniform")
    phones = donor_durations(model, items, source="forced", weights="uniform", timing="phones")
    assert [int(d.sum()) for d in words] == [int(d.sum()) for d in phones]
    assert any(not torch.equal(a, b) for a, b in zip(words, phones, strict=True))
    with pytest.raises(ValueError, match="timing must be"):
        donor_durations(model, items, source="forced", timing="syllables")

"""The "forced" duration source of the cadence cache: real espeak-ng speech with its transcript,
selection by name, the MAS fallback for an utterance the aligner cannot align, the CLI flag."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
import torch
from surgery_helpers import tiny_model

from vits_surgery.cli import UserError, _choose_duration_source, build_parser
from vits_surgery.data import TextAudioDataset, read_ljspeech
from vits_surgery.data.loader import collate
from vits_surgery.durations import forced
from vits_surgery.durations.cache import SOURCES, DurationCache, ForcedDurations, MASDurations, resolve_source
from vits_surgery.surgery.callbacks import RunLogger, read_run
from vits_surgery.surgery.plan import SurgeryPlan
from vits_surgery.surgery.trainer import SurgicalTrainer, TrainConfig

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello there, my friend."]


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VITS_SURGERY_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def donor(tmp_path_factory) -> Path:
    """Two espeak-ng utterances in LJSpeech layout."""
    root = tmp_path_factory.mktemp("donor")
    (root / "wavs").mkdir()
    lines = []
    for i, text in enumerate(TEXTS):
        subprocess.run(["espeak-ng", "-w", str(root / "wavs" / f"u{i}.wav"), text], check=True, capture_output=True)
        lines.append(f"u{i}|{text}|{text}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def _batch(model, donor: Path):
    data = TextAudioDataset(read_ljspeech(donor), model.config)
    assert len(data) == len(TEXTS)
    return collate([data[i] for i in range(len(data))])


def test_forced_source_through_the_cache_sums_to_the_frames(donor, tmp_path) -> None:
    model = tiny_model()
    batch = _batch(model, donor)
    cache = DurationCache(model, "forced", tmp_path / "c")
    assert isinstance(cache.source, ForcedDurations) and cache.source.name == "forced"
    inputs = cache.inputs(batch)
    source = cache.source
    assert source.stats() == {"aligned": 2, "fallbacks": 0}
    for i in range(len(batch)):
        n, frames = int(batch.token_lengths[i]), int(batch.spec_lengths[i])
        d = inputs.durations[i, 0]
        assert int(d[:n].sum()) == frames and bool((d[:n] >= 1).all()) and int(d[n:].abs().sum()) == 0
    # the entries read the duration predictor as it was when the cache was made (its frozen
    # reference), never the predictor that trains: moving the live one changes nothing
    assert "duration_predictor" not in cache.organs and cache.uses_reference
    first = cache.inputs(batch).durations.clone()
    reference = cache.reference_state()
    with torch.no_grad():
        for p in model.duration_predictor.parameters():
            p.add_(0.1)
    cache.items.clear()
    assert torch.equal(cache.inputs(batch).durations, first)
    # a cache made from the moved model has another reference, so other keys; given the first
    # reference back (as a resumed trainer is, from its checkpoint) it reads the same entries
    again = DurationCache(model, "forced", tmp_path / "c")
    assert again.key(batch, 0) != cache.key(batch, 0)
    again.load_reference_state(reference)
    assert again.key(batch, 0) == cache.key(batch, 0)
    assert torch.equal(again.inputs(batch).durations, first)
    assert again.stats["loaded"] == 2 and again.stats["computed"] == 0
    # the phone-timing variant reads no reference, so the predictor is not in its key
    phones = DurationCache(model, ForcedDurations(timing="phones"), tmp_path / "c")
    assert not phones.uses_reference and phones.key(batch, 0) != cache.key(batch, 0)
    # another source is another key
    assert DurationCache(model, "mas", tmp_path / "c").key(batch, 0) != cache.key(batch, 0)


def test_unaligned_utterance_falls_back_to_mas(donor, tmp_path, monkeypatch, caplog) -> None:
    model = tiny_model()
    batch = _batch(model, donor)
    real = forced.forced_align

    def align(audio, sample_rate, text, **kwargs):
        if text.startswith("Hello"):
            raise forced.AlignmentError("no pass aligned it")
        return real(audio, sample_rate, text, **kwargs)

    monkeypatch.setattr(forced, "forced_align", align)
    cache = DurationCache(model, "forced", tmp_path / "c")
    with caplog.at_level(logging.WARNING, logger="vits_surgery.durations"):
        durations = cache.inputs(batch).durations
    assert cache.source.stats() == {"aligned": 1, "fallbacks": 1}
    assert "MAS durations for it" in caplog.text
    k = next(i for i in range(len(batch)) if batch.texts[i].startswith("Hello"))
    mas = DurationCache(model, MASDurations(), tmp_path / "m")
    n = int(batch.token_lengths[k])
    sub_seeds = int(cache.key(batch, k)[:15], 16)
    assert int(durations[k, 0, :n].sum()) == int(batch.spec_lengths[k])
    # the fallback is the MAS source on that utterance, with the seed of its forced-source key
    from vits_surgery.durations.cache import SourceInputs, _select

    sub = _select(batch, [k])
    with torch.no_grad():
        model.eval()
        expect = mas.source(model, SourceInputs(sub, model.encode_text(sub.tokens, sub.token_lengths), None, [sub_seeds]))
    assert torch.equal(durations[k, 0, :n].long(), expect[0, :n].long())


def test_selection_by_name() -> None:
    assert SOURCES["forced"] is ForcedDurations and SOURCES["mas"] is MASDurations
    assert isinstance(resolve_source("forced"), ForcedDurations)
    with pytest.raises(ValueError, match="unknown duration source"):
        resolve_source("guess")
    settings = ForcedDurations().settings()
    assert settings["timing"] == "words" and settings["weights"] == "recipient" and settings["fallback"] == "mas"
    assert settings != ForcedDurations(language="en-gb").settings()
    assert ForcedDurations(timing="phones").settings()["weights"] == "uniform"
    assert not ForcedDurations(timing="phones").uses_reference and ForcedDurations().uses_reference
    with pytest.raises(ValueError, match="timing must be"):
        ForcedDurations(timing="syllables")


def test_word_timing_shares_follow_the_reference_predictor(donor, tmp_path) -> None:
    """By default the aligner's word times are kept and its phone times dropped; inside each
    word the frames follow the recipient's own predicted durations (token_durations() on the
    word spans with those weights); the "phones" timing gives other targets."""
    from vits_surgery.durations.forced import forced_align
    from vits_surgery.durations.segments import WordSpan
    from vits_surgery.durations.tokens import token_durations
    from vits_surgery.text import Tokenizer

    model = tiny_model()
    with torch.no_grad():  # an untrained predictor says about the same for every token: vary it
        g = torch.Generator().manual_seed(0)
        for p in model.duration_predictor.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    batch = _batch(model, donor)
    cache = DurationCache(model, "forced", tmp_path / "w")
    words = cache.inputs(batch).durations
    phones = DurationCache(model, ForcedDurations(timing="phones"), tmp_path / "p").inputs(batch).durations
    assert not torch.equal(words, phones)
    with torch.no_grad():
        model.eval()
        weights = cache._reference_durations(model.encode_text(batch.tokens, batch.token_lengths), None)
    audio, tok = model.config.audio, Tokenizer.from_config(model.config)
    for i in range(len(batch)):
        n, frames = int(batch.token_lengths[i]), int(batch.spec_lengths[i])
        wav = batch.wav[i].reshape(-1)[: int(batch.wav_lengths[i])].numpy()
        spans = [WordSpan(w.text, w.start, w.end) for w in forced_align(wav, audio.sample_rate, batch.texts[i])]
        expect = token_durations(tok, batch.tokens[i, :n].tolist(), spans, frames,
                                 audio.hop_length / audio.sample_rate, weights[i, :n].double(), 1)
        assert torch.equal(words[i, 0, :n].long(), expect)


def test_trainer_records_the_chosen_source(donor, tmp_path) -> None:
    model = tiny_model()
    data = TextAudioDataset(read_ljspeech(donor), model.config)
    trainer = SurgicalTrainer(model, SurgeryPlan.cadence(), [collate([data[0], data[1]])], out_dir=tmp_path / "run",
                              config=TrainConfig(progress=False, seed=0), callbacks=[RunLogger()])
    assert trainer.cadence.source_name == "auto"  # the library's default
    _choose_duration_source(trainer, "forced")
    assert trainer.cadence.source_name == "forced"
    trainer.fit(max_steps=2)
    cadence = read_run(tmp_path / "run")["cadence"]
    assert cadence["source"] == "forced" and cadence["source_stats"] == {"aligned": 2, "fallbacks": 0}
    full = SurgicalTrainer(tiny_model(), SurgeryPlan(train=("duration_predictor", "text_encoder")), None,
                           out_dir=tmp_path / "full", config=TrainConfig(progress=False))
    with pytest.raises(UserError, match="full path"):
        _choose_duration_source(full, "forced")


def test_resume_keeps_the_reference_predictor(donor, tmp_path) -> None:
    """A resumed cadence run shares time by the predictor of the first run's start, even when its
    trainer is built from the trained model: the reference travels in the checkpoint."""
    model = tiny_model()
    data = TextAudioDataset(read_ljspeech(donor), model.config)
    batches = [collate([data[0], data[1]])]
    config = TrainConfig(progress=False, seed=0, save_every=2)
    trainer = SurgicalTrainer(model, SurgeryPlan.cadence(), batches, out_dir=tmp_path / "run", config=config)
    _choose_duration_source(trainer, "forced")
    reference = trainer.cadence.cache.reference_state()
    trainer.fit(max_steps=2)
    first = trainer.cadence.cache.inputs(batches[0]).durations.clone()
    assert not all(torch.equal(v, model.duration_predictor.state_dict()[k]) for k, v in reference.items())
    resumed = SurgicalTrainer(model, SurgeryPlan.cadence(), batches, out_dir=tmp_path / "run", config=config)
    _choose_duration_source(resumed, "forced")
    assert resumed.cadence.cache.key(batches[0], 0) != trainer.cadence.cache.key(batches[0], 0)
    resumed.fit(max_steps=3, resume=True)
    state = resumed.cadence.cache.reference_state()
    assert all(torch.equal(state[k], v) for k, v in reference.items())
    assert resumed.cadence.cache.key(batches[0], 0) == trainer.cadence.cache.key(batches[0], 0)
    assert torch.equal(resumed.cadence.cache.inputs(batches[0]).durations, first)


def test_cli_flag_parses() -> None:
    parser = build_parser()
    args = parser.parse_args(["transplant", "--donor", "d/", "--duration-source", "forced"])
    assert args.duration_source == "forced"
    assert parser.parse_args(["transplant", "--donor", "d/"]).duration_source == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["transplant", "--donor", "d/", "--duration-source", "guess"])

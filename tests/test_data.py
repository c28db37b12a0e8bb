"""Dataset pipeline: readers, bad-input handling, caches, bucketing sampler, collate."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from vits_surgery.audio import resample
from vits_surgery.config import preset
from vits_surgery.data import (
    BucketSampler,
    DataError,
    DatasetReport,
    TextAudioDataset,
    Utterance,
    collate,
    from_pairs,
    make_loader,
    read_coqui_csv,
    read_items,
    read_ljspeech,
    read_ljspeech_test,
    read_speaker_csv,
    read_vctk,
    read_vctk_old,
)
from vits_surgery.data import dataset as dataset_module

CFG = preset("tiny")  # 16 kHz, hop 64
SENTENCES = [
    "Hello world, this is a test.",
    "The quick brown fox jumps over the lazy dog.",
    "Surgery on a voice needs a steady hand.",
    "A short one.",
]


def espeak(text: str, path: Path) -> np.ndarray:
    """Real speech from espeak-ng: 22050 Hz mono 16-bit."""
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    audio, sr = sf.read(str(path), dtype="float32")
    assert sr == 22050 and audio.ndim == 1
    return audio


@pytest.fixture(scope="module")
def voices(tmp_path_factory) -> list[np.ndarray]:
    root = tmp_path_factory.mktemp("espeak")
    return [espeak(t, root / f"{i}.wav") for i, t in enumerate(SENTENCES)]


def write_lj(root: Path, rows: list[tuple[str, str]], raw_lines: list[bytes] = ()) -> Path:
    lines = [f"{i}|{t}|{t}".encode() for i, t in rows] + list(raw_lines)
    root.mkdir(parents=True, exist_ok=True)
    (root / "metadata.csv").write_bytes(b"\n".join(lines) + b"\n")
    return root


def good_folder(root: Path, voices: list[np.ndarray]) -> Path:
    wavs = root / "wavs"
    wavs.mkdir(parents=True, exist_ok=True)
    for i, audio in enumerate(voices):
        sf.write(str(wavs / f"u{i}.wav"), audio, 22050)
    return write_lj(root, [(f"u{i}", t) for i, t in enumerate(SENTENCES)])


# ----------------------------------------------------------------------------- readers
def test_ljspeech_reader_columns_and_paths(tmp_path: Path) -> None:
    (tmp_path / "metadata.csv").write_text(
        "LJ001|Raw text.|Normalized text.\nLJ002|Only two columns\nsub/x.wav|Path id.|\n", encoding="utf-8"
    )
    items = read_ljspeech(tmp_path)
    assert [u.text for u in items] == ["Normalized text.", "Only two columns", "Path id."]
    assert items[0].audio_path == tmp_path / "wavs" / "LJ001.wav"
    assert items[2].audio_path == tmp_path / "sub" / "x.wav"
    assert items[0].id == "LJ001" and items[0].speaker is None
    assert items[1].source.endswith("metadata.csv:2")


def test_reader_counts_bad_lines_and_strict_mode_names_the_line(tmp_path: Path) -> None:
    write_lj(tmp_path, [("a", "Fine.")], [b"no columns here", b"b|caf\xe9 latin-1|x", b"c|Also fine.|"])
    report = DatasetReport()
    items = read_ljspeech(tmp_path, report=report)
    assert [u.id for u in items] == ["a", "c"]
    assert report.skipped == {"bad_line": 1, "non_utf8": 1}
    assert report.seen == 4
    with pytest.raises(DataError, match=r"metadata\.csv:2"):
        read_ljspeech(tmp_path, on_bad="error")


def test_ljspeech_test_speakers_change_every_two_lines(tmp_path: Path) -> None:
    write_lj(tmp_path, [(f"u{i}", "x") for i in range(5)])
    names = [u.speaker for u in read_ljspeech_test(tmp_path)]
    assert names == ["ljspeech-1", "ljspeech-1", "ljspeech-2", "ljspeech-2", "ljspeech-3"]


def test_speaker_csv_and_coqui_csv(tmp_path: Path) -> None:
    (tmp_path / "metadata.csv").write_text("a|Hi there.|alice\nb|Bye.|bob\n", encoding="utf-8")
    items = read_speaker_csv(tmp_path)
    assert [(u.id, u.speaker) for u in items] == [("a", "alice"), ("b", "bob")]
    (tmp_path / "c.csv").write_text("audio_file|text|speaker_name\nw/a.wav|Hi.|sp1\n", encoding="utf-8")
    (tmp_path / "d.csv").write_text("text|audio_file\nHi.|w/a.wav\n", encoding="utf-8")
    assert read_coqui_csv(tmp_path, "c.csv")[0] == Utterance(tmp_path / "w/a.wav", "Hi.", "sp1",
                                                           source=f"{tmp_path / 'c.csv'}:2")
    assert read_coqui_csv(tmp_path, "d.csv")[0].speaker == "coqui"
    (tmp_path / "e.csv").write_text("path|words\n", encoding="utf-8")
    with pytest.raises(DataError, match="audio_file"):
        read_coqui_csv(tmp_path, "e.csv")


def test_vctk_new_and_old_layouts(tmp_path: Path) -> None:
    for spk, uid in (("p225", "p225_001"), ("p226", "p226_002")):
        (tmp_path / "txt" / spk).mkdir(parents=True, exist_ok=True)
        (tmp_path / "txt" / spk / f"{uid}.txt").write_text("Please call Stella.\n", encoding="utf-8")
    new = read_vctk(tmp_path, ignored_speakers=["p226"])
    assert [(u.speaker, u.text) for u in new] == [("VCTK_p225", "Please call Stella.")]
    assert new[0].audio_path == tmp_path / "wav48_silence_trimmed" / "p225" / "p225_001_mic1.flac"
    assert read_vctk(tmp_path, mic="mic2")[0].audio_path.name == "p225_001_mic2.flac"
    old = read_items(tmp_path, "vctk_old")
    assert [u.speaker for u in old] == ["VCTK_old_p225", "VCTK_old_p226"]
    assert old[1].audio_path == tmp_path / "wav48" / "p226" / "p226_002.wav"
    assert read_vctk_old(tmp_path) == old
    with pytest.raises(DataError, match="txt/"):
        read_vctk(tmp_path / "nowhere")


def test_from_pairs_and_unknown_formatter(tmp_path: Path) -> None:
    items = from_pairs([(tmp_path / "a.wav", "Hi."), (str(tmp_path / "b.wav"), "Yo.", "bob")])
    assert [(u.id, u.speaker) for u in items] == [("a", None), ("b", "bob")]
    with pytest.raises(DataError, match="item 0"):
        from_pairs([("only one",)])
    with pytest.raises(DataError, match="ljspeech"):
        read_items(tmp_path, "ljspeak")


# ----------------------------------------------------------------------------- dataset
def test_dataset_items_match_the_audio_front_end(tmp_path: Path, voices) -> None:
    root = good_folder(tmp_path, voices)
    data = TextAudioDataset(read_ljspeech(root), CFG)
    assert len(data) == len(SENTENCES) and data.report.skipped == {}
    assert data.report.converted["resampled"] == len(SENTENCES)  # espeak is 22050 Hz, tiny 16 kHz
    hop = CFG.audio.hop_length
    for i in range(len(data)):
        s = data[i]
        expected = resample(voices[i], 22050, 16000)
        frames = len(expected) // hop
        assert s.spec.shape == (CFG.audio.n_freq, frames) == (CFG.audio.n_freq, data.lengths[i])
        assert s.wav.shape == (1, frames * hop)
        np.testing.assert_allclose(s.wav[0].numpy(), expected[: frames * hop], atol=1e-6)
        assert s.tokens.dtype == torch.long and s.tokens.numel() > len(SENTENCES[i])  # blanks interleaved
        assert s.text == SENTENCES[i] and s.id == f"u{i}" and s.speaker is None


def _bad_corpus(root: Path, voices: list[np.ndarray]) -> tuple[Path, dict[str, int]]:
    """A folder mixing convertible files, bad files and bad lines; returns expected skips."""
    wavs = root / "wavs"
    wavs.mkdir(parents=True)
    g = voices[0]
    rng = np.random.default_rng(0)
    sf.write(str(wavs / "good.wav"), g, 22050)
    sf.write(str(wavs / "st48.wav"), np.stack([resample(g, 22050, 48000)] * 2, axis=1), 48000, subtype="PCM_24")
    sf.write(str(wavs / "u8.wav"), resample(voices[1], 22050, 8000), 8000, subtype="PCM_U8")
    sf.write(str(wavs / "i24.wav"), voices[2], 22050, subtype="PCM_24")
    sf.write(str(wavs / "native.wav"), resample(voices[3], 22050, 16000), 16000)
    sf.write(str(wavs / "clipped.wav"), np.clip(g * 8, -1, 1), 22050)
    (wavs / "empty.wav").write_bytes(b"")
    (wavs / "text.wav").write_text("this is not audio\n")
    sf.write(str(wavs / "nosamples.wav"), np.zeros(0, dtype=np.float32), 16000)
    nan = g.copy()
    nan[100] = np.nan
    sf.write(str(wavs / "nan.wav"), nan, 22050, subtype="FLOAT")
    sf.write(str(wavs / "silent.wav"), np.zeros(16000, dtype=np.float32), 16000)
    sf.write(str(wavs / "short.wav"), g[:4410], 22050)  # 0.2 s
    sf.write(str(wavs / "long.wav"), 0.1 * rng.standard_normal(16000 * 6).astype(np.float32), 16000)
    sf.write(str(wavs / "brief.wav"), g[: int(0.6 * 22050)], 22050)  # 150 frames at 16 kHz / hop 64
    rows = [
        ("good", SENTENCES[0]), ("st48", SENTENCES[0]), ("u8", SENTENCES[1]), ("i24", SENTENCES[2]),
        ("native", SENTENCES[3]), ("clipped", SENTENCES[0]),
        ("missing", "No file."), ("empty", "Empty file."), ("text", "Not audio."),
        ("nosamples", "No samples."), ("nan", "Not a number."), ("silent", "Silence."),
        ("short", "Too short."), ("long", "Too long."), ("good", "   "), ("good", "... !?"),
        ("good", "Tokens \u2603 unknown."), ("brief", "word " * 40),
    ]
    write_lj(root, rows, [b"one column", b"good|bad \xff byte|x"])
    expected = {
        "missing_file": 1, "empty_file": 1, "not_audio": 1, "empty_audio": 1, "non_finite": 1,
        "silent": 1, "too_short": 1, "too_long": 1, "empty_text": 1, "no_letters": 1,
        "unknown_symbols": 1, "text_too_long": 1, "bad_line": 1, "non_utf8": 1,
    }
    return root, expected


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory, voices) -> tuple[Path, dict[str, int]]:
    return _bad_corpus(tmp_path_factory.mktemp("bad"), voices)


def test_bad_items_are_skipped_and_counted_by_reason(bad_corpus) -> None:
    root, expected = bad_corpus
    data = TextAudioDataset.from_folder(root, CFG, min_seconds=0.5, max_seconds=5.0)
    rep = data.report
    assert dict(rep.skipped) == expected
    assert sorted(u.id for u in data.items) == sorted(["good", "st48", "u8", "i24", "native", "clipped"])
    assert rep.kept == 6 and rep.seen == 6 + sum(expected.values())
    assert rep.converted == {"resampled": 5, "downmixed": 1, "clipped": 1}
    assert all(rep.examples[r] for r in expected)
    assert "missing.wav" in rep.examples["missing_file"][0] and "metadata.csv:" in rep.examples["missing_file"][0]
    summary = rep.summary()
    assert "kept 6 of 20" in summary and "text_too_long" in summary
    for i in range(len(data)):  # every kept item is usable
        s = data[i]
        assert torch.isfinite(s.spec).all() and torch.isfinite(s.wav).all() and s.wav.abs().max() > 0.01


@pytest.mark.parametrize(
    "wav_id, text, needle",
    [
        ("missing", "x y", "missing.wav"),
        ("text", "x y", "text.wav"),
        ("nan", "x y", "NaN"),
        ("silent", "x y", "silent"),
        ("long", "x y", "max_seconds"),
        ("good", "... !?", "no letters"),
        ("good", "Tokens \u2603 unknown.", "symbols"),
    ],
)
def test_strict_mode_raises_naming_the_item(bad_corpus, tmp_path: Path, wav_id: str, text: str, needle: str) -> None:
    root, _ = bad_corpus
    items = [Utterance(root / "wavs" / f"{wav_id}.wav", text, source=f"{root}/wavs/{wav_id}.wav")]
    with pytest.raises(DataError, match=needle) as err:
        TextAudioDataset(items, CFG, max_seconds=5.0, on_bad="error")
    assert f"{wav_id}.wav" in str(err.value)


def test_caches_hit_on_second_pass_and_follow_file_changes(tmp_path: Path, voices, monkeypatch) -> None:
    root = good_folder(tmp_path / "lj", voices)
    cache = tmp_path / "cache"
    reads = []
    real = dataset_module.load_audio
    monkeypatch.setattr(dataset_module, "load_audio", lambda *a, **k: reads.append(a[0]) or real(*a, **k))

    first = TextAudioDataset(read_ljspeech(root), CFG, cache_dir=cache)
    n = len(SENTENCES)
    assert len(reads) == n
    assert first.cache.stats["spec/write"] == n and first.cache.stats["tokens/write"] == n
    reads.clear()
    second = TextAudioDataset(read_ljspeech(root), CFG, cache_dir=cache)
    samples = [second[i] for i in range(n)]
    assert reads == []  # neither the pass nor __getitem__ opened the audio
    assert second.cache.stats["spec/hit"] == 2 * n and second.cache.stats["tokens/hit"] == n
    assert second.report.converted == first.report.converted
    plain = TextAudioDataset(read_ljspeech(root), CFG)
    for i, s in enumerate(samples):
        ref = plain[i]
        assert torch.equal(s.spec, ref.spec) and torch.equal(s.wav, ref.wav) and torch.equal(s.tokens, ref.tokens)

    sf.write(str(root / "wavs" / "u1.wav"), voices[1][: len(voices[1]) // 2], 22050)  # the file changes
    reads.clear()
    third = TextAudioDataset(read_ljspeech(root), CFG, cache_dir=cache)
    assert [Path(p).name for p in reads] == ["u1.wav"]
    assert third.cache.stats["spec/miss"] == 1 and third.lengths[1] == pytest.approx(second.lengths[1] / 2, abs=2)

    victim = third.cache.path("spec", third.entries[0].spec_key)
    victim.write_bytes(victim.read_bytes()[:100])  # truncated entry
    fourth = TextAudioDataset(read_ljspeech(root), CFG, cache_dir=cache)
    assert fourth.cache.stats["spec/invalid"] == 1 and fourth.cache.stats["spec/write"] == 1
    assert torch.equal(fourth[0].spec, plain[0].spec)


def test_multispeaker_ids_from_sorted_names(tmp_path: Path, voices) -> None:
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    for i in range(3):
        sf.write(str(wavs / f"u{i}.wav"), voices[i], 22050)
    (tmp_path / "metadata.csv").write_text(
        f"u0|{SENTENCES[0]}|zoe\nu1|{SENTENCES[1]}|adam\nu2|{SENTENCES[2]}|zoe\n", encoding="utf-8"
    )
    cfg = CFG.replace(n_speakers=4, gin_channels=8)
    data = TextAudioDataset.from_folder(tmp_path, cfg, formatter="csv")
    assert data.speaker_map == {"adam": 0, "zoe": 1}
    batch = collate([data[i] for i in range(3)])
    assert batch.speakers.tolist() == [1, 0, 1]
    with pytest.raises(DataError, match="n_speakers=4"):
        TextAudioDataset(data.items, cfg, speaker_map={"adam": 0, "zoe": 7})
    only_adam = TextAudioDataset(data.items, cfg, speaker_map={"adam": 0})
    assert len(only_adam) == 1 and only_adam.report.skipped == {"unknown_speaker": 2}


# ----------------------------------------------------------------------------- collate
def test_collate_pads_with_zeros_and_feeds_the_model(tmp_path: Path, voices) -> None:
    from vits_surgery.models.vits import VITS

    data = TextAudioDataset(read_ljspeech(good_folder(tmp_path, voices)), CFG)
    samples = [data[i] for i in range(len(data))]
    batch = collate(samples)
    b, hop = len(samples), CFG.audio.hop_length
    assert batch.tokens.shape == (b, max(s.tokens.numel() for s in samples))
    assert batch.spec.shape == (b, CFG.audio.n_freq, max(data.lengths))
    assert batch.wav.shape == (b, 1, max(data.lengths) * hop)
    assert torch.equal(batch.wav_lengths, batch.spec_lengths * hop)
    assert batch.speakers is None and batch.ids == [s.id for s in samples]
    for i, s in enumerate(samples):
        t, f = batch.token_lengths[i], batch.spec_lengths[i]
        assert torch.equal(batch.tokens[i, :t], s.tokens) and not batch.tokens[i, t:].any()
        assert torch.equal(batch.spec[i, :, :f], s.spec) and not batch.spec[i, :, f:].any()
        assert not batch.wav[i, :, f * hop :].any()
    torch.manual_seed(0)
    out = VITS(CFG, with_discriminator=False)(batch.tokens, batch.token_lengths, batch.spec, batch.spec_lengths)
    assert out.path.shape == (b, batch.tokens.shape[1], batch.spec.shape[2])
    assert torch.equal(out.path.sum(dim=(1, 2)).long(), batch.spec_lengths)  # MAS covers every frame


# ----------------------------------------------------------------------------- sampler
LENGTHS = [int(x) for x in np.random.default_rng(3).integers(20, 400, size=103)]


def test_bucket_sampler_is_deterministic_complete_and_bucketed() -> None:
    a = BucketSampler(LENGTHS, batch_size=8, seed=7, pool_batches=4)
    b = BucketSampler(LENGTHS, batch_size=8, seed=7, pool_batches=4)
    assert a.plan(0) == b.plan(0) and a.plan(3) == b.plan(3)
    assert a.plan(0) != a.plan(1)  # reshuffled per epoch
    assert a.plan(0) != BucketSampler(LENGTHS, batch_size=8, seed=8, pool_batches=4).plan(0)
    flat = sorted(i for batch in a.plan(0) for i in batch)
    assert flat == list(range(len(LENGTHS)))
    assert len(a) == len(a.plan(0)) == 13

    def padding(batches):
        return sum(max(LENGTHS[i] for i in bt) * len(bt) - sum(LENGTHS[i] for i in bt) for bt in batches)

    rng = np.random.default_rng(0)
    perm = rng.permutation(len(LENGTHS)).tolist()
    random_batches = [perm[i : i + 8] for i in range(0, len(perm), 8)]
    assert padding(a.plan(0)) < 0.5 * padding(random_batches)


def test_bucket_sampler_drop_last_and_ranks() -> None:
    full = BucketSampler(LENGTHS, batch_size=8, seed=1, drop_last=True)
    assert all(len(bt) == 8 for bt in full.plan(0)) and len(full) == len(LENGTHS) // 8
    ranks = [BucketSampler(LENGTHS, batch_size=8, seed=1, num_replicas=3, rank=r) for r in range(3)]
    plans = [r.plan(2) for r in ranks]
    assert len({len(p) for p in plans}) == 1
    covered = {i for p in plans for bt in p for i in bt}
    assert covered == set(range(len(LENGTHS)))
    with pytest.raises(DataError, match="rank 3"):
        BucketSampler(LENGTHS, 8, num_replicas=3, rank=3)


def test_sampler_resumes_exactly_across_epochs() -> None:
    whole = BucketSampler(LENGTHS, batch_size=8, seed=5)
    reference = []
    for _ in range(3):
        for bt in whole:
            whole.advance()
            reference.append(bt)
    first = BucketSampler(LENGTHS, batch_size=8, seed=5)
    got = []
    for bt in first:
        got.append(bt)
        first.advance()
        if len(got) == 9:
            break
    state = first.state_dict()
    resumed = BucketSampler(LENGTHS, batch_size=8, seed=5)
    resumed.load_state_dict(state)
    while len(got) < len(reference):
        for bt in resumed:
            got.append(bt)
            resumed.advance()
    assert got == reference
    with pytest.raises(DataError, match="seed"):
        BucketSampler(LENGTHS, batch_size=8, seed=6).load_state_dict(state)
    with pytest.raises(DataError, match="n_items"):
        BucketSampler(LENGTHS[:-1], batch_size=8, seed=5).load_state_dict(state)


def test_loader_state_follows_consumed_batches(tmp_path: Path, voices) -> None:
    items = read_ljspeech(good_folder(tmp_path, voices))
    data = TextAudioDataset(items + items, CFG)  # 8 items
    ids = []
    loader = make_loader(data, batch_size=3, seed=11)
    for _ in range(2):  # two epochs of 3 batches
        ids.extend(b.ids for b in loader)
    assert loader.epoch == 2 and len(ids) == 6
    loader = make_loader(data, batch_size=3, seed=11)
    it = loader.forever()
    part = [next(it).ids for _ in range(4)]  # into the second epoch
    state = loader.state_dict()
    assert state["epoch"] == 1 and state["position"] == 1
    resumed = make_loader(data, batch_size=3, seed=11)
    resumed.load_state_dict(state)
    part.extend(b.ids for b in resumed)
    assert part == ids


def test_loader_state_is_exact_while_workers_prefetch(tmp_path: Path, voices) -> None:
    data = TextAudioDataset(read_ljspeech(good_folder(tmp_path, voices)) * 2, CFG)
    reference = [b.ids for b in make_loader(data, batch_size=2, seed=4)]
    loader = make_loader(data, batch_size=2, seed=4, num_workers=1)
    it = iter(loader)
    got = [next(it).ids for _ in range(2)]  # the worker has already prefetched further
    state = loader.state_dict()
    del it
    assert state["position"] == 2
    resumed = make_loader(data, batch_size=2, seed=4)
    resumed.load_state_dict(state)
    assert got + [b.ids for b in resumed] == reference

"""Donor diagnosis: unusable-donor checks, the contrastive ranking, the recommendation rule, the report."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from surgery_helpers import tiny_model

import vits_surgery
from vits_surgery.audio import save_wav
from vits_surgery.diagnose import checks, diagnose
from vits_surgery.diagnose.durations import class_frames, phone_class, token_classes
from vits_surgery.diagnose.profile import DonorProfile, SpeakerMeasures
from vits_surgery.diagnose.recommend import recommend
from vits_surgery.diagnose.sample import make_batches, synthesize
from vits_surgery.surgery.autoplan import contrastive_ranking, ranking_from_rgn
from vits_surgery.text import Tokenizer

TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "A slower speaker lends its cadence.",
    "Printing differs from most of the arts.",
    "The ink was thick and black.",
    "Every organ carries a part of speech.",
    "Short words and long pauses.",
    "He observed that the letters should be clear.",
    "The paper was made by hand.",
)
QUICK = {"pitch": False, "similarity": False, "asr": False}
NO_AMOUNT = {"amount": {"min_seconds": 0.0, "warn_seconds": 0.0}}


@pytest.fixture(scope="module")
def voice():
    model = tiny_model(0)
    model.eval()
    return model


@pytest.fixture(scope="module")
def tokens(voice):
    tok = Tokenizer.from_config(voice.config)
    return [tok.encode(t) for t in TEXTS]


def _folder(root, audios, rate, texts=TEXTS):
    (root / "wavs").mkdir(parents=True, exist_ok=True)
    with open(root / "metadata.csv", "w", encoding="utf-8") as f:
        for i, (a, t) in enumerate(zip(audios, texts, strict=False)):
            save_wav(root / "wavs" / f"u{i}.wav", a, rate)
            f.write(f"u{i}|{t}|{t}\n")
    return root


def _noise(seconds, rate, seed=0, level=0.1):
    return (np.random.default_rng(seed).standard_normal(int(seconds * rate)) * level).astype(np.float32)


# ----------------------------------------------------------------------------- checks
def test_check_functions_give_the_reasons():
    assert checks.check_amount(30.0).severity == "unusable"
    assert "too little audio" in checks.check_amount(30.0).message
    assert checks.check_amount(120.0).severity == "warning"
    assert checks.check_amount(900.0).severity == "ok"
    low = checks.check_sample_rate(8000, 22050)
    assert low.severity == "unusable" and "far below" in low.message and "4000 Hz" in low.message
    assert checks.check_sample_rate(16000, 22050).severity == "warning"
    assert checks.check_sample_rate(44100, 22050).severity == "ok"
    foreign = checks.check_language(0.95, 0.25)
    assert foreign.severity == "unusable" and "different language" in foreign.message
    assert checks.check_language(0.95, 0.9).severity == "ok"  # the recognizer fails on both: no verdict
    assert checks.check_language(math.nan, math.nan).severity == "ok"
    assert checks.check_transcripts(10, 5).severity == "unusable"
    german = ["Der Hund läuft schnell über die grüne Wiese.", "Meine Schwester wohnt seit vielen Jahren in Hamburg."]
    text = checks.check_text_language(checks.english_word_share(german))
    assert text.severity == "unusable" and "different language" in text.message
    assert checks.check_text_language(checks.english_word_share(TEXTS)).severity == "ok"


def test_clipping_counts_native_samples():
    clean = _noise(1.0, 16000)
    clipped = np.clip(_noise(1.0, 16000, level=2.0), -1.0, 1.0)
    assert checks.check_clipping([clean] * 4).severity == "ok"
    assert checks.check_clipping([clean] * 5 + [clipped]).severity == "warning"
    bad = checks.check_clipping([clipped] * 3 + [clean])
    assert bad.severity == "unusable" and "clipped" in bad.message


def _reasons(diag):
    return {f.check: f for f in diag.findings if f.severity == "unusable"}


def test_short_donor_is_unusable(tmp_path, voice, tokens):
    root = _folder(tmp_path / "short", synthesize(voice, tokens[:3], seed=5), 16000, TEXTS[:3])
    d = diagnose(voice, root, n_utterances=3, measure=QUICK)
    assert set(_reasons(d)) == {"amount"} and not d.usable
    assert d.recommendation.kind == "unusable" and d.recommendation.organs == ()
    assert "too little audio" in d.recommendation.why
    assert d.ranking is None and d.profile is None  # stopped before the expensive part


def test_clipped_and_low_rate_donors_are_unusable(tmp_path, voice):
    clipped = [np.clip(_noise(1.0, 16000, seed=i, level=3.0), -1, 1) for i in range(4)]
    d = diagnose(voice, _folder(tmp_path / "clip", clipped, 16000), n_utterances=4, measure=QUICK,
                 check_kwargs=NO_AMOUNT)
    assert set(_reasons(d)) == {"clipping"}
    low = [_noise(1.0, 6000, seed=i) for i in range(4)]
    d = diagnose(voice, _folder(tmp_path / "low", low, 6000), n_utterances=4, measure=QUICK, check_kwargs=NO_AMOUNT)
    assert set(_reasons(d)) == {"sample_rate"}
    assert "6000 Hz is far below the voice's 16000 Hz" in d.recommendation.why


# ----------------------------------------------------------------------------- durations
def test_phone_classes():
    assert [phone_class(s) for s in ("a", "ə", "t", "ʃ", " ", ",", "_", "ˈ")] == [
        "vowel", "vowel", "consonant", "consonant", "pause", "pause", "blank", "other"]
    classes = token_classes(Tokenizer.from_config(tiny_model().config))
    frames = class_frames([torch.tensor([1, 2])], [torch.tensor([3.0, 4.0])], classes)
    assert sum(frames.values()) == 7.0


# ----------------------------------------------------------------------------- the rule
def _profile(rate_ratio, shift, sim, own=0.95):
    side = SpeakerMeasures(12.0, 60.0, self_similarity=own)
    return DonorProfile(24, side, side, rate_ratio, shift, sim)


# organ RGNs shaped like the joe voice's (docs/benchmarks.md): the recipient's own speech,
# a cadence-only donor and a timbre-only donor
SELF = {"decoder": 1.8, "flow": 0.08, "posterior_encoder": 0.28, "text_encoder": 0.25, "duration_predictor": 0.12}
CAD = {"decoder": 1.9, "flow": 0.084, "posterior_encoder": 0.30, "text_encoder": 0.266, "duration_predictor": 0.218}
TIM = {"decoder": 3.8, "flow": 1.49, "posterior_encoder": 0.77, "text_encoder": 0.67, "duration_predictor": 0.161}
BOTH = {"decoder": 3.9, "flow": 1.52, "posterior_encoder": 0.80, "text_encoder": 0.69, "duration_predictor": 0.24}


def test_rule_on_synthetic_rgn():
    """The rule from the contrast alone (no profile), on RGNs shaped like the real donors'."""
    cad = recommend(ranking_from_rgn(CAD, SELF), None)
    assert cad.organs == ("duration_predictor",) and cad.kind == "cadence"
    tim = recommend(ranking_from_rgn(TIM, SELF), None)
    assert tim.organs == ("decoder", "flow") and tim.kind == "timbre"
    assert recommend(ranking_from_rgn(SELF, SELF), None).kind == "none"
    # measured on the regrown joe voice (docs/benchmarks.md, "Donor diagnosis"): the slowed voice
    # pulls on the decoder too (3.1x), which must not make it a timbre donor
    own = {"decoder": 1.886, "flow": 0.1442, "posterior_encoder": 0.8811, "text_encoder": 0.4685,
           "duration_predictor": 0.05761}
    d_cad = {"decoder": 5.789, "flow": 0.1875, "posterior_encoder": 1.01, "text_encoder": 0.4663,
             "duration_predictor": 0.2159}
    assert recommend(ranking_from_rgn(d_cad, own), None).organs == ("duration_predictor",)
    # the raw ranking would pick the decoder for the cadence donor; the contrast does not
    assert max(CAD, key=CAD.get) == "decoder"
    assert ranking_from_rgn(CAD, SELF).ranking()[0] == "duration_predictor"


def test_rule_with_profile_says_why():
    # a foreign voice at the same rate whose gradients also pull on the duration predictor:
    # the measured rate overrules the gradients, and the reason line says so
    ranking = ranking_from_rgn({**TIM, "duration_predictor": 0.5}, SELF)
    assert recommend(ranking, None).kind == "cadence+timbre"
    rec = recommend(ranking, _profile(0.99, 11.0, 0.53))
    assert rec.kind == "timbre" and "gradients disagree" in rec.why and "F0 +11.0 st" in rec.why
    # a foreign voice that is also slower: the measured rate adds the cadence
    rec = recommend(ranking_from_rgn(BOTH, SELF), _profile(0.75, 11.0, 0.55))
    assert rec.kind == "cadence+timbre" and rec.notes
    assert recommend(ranking_from_rgn(CAD, SELF), _profile(0.76, -0.1, 0.96)).organs == ("duration_predictor",)
    assert rec.plan().train == ("duration_predictor", "decoder", "flow")


# ----------------------------------------------------------------------------- tiny voices
def test_contrast_ranks_the_decoder_first_for_another_timbre(voice, tokens):
    """A real signal on the tiny preset: the donor is the voice with another decoder and flow."""
    donor_voice = copy.deepcopy(voice)
    other = tiny_model(7)
    donor_voice.decoder.load_state_dict(other.decoder.state_dict())
    donor_voice.flow.load_state_dict(other.flow.state_dict())
    order = list(range(4))
    rec = make_batches(voice.config, tokens, synthesize(voice, tokens[:4]), TEXTS, order)
    don = make_batches(voice.config, tokens, synthesize(donor_voice, tokens[:4]), TEXTS, order)
    before = {k: v.clone() for k, v in voice.state_dict().items()}
    ranking = contrastive_ranking(voice, don, rec)
    assert ranking.ranking()[0] == "decoder" and ranking.contrast("decoder") > 1.5
    assert recommend(ranking, None).kind == "timbre"
    assert all(torch.equal(before[k], v) for k, v in voice.state_dict().items())  # the voice is untouched
    # Auto-RGN ranks by the same contrast when given the voice's own speech
    plan = vits_surgery.auto_plan(voice, don, baseline_data=rec, n_batches=1)
    assert plan.train == ("decoder",) and plan.name == "auto-contrast"
    with pytest.raises(ValueError, match="learning-rate"):
        vits_surgery.auto_plan(voice, don, baseline_data=rec, scale_lr=True)


def test_diagnose_a_slowed_donor(tmp_path, voice, tokens):
    """The voice itself at length_scale 1.35: cadence, from the measured rate and the contrast."""
    root = _folder(tmp_path / "slow", synthesize(voice, tokens, seed=100, length_scale=1.35), 16000)
    d = diagnose(voice, root, out_dir=tmp_path / "out", n_utterances=8, n_rgn_batches=1, measure=QUICK,
                 check_kwargs=NO_AMOUNT)
    assert d.usable
    assert d.profile.rate_ratio < 0.9 and d.profile.duration_ratio["all"] > 1.15
    assert d.recommendation.kind == "cadence" and d.recommendation.organs == ("duration_predictor",)
    data = json.loads((tmp_path / "out" / "diagnosis.json").read_text())
    assert data["recommendation"]["organs"] == ["duration_predictor"] and data["usable"]
    page = (tmp_path / "out" / "diagnosis.html").read_text()
    assert "Contrastive organ ranking" in page and "<audio" in page and "cadence" in page
    assert "recommendation: cadence: train duration_predictor" in d.summary()


def test_cli_diagnose_prints_and_writes(tmp_path, voice, tokens, capsys):
    from vits_surgery import save
    from vits_surgery.cli import main

    save(voice, tmp_path / "voice")
    root = _folder(tmp_path / "short", synthesize(voice, tokens[:3], seed=5), 16000, TEXTS[:3])
    assert main(["diagnose", "--voice", str(tmp_path / "voice"), "--donor", str(root), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "[unusable] amount" in out and "recommendation: unusable: train nothing" in out
    assert json.loads((tmp_path / "o" / "diagnosis.json").read_text())["usable"] is False
    assert (tmp_path / "o" / "diagnosis.html").is_file()

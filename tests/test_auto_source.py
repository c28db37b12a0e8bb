"""The "auto" duration source: the prior-fit gap on a tiny model, the decision on a stubbed gap
(below the threshold MAS, above it forced alignment, MAS without pocketsphinx), cache keys per
decision, the run log and the CLI default."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from surgery_helpers import speech_batch, tiny_model

from vits_surgery.cli import build_parser
from vits_surgery.durations import cache as cache_mod
from vits_surgery.durations.cache import (
    AUTO_THRESHOLD,
    SOURCES,
    AutoDurations,
    DurationCache,
    ForcedDurations,
    MASDurations,
    resolve_source,
)
from vits_surgery.durations.mas import PriorFitGap, _synthesis_batch, posterior_alignment, prior_fit_gap
from vits_surgery.durations.step import CadenceStep
from vits_surgery.surgery.callbacks import RunLogger, read_run
from vits_surgery.surgery.plan import SurgeryPlan
from vits_surgery.surgery.trainer import SurgicalTrainer, TrainConfig

LOG = "vits_surgery.durations"


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VITS_SURGERY_CACHE", str(tmp_path / "cache"))


def _gap(value: float) -> PriorFitGap:
    return PriorFitGap(donor=-1.0 - value, reference=-1.0, gap=value, donor_z=-0.5 - value, reference_z=-0.5,
                       gap_z=value, utterances=3, references=2, per_utterance=[-1.0 - value] * 3)


class _Stubbed(AutoDurations):
    """Measures a fixed gap, and counts the measurements."""

    def __init__(self, gap: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.stub, self.calls = gap, 0

    def measure(self, model, batches):
        self.calls += 1
        assert sum(len(b) for b in batches) > 0
        return _gap(self.stub)


@pytest.fixture(scope="module")
def batch():
    return speech_batch(tiny_model().config, 2, seed=1)


@pytest.fixture
def with_aligner(monkeypatch):
    monkeypatch.setattr(cache_mod, "forced_available", lambda: True)


def test_gap_below_the_threshold_picks_mas_above_it_forced(batch, with_aligner, caplog):
    caplog.set_level(logging.INFO, logger=LOG)
    model = tiny_model()
    low = _Stubbed(0.5 * AUTO_THRESHOLD)
    assert low.decide(model, [batch]) == "mas" and isinstance(low.delegate, MASDurations)
    assert "duration source auto: mas (prior-fit gap" in caplog.text
    high = _Stubbed(2.0 * AUTO_THRESHOLD)
    assert high.decide(model, [batch]) == "forced" and isinstance(high.delegate, ForcedDurations)
    assert "duration source auto: forced" in caplog.text and f"{2.0 * AUTO_THRESHOLD:.3f}" in caplog.text
    assert high.decide(model, [batch]) == "forced" and high.calls == 1  # decided once
    custom = _Stubbed(0.5, threshold=0.4)
    assert custom.decide(model, [batch]) == "forced"


def test_without_pocketsphinx_it_picks_mas_with_a_warning(batch, monkeypatch, caplog):
    monkeypatch.setattr(cache_mod, "forced_available", lambda: False)
    auto = _Stubbed(10.0 * AUTO_THRESHOLD)
    with caplog.at_level(logging.WARNING, logger=LOG):
        assert auto.decide(tiny_model(), [batch]) == "mas"
    assert auto.calls == 0 and auto.measurement is None
    assert "pocketsphinx is not installed" in caplog.text and "pip install 'pocketsphinx>=5'" in caplog.text
    assert auto.describe()["reason"] == "pocketsphinx is not installed"


def test_settings_and_cache_key_differ_by_decision(batch, with_aligner, tmp_path):
    model = tiny_model()
    assert SOURCES["auto"] is AutoDurations and isinstance(resolve_source("auto"), AutoDurations)
    with pytest.raises(RuntimeError, match="not decided"):
        AutoDurations().settings()
    mas, forced = _Stubbed(0.0), _Stubbed(10.0)
    mas.decide(model, [batch])
    forced.decide(model, [batch])
    assert mas.settings()["choice"] == "mas" and forced.settings()["choice"] == "forced"
    assert mas.settings() != forced.settings()
    json.dumps(forced.settings())
    keys = {DurationCache(model, s, tmp_path).key(batch, 0) for s in (mas, forced)}
    keys.add(DurationCache(model, "mas", tmp_path).key(batch, 0))
    assert len(keys) == 3


def test_an_undecided_cache_decides_on_its_first_batch(batch, with_aligner):
    model = tiny_model()
    auto = _Stubbed(0.0)
    cache = DurationCache(model, auto)
    inputs = cache.inputs(batch)
    assert auto.choice == "mas" and auto.calls == 1
    # the same durations as the MAS source itself gives
    ref = DurationCache(model, MASDurations()).inputs(batch)
    assert inputs.durations.shape == ref.durations.shape and bool((inputs.durations.sum(-1) > 0).all())


def test_cadence_step_defaults_to_auto_and_logs_the_decision(batch, with_aligner, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOG)
    trainer = SurgicalTrainer(tiny_model(), SurgeryPlan.cadence(), [batch], out_dir=tmp_path / "run",
                              config=TrainConfig(progress=False, seed=0, save_every=0, log_every=0),
                              callbacks=[RunLogger()])
    assert isinstance(trainer.cadence, CadenceStep) and trainer.cadence.source_name == "auto"
    assert trainer.cadence.describe()["source_settings"] is None  # not decided yet
    stub = _Stubbed(0.1 * AUTO_THRESHOLD)
    trainer.cadence = CadenceStep.for_trainer(trainer, source=stub)
    trainer.fit(max_steps=1)
    assert stub.calls == 1 and stub.choice == "mas"
    cadence = read_run(tmp_path / "run")["cadence"]
    assert cadence["source"] == "auto" and cadence["source_settings"]["choice"] == "mas"
    decision = cadence["decision"]
    assert decision["choice"] == "mas" and decision["gap"] == pytest.approx(0.1 * AUTO_THRESHOLD)
    assert decision["threshold"] == AUTO_THRESHOLD and "prior-fit gap" in decision["reason"]


def test_cli_duration_source_defaults_to_auto():
    parser = build_parser()
    assert parser.parse_args(["transplant", "--donor", "d/"]).duration_source == "auto"
    for name in ("mas", "forced", "auto"):
        assert parser.parse_args(["transplant", "--donor", "d/", "--duration-source", name]).duration_source == name


def test_prior_fit_is_finite_and_the_gap_of_the_voice_itself_is_near_zero(batch):
    torch.manual_seed(0)
    model = tiny_model().eval()
    res = posterior_alignment(model, batch)
    assert res.fit.shape == (2,) and bool(torch.isfinite(res.fit).all()) and bool((res.fit_z <= 0).all())
    assert torch.equal(res.durations.sum(1), batch.spec_lengths)
    other = prior_fit_gap(model, [batch], references=2)
    assert math.isfinite(other.gap) and math.isfinite(other.gap_z) and other.utterances == 2
    # the "donor" is the voice's own synthesis (other noise draws than the reference's)
    own = [_synthesis_batch(model, batch.tokens[i, : int(batch.token_lengths[i])], None, 100 + i) for i in range(2)]
    self_gap = prior_fit_gap(model, own, references=2)
    assert abs(self_gap.gap) < 0.1 * abs(self_gap.reference)
    assert abs(self_gap.gap) < abs(other.gap)

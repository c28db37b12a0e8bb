"""Early stopping (SurgicalTrainer.request_stop) and the rejection monitor."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from surgery_helpers import speech_batch, tiny_model

from vits_surgery.convert.native import read_native
from vits_surgery.surgery.callbacks import Callback
from vits_surgery.surgery.monitor import DEFAULT_TOLERANCES, RejectionMonitor, artifact_metrics
from vits_surgery.surgery.plan import SurgeryPlan
from vits_surgery.surgery.rundir import latest_checkpoint, load_trainer_state
from vits_surgery.surgery.trainer import SurgicalTrainer, TrainConfig

SR = 16000


@pytest.fixture(scope="module")
def data():
    config = tiny_model().config
    return {
        "train": [speech_batch(config, 2, seed=i, max_seconds=0.3) for i in range(2)],
        "recipient": [speech_batch(config, 2, seed=10, max_seconds=0.3)],
        "donor": [speech_batch(config, 2, seed=20, max_seconds=0.3)],
    }


class _States(Callback):
    """The model's tensors at fit start and after every step."""

    def __init__(self):
        self.states = {}

    def _keep(self, trainer):
        self.states[trainer.step] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    def on_fit_start(self, trainer):
        self._keep(trainer)

    def on_step_end(self, trainer, step, logs):
        self._keep(trainer)


class _StopAt(Callback):
    def __init__(self, step):
        self.step, self.seen = step, []

    def on_step_end(self, trainer, step, logs):
        self.seen.append(step)
        if step == self.step:
            trainer.request_stop(f"enough at {step}")


def _decoder_run(data, tmp_path, lr, callbacks, train=("decoder",), **cfg):
    return SurgicalTrainer(
        tiny_model(),
        SurgeryPlan(train=train),
        data["train"],
        lr=lr,
        out_dir=tmp_path,
        callbacks=callbacks,
        config=TrainConfig(progress=False, seed=0, save_every=0, **cfg),
    )


def _monitor(data, **kwargs):
    kwargs.setdefault("speaker_similarity", False)
    return RejectionMonitor(data["recipient"], **kwargs)


def test_request_stop_ends_fit_after_the_current_step(data, tmp_path):
    stopper = _StopAt(3)
    trainer = SurgicalTrainer(
        tiny_model(),
        SurgeryPlan.cadence(),
        data["train"],
        out_dir=tmp_path,
        callbacks=[stopper],
        config=TrainConfig(progress=False, seed=0, save_every=2),
    )
    trainer.fit(10)
    assert stopper.seen == [1, 2, 3] and trainer.step == 3
    assert trainer.stop_reason == "enough at 3"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000002", "step_00000003"]
    assert not (tmp_path / ".lock").exists()
    trainer.request_stop("a second reason")  # the first reason is kept
    assert trainer.stop_reason == "enough at 3"
    stopper.step = None
    trainer.fit(5)  # a new fit starts without the old request
    assert trainer.step == 5 and trainer.stop_reason is None and stopper.seen[-2:] == [4, 5]
    with pytest.raises(ValueError, match="reason"):
        trainer.request_stop("  ")


def test_artifact_indicators_measure_what_they_claim():
    rng = np.random.default_rng(0)
    t = np.arange(SR) / SR
    noise = torch.from_numpy(0.1 * rng.standard_normal(SR))
    low = torch.from_numpy(0.5 * np.sin(2 * np.pi * 500 * t))
    high = torch.from_numpy(0.5 * np.sin(2 * np.pi * 6000 * t))
    kw = {"sample_rate": SR, "n_fft": 256, "hop_length": 64}
    assert 0.45 < artifact_metrics(noise, **kw)["artifact/flatness"] < 0.65  # white noise: exp(-gamma)
    assert artifact_metrics(low, **kw)["artifact/flatness"] < 0.05
    assert artifact_metrics(low, **kw)["artifact/hf_energy"] < 0.01
    assert artifact_metrics(high, **kw)["artifact/hf_energy"] > 0.99
    assert artifact_metrics(noise, **kw)["artifact/hf_energy"] == pytest.approx(0.5, abs=0.05)
    clipped = low.clone()
    clipped[: SR // 10] = 1.0
    assert artifact_metrics(clipped, **kw)["artifact/clipping"] == pytest.approx(0.1)
    broken = low.clone()
    broken[::20] = float("nan")
    out = artifact_metrics(broken, **kw)
    assert out["artifact/nonfinite"] == pytest.approx(0.05) and all(math.isfinite(v) for v in out.values())
    silent = artifact_metrics(torch.zeros(SR), **kw)
    assert silent == {
        "artifact/clipping": 0.0,
        "artifact/nonfinite": 0.0,
        "artifact/flatness": 0.0,
        "artifact/hf_energy": 0.0,
    }


def test_absurd_learning_rate_is_stopped_and_the_best_checkpoint_kept(data, tmp_path, caplog):
    monitor = _monitor(data, every=1, patience=2, donor_batches=data["donor"])
    states = _States()
    trainer = _decoder_run(data, tmp_path, 1.0, [monitor, states])
    with caplog.at_level(logging.WARNING):
        trainer.fit(8)
    assert trainer.step == 2 and "rejection monitor" in trainer.stop_reason
    base, first, second = monitor.history
    assert base.baseline and base.passed and not first.passed and not second.passed
    assert [first.consecutive, second.consecutive] == [1, 2]
    assert all(r.metrics["recipient/mel"] > base.metrics["recipient/mel"] for r in (first, second))
    assert "recipient drift beyond tolerance" in caplog.text
    assert monitor.best_step == 0 and base.best  # no later evaluation passed: the recipient itself
    tensors, _, _ = read_native(tmp_path / "best")
    assert all(torch.equal(tensors[k], v) for k, v in states.states[0].items())
    assert not all(torch.equal(tensors[k], v) for k, v in states.states[2].items())
    assert load_trainer_state(tmp_path / "best")["step"] == 0
    assert latest_checkpoint(tmp_path).name == "step_00000002"  # the final checkpoint as usual


def test_reconstruction_error_alone_detects_the_drift(data, tmp_path):
    only_mel = {k: None for k in DEFAULT_TOLERANCES} | {"recipient/mel": 0.05}
    monitor = _monitor(data, every=1, patience=2, tolerances=only_mel, save_best=False)
    trainer = _decoder_run(data, tmp_path, 1.0, [monitor])
    trainer.fit(8)
    assert trainer.step == 2 and trainer.stop_reason is not None
    assert all(v.startswith("recipient/mel") for r in monitor.history[1:] for v in r.violations)
    assert not (tmp_path / "best").exists()


def test_sane_run_is_not_stopped_and_is_not_changed_by_the_monitor(data, tmp_path):
    monitor = _monitor(data, every=2, patience=1, donor_batches=data["donor"])
    states = _States()
    organs = ("decoder", "text_encoder")  # the text encoder's dropout draws from the global RNG
    trainer = _decoder_run(data, tmp_path / "watched", 2e-4, [monitor, states], train=organs)
    trainer.fit(6)
    assert trainer.step == 6 and trainer.stop_reason is None
    assert [r.step for r in monitor.history] == [0, 2, 4, 6] and all(r.passed for r in monitor.history)
    best = min(monitor.history, key=lambda r: r.donor_loss)
    assert monitor.best_step == best.step and best.step > 0
    tensors, _, _ = read_native(tmp_path / "watched" / "best")
    assert all(torch.equal(tensors[k], v) for k, v in states.states[best.step].items())
    plain = _decoder_run(data, tmp_path / "plain", 2e-4, [], train=organs)
    plain.fit(6)
    watched = trainer.model.state_dict()
    assert all(torch.equal(watched[k], v) for k, v in plain.model.state_dict().items())


def test_without_donor_batches_the_training_loss_ranks(data, tmp_path):
    monitor = _monitor(data, every=2, patience=3)
    trainer = _decoder_run(data, tmp_path, 2e-4, [monitor])
    trainer.fit(4)
    base, *rest = monitor.history
    assert base.donor_loss == math.inf and not base.best
    assert all(math.isfinite(r.donor_loss) for r in rest) and monitor.best_step in (2, 4)
    assert (tmp_path / "best" / "model.safetensors").is_file()


def test_speaker_similarity_when_installed(data, tmp_path):
    try:
        from vits_surgery.evaluate._deps import require

        require("resemblyzer", "speaker similarity")
    except ImportError as err:
        pytest.skip(f"speaker similarity needs the eval extra: {err}")
    monitor = RejectionMonitor(data["recipient"], every=1, speaker_similarity=True, save_best=False)
    _decoder_run(data, tmp_path, 2e-4, [monitor]).fit(1)
    base, step1 = monitor.history
    assert base.metrics["speaker/similarity"] > 0.95  # the baseline syntheses are the reference
    assert 0.0 < step1.metrics["speaker/similarity"] <= 1.0 + 1e-6


def test_missing_speaker_tools_are_a_logged_note(data, tmp_path, monkeypatch, caplog):
    from vits_surgery.evaluate import speaker

    def missing(*args, **kwargs):
        raise ImportError("speaker similarity needs the optional package 'resemblyzer'")

    monkeypatch.setattr(speaker, "speaker_embeddings", missing)
    monitor = RejectionMonitor(data["recipient"], every=1, speaker_similarity=None, save_best=False)
    with caplog.at_level(logging.INFO, logger="vits_surgery.surgery.monitor"):
        _decoder_run(data, tmp_path / "a", 2e-4, [monitor]).fit(1)
    assert "speaker similarity skipped" in caplog.text and "resemblyzer" in caplog.text
    assert all("speaker/similarity" not in r.metrics for r in monitor.history)
    required = RejectionMonitor(data["recipient"], every=1, speaker_similarity=True, save_best=False)
    with pytest.raises(ImportError, match="resemblyzer"):
        _decoder_run(data, tmp_path / "b", 2e-4, [required]).fit(1)


def test_bad_settings_are_refused(data):
    with pytest.raises(ValueError, match="did you mean 'recipient/mel'"):
        RejectionMonitor(data["recipient"], tolerances={"recipient/mell": 0.1})
    with pytest.raises(ValueError, match=">= 0"):
        RejectionMonitor(data["recipient"], tolerances={"artifact/clipping": -1})
    with pytest.raises(ValueError, match="recipient_batches"):
        RejectionMonitor([])
    with pytest.raises(ValueError, match="every and patience"):
        RejectionMonitor(data["recipient"], every=0)


# ----------------------------------------------------------------------------- intelligibility
TEXTS = ["one two three four five six seven eight nine ten", "the cat sat on a mat in the warm sun"]


def _fake_recognizer(monkeypatch, errors_at):
    """Recognize ``TEXTS`` in turn, with the first ``errors_at(i)`` words of sentence ``i`` wrong.

    The step is read from the trainer that ``errors_at`` closes over; pocketsphinx is not needed.
    """
    pytest.importorskip("jiwer", reason="WER needs the eval extra (jiwer)")
    from vits_surgery.evaluate import asr
    from vits_surgery.surgery import monitor as monitor_module

    calls = []

    def transcribe(wav, sample_rate=None):
        assert isinstance(wav, np.ndarray) and wav.ndim == 1 and np.isfinite(wav).all()
        i = len(calls) % len(TEXTS)
        words = TEXTS[i].split()
        calls.append(sample_rate)
        wrong = errors_at(i)
        return " ".join(["wrong"] * wrong + words[wrong:])

    monkeypatch.setattr(asr, "transcribe", transcribe)
    monkeypatch.setattr(monitor_module, "_recognizer_error", lambda: None)
    return calls


def _wer_monitor(data, **kwargs):
    kwargs.setdefault("sentences", TEXTS)
    kwargs.setdefault("max_seconds", 1.0)
    kwargs.setdefault("donor_batches", data["donor"])
    return _monitor(data, **kwargs)


def test_rising_wer_warns_stops_and_keeps_the_last_good_voice(data, tmp_path, monkeypatch, caplog):
    holder = {}
    calls = _fake_recognizer(monkeypatch, lambda i: 0 if holder["trainer"].step <= 4 else 3)
    monitor = _wer_monitor(data, every=2, patience=2)
    states = _States()
    trainer = holder["trainer"] = _decoder_run(
        data, tmp_path, 2e-4, [monitor, states], train=("decoder", "text_encoder")
    )
    with caplog.at_level(logging.INFO, logger="vits_surgery.surgery.monitor"):
        trainer.fit(20)
    # evaluations at 0, 2, 4 recognize every word; 6 and 8 miss 3 words of each sentence
    assert [r.step for r in monitor.history] == [0, 2, 4, 6, 8] and trainer.step == 8
    assert len(calls) == 2 * 5 and set(calls) == {trainer.model.config.audio.sample_rate}
    wer = [r.metrics["intelligibility/wer"] for r in monitor.history]
    assert wer[:3] == [0.0, 0.0, 0.0] and wer[3:] == [pytest.approx(6 / 20)] * 2
    assert [r.passed for r in monitor.history] == [True, True, True, False, False]
    assert all(
        r.violations == [v for v in r.violations if v.startswith("intelligibility/wer")]
        for r in monitor.history
    )
    assert [r.consecutive for r in monitor.history[3:]] == [1, 2]
    assert "intelligibility/wer 0.3 > 0.05 (baseline 0 + 0.05)" in monitor.history[3].violations[0]
    assert "recipient drift beyond tolerance" in caplog.text and "intelligibility/wer 0.3" in caplog.text
    assert "rejection monitor" in trainer.stop_reason and "intelligibility/wer" in trainer.stop_reason
    # the best checkpoint is a passing evaluation from before the degradation
    passing = [r for r in monitor.history if r.passed]
    assert monitor.best_step == min(passing, key=lambda r: r.donor_loss).step
    assert monitor.best_step in (2, 4) and not any(r.best for r in monitor.history[3:])
    assert monitor.best_path == tmp_path / "best"
    tensors, _, _ = read_native(tmp_path / "best")
    assert all(torch.equal(tensors[k], v) for k, v in states.states[monitor.best_step].items())
    assert f"best checkpoint: step {monitor.best_step} in {tmp_path / 'best'}" in caplog.text
    assert "took" in caplog.text and monitor.intelligibility_seconds >= 0
    # and it comes back with one call
    assert monitor.restore_best(trainer) == tmp_path / "best"
    assert trainer.step == monitor.best_step
    restored = trainer.model.state_dict()
    assert all(torch.equal(restored[k], v) for k, v in states.states[monitor.best_step].items())


def test_wer_within_tolerance_is_no_violation(data, tmp_path, monkeypatch, caplog):
    holder = {}
    # one wrong word of 20 after step 2: WER 0.05, exactly the tolerance
    _fake_recognizer(monkeypatch, lambda i: int(holder["trainer"].step > 2 and i == 0))
    monitor = _wer_monitor(data, every=2, patience=1)
    trainer = holder["trainer"] = _decoder_run(data, tmp_path, 2e-4, [monitor])
    with caplog.at_level(logging.INFO, logger="vits_surgery.surgery.monitor"):
        trainer.fit(6)
    assert trainer.step == 6 and trainer.stop_reason is None
    wer = [r.metrics["intelligibility/wer"] for r in monitor.history]
    assert wer == [0.0, 0.0, pytest.approx(0.05), pytest.approx(0.05)]
    assert all(r.passed for r in monitor.history), [r.violations for r in monitor.history]
    assert caplog.text.count("intelligibility check (2 sentences) took") == 1


def test_token_id_sentences_skip_the_wer_with_one_note(data, tmp_path, monkeypatch, caplog):
    calls = _fake_recognizer(monkeypatch, lambda i: 0)
    monitor = _monitor(data, every=1, save_best=False, max_seconds=1.0)  # the batches' token ids
    with caplog.at_level(logging.INFO, logger="vits_surgery.surgery.monitor"):
        _decoder_run(data, tmp_path, 2e-4, [monitor]).fit(2)
    assert caplog.text.count("intelligibility/wer skipped") == 1 and "token ids" in caplog.text
    assert calls == [] and all("intelligibility/wer" not in r.metrics for r in monitor.history)
    assert len(monitor.history) == 3 and monitor.intelligibility_seconds is None


def test_missing_recognizer_is_a_note_or_an_error(data, tmp_path, monkeypatch, caplog):
    from vits_surgery.surgery import monitor as monitor_module

    missing = ImportError("the monitor's intelligibility/wer needs the optional package 'pocketsphinx'")
    monkeypatch.setattr(monitor_module, "_recognizer_error", lambda: missing)
    monitor = _monitor(data, every=1, sentences=TEXTS, save_best=False, max_seconds=1.0)
    with caplog.at_level(logging.INFO, logger="vits_surgery.surgery.monitor"):
        _decoder_run(data, tmp_path, 2e-4, [monitor]).fit(1)
    assert "intelligibility/wer skipped" in caplog.text and "pocketsphinx" in caplog.text
    assert all("intelligibility/wer" not in r.metrics for r in monitor.history)
    with pytest.raises(ImportError, match="pocketsphinx"):
        _monitor(data, sentences=TEXTS, intelligibility=True)
    off = _monitor(data, sentences=TEXTS, intelligibility=False, every=1, save_best=False, max_seconds=1.0)
    _decoder_run(data, tmp_path / "off", 2e-4, [off]).fit(1)
    assert all("intelligibility/wer" not in r.metrics for r in off.history)


def test_required_intelligibility_needs_texts(data):
    with pytest.raises(ValueError, match="needs the sentences as texts"):
        _monitor(data, intelligibility=True)
    with pytest.raises(ValueError, match="token ids carry no words"):
        _monitor(data, sentences=[[3, 10, 3], "a text"], intelligibility=True)


def test_restore_best_without_a_saved_best_is_refused(data, tmp_path):
    monitor = _monitor(data, every=2, save_best=False)
    trainer = _decoder_run(data, tmp_path, 2e-4, [monitor])
    trainer.fit(2)
    assert monitor.best_step == 2 and monitor.best_path is None
    with pytest.raises(FileNotFoundError, match="no best checkpoint"):
        monitor.restore_best(trainer)


def test_real_recognizer_on_a_tiny_model(data, tmp_path):
    pytest.importorskip("pocketsphinx", reason="WER needs the eval extra (pocketsphinx)")
    pytest.importorskip("jiwer", reason="WER needs the eval extra (jiwer)")
    monitor = _monitor(data, every=1, sentences=TEXTS, intelligibility=True, save_best=False, max_seconds=2.0)
    _decoder_run(data, tmp_path, 2e-4, [monitor]).fit(1)
    wer = [r.metrics["intelligibility/wer"] for r in monitor.history]
    assert len(wer) == 2 and all(math.isfinite(w) and w >= 0 for w in wer)  # random weights: high, not NaN
    assert monitor.intelligibility_seconds is not None and monitor.intelligibility_seconds > 0

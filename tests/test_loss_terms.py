"""Extra loss terms: registration, plans and configs, the step plan, the trainer, MR-STFT."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from surgery_helpers import explicit_noise, speech_batch, tiny_config, tiny_model

from vits_surgery.durations.step import CadenceStep, fallback_reason
from vits_surgery.loss_terms import (
    LossTerm,
    MultiResolutionSTFTLoss,
    UnknownLossTermError,
    register_loss_term,
    stft_loss,
)
from vits_surgery.losses import DEFAULT_WEIGHTS
from vits_surgery.surgery.callbacks import RunLogger, read_metrics, read_run
from vits_surgery.surgery.plan import SurgeryPlan
from vits_surgery.surgery.registry import ComponentRegistry
from vits_surgery.surgery.rundir import step_dir
from vits_surgery.surgery.trainer import SurgicalTrainer, TrainConfig

NO_ADV = {"gen/adv": 0.0, "gen/fm": 0.0}


@register_loss_term
class Loudness(LossTerm):
    """Mean power of the generated segment, scaled (a waveform term with an argument)."""

    name = "gen/test_loudness"

    def __init__(self, weight: float = 1.0, scale: float = 1.0) -> None:
        super().__init__(weight)
        self.scale = scale

    def __call__(self, path, batch, out):
        return self.scale * out.audio_hat.float().pow(2).mean()


@register_loss_term
class Explodes(LossTerm):
    """Fails the test if the step ever computes it."""

    name = "gen/test_explodes"

    def __call__(self, path, batch, out):
        raise AssertionError("a term the step should not compute was computed")


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VITS_SURGERY_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def batch():
    return speech_batch(tiny_config(), 2, seed=3)


def _trainer(plan, tmp_path, data=None, **cfg):
    cfg.setdefault("progress", False)
    cfg.setdefault("seed", 0)
    return SurgicalTrainer(tiny_model(), plan, data, out_dir=tmp_path, config=TrainConfig(**cfg))


def _decoder_grads(trainer, batch):
    noise = explicit_noise(trainer.model, batch, seed=1)
    out = trainer.forward_generator(batch.to(trainer.device), noise)
    losses = trainer.generator_losses(batch, out)
    trainer.loss_path.total(losses).backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.decoder.named_parameters()}
    return losses, grads


# ---------------------------------------------------------------------- trainer and step plan
def test_a_custom_term_changes_the_decoder_gradients(batch, tmp_path):
    base = _trainer(SurgeryPlan(train=["decoder"], loss_weights=NO_ADV), tmp_path / "a")
    plan = SurgeryPlan(train=["decoder"], loss_weights=NO_ADV, loss_terms=[Loudness(weight=50.0)])
    extra = _trainer(plan, tmp_path / "b")
    assert base.step_plan.terms == ("gen/mel",)
    assert extra.step_plan.terms == ("gen/mel", "gen/test_loudness")
    losses_a, grads_a = _decoder_grads(base, batch)
    losses_b, grads_b = _decoder_grads(extra, batch)
    assert "gen/test_loudness" not in losses_a
    assert torch.equal(losses_a["gen/mel"], losses_b["gen/mel"])  # same draws, same mel term
    assert float(losses_b["gen/test_loudness"].detach()) > 0
    assert any(not torch.allclose(grads_a[n], grads_b[n]) for n in grads_a)
    # the difference is the weighted term's own gradient (up to fp32 cancellation in the sum)
    model = extra.model
    model.zero_grad(set_to_none=True)
    out = extra.forward_generator(batch, explicit_noise(model, batch, seed=1))
    (50.0 * Loudness()(extra.loss_path, batch, out)).backward()
    for n, p in model.decoder.named_parameters():
        scale = float(grads_b[n].abs().max())
        torch.testing.assert_close(grads_b[n] - grads_a[n], p.grad, rtol=1e-3, atol=1e-5 * scale)


def test_a_waveform_term_alone_makes_the_decoder_run(batch, tmp_path):
    weights = {**NO_ADV, "gen/mel": 0.0}
    trainer = _trainer(SurgeryPlan(train=["decoder"], loss_weights=weights, loss_terms=[Loudness()]), tmp_path)
    sp = trainer.step_plan
    assert sp.terms == ("gen/test_loudness",) and sp.decode and sp.grad["decoder"]
    logs = trainer.training_step(batch)
    assert set(logs) >= {"gen/test_loudness", "loss/generator"} and "gen/mel" not in logs


@pytest.mark.parametrize("where", ["term", "plan_weights", "config_weights"])
def test_weight_zero_means_not_computed(where, batch, tmp_path):
    term = Explodes(weight=0.0) if where == "term" else Explodes()
    plan_w = {"gen/test_explodes": 0} if where == "plan_weights" else {}
    cfg_w = {"gen/test_explodes": 0} if where == "config_weights" else {}
    plan = SurgeryPlan.timbre(loss_weights=plan_w)
    trainer = _trainer(plan, tmp_path, loss_terms=[term], loss_weights=cfg_w)
    assert "gen/test_explodes" not in trainer.step_plan.terms
    logs = trainer.training_step(batch)  # Explodes raises if it is called
    assert "gen/mel" in logs and "gen/test_explodes" not in logs


def test_a_waveform_term_is_not_computed_for_plans_it_does_not_reach(batch, tmp_path):
    for plan in (SurgeryPlan.accent(), SurgeryPlan(train=["flow"])):
        trainer = _trainer(plan, tmp_path / plan.name, loss_terms=[Explodes()])
        assert "gen/test_explodes" not in trainer.step_plan.terms and not trainer.step_plan.decode
        trainer.training_step(batch)


def test_the_cadence_plan_keeps_its_cached_step_with_a_waveform_term(batch, tmp_path):
    trainer = _trainer(SurgeryPlan.cadence(loss_terms=[Explodes(), MultiResolutionSTFTLoss()]), tmp_path)
    assert trainer.step_plan.terms == ("gen/dur",) and not trainer.step_plan.decode
    assert fallback_reason(trainer) is None and isinstance(trainer.cadence, CadenceStep)
    logs = trainer.training_step(batch)
    assert set(k for k in logs if k.startswith("gen/")) == {"gen/dur"}
    # the full path (cache off) does not compute it either
    trainer.cadence = None
    trainer.training_step(batch)


def test_fit_logs_and_records_the_term(batch, tmp_path):
    data = [batch, speech_batch(tiny_config(), 2, seed=4)]
    plan = SurgeryPlan(train=["decoder"], loss_weights=NO_ADV, loss_terms=[MultiResolutionSTFTLoss(weight=2.0)])
    trainer = _trainer(plan, tmp_path / "run", data=data, save_every=0, log_every=0)
    trainer.callbacks.append(RunLogger())
    trainer.fit(2)
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 2 and all(r["gen/stft"] > 0 for r in rows)
    run = read_run(tmp_path / "run")
    assert "gen/stft" in run["step_plan"]["terms"]
    assert SurgeryPlan.from_dict(run["plan"]) == plan
    saved = SurgeryPlan.from_json((step_dir(tmp_path / "run", 2) / "plan.json").read_text())
    assert saved.loss_terms == (MultiResolutionSTFTLoss(weight=2.0),)


# ---------------------------------------------------------------------- weights, plans, configs
def test_term_weights_layer_like_loss_weights():
    reg = ComponentRegistry(tiny_model())
    plan = SurgeryPlan(train=["decoder"])
    resolved = plan.resolve(reg, {"gen/stft": 5.0}, [MultiResolutionSTFTLoss(weight=1.0)])
    assert resolved.loss_weights["gen/stft"] == 5.0  # config weights beat config terms
    plan = SurgeryPlan(train=["decoder"], loss_terms=[MultiResolutionSTFTLoss(weight=3.0)])
    resolved = plan.resolve(reg, {"gen/stft": 5.0}, [MultiResolutionSTFTLoss(weight=1.0, fft_sizes=(64,), hop_sizes=(16,), win_lengths=(64,))])
    assert resolved.loss_weights["gen/stft"] == 3.0  # the plan's term beats the config
    assert resolved.loss_terms == (MultiResolutionSTFTLoss(weight=3.0),)
    plan = SurgeryPlan(train=["decoder"], loss_terms=[MultiResolutionSTFTLoss(weight=3.0)], loss_weights={"gen/stft": 0})
    assert plan.resolve(reg).loss_weights["gen/stft"] == 0.0
    assert {k: plan.resolve(reg).loss_weights[k] for k in DEFAULT_WEIGHTS} == DEFAULT_WEIGHTS
    # a plan may weight a term that only the trainer config adds
    plan = SurgeryPlan(train=["decoder"], loss_weights={"gen/stft": 7.0})
    assert plan.resolve(reg, None, [MultiResolutionSTFTLoss()]).loss_weights["gen/stft"] == 7.0
    with pytest.raises(ValueError, match="not added"):
        plan.resolve(reg)


def test_weight_keys_are_checked():
    with pytest.raises(KeyError, match="did you mean 'gen/stft'"):
        SurgeryPlan.timbre(loss_terms=[MultiResolutionSTFTLoss()], loss_weights={"gen/sftf": 1.0})
    with pytest.raises(KeyError, match="did you mean 'gen/mel'"):
        SurgeryPlan.timbre(loss_terms=[MultiResolutionSTFTLoss()], loss_weights={"gen/mle": 1.0})
    # a registered term that is not added: weight 0 is harmless, another weight is a mistake
    reg = ComponentRegistry(tiny_model())
    assert "gen/stft" not in SurgeryPlan.timbre(loss_weights={"gen/stft": 0}).resolve(reg).loss_weights
    with pytest.raises(ValueError, match=r"loss_terms=\[MultiResolutionSTFTLoss"):
        SurgeryPlan.timbre(loss_weights={"gen/stft": 2.0}).resolve(reg)
    with pytest.raises(ValueError, match=r"loss_terms=\[MultiResolutionSTFTLoss"):
        SurgeryPlan.timbre().resolve(reg, {"gen/stft": 2.0})  # the same from the trainer config
    with pytest.raises(ValueError, match="appears twice"):
        SurgeryPlan.timbre(loss_terms=[MultiResolutionSTFTLoss(), MultiResolutionSTFTLoss(weight=2)])
    with pytest.raises(ValueError, match=">= 0"):
        MultiResolutionSTFTLoss(weight=-1)


def test_plan_and_config_json_round_trip_with_a_custom_term():
    plan = SurgeryPlan.timbre(loss_terms=[Loudness(weight=0.5, scale=3.0), MultiResolutionSTFTLoss()])
    text = plan.to_json()
    back = SurgeryPlan.from_json(text)
    assert back == plan and back.to_json() == text
    assert isinstance(back.loss_terms[0], Loudness) and back.loss_terms[0].scale == 3.0
    assert json.loads(text)["loss_terms"][0] == {"name": "gen/test_loudness", "kwargs": {"weight": 0.5, "scale": 3.0}}
    assert "loss_terms" not in SurgeryPlan.timbre().to_dict()  # plans without terms read as before
    config = TrainConfig(loss_terms=[Loudness(scale=2.0)], progress=False)
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again.loss_terms == (Loudness(scale=2.0),) and again.loss_terms != (Loudness(scale=1.0),)


def test_an_unknown_term_on_load_is_a_clear_error():
    text = SurgeryPlan.timbre(loss_terms=[MultiResolutionSTFTLoss()]).to_json().replace("gen/stft", "gen/sfft")
    with pytest.raises(UnknownLossTermError, match="unknown loss term 'gen/sfft'; did you mean 'gen/stft'") as err:
        SurgeryPlan.from_json(text)
    assert "register_loss_term" in str(err.value)


def test_registration_rules():
    with pytest.raises(ValueError, match="built-in"):

        @register_loss_term
        class Mel(LossTerm):
            name = "gen/mel"

    with pytest.raises(ValueError, match="like 'gen/stft'"):

        @register_loss_term
        class Bare(LossTerm):
            name = "stft"

    with pytest.raises(ValueError, match="already registered"):

        @register_loss_term
        class Other(LossTerm):
            name = "gen/stft"

    with pytest.raises(ValueError, match="reads"):

        class Latent(LossTerm):
            name = "gen/latent"
            reads = "latent"

    class NoAttr(LossTerm):
        name = "gen/test_noattr"

        def __init__(self, weight: float = 1.0, size: int = 3) -> None:
            super().__init__(weight)

    with pytest.raises(TypeError, match="'size' is not stored"):
        NoAttr().to_dict()


# ---------------------------------------------------------------------- multi-resolution STFT
def _numpy_stft_loss(real, fake, n_fft, hop):
    """sc and log-magnitude L1 at one resolution (hann window of n_fft, reflect-padded centred frames)."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic hann

    def mag(x):
        x = np.pad(x, n_fft // 2, mode="reflect")
        frames = np.stack([x[i : i + n_fft] for i in range(0, len(x) - n_fft + 1, hop)])
        spec = np.fft.rfft(frames * window, axis=-1)
        return np.sqrt(np.maximum(np.abs(spec) ** 2, 1e-7))

    sc, l1 = [], []
    for r, f in zip(real, fake, strict=True):
        s, s_hat = mag(r), mag(f)
        sc.append(np.linalg.norm(s - s_hat) / np.linalg.norm(s))
        l1.append(np.abs(np.log(s) - np.log(s_hat)))
    return float(np.mean(sc)), float(np.mean(np.concatenate(l1)))


def test_stft_loss_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((2, 4000)) * 0.3
    fake = real + rng.standard_normal((2, 4000)) * 0.05
    sc, mag = stft_loss(torch.tensor(real[:, None]), torch.tensor(fake[:, None]), 512, 128, 512)
    ref_sc, ref_mag = _numpy_stft_loss(real.astype(np.float32), fake.astype(np.float32), 512, 128)
    assert float(sc) == pytest.approx(ref_sc, rel=1e-3)
    assert float(mag) == pytest.approx(ref_mag, rel=1e-3)


def test_mr_stft_is_zero_for_identical_signals_and_differentiable_otherwise():
    term = MultiResolutionSTFTLoss()
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(2, 1, 3000, generator=gen)
    assert float(term.compute(real, real.clone())) == 0.0
    fake = (real + 0.1 * torch.randn(2, 1, 3000, generator=gen)).requires_grad_(True)
    loss = term.compute(real, fake)
    assert loss.dtype == torch.float32 and loss.ndim == 0 and float(loss.detach()) > 0
    loss.backward()
    assert torch.isfinite(fake.grad).all() and float(fake.grad.abs().sum()) > 0
    # worse signals score worse; a segment shorter than half the largest frame still works
    assert float(term.compute(real, real + 0.5 * torch.randn(2, 1, 3000, generator=gen))) > float(loss.detach())
    short = torch.randn(2, 1, 600, generator=gen)
    assert float(term.compute(short, short * 0.5)) > 0
    # the mean over resolutions of (sc + mag)
    parts = [sum(stft_loss(real, fake, *r)) for r in term.resolutions()]
    torch.testing.assert_close(loss, torch.stack(parts).mean())

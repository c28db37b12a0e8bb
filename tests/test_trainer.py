"""SurgicalTrainer: pruned steps, exact parameter sets, optimizer groups, NaN handling, fit."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from surgery_helpers import explicit_noise, reference_losses, speech_batch, tiny_model

from vits_surgery.convert.native import read_native
from vits_surgery.losses import weighted_total
from vits_surgery.surgery.callbacks import Callback
from vits_surgery.surgery.plan import SurgeryPlan
from vits_surgery.surgery.rundir import latest_checkpoint
from vits_surgery.surgery.trainer import NonFiniteLossError, SurgicalTrainer, TrainConfig

PLANS = {
    "cadence": SurgeryPlan.cadence(),
    "timbre": SurgeryPlan.timbre(),
    "accent": SurgeryPlan.accent(),
    "ups2": SurgeryPlan(train=["decoder.ups.2"]),
}
EXPECTED_TERMS = {
    "cadence": ("gen/dur",),
    "timbre": ("gen/kl", "gen/mel", "gen/adv", "gen/fm"),
    "accent": ("gen/kl",),
    "ups2": ("gen/mel", "gen/adv", "gen/fm"),
}


@pytest.fixture(scope="module")
def small():
    return speech_batch(tiny_model().config, 1, seed=5, max_seconds=0.3)


@pytest.fixture(scope="module")
def batches():
    config = tiny_model().config
    return [speech_batch(config, 2, seed=i) for i in range(3)]


def _trainer(plan, tmp_path, **cfg):
    cfg.setdefault("progress", False)
    cfg.setdefault("seed", 0)
    return SurgicalTrainer(tiny_model(), plan, out_dir=tmp_path, config=TrainConfig(**cfg))


class _Spy:
    """Records, per organ, whether it ran and with which grad mode."""

    def __init__(self, model):
        self.calls: dict[str, list[bool]] = {}
        for name in ("text_encoder", "posterior_encoder", "flow", "decoder", "discriminator"):
            getattr(model, name).register_forward_pre_hook(self._hook(name))

    def _hook(self, name):
        def hook(module, args):
            self.calls.setdefault(name, []).append(torch.is_grad_enabled())

        return hook


@pytest.mark.parametrize("name", sorted(PLANS))
def test_pruned_step_gives_the_full_step_gradients(name, batches, tmp_path):
    trainer = _trainer(PLANS[name], tmp_path)
    model, batch = trainer.model, batches[0]
    noise = explicit_noise(model, batch)
    model.train()
    spy = _Spy(model)
    torch.manual_seed(7)
    out = trainer.forward_generator(batch, noise)
    losses = trainer.generator_losses(batch, out)
    assert tuple(losses) == EXPECTED_TERMS[name]
    weighted_total(losses, trainer.weights).backward()
    params = dict((n, p) for n, p in model.named_parameters() if p.requires_grad and not n.startswith("discriminator."))
    assert params and all(p.grad is not None for p in params.values())
    pruned = {n: p.grad.clone() for n, p in params.items()}
    pruned_calls = {k: list(v) for k, v in spy.calls.items()}
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    reference = reference_losses(model, batch, noise)
    for term in losses:
        torch.testing.assert_close(losses[term], reference[term], rtol=1e-5, atol=1e-6)
    weighted_total(reference, trainer.weights).backward()
    for n, p in params.items():
        # float summation-order noise only (some gradients are exactly 0 in theory, e.g. key biases)
        atol = 1e-6 * max(float(q.grad.abs().max()) for q in params.values())
        torch.testing.assert_close(pruned[n], p.grad, rtol=1e-4, atol=atol, msg=lambda m, n=n: f"{name}: {n}: {m}")
    if name == "cadence":  # text encoder, posterior encoder and flow without grad; no decoder, no D
        assert pruned_calls == {"text_encoder": [False], "posterior_encoder": [False], "flow": [False]}
    if name == "accent":
        assert pruned_calls == {"text_encoder": [True], "posterior_encoder": [False], "flow": [False]}
    if name == "ups2":
        assert pruned_calls["flow"] == [False] and pruned_calls["decoder"] == [True]


@pytest.mark.parametrize("name", ["cadence", "timbre", "ups2"])
def test_steps_touch_exactly_the_plan(name, small, tmp_path):
    trainer = _trainer(PLANS[name], tmp_path, grad_accum=2)
    model = trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan_ids = {id(p) for pairs in trainer.resolved.groups.values() for _, p in pairs}
    held = {id(p) for opt in trainer.optimizers.values() for g in opt.param_groups for p in g["params"]}
    assert held == plan_ids == {id(p) for p in model.parameters() if p.requires_grad}
    trainer.training_step(small)  # first half of the accumulation window: grads, no update
    assert trainer.step == 0
    assert {id(p) for p in model.parameters() if p.grad is not None} == plan_ids
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    for _ in range(3):  # two updates: zero-initialised layers (flow/SDP projections) pass gradients only after one
        trainer.training_step(small)
    assert trainer.step == 2
    for n, p in model.named_parameters():
        if id(p) in plan_ids:
            assert not torch.equal(p, before[n]), f"{n} did not change"
        else:
            assert torch.equal(p, before[n]), f"frozen {n} changed"


def test_learning_rates_are_the_given_ones(tmp_path, caplog):
    plan = SurgeryPlan(train=["decoder", "flow"], lr_scale={"flow": 0.1, "discriminator": 0.5})
    with caplog.at_level(logging.INFO, logger="vits_surgery.surgery.trainer"):
        trainer = SurgicalTrainer(
            tiny_model(), plan, lr=3e-5, out_dir=tmp_path, config=TrainConfig(progress=False, lr_discriminator=1e-4)
        )
    groups = {g["name"]: g["lr"] for opt in trainer.optimizers.values() for g in opt.param_groups}
    assert groups == pytest.approx({"decoder": 3e-5, "flow": 3e-6, "discriminator": 5e-5})
    assert "learning rate 3e-05" in caplog.text and "flow=3e-06" in caplog.text
    opt = trainer.optimizers["generator"]
    assert opt.defaults["betas"] == (0.8, 0.99) and opt.defaults["eps"] == 1e-9
    assert opt.defaults["weight_decay"] == 0.01


def test_warmup_and_decay(small, tmp_path):
    trainer = _trainer(SurgeryPlan.cadence(), tmp_path, lr=1e-3, warmup_steps=2, lr_decay=0.5)
    seen = []
    for _ in range(3):
        seen.append(trainer.optimizers["generator"].param_groups[0]["lr"])
        trainer.training_step(small)
    expected = [1e-3 * min(1.0, (s + 1) / 2) * 0.5**s for s in range(3)]
    assert seen == pytest.approx(expected)


def test_decay_to_reaches_the_fraction(small, tmp_path):
    trainer = _trainer(SurgeryPlan.cadence(), tmp_path, lr=1e-3, lr_decay=TrainConfig.decay_to(0.25, 4))
    for _ in range(4):
        trainer.training_step(small)
    assert trainer.optimizers["generator"].param_groups[0]["lr"] == pytest.approx(0.25e-3)
    for bad in ((0.0, 4), (1.5, 4), (0.5, 0)):
        with pytest.raises(ValueError, match="decay_to"):
            TrainConfig.decay_to(*bad)


class _NaNTrainer(SurgicalTrainer):
    """Generator losses turn NaN on chosen calls of ``generator_losses`` (counted from 0)."""

    bad_calls: set[int] = set()
    calls = 0

    def generator_losses(self, batch, out, disc_out=None):
        losses = super().generator_losses(batch, out, disc_out)
        if self.calls in self.bad_calls:
            losses = {k: v * float("nan") for k, v in losses.items()}
        self.calls += 1
        return losses


def test_nonfinite_steps_are_skipped_then_stop(small, tmp_path):
    model = tiny_model()
    trainer = _NaNTrainer(
        model, SurgeryPlan.cadence(), [small], out_dir=tmp_path,
        config=TrainConfig(progress=False, save_every=1, max_consecutive_nonfinite=3),
    )
    trainer.bad_calls = {1}
    trainer.fit(2)  # calls 0 (ok), 1 (NaN, skipped), 2 (ok)
    assert trainer.step == 2 and trainer.skipped_steps == 1 and trainer.calls == 3
    good = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.bad_calls = {3, 4, 5}
    with pytest.raises(NonFiniteLossError, match="3 consecutive"):
        trainer.fit(10)
    assert trainer.step == 2 and trainer.skipped_steps == 4
    assert all(torch.equal(p, good[n]) for n, p in model.named_parameters())  # no NaN update
    last = latest_checkpoint(tmp_path)
    assert last.name == "step_00000002"
    tensors, _, _ = read_native(last)
    assert all(torch.equal(tensors[n], good[n]) for n in good)
    assert not (tmp_path / ".lock").exists()  # released on error


class _Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_fit_start(self, trainer):
        self.events.append(("start", trainer.step))

    def on_step_end(self, trainer, step, logs):
        self.events.append(("step", step, dict(logs)))

    def on_sample(self, trainer, step, samples):
        self.events.append(("sample", step, samples))

    def on_save(self, trainer, step, path):
        self.events.append(("save", step, path))

    def on_fit_end(self, trainer):
        self.events.append(("end", trainer.step))


def test_fit_on_speech(batches, tmp_path):
    """Also the deprecated listener= / sample_every path: it warns and still samples at 0, 2, 4."""
    recorder = _Recorder()

    def listener(trainer, step):
        assert not trainer.model.training and not torch.is_grad_enabled()
        wav = trainer.model.infer(batches[0].tokens[:1], generator=torch.Generator().manual_seed(0)).audio
        return {"audio": wav}

    with pytest.warns(DeprecationWarning, match="sample_every"):
        config = TrainConfig(progress=True, seed=0, save_every=2, keep_last=2, sample_every=2)
    with pytest.warns(DeprecationWarning, match="listener"):
        trainer = SurgicalTrainer(
            tiny_model(), SurgeryPlan.timbre(), batches, out_dir=tmp_path, callbacks=[recorder],
            listener=listener, config=config,
        )
    logs = trainer.fit(5)
    kinds = [e[0] for e in recorder.events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert [e[1] for e in recorder.events if e[0] == "sample"] == [0, 2, 4]
    assert [e[1] for e in recorder.events if e[0] == "save"] == [2, 4, 5]
    steps = [e for e in recorder.events if e[0] == "step"]
    assert [e[1] for e in steps] == [1, 2, 3, 4, 5]
    for _, _, step_logs in steps:
        for key in ("gen/kl", "gen/mel", "gen/adv", "gen/fm", "disc/real", "disc/fake"):
            assert math.isfinite(step_logs[key])
        assert step_logs["lr/decoder"] == pytest.approx(2e-4)
    assert "gen/dur" not in logs  # the duration predictor is frozen: its loss is not computed
    dirs = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert dirs == ["step_00000004", "step_00000005"]  # keep_last=2
    assert trainer.model.training  # fit leaves the model as training left it


def test_bf16_autocast_keeps_flows_fp32(batches, tmp_path):
    trainer = _trainer(SurgeryPlan.timbre(), tmp_path, amp="bf16")
    seen = {}

    def hook(name):
        def fn(module, args):
            seen[name] = (args[0].dtype, torch.is_autocast_enabled("cpu"))

        return fn

    trainer.model.flow.register_forward_pre_hook(hook("flow"))
    trainer.model.decoder.register_forward_pre_hook(hook("decoder"))
    logs = trainer.training_step(batches[0])
    assert seen["flow"] == (torch.float32, False)
    assert seen["decoder"][1] is True
    assert all(math.isfinite(v) for v in logs.values())
    assert trainer.step == 1


def test_train_config_validation_and_round_trip():
    cfg = TrainConfig(lr=1e-5, amp="bf16", loss_weights={"gen/mel": 10.0})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="unknown TrainConfig"):
        TrainConfig.from_dict({"learning_rate": 1.0})
    with pytest.raises(ValueError, match="grad_accum"):
        TrainConfig(grad_accum=0)


def test_a_plan_no_weighted_loss_reaches_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no loss term"):
        SurgicalTrainer(
            tiny_model(), SurgeryPlan.accent(loss_weights={"gen/kl": 0.0}), out_dir=tmp_path,
            config=TrainConfig(progress=False),
        )


def test_step_plan_in_words_is_logged(batches, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="vits_surgery.surgery.trainer"):
        trainer = _trainer(SurgeryPlan.cadence(), tmp_path)
    words = "grad: duration_predictor; no_grad: text_encoder, posterior_encoder, flow; skipped: decoder, discriminator"
    assert trainer.step_plan.describe() == words
    assert f"step plan: {words}" in caplog.text
    timbre = _trainer(SurgeryPlan.timbre(), tmp_path / "t").step_plan.describe()
    assert timbre == ("grad: posterior_encoder, flow, decoder, discriminator; no_grad: text_encoder; "
                      "skipped: duration_predictor")


def test_rng_and_the_loss_path_seam(batches, tmp_path):
    """The trainer's generator is ``rng`` (the old name warns); a LossPath subclass set as
    ``loss_path_cls`` replaces the step's forward and the trainer trains on it."""
    from vits_surgery.surgery.step import LossPath

    trainer = _trainer(SurgeryPlan.cadence(), tmp_path)
    assert trainer.loss_path.rng is trainer.rng
    with pytest.warns(DeprecationWarning, match="SurgicalTrainer.rng"):
        assert trainer.generator is trainer.rng
    calls = []

    class Counted(LossPath):
        def forward(self, batch, noise=None):
            calls.append(batch.ids)
            return super().forward(batch, noise)

    class CountedTrainer(SurgicalTrainer):
        loss_path_cls = Counted

    counted = CountedTrainer(tiny_model(), SurgeryPlan.cadence(), batches, out_dir=tmp_path / "c",
                             config=TrainConfig(progress=False, seed=0, save_every=0))
    assert isinstance(counted.loss_path, Counted)
    logs = counted.training_step(batches[0])
    assert len(calls) == 1 and math.isfinite(logs["gen/dur"]) and counted.step == 1

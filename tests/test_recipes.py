"""The documented recipes run as written (docs/recipes/*.md)."""

from __future__ import annotations

import math

import pytest

import vits_surgery as vs
from tests.surgery_helpers import speech_batch, tiny_model


class PitchKeepingTrainer(vs.SurgicalTrainer):
    """docs/recipes/subclassing.md"""

    def __init__(self, *args, energy_weight=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.weights["gen/energy"] = energy_weight

    def generator_losses(self, batch, out, disc_out=None):
        losses = super().generator_losses(batch, out, disc_out)
        if out.audio_hat is not None:
            losses["gen/energy"] = (out.audio_hat.pow(2).mean() - 0.01).abs()
        return losses


def test_subclass_adds_a_weighted_term(tmp_path) -> None:
    model = tiny_model()
    batch = speech_batch(model.config)
    trainer = PitchKeepingTrainer(
        model, vs.SurgeryPlan(train=["decoder"]), [batch], energy_weight=0.5, out_dir=tmp_path,
        config=vs.TrainConfig(progress=False, seed=0),
    )
    logs = trainer.training_step(batch)
    assert "gen/energy" in logs and math.isfinite(logs["gen/energy"])


def test_unweighted_new_term_is_an_error(tmp_path) -> None:
    class Forgetful(PitchKeepingTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            del self.weights["gen/energy"]

    model = tiny_model()
    batch = speech_batch(model.config)
    trainer = Forgetful(model, vs.SurgeryPlan(train=["decoder"]), [batch], out_dir=tmp_path,
                        config=vs.TrainConfig(progress=False, seed=0))
    with pytest.raises(KeyError, match="gen/energy"):
        trainer.training_step(batch)


@vs.register_loss_term
class Energy(vs.LossTerm):
    """docs/recipes/subclassing.md (the LossTerm form)"""

    name = "gen/energy"

    def __call__(self, path, batch, out):
        return (out.audio_hat.float().pow(2).mean() - 0.01).abs()


def test_loss_term_recipe(tmp_path) -> None:
    model = tiny_model()
    batch = speech_batch(model.config)
    plan = vs.SurgeryPlan(train=["decoder"], loss_terms=[Energy(weight=0.5)])
    trainer = vs.SurgicalTrainer(model, plan, [batch], out_dir=tmp_path, config=vs.TrainConfig(progress=False, seed=0))
    logs = trainer.training_step(batch)
    assert "gen/energy" in logs and math.isfinite(logs["gen/energy"]) and trainer.weights["gen/energy"] == 0.5
    assert vs.SurgeryPlan.from_json(plan.to_json()) == plan


def test_suborgan_group_recipe(tmp_path) -> None:
    model = tiny_model()
    reg = vs.ComponentRegistry(model)
    reg.register("decoder_late", ["decoder.ups.2", "decoder.resblocks.4", "decoder.resblocks.5"])
    plan = vs.SurgeryPlan(train=["decoder_late", "flow.flows.1"], lr_scale={"flow.flows.1": 0.1})
    trainer = vs.SurgicalTrainer(model, plan, None, lr=1e-4, registry=reg, out_dir=tmp_path,
                                 config=vs.TrainConfig(progress=False))
    groups = {g["name"]: g["lr"] for opt in trainer.optimizers.values() for g in opt.param_groups if "name" in g}
    assert groups.get("flow.flows.1") == pytest.approx(1e-5) and groups.get("decoder_late") == pytest.approx(1e-4)
    with pytest.raises(KeyError, match="decoder"):
        vs.SurgeryPlan(train=["decodr"]).resolve(reg)

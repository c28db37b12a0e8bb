"""SurgeryPlan resolution and apply_plan: exactly the plan's parameters train, frozen modules stay in eval."""

from __future__ import annotations

import logging

import pytest
import torch
from surgery_helpers import tiny_model

from vits_surgery.surgery.freeze import apply_plan, release_plan
from vits_surgery.surgery.plan import SurgeryPlan
from vits_surgery.surgery.registry import ComponentRegistry

PRESETS = {
    "cadence": (SurgeryPlan.cadence(), {"duration_predictor"}, False),
    "timbre": (SurgeryPlan.timbre(), {"decoder", "flow", "posterior_encoder", "discriminator"}, True),
    "accent": (SurgeryPlan.accent(), {"text_encoder"}, False),
    "full": (
        SurgeryPlan.full(),
        {"text_encoder", "duration_predictor", "posterior_encoder", "flow", "decoder", "discriminator"},
        True,
    ),
}


def _trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _names_under(model, *prefixes):
    return {n for n, _ in model.named_parameters() if n.startswith(tuple(p + "." for p in prefixes))}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_train_exactly_their_organs(name):
    plan, organs, disc = PRESETS[name]
    model = tiny_model()
    groups = apply_plan(model, plan)
    assert _trainable_names(model) == _names_under(model, *organs)
    assert ("discriminator" in groups) is disc
    flat = [id(p) for params in groups.values() for p in params]
    assert len(flat) == len(set(flat)) == len(_trainable_names(model))
    if name == "full":  # the generator group expands to one parameter group per organ
        assert set(groups) == organs


def test_sub_organ_plan_and_most_specific_grouping():
    model = tiny_model()
    groups = apply_plan(model, SurgeryPlan(train=["dec.ups.2"]))
    assert _trainable_names(model) == _names_under(model, "decoder.ups.2", "discriminator")
    assert set(groups) == {"decoder.ups.2", "discriminator"}
    reg = ComponentRegistry(model)
    plan = SurgeryPlan(train=["decoder", "decoder.ups.2"], lr_scale={"decoder.ups.2": 0.1})
    resolved = plan.resolve(reg)
    ups2 = {n for n, _ in resolved.groups["decoder.ups.2"]}
    rest = {n for n, _ in resolved.groups["decoder"]}
    assert ups2 == _names_under(model, "decoder.ups.2")
    assert not ups2 & rest and ups2 | rest == _names_under(model, "decoder")
    assert resolved.lr_scale == {"decoder": 1.0, "decoder.ups.2": 0.1, "discriminator": 1.0}
    # a single parameter
    apply_plan(model, SurgeryPlan(train=["text_encoder.emb.weight"]))
    assert _trainable_names(model) == {"text_encoder.emb.weight"}


def test_user_group_needs_its_registry():
    model = tiny_model()
    reg = ComponentRegistry(model)
    reg.register("attention", ["text_encoder.encoder.attn_layers.0", "text_encoder.encoder.attn_layers.1"])
    groups = apply_plan(model, SurgeryPlan(train=["attention"]), reg)
    assert set(groups) == {"attention"}
    assert _trainable_names(model) == _names_under(
        model, "text_encoder.encoder.attn_layers.0", "text_encoder.encoder.attn_layers.1"
    )
    with pytest.raises(KeyError, match="attention"):
        apply_plan(tiny_model(), SurgeryPlan(train=["attention"]))


def test_discriminator_rule(caplog):
    reg = ComponentRegistry(tiny_model())
    assert not SurgeryPlan(train=["flow"]).resolve(reg).train_discriminator  # flow feeds only the KL
    assert SurgeryPlan(train=["posterior_encoder"]).resolve(reg).train_discriminator
    assert not SurgeryPlan.timbre(train_discriminator=False).resolve(reg).train_discriminator
    assert SurgeryPlan.cadence(train_discriminator=True).resolve(reg).train_discriminator
    assert SurgeryPlan(train=["duration_predictor", "disc"]).resolve(reg).train_discriminator
    no_adv = SurgeryPlan.timbre(loss_weights={"gen/adv": 0, "gen/fm": 0})
    assert not no_adv.resolve(reg).train_discriminator
    assert not SurgeryPlan.timbre().resolve(reg, {"gen/adv": 0, "gen/fm": 0}).train_discriminator
    with pytest.raises(ValueError, match="train_discriminator=False"):
        SurgeryPlan(train=["discriminator"], train_discriminator=False).resolve(reg)
    with pytest.raises(ValueError, match="as a whole"):
        SurgeryPlan(train=["discriminator.nets.0"]).resolve(reg)
    torch.manual_seed(0)
    from vits_surgery.models.vits import VITS

    bare = ComponentRegistry(VITS(tiny_model().config, with_discriminator=False))
    with caplog.at_level(logging.WARNING):
        assert not SurgeryPlan.timbre().resolve(bare).train_discriminator
    assert "no discriminator" in caplog.text
    with pytest.raises(ValueError, match="without one"):
        SurgeryPlan.cadence(train_discriminator=True).resolve(bare)


def test_errors_are_clear():
    model = tiny_model()
    with pytest.raises(ValueError, match="empty"):
        SurgeryPlan(train=[])
    with pytest.raises(ValueError, match="has no parameters"):
        apply_plan(model, SurgeryPlan(train=["text_encoder.encoder.drop"]))
    with pytest.raises(KeyError, match="did you mean 'duration_predictor'"):
        apply_plan(model, SurgeryPlan(train=["duration_predicter"]))
    with pytest.raises(KeyError, match="lr_scale key 'flow'"):
        apply_plan(model, SurgeryPlan(train=["decoder"], lr_scale={"flow": 0.5}))
    with pytest.raises(KeyError, match="did you mean 'gen/mel'"):
        SurgeryPlan.cadence(loss_weights={"gen/mle": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        SurgeryPlan.cadence(loss_weights={"gen/dur": -1.0})
    with pytest.raises(ValueError, match="> 0"):
        SurgeryPlan.timbre(lr_scale={"flow": 0.0})
    # a failed plan leaves the model untouched
    assert all(p.requires_grad for p in model.parameters())


def test_json_round_trip(tmp_path):
    plan = SurgeryPlan(
        train=["decoder", "flow"], lr_scale={"flow": 0.1}, train_discriminator=False,
        loss_weights={"gen/kl": 0.5}, name="mine",
    )
    assert SurgeryPlan.from_json(plan.to_json()) == plan
    plan.to_json(tmp_path / "plan.json")
    assert SurgeryPlan.from_json(tmp_path / "plan.json") == plan
    for preset in (SurgeryPlan.cadence(), SurgeryPlan.timbre(), SurgeryPlan.accent(), SurgeryPlan.full()):
        assert SurgeryPlan.from_dict(preset.to_dict()) == preset
    with pytest.raises(KeyError, match="did you mean 'lr_scale'"):
        SurgeryPlan.from_dict({"train": ["flow"], "lr_scales": {}})


def test_frozen_modules_stay_in_eval():
    model = tiny_model()
    apply_plan(model, SurgeryPlan.cadence())
    model.train()
    assert model.training and model.duration_predictor.training
    assert all(m.training for m in model.duration_predictor.modules())
    for organ in ("text_encoder", "posterior_encoder", "flow", "decoder", "discriminator"):
        assert not any(m.training for m in getattr(model, organ).modules()), organ
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert model.duration_predictor.training and not model.text_encoder.training
    # dropout really is off in the frozen text encoder: repeated forwards agree
    tokens, lengths = torch.randint(1, 50, (2, 12)), torch.tensor([12, 9])
    a, b = model.text_encoder(tokens, lengths).hidden, model.text_encoder(tokens, lengths).hidden
    assert torch.equal(a, b)
    apply_plan(model, SurgeryPlan.accent())
    model.train()
    a, b = model.text_encoder(tokens, lengths).hidden, model.text_encoder(tokens, lengths).hidden
    assert not torch.equal(a, b)  # dropout on in the organ that learns


def test_sub_organ_modes_and_release():
    model = tiny_model()
    apply_plan(model, SurgeryPlan(train=["text_encoder.encoder.attn_layers.0"]))
    model.train()
    enc = model.text_encoder.encoder
    assert enc.training and enc.attn_layers.training  # ancestors follow model.train()
    assert all(m.training for m in enc.attn_layers[0].modules())
    assert not any(m.training for m in enc.attn_layers[1].modules())
    assert not any(m.training for m in enc.ffn_layers.modules())
    release_plan(model)
    model.train()
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_frozen_eval_can_be_disabled():
    model = tiny_model()
    apply_plan(model, SurgeryPlan(train=["duration_predictor"], frozen_eval=False))
    model.train()
    assert all(m.training for m in model.modules())


def test_preserved_restores_flags_modes_and_the_applied_plan() -> None:
    from vits_surgery.surgery.freeze import _FROZEN_ATTR, preserved

    model = tiny_model()
    apply_plan(model, SurgeryPlan.cadence())
    model.train()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    frozen = getattr(model, _FROZEN_ATTR)
    with preserved(model) as inside:
        assert inside is model
        release_plan(model)  # anything goes inside
        apply_plan(model, SurgeryPlan.timbre())
        model.eval()
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert getattr(model, _FROZEN_ATTR) == frozen
    model.train()  # the cadence plan's train() is back: the text encoder stays in eval
    assert not model.text_encoder.training and model.duration_predictor.training
    with pytest.raises(RuntimeError, match="boom"), preserved(model):
        release_plan(model)
        raise RuntimeError("boom")
    assert getattr(model, _FROZEN_ATTR) == frozen  # restored on an error too
    bare = tiny_model()
    with preserved(bare):
        apply_plan(bare, SurgeryPlan.cadence())
    assert _FROZEN_ATTR not in bare.__dict__ and "train" not in bare.__dict__  # no plan before: none after
    assert all(p.requires_grad for p in bare.parameters())

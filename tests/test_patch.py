"""Transplant patches: small files bound to their base voice, strength dial, composition."""

from __future__ import annotations

import copy

import pytest
import torch
from surgery_helpers import tiny_model
from torch import nn

from vits_surgery.convert import native
from vits_surgery.surgery.lora import (
    LoRASpec,
    inject_lora,
    lora_layers,
    lora_parameters,
    lora_state_dict,
    merge_lora,
)
from vits_surgery.surgery.patch import (
    Patch,
    PatchMismatchError,
    applied_patches,
    apply_patch,
    make_patch,
    remove_patches,
    voice_fingerprint,
)
from vits_surgery.surgery.plan import SurgeryPlan
from vits_surgery.surgery.trainer import SurgicalTrainer, TrainConfig

TOKENS = torch.tensor([[3, 17, 9, 22, 5, 30, 11, 8, 14, 2, 19, 6]])
CADENCE = {"duration_predictor": LoRASpec(rank=2, alpha=4.0)}


def _infer(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        out = model.infer(TOKENS, generator=torch.Generator().manual_seed(3))
    return torch.cat([out.durations.flatten(), out.audio.flatten()])


def _perturb(model: nn.Module, prefixes: tuple[str, ...], seed: int, std: float = 0.02) -> None:
    """Stand-in for training: move every tensor under ``prefixes``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(prefixes) and "lora_" not in name:
                p.add_(torch.randn(p.shape, generator=gen) * std)


@pytest.fixture(scope="module")
def voices():
    """base voice, a cadence LoRA transplant, a timbre (decoder + flow) weight transplant."""
    base = tiny_model(seed=0).eval()
    cadence = copy.deepcopy(base)
    inject_lora(cadence, CADENCE, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in lora_parameters(cadence):
            if name.endswith("lora_b"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    timbre = copy.deepcopy(base)
    _perturb(timbre, ("decoder.", "flow."), seed=2)
    return base, cadence, timbre


def test_fingerprint_ignores_discriminator_and_adapters_but_not_weights(voices):
    base, cadence, timbre = voices
    fp = voice_fingerprint(base)
    assert len(fp) == 64
    without_disc = {k: v for k, v in base.state_dict().items() if not k.startswith("discriminator.")}
    assert voice_fingerprint(without_disc) == fp
    assert voice_fingerprint(cadence) == fp  # unmerged adapters are not part of the voice
    assert voice_fingerprint(timbre) != fp
    bumped = dict(without_disc)
    key = "text_encoder.proj.bias"
    bumped[key] = bumped[key].clone()
    bumped[key][0] = torch.nextafter(bumped[key][0], torch.tensor(1.0))
    assert voice_fingerprint(bumped) != fp


def test_lora_patch_round_trip_reproduces_the_transplant(voices, tmp_path):
    base, cadence, _ = voices
    patch = make_patch(base, cadence)
    assert patch.kind == "lora" and patch.organs == ("duration_predictor",) and patch.rank == 2
    assert set(patch.lora) == set(lora_state_dict(cadence)) and not patch.weights
    path = patch.save(tmp_path / "cadence.safetensors")
    native.save(base, tmp_path / "voice")
    assert path.stat().st_size < (tmp_path / "voice" / native.MODEL_FILE).stat().st_size / 10
    loaded = Patch.load(path)
    assert loaded.base_fingerprint == voice_fingerprint(base)
    assert loaded.layers == patch.layers and loaded.organs == patch.organs
    patched = apply_patch(copy.deepcopy(base), path)
    assert set(lora_layers(patched)) == set(lora_layers(cadence))
    assert torch.equal(_infer(patched), _infer(cadence))
    assert applied_patches(patched)[0]["organs"] == ["duration_predictor"]


def test_weights_patch_round_trip_and_organ_selection(voices, tmp_path):
    base, _, timbre = voices
    patch = make_patch(base, timbre)
    assert patch.kind == "weights" and patch.organs == ("flow", "decoder") and patch.rank is None
    assert all(k.startswith(("decoder.", "flow.")) for k in patch.weights)
    loaded = Patch.load(patch.save(tmp_path / "timbre.safetensors"))
    patched = apply_patch(copy.deepcopy(base), loaded)
    assert torch.equal(_infer(patched), _infer(timbre))
    only_decoder = make_patch(base, timbre, organs=["dec"])
    assert only_decoder.organs == ("decoder",)
    with pytest.raises(ValueError, match="does not differ"):
        make_patch(base, timbre, organs=["text_encoder"])


def test_strength_dial(voices):
    base, cadence, timbre = voices
    for trained in (cadence, timbre):
        patch = make_patch(base, trained)
        full = _infer(trained)
        assert torch.equal(_infer(apply_patch(copy.deepcopy(base), patch, alpha=0.0)), _infer(base))
        assert torch.equal(_infer(apply_patch(copy.deepcopy(base), patch, alpha=1.0)), full)
        half = apply_patch(copy.deepcopy(base), patch, alpha=0.5)
        assert not torch.equal(_infer(half), full) and not torch.equal(_infer(half), _infer(base))
    half_timbre = apply_patch(copy.deepcopy(base), make_patch(base, timbre), alpha=0.5).state_dict()
    key = "decoder.ups.0.parametrizations.weight.original1"
    midpoint = base.state_dict()[key] + 0.5 * (timbre.state_dict()[key] - base.state_dict()[key])
    torch.testing.assert_close(half_timbre[key], midpoint, rtol=0, atol=1e-7)
    weights = {}  # LoRA: the merged update scales with alpha
    for alpha in (0.0, 0.5, 1.0):
        model = apply_patch(copy.deepcopy(base), make_patch(base, cadence), alpha=alpha)
        merge_lora(model)
        weights[alpha] = model.duration_predictor.pre.weight.detach().clone()
    assert not torch.equal(weights[1.0], weights[0.0])
    torch.testing.assert_close(weights[0.5], (weights[0.0] + weights[1.0]) / 2, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        apply_patch(copy.deepcopy(base), make_patch(base, timbre), alpha=1.5)


def test_patch_on_another_voice_is_refused(voices):
    base, cadence, timbre = voices
    other = tiny_model(seed=1).eval()
    patch = make_patch(base, cadence)
    with pytest.raises(PatchMismatchError) as info:
        apply_patch(other, patch)
    message = str(info.value)
    assert voice_fingerprint(base) in message and voice_fingerprint(other) in message
    assert not lora_layers(other)
    with pytest.raises(PatchMismatchError):  # a transplanted voice is another voice too
        apply_patch(copy.deepcopy(timbre), make_patch(base, timbre))


def test_cadence_and_timbre_patches_compose(voices):
    base, cadence, timbre = voices
    p_cadence, p_timbre = make_patch(base, cadence), make_patch(base, timbre)
    expected = copy.deepcopy(timbre)  # the timbre transplant carrying the cadence adapters
    inject_lora(expected, CADENCE)
    expected.load_state_dict(lora_state_dict(cadence), strict=False)
    both = apply_patch(copy.deepcopy(base), [p_cadence, p_timbre])
    assert torch.equal(_infer(both), _infer(expected))
    one_by_one = apply_patch(apply_patch(copy.deepcopy(base), p_timbre), p_cadence)
    assert torch.equal(_infer(one_by_one), _infer(expected))
    assert [a["kind"] for a in applied_patches(one_by_one)] == ["weights", "lora"]
    restored = remove_patches(one_by_one)
    assert not lora_layers(restored) and voice_fingerprint(restored) == voice_fingerprint(base)
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in restored.state_dict().items())


def test_overlapping_patches_need_allow_overlap(voices):
    base, _, timbre = voices
    other = copy.deepcopy(base)
    _perturb(other, ("decoder.",), seed=7)
    p_timbre, p_other = make_patch(base, timbre), make_patch(base, other)
    with pytest.raises(PatchMismatchError, match="both change decoder"):
        apply_patch(copy.deepcopy(base), [p_timbre, p_other])
    patched = apply_patch(copy.deepcopy(base), p_timbre)
    with pytest.raises(PatchMismatchError, match="allow_overlap"):
        apply_patch(patched, p_other)
    summed = apply_patch(patched, p_other, alpha=0.5, allow_overlap=True).state_dict()
    key = "decoder.conv_pre.weight"
    b, t, o = (m.state_dict()[key] for m in (base, timbre, other))
    torch.testing.assert_close(summed[key], b + (t - b) + 0.5 * (o - b), rtol=0, atol=1e-6)


def test_make_patch_from_a_trainer_and_refusals(voices, tmp_path):
    base, _, _ = voices
    plan = SurgeryPlan(lora=CADENCE, name="cadence-lora")
    trainer = SurgicalTrainer(copy.deepcopy(base), plan, out_dir=tmp_path, config=TrainConfig(progress=False, lr=3e-4))
    patch = make_patch(base, trainer, summary={"donor": "slow joe"})
    assert patch.summary["plan"]["name"] == "cadence-lora" and patch.summary["steps"] == 0
    assert patch.summary["lr"] == pytest.approx(3e-4) and patch.summary["donor"] == "slow joe"
    assert Patch.load(patch.save(tmp_path / "p.safetensors")).summary == patch.summary
    merge_lora(trainer.model)
    with pytest.raises(ValueError, match="merged"):
        make_patch(base, trainer)
    with pytest.raises(ValueError, match="carries LoRA adapters"):
        make_patch(trainer.model, base)
    native.save(base, tmp_path / "voice")
    with pytest.raises(ValueError, match="not a vits_surgery patch"):
        Patch.load(tmp_path / "voice" / native.MODEL_FILE)


def test_a_non_finite_patch_is_refused_before_it_touches_the_voice(voices):
    import re

    from vits_surgery.models.lora import NonFiniteAdapterError

    base, _, timbre = voices
    patch = make_patch(base, timbre, organs=["dec"])
    key = next(iter(patch.weights))
    patch.weights[key] = patch.weights[key].clone()
    patch.weights[key].view(-1)[0] = float("nan")
    voice = copy.deepcopy(base)
    before = {k: v.clone() for k, v in voice.state_dict().items()}
    with pytest.raises(NonFiniteAdapterError, match=re.escape(key)):
        apply_patch(voice, patch)
    assert all(torch.equal(v, before[k]) for k, v in voice.state_dict().items())
    assert not applied_patches(voice)

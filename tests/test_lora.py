"""LoRA adapters: key-preserving injection, exact merge/unmerge, refusals, training only adapters."""

from __future__ import annotations

import copy

import pytest
import torch
from surgery_helpers import speech_batch, tiny_model
from torch import nn

from vits_surgery.convert import native
from vits_surgery.models.commons import weight_norm
from vits_surgery.surgery.lora import (
    LoRASpec,
    add_adapter,
    inject_lora,
    lora_layers,
    lora_parameters,
    lora_state,
    lora_state_dict,
    merge_lora,
    remove_lora,
    set_lora_strength,
    unmerge_lora,
)
from vits_surgery.surgery.plan import SurgeryPlan
from vits_surgery.surgery.registry import ComponentRegistry
from vits_surgery.surgery.trainer import SurgicalTrainer, TrainConfig

TOKENS = torch.tensor([[3, 17, 9, 22, 5, 30, 11, 8, 14, 2]])


def _infer(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.infer(TOKENS, generator=torch.Generator().manual_seed(3)).audio


def _randomize_adapters(model: nn.Module, seed: int = 0, std: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lora_parameters(model):
            if name.endswith("lora_b"):
                p.copy_(torch.randn(p.shape, generator=gen) * std)


# ----------------------------------------------------------------------------- single layers
def _layers() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    x_c = torch.randn(2, 6, 11)  # [B, C, T]
    return {
        "linear": (nn.Linear(6, 5), torch.randn(2, 7, 6)),
        "conv1d": (nn.Conv1d(6, 5, 3, padding=2, dilation=2), x_c),
        "wn_conv1d": (weight_norm(nn.Conv1d(6, 5, 5, stride=2, padding=2)), x_c),
        "wn_conv_transpose1d": (weight_norm(nn.ConvTranspose1d(6, 4, 8, stride=4, padding=2)), x_c),
        "embedding": (nn.Embedding(9, 5), torch.tensor([[0, 3, 8, 3], [1, 2, 2, 7]])),
    }


def _reference_delta(layer: nn.Module) -> torch.Tensor:
    """The weight update written with reshapes/matmuls only (independent of lora.py's einsums)."""
    a, b = layer.lora_a.detach(), layer.lora_b.detach()
    if isinstance(layer, nn.ConvTranspose1d):  # a [in, r, k], b [out, r] -> [in, out, k]
        return (a.permute(0, 2, 1) @ b.t()).permute(0, 2, 1)
    if isinstance(layer, nn.Conv1d):  # a [r, in, k] -> [out, in, k]
        return (b @ a.reshape(a.shape[0], -1)).reshape(b.shape[0], *a.shape[1:])
    if isinstance(layer, nn.Embedding):  # a [r, num], b [dim, r] -> [num, dim]
        return a.t() @ b.t()
    return b @ a


def _functional(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.ConvTranspose1d):
        return nn.functional.conv_transpose1d(x, weight, layer.bias, layer.stride, layer.padding)
    if isinstance(layer, nn.Conv1d):
        return nn.functional.conv1d(x, weight, layer.bias, layer.stride, layer.padding, layer.dilation)
    if isinstance(layer, nn.Embedding):
        return nn.functional.embedding(x, weight)
    return nn.functional.linear(x, weight, layer.bias)


@pytest.mark.parametrize("kind", sorted(_layers()))
def test_layer_adapter_adds_the_low_rank_delta_to_the_effective_weight(kind):
    layer, x = _layers()[kind]
    keys = set(layer.state_dict())
    base_out = layer(x).detach()
    effective = layer.weight.detach().clone()
    add_adapter(layer, LoRASpec(rank=3, alpha=6.0), kind, generator=torch.Generator().manual_seed(1))
    assert set(layer.state_dict()) == keys | {"lora_a", "lora_b"}
    assert torch.equal(layer(x), base_out), "zero-initialised B must leave the output bit-identical"
    _randomize_adapters(layer)
    expected = _functional(layer, x, effective + 2.0 * _reference_delta(layer))
    out = layer(x).detach()
    assert not torch.allclose(out, base_out)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(_layers()))
def test_merge_matches_the_adapter_and_unmerge_restores_the_base_bit_exactly(kind):
    layer, x = _layers()[kind]
    add_adapter(layer, LoRASpec(rank=2, alpha=2.0), kind)
    _randomize_adapters(layer)
    base = {k: v.clone() for k, v in layer.state_dict().items()}
    unmerged = layer(x).detach()
    assert merge_lora(layer) == 1
    assert set(layer.state_dict()) == set(base)
    changed = [k for k in base if not torch.equal(layer.state_dict()[k], base[k])]
    assert changed and not any(k.startswith("lora_") or k == "bias" for k in changed)
    if kind.startswith("wn_"):  # g and v recomputed so that g * v / |v| is the merged weight
        assert sorted(changed) == ["parametrizations.weight.original0", "parametrizations.weight.original1"]
    torch.testing.assert_close(layer(x).detach(), unmerged, rtol=0, atol=1e-6)
    assert merge_lora(layer) == 0
    assert unmerge_lora(layer) == 1
    after = layer.state_dict()
    assert all(torch.equal(after[k], base[k]) for k in base)
    assert torch.equal(layer(x).detach(), unmerged)


def test_grouped_conv_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"duration_predictor\.convs\.convs_sep\.0.*groups=32"):
        inject_lora(model, {"duration_predictor.convs.convs_sep.0": 2})
    with pytest.raises(ValueError, match="groups=32"):
        inject_lora(model, {"duration_predictor": LoRASpec(rank=2, targets=("convs.convs_sep.*",))})
    with pytest.raises(ValueError, match="groups=8"):
        add_adapter(nn.Conv1d(8, 8, 3, groups=8), LoRASpec(rank=2))
    assert not lora_layers(model)
    names = inject_lora(model, {"duration_predictor": 2})  # a whole organ: depthwise convs are skipped
    assert names and not any("convs_sep" in n for n in names)
    assert "duration_predictor.convs.convs_1x1.0" in names


def test_targets_select_subtrees_and_unknown_targets_are_explained():
    model = tiny_model()
    names = inject_lora(model, {"text_encoder": LoRASpec(rank=2, targets=("encoder.attn_layers.*",))})
    expected = {f"text_encoder.encoder.attn_layers.{i}.conv_{c}" for i in range(2) for c in "qkvo"}
    assert set(names) == expected
    with pytest.raises(ValueError, match="did you mean"):
        inject_lora(model, {"decoder": LoRASpec(rank=2, targets=("upz.*",))})
    with pytest.raises(ValueError, match="rank 2.*rank 4"):
        inject_lora(model, {"text_encoder.encoder.attn_layers.0": 4})


def test_zero_initialised_adapters_leave_the_voice_bit_identical_and_keep_base_keys(tmp_path):
    model = tiny_model()
    model.eval()
    reference = _infer(model)
    native.save(model, tmp_path)
    base_keys = set(model.state_dict())
    names = inject_lora(model, {"generator": LoRASpec(rank=2)}, generator=torch.Generator().manual_seed(0))
    kinds = {type(model.get_submodule(n)).__name__ for n in names}
    assert {"Embedding", "Conv1d", "ParametrizedConv1d", "ParametrizedConvTranspose1d"} <= kinds
    assert "decoder.ups.0" in names and "text_encoder.encoder.attn_layers.0.conv_q" in names
    assert torch.equal(_infer(model), reference)
    keys = set(model.state_dict())
    lora_keys = set(lora_state_dict(model))
    assert keys == base_keys | lora_keys and not base_keys & lora_keys
    assert {"decoder.ups.0.parametrizations.weight.original0", "decoder.ups.0.lora_a", "decoder.ups.0.lora_b",
            "text_encoder.encoder.attn_layers.0.conv_q.weight", "text_encoder.encoder.attn_layers.0.conv_q.lora_a"} <= keys
    tensors, _, _ = native.read_native(tmp_path)  # a base checkpoint loads strictly, apart from the adapters
    result = model.load_state_dict(tensors, strict=False)
    assert set(result.missing_keys) == lora_keys and not result.unexpected_keys


def test_model_merge_unmerge_and_remove():
    model = tiny_model()
    model.eval()
    inject_lora(model, {"decoder": 2, "flow": 2, "text_encoder": 2})
    _randomize_adapters(model)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    adapted = _infer(model)
    assert merge_lora(model) == len(lora_layers(model))
    torch.testing.assert_close(_infer(model), adapted, rtol=0, atol=1e-6)
    copied = copy.deepcopy(model)  # a copy keeps its adapters and merge state
    unmerge_lora(model)
    assert all(torch.equal(model.state_dict()[k], base[k]) for k in base)
    assert torch.equal(_infer(model), adapted)
    assert unmerge_lora(copied) > 0 and torch.equal(_infer(copied), adapted)
    set_lora_strength(copied, 0.0)
    plain = tiny_model().eval()
    assert torch.equal(_infer(copied), _infer(plain))
    set_lora_strength(copied, 1.0)
    assert remove_lora(model, merge=True) > 0
    assert set(model.state_dict()) == set(plain.state_dict())
    torch.testing.assert_close(_infer(model), adapted, rtol=0, atol=1e-6)


def test_plan_lora_round_trips_and_refuses_train_and_lora_on_one_entry():
    plan = SurgeryPlan(lora={"dp": {"rank": 4, "alpha": 8, "targets": ["flows.*"]}}, name="cadence-lora")
    again = SurgeryPlan.from_json(plan.to_json())
    assert again.lora == {"dp": LoRASpec(rank=4, alpha=8.0, targets=("flows.*",))}
    clash = SurgeryPlan(train=["decoder"], lora={"dec": 2})
    with pytest.raises(ValueError, match="both in train and lora"):
        clash.resolve(ComponentRegistry(tiny_model()))


def test_cadence_lora_plan_trains_only_adapters(tmp_path):
    model = tiny_model()
    plan = SurgeryPlan(lora={"duration_predictor": LoRASpec(rank=2)}, lr_scale={"duration_predictor": 2.0})
    trainer = SurgicalTrainer(model, plan, out_dir=tmp_path, config=TrainConfig(progress=False, seed=0, lr=1e-2))
    adapters = dict(lora_parameters(model))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(adapters) and all(n.startswith("duration_predictor.") for n in trainable)
    (group,) = trainer.optimizers["generator"].param_groups
    assert {id(p) for p in group["params"]} == {id(p) for p in adapters.values()}
    assert group["lr"] == pytest.approx(2e-2)
    assert trainer.step_plan.terms == ("gen/dur",) and not trainer.step_plan.decode
    base = {k: v.clone() for k, v in model.state_dict().items() if k not in adapters}
    before = {k: v.clone() for k, v in adapters.items()}
    batch = speech_batch(model.config, 1, seed=1, max_seconds=0.3)
    out = trainer.forward_generator(batch)
    trainer.generator_losses(batch, out)["gen/dur"].backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and with_grad <= set(adapters)
    model.zero_grad(set_to_none=True)
    trainer.training_step(batch)
    assert trainer.step == 1
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in base.items())
    assert any(not torch.equal(adapters[k], before[k]) for k in adapters if k.endswith("lora_b"))


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_a_non_finite_adapter_is_never_merged(poison):
    """models.lora checks the update before it folds it: nothing changes, the error names the layer."""
    from vits_surgery.models.lora import NonFiniteAdapterError, merge_adapters

    model = tiny_model()
    inject_lora(model, {"decoder": 2})
    _randomize_adapters(model)
    name = next(iter(lora_layers(model)))
    with torch.no_grad():
        lora_layers(model)[name].lora_b[0, 0] = poison
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for merge in (merge_lora, lambda m: remove_lora(m, merge=True), merge_adapters):
        with pytest.raises(NonFiniteAdapterError, match=name.replace(".", r"\.")):
            merge(model)
        after = model.state_dict()
        assert after.keys() == before.keys()
        assert all(torch.equal(after[k], before[k]) or not torch.isfinite(before[k]).all() for k in before)
        assert not any(lora_state(m).merged for m in lora_layers(model).values())
    assert remove_lora(model, merge=False) == len([k for k in before if k.endswith(".lora_a")])
    assert not lora_layers(model)  # dropping the adapter without merging is always possible


def test_merge_adapters_serves_the_inference_copies():
    from vits_surgery.models.lora import merge_adapters

    model = tiny_model().eval()
    assert merge_adapters(model) == 0
    inject_lora(model, {"decoder": 2})
    _randomize_adapters(model)
    ref = _infer(model)
    n = len(lora_layers(model))
    assert merge_adapters(model) == n and not lora_layers(model)
    torch.testing.assert_close(_infer(model), ref, rtol=0, atol=1e-6)

"""Organ swap and blend: new models, exact tensors, and one error that lists every misfit."""

from __future__ import annotations

import pytest
import torch
from surgery_helpers import tiny_model

from vits_surgery.surgery.lora import inject_lora
from vits_surgery.surgery.registry import UnknownComponentError
from vits_surgery.surgery.swap import IncompatibleVoicesError, blend, compatibility_problems, swap


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _under(key: str, prefix: str) -> bool:
    return key.startswith(prefix + ".")


@pytest.fixture(scope="module")
def pair():
    return tiny_model(seed=0).eval(), tiny_model(seed=1).eval()


def test_swap_takes_the_donor_organ_and_leaves_the_inputs_alone(pair):
    recipient, donor = pair
    before_r, before_d = _snapshot(recipient), _snapshot(donor)
    swapped = swap(recipient, donor, ["dp", "decoder"])
    assert swapped is not recipient
    state = swapped.state_dict()
    for key, value in state.items():
        from_donor = _under(key, "duration_predictor") or _under(key, "decoder")
        assert torch.equal(value, (before_d if from_donor else before_r)[key]), key
    assert all(torch.equal(v, before_r[k]) for k, v in recipient.state_dict().items())
    assert all(torch.equal(v, before_d[k]) for k, v in donor.state_dict().items())
    z = torch.randn(1, recipient.config.inter_channels, 7, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(swapped.decoder(z), donor.decoder(z))
        assert not torch.equal(swapped.decoder(z), recipient.decoder(z))


def test_swap_a_sub_organ_by_alias(pair):
    recipient, donor = pair
    swapped = swap(recipient, donor, "dec.ups.1")
    changed = {k for k, v in swapped.state_dict().items() if not torch.equal(v, recipient.state_dict()[k])}
    assert changed == {k for k in recipient.state_dict() if _under(k, "decoder.ups.1")}
    with pytest.raises(UnknownComponentError, match="did you mean"):
        swap(recipient, donor, "decodr")


def test_blend_interpolates_one_organ(pair):
    a, b = pair
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(v, sa[k]) for k, v in blend(a, b, "flow", 0.0).state_dict().items())
    full = blend(a, b, "flow", 1.0).state_dict()
    assert all(torch.equal(v, sb[k] if _under(k, "flow") else sa[k]) for k, v in full.items())
    half = blend(a, b, "flow", 0.5).state_dict()
    for key, value in half.items():
        expected = (sa[key] + sb[key]) / 2 if _under(key, "flow") else sa[key]
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        blend(a, b, "flow", -0.1)


def test_misfits_are_listed_in_one_error(pair):
    recipient = pair[0]
    symbols = recipient.config.text.symbols
    donor = tiny_model(
        seed=2,
        **{
            "audio.sample_rate": 22050,
            "decoder.upsample_initial_channel": 32,
            "decoder.final_leaky_slope": 0.1,
            "text.symbols": symbols[:5] + (symbols[6], symbols[5]) + symbols[7:],
        },
    )
    with pytest.raises(IncompatibleVoicesError) as info:
        swap(recipient, donor, ["decoder", "text_encoder"])
    problems = info.value.problems
    text = str(info.value)
    assert "sample rate differs: 16000 Hz (recipient) vs 22050 Hz (donor)" in problems
    assert any(p.startswith("shape differs") and "decoder.conv_pre.weight" in p for p in problems)
    assert any("final_leaky_slope" in p for p in problems)
    assert any(p.startswith("symbol table differs") and "id 5" in p for p in problems)
    assert all(p in text for p in problems) and f"{len(problems)} problem(s)" in text
    assert not any("text_encoder" in p and "shape" in p for p in problems)  # same shapes, other symbols
    assert compatibility_problems(recipient, donor, "duration_predictor") == [
        "sample rate differs: 16000 Hz (recipient) vs 22050 Hz (donor)"
    ]


def test_speaker_setup_and_adapters_are_checked(pair):
    recipient, donor = pair
    multi = tiny_model(seed=3, n_speakers=2, gin_channels=8)
    problems = compatibility_problems(recipient, multi, "decoder")
    assert any(p.startswith("speaker setup differs") for p in problems)
    assert any("decoder.cond_layer.weight" in p for p in problems)
    assert compatibility_problems(recipient, multi, "text_encoder") == []
    adapted = tiny_model(seed=1)
    inject_lora(adapted, {"decoder.ups.0": 2})
    (problem,) = compatibility_problems(recipient, adapted, "decoder")
    assert "unmerged LoRA adapters on decoder.ups.0" in problem
    with pytest.raises(IncompatibleVoicesError, match="the second voice has unmerged LoRA"):
        blend(recipient, adapted, "decoder", 0.5)

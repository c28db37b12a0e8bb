"""The regrowth experiments that left the library (benchmarks/regrow_terms.py) still plug in
through ``RegrowOptions.extra_terms`` and do what they did."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from vits_surgery.regrowth import RegrowOptions, regrow
from vits_surgery.regrowth import fit as regrow_fit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import regrow_terms  # noqa: E402
from test_regrow import TEXTS, _count_calls, _voice  # noqa: E402


def _brief(model=None, **changes):
    """Three posterior-encoder steps on a tiny voice, no cache."""
    opts = RegrowOptions(n_utterances=6, n_heldout=2, steps=3, batch_size=2, crop_frames=16, progress=False, **changes)
    return regrow(_voice() if model is None else model, ["posterior_encoder"], opts, texts=TEXTS, use_cache=False)


@pytest.mark.parametrize("kl_weight, expected_calls", [(0.0, 0), (0.5, 3)])
def test_kl_term_reaches_the_posterior_fit(monkeypatch, kl_weight, expected_calls) -> None:
    calls = _count_calls(monkeypatch, regrow_terms, "kl_loss")
    terms = [regrow_terms.KLTerm(kl_weight)] if kl_weight else []
    report = _brief(extra_terms=terms)
    assert len(calls) == expected_calls and report.steps["posterior_encoder"] == 3
    assert report.settings["extra_terms"] == [repr(t) for t in terms]


@pytest.mark.parametrize("fold_first", [False, True])
def test_frozen_flow_copy_matches_the_flow_and_leaves_it_alone(fold_first) -> None:
    from vits_surgery.models.commons import has_weight_norm, remove_weight_norms

    model = _voice()
    if fold_first:  # a voice whose flow already has plain weights (e.g. an ONNX import)
        remove_weight_norms(model.flow)
    wn_before = [has_weight_norm(m) for m in model.flow.modules()]
    assert any(wn_before) != fold_first
    before = {k: v.clone() for k, v in model.flow.state_dict().items()}
    torch.manual_seed(1)
    c = model.config.inter_channels
    z = torch.randn(2, c, 11)
    mask = torch.ones(2, 1, 11)
    mask[1, :, 7:] = 0
    z = z * mask
    with torch.no_grad():
        ref = model.flow(z, mask).z
    fp32 = regrow_terms.frozen_flow(model, torch.float32)
    assert torch.allclose(fp32(z, mask), ref, atol=1e-5)
    bf16 = regrow_terms.frozen_flow(model, torch.bfloat16)
    z_in = z.clone().requires_grad_(True)
    out = bf16(z_in, mask)
    assert out.dtype == torch.float32 and not torch.equal(out, ref)
    assert torch.allclose(out, ref, atol=0.1 * float(ref.abs().max()))
    out.pow(2).sum().backward()  # gradients reach the input, and nothing else
    assert z_in.grad is not None and torch.isfinite(z_in.grad).all() and z_in.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.flow.parameters())
    # the model's own flow: same tensors, same weight-norm layers, still runs
    after = model.flow.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [has_weight_norm(m) for m in model.flow.modules()] == wn_before
    with torch.no_grad():
        assert torch.equal(model.flow(z, mask).z, ref)


@pytest.mark.parametrize("flow_dtype", [torch.float32, torch.bfloat16])
def test_flow_dtype_picks_the_frozen_copy(monkeypatch, flow_dtype) -> None:
    """A term with ``flow_dtype=bfloat16`` runs the posterior through one frozen bfloat16 copy of
    the flow; float32 runs the model's own flow, with gradients, once per training step."""
    made: list[torch.dtype] = []
    real = regrow_terms.frozen_flow

    def spy(model, dtype=torch.float32):
        made.append(dtype)
        return real(model, dtype)

    monkeypatch.setattr(regrow_terms, "frozen_flow", spy)
    flow_calls: list[bool] = []  # grad enabled at each call of the model's own flow
    model = _voice()
    model.flow.register_forward_hook(lambda *_: flow_calls.append(torch.is_grad_enabled()))
    report = _brief(model, extra_terms=[regrow_terms.KLTerm(0.5, flow_dtype)])
    bf16 = flow_dtype == torch.bfloat16
    assert made == ([torch.bfloat16] if bf16 else [])
    assert all(math.isfinite(v) for v in report.curves["posterior_encoder"])
    assert flow_calls.count(True) == (0 if bf16 else 3)  # the three training steps
    assert flow_calls.count(False) >= 1  # the held-out evaluation uses the model's own flow either way


def test_whitened_prior_loss_is_the_error_in_prior_standard_deviations() -> None:
    torch.manual_seed(0)
    z_p, z_t, logs_e = torch.randn(2, 3, 5), torch.randn(2, 3, 5), 0.3 * torch.randn(2, 3, 5)
    mask = torch.tensor([[[1, 1, 1, 1, 1]], [[1, 1, 1, 0, 0]]], dtype=torch.float32)
    got = regrow_terms.whitened_prior_loss(z_p, z_t, logs_e, mask)
    terms = [0.5 * float(((z_p[b, c, t] - z_t[b, c, t]) / logs_e[b, c, t].exp()) ** 2)
             for b in range(2) for c in range(3) for t in range(5) if mask[b, 0, t]]
    assert float(got) == pytest.approx(sum(terms) / len(terms), rel=1e-5)


@pytest.mark.parametrize("prior_weight, expected_calls", [(0.0, 0), (0.5, 3)])
def test_prior_term_reaches_the_posterior_fit(monkeypatch, prior_weight, expected_calls) -> None:
    calls = _count_calls(monkeypatch, regrow_terms, "whitened_prior_loss")
    terms = [regrow_terms.WhitenedPriorTerm(prior_weight)] if prior_weight else []
    report = _brief(extra_terms=terms)
    assert len(calls) == expected_calls and report.settings["extra_terms"] == [repr(t) for t in terms]


@pytest.mark.parametrize("final_phase_only, phase, active", [(False, "main", True), (True, "main", False),
                                                              (True, "alignment", True)])
def test_alignment_temperature_turns_the_library_term_into_the_tempered_one(final_phase_only, phase, active) -> None:
    torch.manual_seed(0)
    c, t_x, s = 3, 4, 5
    batch = SimpleNamespace(m_p=torch.randn(2, c, t_x), logs_p=0.1 * torch.randn(2, c, t_x),
                            token=torch.tensor([[0, 0, 1, 2, 3], [0, 1, 1, 2, 2]]),
                            token_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]))
    mask = torch.tensor([[[1, 1, 1, 1, 1]], [[1, 1, 1, 1, 0]]], dtype=torch.float32)
    step = SimpleNamespace(z_p=torch.randn(2, c, s), batch=batch, post=SimpleNamespace(mask=mask), phase=phase)
    term = regrow_terms.AlignmentTemperature(0.5, 3.0, final_phase_only)
    library = 0.5 * regrow_fit.alignment_loss(step.z_p, batch, mask)
    tempered = 0.5 * regrow_fit.alignment_loss(step.z_p, batch, mask, 3.0)
    assert float(library + term(step)) == pytest.approx(float(tempered if active else library), rel=1e-6)


def test_compiled_forward_swaps_in_a_compiled_forward_and_restores_it() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(4, 4, 3, padding=1)
    x = torch.randn(2, 4, 9)
    ref = conv(x)
    with regrow_terms.compiled_forward(conv):
        assert "forward" in vars(conv)  # the instance carries the compiled forward
        y = conv(x)
    assert "forward" not in vars(conv)
    assert torch.allclose(y, ref, atol=1e-5)
    assert list(conv.state_dict()) == ["weight", "bias"]


def test_compiled_wavenet_stack_around_regrow() -> None:
    model = _voice()
    keys = list(model.posterior_encoder.state_dict())
    with regrow_terms.compiled_forward(model.posterior_encoder.enc):
        report = _brief(model, precision="fp32")
    assert report.steps["posterior_encoder"] == 3
    assert all(math.isfinite(v) for v in report.curves["posterior_encoder"])
    assert list(model.posterior_encoder.state_dict()) == keys and "forward" not in vars(model.posterior_encoder.enc)

"""Duration predictors: SDP flows, nll and inference; deterministic predictor (tiny preset)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from vits_surgery.config import preset
from vits_surgery.models.commons import length_mask, remove_weight_norms
from vits_surgery.models.dds import DDSConv
from vits_surgery.models.duration import (
    ConvFlow,
    DurationPredictor,
    ElementwiseAffine,
    StochasticDurationPredictor,
    _log_flow,
    _reverse_flows,
    _run_flows,
)

CFG = preset("tiny")
DP = CFG.duration_predictor
H = CFG.text_encoder.hidden_channels
GIN = 8
LENGTHS = torch.tensor([9, 6, 2])
T = int(LENGTHS.max())


def _perturb(module: torch.nn.Module, scale: float = 0.1, seed: int = 5) -> None:
    """Give every parameter (incl. zero-initialised ConvFlow projections and affines) a random offset."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            s = 0.5 if name.endswith(("proj.weight", "proj.bias")) else scale
            p.add_(torch.randn(p.shape, generator=gen) * s)


def _sdp(gin: int = GIN, dtype: torch.dtype = torch.float32, **changes: object) -> StochasticDurationPredictor:
    torch.manual_seed(0)
    sdp = StochasticDurationPredictor(dataclasses.replace(DP, **changes), H, gin).eval()
    _perturb(sdp)
    return sdp.to(dtype)


def _inputs(lengths: torch.Tensor = LENGTHS, seed: int = 2, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random SDP inputs. Flow inverses go through sharp splines (slopes far below 1 with the
    random weights), which amplify float32 rounding; exact-inverse checks run in float64."""
    gen = torch.Generator().manual_seed(seed)
    b, t = len(lengths), int(lengths.max())
    mask = length_mask(lengths, t, dtype=dtype)
    return {
        "x": torch.randn(b, H, t, generator=gen, dtype=dtype) * mask,
        "x_mask": mask,
        "durations": torch.randint(1, 9, (b, 1, t), generator=gen).to(dtype) * mask,
        "g": torch.randn(b, GIN, 1, generator=gen, dtype=dtype),
        "noise": torch.randn(b, 2, t, generator=gen, dtype=dtype),
    }


def _garbage(inp: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    pad = 1 - inp["x_mask"]
    out = dict(inp)
    out["x"] = inp["x"] + 3.0 * pad
    out["durations"] = inp["durations"] + 7.0 * pad
    out["noise"] = inp["noise"] + 2.0 * pad
    return out


def _flows_jacobian_logdet(fn, z: torch.Tensor) -> float:
    jac = torch.autograd.functional.jacobian(fn, z).reshape(z.numel(), z.numel())
    return torch.linalg.slogdet(jac.double())[1].item()


# ----------------------------------------------------------------------------- flow layers
def test_elementwise_affine_and_log_flow_invert_with_exact_logdet() -> None:
    mask = torch.ones(1, 1, 3)
    affine = ElementwiseAffine(2)
    with torch.no_grad():
        affine.translation.normal_()
        affine.log_scale.normal_()
    z = torch.randn(1, 2, 3)
    step = affine(z, mask)
    torch.testing.assert_close(affine(step.z, mask, reverse=True).z, z)
    assert step.logdet.item() == pytest.approx(_flows_jacobian_logdet(lambda v: affine(v, mask).z, z), abs=1e-5)
    d = torch.rand(1, 1, 3) * 5 + 0.5
    step = _log_flow(d, mask)
    torch.testing.assert_close(_log_flow(step.z, mask, reverse=True).z, d)
    assert step.logdet.item() == pytest.approx(_flows_jacobian_logdet(lambda v: _log_flow(v, mask).z, d), abs=1e-5)


def test_conv_flow_inverts_and_logdet_matches_jacobian() -> None:
    torch.manual_seed(0)
    flow = ConvFlow(2, 16, 3, 2, num_bins=6, tail_bound=3.0).eval()
    _perturb(flow)
    flow.double()
    mask, g = torch.ones(1, 1, 5, dtype=torch.float64), torch.randn(1, 16, 5, dtype=torch.float64)
    z = torch.randn(1, 2, 5, dtype=torch.float64) * 2  # some values fall in the linear tails
    step = flow(z, mask, g=g)
    assert not torch.allclose(step.z, z)
    torch.testing.assert_close(flow(step.z, mask, g=g, reverse=True).z, z, atol=1e-8, rtol=0)
    expected = _flows_jacobian_logdet(lambda v: flow(v, mask, g=g).z, z)
    assert step.logdet.item() == pytest.approx(expected, abs=1e-8)


def test_conv_flow_projection_is_zero_initialised_identity() -> None:
    flow = ConvFlow(2, 8, 3, 2)
    assert torch.count_nonzero(flow.proj.weight) == 0 and torch.count_nonzero(flow.proj.bias) == 0


@pytest.mark.parametrize("which", ["flows", "post_flows"])
def test_flow_stacks_invert_and_logdet_matches_jacobian(which: str) -> None:
    flows = getattr(_sdp(dtype=torch.float64), which)
    mask, g = torch.ones(1, 1, 4, dtype=torch.float64), torch.randn(1, DP.filter_channels, 4, dtype=torch.float64)
    z = torch.randn(1, 2, 4, dtype=torch.float64)
    out = _run_flows(flows, z, mask, g)
    torch.testing.assert_close(_reverse_flows(flows, out.z, mask, g), z, atol=1e-8, rtol=0)
    expected = _flows_jacobian_logdet(lambda v: _run_flows(flows, v, mask, g).z, z)
    assert out.logdet.item() == pytest.approx(expected, abs=1e-8)


def test_dds_conv_dilations_and_masking() -> None:
    dds = DDSConv(4, 3, 3)
    assert [c.dilation[0] for c in dds.convs_sep] == [1, 3, 9]
    assert all(c.groups == 4 for c in dds.convs_sep)
    mask = length_mask(torch.tensor([10, 4]), 10)
    x = torch.randn(2, 4, 10)
    y = dds(x, mask)
    assert torch.all(y * (1 - mask) == 0)
    torch.testing.assert_close(dds(x + 5 * (1 - mask), mask), y)


# ----------------------------------------------------------------------------- SDP
def test_sdp_state_dict_layout_is_coquis() -> None:
    keys = StochasticDurationPredictor(DP, H, GIN).state_dict()
    n = DP.n_flows
    for prefix in ("flows", "post_flows"):
        assert keys[f"{prefix}.0.translation"].shape == (2, 1) and keys[f"{prefix}.0.log_scale"].shape == (2, 1)
        assert keys[f"{prefix}.{n}.proj.weight"].shape == (3 * DP.num_bins - 1, DP.filter_channels, 1)
        assert f"{prefix}.{n + 1}.pre.weight" not in keys
    for name in ("pre", "proj", "post_pre", "post_proj", "cond"):
        assert f"{name}.weight" in keys
    assert keys["convs.convs_sep.2.weight"].shape == (DP.filter_channels, 1, DP.kernel_size)
    assert keys["convs.norms_2.2.gamma"].shape == (DP.filter_channels,)
    assert "cond.weight" not in StochasticDurationPredictor(DP, H, 0).state_dict()


def test_sdp_nll_shape_finite_and_garbage_past_lengths() -> None:
    sdp, inp = _sdp(), _inputs()
    nll = sdp.nll(**inp)
    assert nll.shape == (3,) and torch.isfinite(nll).all()
    torch.testing.assert_close(sdp.nll(**_garbage(inp)), nll)


def test_sdp_nll_batch_equals_per_item() -> None:
    sdp, inp = _sdp(), _inputs()
    batch = sdp.nll(**inp)
    for i, n in enumerate(LENGTHS.tolist()):
        item = {k: v[i : i + 1, :, :n] if k != "g" else v[i : i + 1] for k, v in inp.items()}
        torch.testing.assert_close(sdp.nll(**item), batch[i : i + 1], atol=1e-4, rtol=1e-5)


def test_sdp_nll_noise_from_generator_is_reproducible() -> None:
    sdp, inp = _sdp(), _inputs()
    del inp["noise"]
    a = sdp.nll(**inp, generator=torch.Generator().manual_seed(3))
    b = sdp.nll(**inp, generator=torch.Generator().manual_seed(3))
    c = sdp.nll(**inp, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(a, c)
    noise = torch.randn(3, 2, T, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(sdp.nll(**inp, noise=noise), a)


def test_sdp_gradients_reach_every_parameter() -> None:
    sdp, inp = _sdp(), _inputs()
    sdp.train()
    x = inp["x"].requires_grad_(True)
    sdp.nll(**inp).sum().backward()
    for name, p in sdp.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0  # not detached inside


def test_sdp_infer_shapes_masking_and_noise_handling() -> None:
    sdp, inp = _sdp(), _inputs()
    x, mask, g, noise = inp["x"], inp["x_mask"], inp["g"], inp["noise"]
    logw = sdp.infer(x, mask, g=g, noise=noise)
    assert logw.shape == (3, 1, T) and torch.all(logw * (1 - mask) == 0)
    garbage = _garbage(inp)
    torch.testing.assert_close(sdp.infer(garbage["x"], mask, g=g, noise=garbage["noise"]), logw)
    # noise_scale multiplies the noise; at 0 the noise does not matter
    torch.testing.assert_close(sdp.infer(x, mask, g=g, noise=noise, noise_scale=0.5), sdp.infer(x, mask, g=g, noise=noise / 0.8 * 0.5))
    torch.testing.assert_close(sdp.infer(x, mask, g=g, noise_scale=0.0, noise=noise), sdp.infer(x, mask, g=g, noise_scale=0.0))
    # generator-drawn noise is reproducible and equals passing the same draw
    a = sdp.infer(x, mask, g=g, generator=torch.Generator().manual_seed(7))
    b = sdp.infer(x, mask, g=g, noise=torch.randn(3, 2, T, generator=torch.Generator().manual_seed(7)))
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_sdp_infer_batch_equals_per_item() -> None:
    sdp, inp = _sdp(dtype=torch.float64), _inputs(dtype=torch.float64)
    batch = sdp.infer(inp["x"], inp["x_mask"], g=inp["g"], noise=inp["noise"])
    for i, n in enumerate(LENGTHS.tolist()):
        item = sdp.infer(inp["x"][i : i + 1, :, :n], inp["x_mask"][i : i + 1, :, :n], g=inp["g"][i : i + 1],
                         noise=inp["noise"][i : i + 1, :, :n])
        torch.testing.assert_close(item, batch[i : i + 1, :, :n], atol=1e-10, rtol=0)


def test_sdp_infer_is_the_inverse_of_the_main_flow() -> None:
    """Encoding logw (with its augmentation channel) through the flows recovers the noise."""
    sdp, inp = _sdp(dtype=torch.float64), _inputs(dtype=torch.float64)
    x, mask, g, noise = inp["x"], inp["x_mask"], inp["g"], inp["noise"] * inp["x_mask"]
    h = sdp._condition(x, mask, g, None)
    z_full = _reverse_flows(sdp.flows, noise, mask, h)
    torch.testing.assert_close(z_full[:, :1], sdp.infer(x, mask, g=g, noise=noise, noise_scale=1.0), atol=1e-10, rtol=0)
    torch.testing.assert_close(_run_flows(sdp.flows, z_full, mask, h).z, noise, atol=1e-8, rtol=0)


def test_dropping_the_first_conv_flow_does_not_change_logw() -> None:
    dropped, kept = _sdp(), _sdp(drop_last_flow_at_inference=False)
    kept.load_state_dict(dropped.state_dict())
    inp = _inputs()
    a = dropped.infer(inp["x"], inp["x_mask"], g=inp["g"], noise=inp["noise"])
    b = kept.infer(inp["x"], inp["x_mask"], g=inp["g"], noise=inp["noise"])
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_sdp_speaker_and_language_conditioning() -> None:
    sdp, inp = _sdp(), _inputs()
    other = dict(inp, g=inp["g"] + 1.0)
    assert not torch.allclose(sdp.nll(**inp), sdp.nll(**other))
    with pytest.raises(ValueError, match="gin_channels=0"):
        _sdp(gin=0).nll(**inp)
    torch.manual_seed(0)
    multi = StochasticDurationPredictor(DP, H, GIN, lang_channels=4).eval()
    _perturb(multi)
    lang = torch.randn(3, 4, 1)
    assert not torch.allclose(multi.nll(**inp, lang_emb=lang), multi.nll(**inp, lang_emb=lang + 1.0))
    with pytest.raises(ValueError, match="lang_channels=0"):
        sdp.infer(inp["x"], inp["x_mask"], g=inp["g"], lang_emb=lang)


def test_sdp_rejects_bad_shapes() -> None:
    sdp, inp = _sdp(), _inputs()
    with pytest.raises(ValueError, match="durations"):
        sdp.nll(**dict(inp, durations=inp["durations"][:, 0]))
    with pytest.raises(ValueError, match="noise"):
        sdp.infer(inp["x"], inp["x_mask"], g=inp["g"], noise=torch.randn(3, 1, T))


# ----------------------------------------------------------------------------- deterministic DP
def _dp(style: str = "vits", gin: int = GIN) -> DurationPredictor:
    torch.manual_seed(0)
    cfg = dataclasses.replace(DP, stochastic=False, deterministic_style=style, deterministic_filter_channels=24)
    dp = DurationPredictor(cfg, H, gin).eval()
    _perturb(dp)
    return dp


@pytest.mark.parametrize(("style", "norm_shape"), [("vits", (24,)), ("glow_tts", (1, 24, 1))])
def test_deterministic_layout(style: str, norm_shape: tuple[int, ...]) -> None:
    shapes = {k: tuple(v.shape) for k, v in _dp(style).state_dict().items()}
    assert shapes == {
        "conv_1.weight": (24, H, DP.kernel_size), "conv_1.bias": (24,),
        "norm_1.gamma": norm_shape, "norm_1.beta": norm_shape,
        "conv_2.weight": (24, 24, DP.kernel_size), "conv_2.bias": (24,),
        "norm_2.gamma": norm_shape, "norm_2.beta": norm_shape,
        "proj.weight": (1, 24, 1), "proj.bias": (1,),
        "cond.weight": (H, GIN, 1), "cond.bias": (H,),
    }


@pytest.mark.parametrize("style", ["vits", "glow_tts"])
def test_deterministic_forward_masking_batch_and_infer(style: str) -> None:
    dp, inp = _dp(style), _inputs()
    x, mask, g = inp["x"], inp["x_mask"], inp["g"]
    logw = dp(x, mask, g)
    assert logw.shape == (3, 1, T) and torch.all(logw * (1 - mask) == 0)
    torch.testing.assert_close(dp(_garbage(inp)["x"], mask, g), logw)
    for i, n in enumerate(LENGTHS.tolist()):
        torch.testing.assert_close(dp(x[i : i + 1, :, :n], mask[i : i + 1, :, :n], g[i : i + 1]), logw[i : i + 1, :, :n],
                                   atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dp.infer(x, mask, g, noise_scale=0.3, generator=torch.Generator()), logw, atol=0, rtol=0)


def test_deterministic_loss_formula_and_gradients() -> None:
    dp, inp = _dp(), _inputs()
    dp.train()
    x, mask, g, d = inp["x"], inp["x_mask"], inp["g"], inp["durations"]
    torch.manual_seed(0)
    loss = dp.loss(x, mask, d, g)
    torch.manual_seed(0)
    logw = dp(x, mask, g)
    expected = [sum((logw[b, 0, t].item() - math.log(d[b, 0, t].item() + 1e-6)) ** 2 for t in range(n))
                for b, n in enumerate(LENGTHS.tolist())]
    torch.testing.assert_close(loss, torch.tensor(expected), atol=1e-4, rtol=1e-5)
    loss.sum().backward()
    for name, p in dp.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_duration_predictors_have_no_weight_norm() -> None:
    """Coqui applies no weight norm to the duration predictors; folding must be a no-op."""
    assert remove_weight_norms(_sdp()) == 0
    assert remove_weight_norms(_dp()) == 0

"""Posterior encoder, WaveNet and residual-coupling flow (tiny preset)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vits_surgery.config import FlowConfig, VITSConfig, preset
from vits_surgery.models.commons import length_mask, remove_weight_norms
from vits_surgery.models.flow import ResidualCouplingFlow, ResidualCouplingLayer
from vits_surgery.models.posterior import PosteriorEncoder
from vits_surgery.models.wavenet import WN

CFG = preset("tiny")
GIN = 8
LENGTHS = torch.tensor([20, 13, 7])


def _posterior(gin: int = GIN) -> PosteriorEncoder:
    torch.manual_seed(0)
    return PosteriorEncoder(CFG.posterior_encoder, CFG.spec_channels, CFG.inter_channels, gin).eval()


def _perturb_post(flow: ResidualCouplingFlow, scale: float = 0.1) -> None:
    """``post`` is zero-initialised (identity flow); give it weights so the flow does something."""
    with torch.no_grad():
        for layer in flow.flows:
            layer.post.weight.normal_(0.0, scale)
            layer.post.bias.normal_(0.0, scale)


def _flow(cfg: FlowConfig | None = None, channels: int | None = None, gin: int = GIN) -> ResidualCouplingFlow:
    torch.manual_seed(1)
    flow = ResidualCouplingFlow(cfg or CFG.flow, channels or CFG.inter_channels, gin).eval()
    _perturb_post(flow)
    return flow


def _inputs(channels: int, lengths: torch.Tensor = LENGTHS, seed: int = 2) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    t = int(lengths.max())
    mask = length_mask(lengths, t)
    x = torch.randn(len(lengths), channels, t, generator=gen) * mask
    g = torch.randn(len(lengths), GIN, 1, generator=gen)
    return x, mask, g


# ----------------------------------------------------------------------------- posterior encoder
def test_posterior_shapes_and_padded_positions_are_zero() -> None:
    enc = _posterior()
    spec, _, g = _inputs(CFG.spec_channels)
    out = enc(spec, LENGTHS, g=g, generator=torch.Generator().manual_seed(0))
    c, t = CFG.inter_channels, int(LENGTHS.max())
    for name in ("z", "m_q", "logs_q"):
        tensor = getattr(out, name)
        assert tensor.shape == (3, c, t), name
        assert torch.all(tensor * (1 - out.mask) == 0), name
    assert out.mask.shape == (3, 1, t)
    assert torch.equal(out.mask, length_mask(LENGTHS, t))


def test_posterior_ignores_garbage_past_lengths() -> None:
    enc = _posterior()
    spec, mask, g = _inputs(CFG.spec_channels)
    garbage = spec + 100.0 * torch.randn_like(spec) * (1 - mask)
    noise = torch.randn(3, CFG.inter_channels, spec.shape[-1])
    a = enc(spec, LENGTHS, g=g, noise=noise)
    b = enc(garbage, LENGTHS, g=g, noise=noise)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


def test_posterior_batch_equals_per_item() -> None:
    enc = _posterior()
    spec, _, g = _inputs(CFG.spec_channels)
    noise = torch.randn(3, CFG.inter_channels, spec.shape[-1])
    batch = enc(spec, LENGTHS, g=g, noise=noise)
    for i, n in enumerate(LENGTHS.tolist()):
        item = enc(spec[i : i + 1, :, :n], LENGTHS[i : i + 1], g=g[i : i + 1], noise=noise[i : i + 1, :, :n])
        torch.testing.assert_close(item.z, batch.z[i : i + 1, :, :n], rtol=0, atol=1e-5)
        torch.testing.assert_close(item.logs_q, batch.logs_q[i : i + 1, :, :n], rtol=0, atol=1e-5)


def test_posterior_sample_formula_and_generator_determinism() -> None:
    enc = _posterior()
    spec, _, g = _inputs(CFG.spec_channels)
    noise = torch.randn(3, CFG.inter_channels, spec.shape[-1])
    out = enc(spec, LENGTHS, g=g, noise=noise)
    torch.testing.assert_close(out.z, (out.m_q + noise * torch.exp(out.logs_q)) * out.mask)
    first = enc(spec, LENGTHS, g=g, generator=torch.Generator().manual_seed(7)).z
    again = enc(spec, LENGTHS, g=g, generator=torch.Generator().manual_seed(7)).z
    other = enc(spec, LENGTHS, g=g, generator=torch.Generator().manual_seed(8)).z
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    with pytest.raises(ValueError, match="noise has shape"):
        enc(spec, LENGTHS, g=g, noise=noise[:, :, :5])


def test_posterior_gradients_reach_every_parameter_and_speaker() -> None:
    enc = _posterior().train()
    spec, _, g = _inputs(CFG.spec_channels)
    g.requires_grad_(True)
    out = enc(spec, LENGTHS, g=g, generator=torch.Generator().manual_seed(0))
    (out.z.square().sum() + out.logs_q.sum()).backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert g.grad is not None and g.grad.abs().sum() > 0


def test_conditioning_without_cond_layer_is_an_error() -> None:
    enc = _posterior(gin=0)
    spec, _, g = _inputs(CFG.spec_channels)
    assert not hasattr(enc.enc, "cond_layer")
    with pytest.raises(ValueError, match="gin_channels=0"):
        enc(spec, LENGTHS, g=g)


def test_wavenet_layout_last_layer_is_skip_only() -> None:
    wn = WN(hidden_channels=6, kernel_size=3, dilation_rate=2, n_layers=3, gin_channels=4)
    assert [layer.dilation[0] for layer in wn.in_layers] == [1, 2, 4]
    assert [layer.out_channels for layer in wn.res_skip_layers] == [12, 12, 6]
    assert wn.cond_layer.out_channels == 2 * 6 * 3
    keys = wn.state_dict()
    assert keys["in_layers.2.parametrizations.weight.original0"].shape == (12, 1, 1)
    assert keys["cond_layer.parametrizations.weight.original1"].shape == (36, 4, 1)
    with pytest.raises(ValueError, match="odd"):
        WN(6, 4, 1, 2)


def test_posterior_and_flow_full_size_match_coqui_layout() -> None:
    """Tensor and element counts of Coqui 0.28's ``Vits(VitsConfig())`` (reference/coqui.md)."""
    cfg = VITSConfig()
    with torch.device("meta"):
        enc = PosteriorEncoder(cfg.posterior_encoder, cfg.spec_channels, cfg.inter_channels, 0)
        flow = ResidualCouplingFlow(cfg.flow, cfg.inter_channels, 256)
    sd = enc.state_dict()
    assert (len(sd), sum(v.numel() for v in sd.values())) == (100, 7_238_016)
    sd = flow.state_dict()
    assert sd["flows.3.enc.cond_layer.parametrizations.weight.original1"].shape == (1536, 256, 1)
    no_cond = {k: v for k, v in sd.items() if ".cond_layer." not in k}
    assert (len(no_cond), sum(v.numel() for v in no_cond.values())) == (112, 7_102_080)
    assert "flows.4.pre.weight" not in sd


def test_weight_norm_fold_keeps_outputs() -> None:
    enc, flow = _posterior(), _flow()
    spec, mask, g = _inputs(CFG.spec_channels)
    x = _inputs(CFG.inter_channels)[0]
    noise = torch.randn(3, CFG.inter_channels, spec.shape[-1])
    with torch.no_grad():
        before = enc(spec, LENGTHS, g=g, noise=noise).z, flow(x, mask, g=g).z
        assert remove_weight_norms(enc) == 2 * CFG.posterior_encoder.n_layers + 1
        assert remove_weight_norms(flow) == CFG.flow.n_flows * (2 * CFG.flow.n_layers + 1)
        after = enc(spec, LENGTHS, g=g, noise=noise).z, flow(x, mask, g=g).z
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- flow
def test_fresh_flow_is_identity_up_to_flips() -> None:
    torch.manual_seed(0)
    flow = ResidualCouplingFlow(CFG.flow, CFG.inter_channels, GIN)
    x, mask, g = _inputs(CFG.inter_channels)
    out = flow(x, mask, g=g)
    expected = x.flip(1) if CFG.flow.n_flows % 2 else x
    torch.testing.assert_close(out.z, expected, rtol=0, atol=0)
    assert torch.all(out.logdet == 0)


@pytest.mark.parametrize("mean_only", [True, False])
def test_flow_reverse_inverts_forward(mean_only: bool) -> None:
    flow = _flow(dataclasses.replace(CFG.flow, mean_only=mean_only))
    x, mask, g = _inputs(CFG.inter_channels)
    fwd = flow(x, mask, g=g)
    assert (fwd.z - x).abs().max() > 1e-2  # the flow is not the identity
    back = flow(fwd.z, mask, g=g, reverse=True)
    torch.testing.assert_close(back.z, x, rtol=0, atol=1e-5)
    torch.testing.assert_close(fwd.logdet + back.logdet, torch.zeros(3), rtol=0, atol=1e-5)
    if mean_only:
        assert torch.all(fwd.logdet == 0)
    else:
        assert fwd.logdet.abs().min() > 1e-3


@pytest.mark.parametrize("mean_only", [True, False])
def test_flow_logdet_matches_autograd_jacobian(mean_only: bool) -> None:
    cfg = FlowConfig(n_flows=2, hidden_channels=8, kernel_size=3, n_layers=2, mean_only=mean_only)
    flow = _flow(cfg, channels=4).double()
    lengths = torch.tensor([4])
    x, mask, g = (t.double() for t in _inputs(4, lengths=torch.tensor([6]), seed=3))
    mask = length_mask(lengths, 6, dtype=torch.float64)
    x = x * mask

    def fn(flat: torch.Tensor) -> torch.Tensor:
        return flow(flat.view_as(x), mask, g=g).z.reshape(-1)

    jac = torch.autograd.functional.jacobian(fn, x.reshape(-1))  # [24, 24]
    valid = mask.expand_as(x).reshape(-1).bool()
    _, logabsdet = torch.linalg.slogdet(jac[valid][:, valid])
    logdet = flow(x, mask, g=g).logdet
    torch.testing.assert_close(logdet, logabsdet.view(1), rtol=0, atol=1e-8)
    rev = flow(x, mask, g=g, reverse=True).logdet
    jac_rev = torch.autograd.functional.jacobian(
        lambda flat: flow(flat.view_as(x), mask, g=g, reverse=True).z.reshape(-1), x.reshape(-1)
    )
    torch.testing.assert_close(
        rev, torch.linalg.slogdet(jac_rev[valid][:, valid])[1].view(1), rtol=0, atol=1e-8
    )


def test_flow_padding_garbage_and_batch() -> None:
    flow = _flow()
    x, mask, g = _inputs(CFG.inter_channels)
    out = flow(x, mask, g=g)
    assert out.z.shape == x.shape and out.logdet.shape == (3,)
    assert torch.all(out.z * (1 - mask) == 0)
    garbage = x + 50.0 * torch.randn_like(x) * (1 - mask)
    torch.testing.assert_close(flow(garbage, mask, g=g).z * mask, out.z, rtol=0, atol=1e-6)
    for i, n in enumerate(LENGTHS.tolist()):
        item = flow(x[i : i + 1, :, :n], mask[i : i + 1, :, :n], g=g[i : i + 1])
        torch.testing.assert_close(item.z, out.z[i : i + 1, :, :n], rtol=0, atol=1e-5)


def test_flow_gradients_reach_every_parameter() -> None:
    flow = _flow().train()
    x, mask, g = _inputs(CFG.inter_channels)
    out = flow(x, mask, g=g)
    out.z.square().sum().backward()
    for name, p in flow.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_coupling_layer_needs_even_channels() -> None:
    with pytest.raises(ValueError, match="even number of channels, got 5"):
        ResidualCouplingLayer(CFG.flow, 5)

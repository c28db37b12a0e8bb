"""Scale + multi-period discriminator (tiny preset)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from vits_surgery.config import DiscriminatorConfig, VITSConfig, preset
from vits_surgery.models.commons import has_weight_norm
from vits_surgery.models.discriminators import PeriodDiscriminator, ScaleDiscriminator, VITSDiscriminator

CFG = preset("tiny").discriminator
N = 1000  # not a multiple of 3: exercises the reflect padding


def _disc(cfg: DiscriminatorConfig = CFG) -> VITSDiscriminator:
    torch.manual_seed(0)
    return VITSDiscriminator(cfg).eval()


def _audio(b: int = 2, n: int = N, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 1, n, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_output_structure_and_shapes() -> None:
    disc = _disc()
    y, y_hat = _audio(), _audio(seed=2)
    out = disc(y, y_hat)
    assert isinstance(disc.nets[0], ScaleDiscriminator)
    assert [net.period for net in disc.nets[1:]] == list(CFG.periods)
    assert len(out.real_scores) == len(out.fake_scores) == 1 + len(CFG.periods)
    assert [len(f) for f in out.real_features] == [len(CFG.scale_channels) + 1] + [
        len(CFG.period_channels) + 1
    ] * len(CFG.periods)
    assert [f.shape[1] for f in out.real_features[0]] == [*CFG.scale_channels, 1]
    for period, feats, score in zip(CFG.periods, out.real_features[1:], out.real_scores[1:], strict=True):
        assert [f.shape[1] for f in feats] == [*CFG.period_channels, 1]
        assert all(f.dim() == 4 and f.shape[-1] == period for f in feats)
        assert feats[0].shape[2] == math.ceil(math.ceil(N / period) / CFG.period_stride)
        assert score.shape == (2, feats[-1][0].numel())
    for real, fake in zip(out.real_scores, out.fake_scores, strict=True):
        assert real.shape == fake.shape and not torch.allclose(real, fake)
    only_real = disc(y)
    assert only_real.fake_scores is None and only_real.fake_features is None
    for a, b in zip(only_real.real_scores, out.real_scores, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_period_padding_is_reflect() -> None:
    net = next(n for n in _disc().nets[1:] if N % n.period)
    y = _audio()
    pad = net.period - N % net.period
    padded = F.pad(y, (0, pad), mode="reflect")
    score, _ = net(y)
    score_ref, _ = net(padded)
    torch.testing.assert_close(score, score_ref, rtol=0, atol=0)
    zero_padded, _ = net(F.pad(y, (0, pad)))
    assert not torch.allclose(score, zero_padded)
    with pytest.raises(ValueError, match="too short"):
        PeriodDiscriminator(CFG, 5)(_audio(n=2))


def test_batch_equals_per_item() -> None:
    disc = _disc()
    y, y_hat = _audio(b=3), _audio(b=3, seed=2)
    out = disc(y, y_hat)
    for i in range(3):
        item = disc(y[i : i + 1], y_hat[i : i + 1])
        for a, b in zip(item.fake_scores, out.fake_scores, strict=True):
            torch.testing.assert_close(a, b[i : i + 1], rtol=0, atol=1e-6)
        for fa, fb in zip(item.real_features, out.real_features, strict=True):
            for a, b in zip(fa, fb, strict=True):
                torch.testing.assert_close(a, b[i : i + 1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("spectral", [False, True])
def test_gradients_reach_every_parameter_and_the_fake_audio(spectral: bool) -> None:
    disc = _disc(dataclasses.replace(CFG, use_spectral_norm=spectral)).train()
    y, y_hat = _audio(), _audio(seed=2).requires_grad_(True)
    out = disc(y, y_hat)
    loss = sum(s.square().mean() for s in out.real_scores + out.fake_scores)
    loss = loss + sum(f.abs().mean() for feats in out.fake_features for f in feats)
    loss.backward()
    for name, p in disc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert y_hat.grad.abs().sum() > 0


def test_weight_norm_and_spectral_norm_key_layout() -> None:
    sd = _disc().state_dict()
    c0 = CFG.scale_channels[0]
    assert sd["nets.0.convs.0.parametrizations.weight.original0"].shape == (c0, 1, 1)
    g1 = CFG.scale_groups[1]
    assert sd["nets.0.convs.1.parametrizations.weight.original1"].shape == (
        CFG.scale_channels[1],
        c0 // g1,
        CFG.scale_kernel_sizes[1],
    )
    assert sd["nets.1.convs.0.parametrizations.weight.original0"].shape == (CFG.period_channels[0], 1, 1, 1)
    assert sd["nets.1.conv_post.parametrizations.weight.original1"].shape == (
        1,
        CFG.period_channels[-1],
        3,
        1,
    )
    n_nets = 1 + len(CFG.periods)
    assert f"nets.{n_nets}.conv_post.bias" not in sd
    spectral = _disc(dataclasses.replace(CFG, use_spectral_norm=True))
    keys = spectral.state_dict()
    assert not any(has_weight_norm(m) for m in spectral.modules())
    assert {"nets.1.convs.0.weight_orig", "nets.1.convs.0.weight_u", "nets.1.convs.0.weight_v"} <= set(keys)
    assert not any("parametrizations" in k for k in keys)


def test_full_size_counts_match_coqui() -> None:
    """Coqui 0.28 ``Vits(VitsConfig())``'s ``disc``: 111 tensors, 46,747,132 elements (reference/coqui.md)."""
    with torch.device("meta"):
        sd = VITSDiscriminator(VITSConfig().discriminator).state_dict()
    assert (len(sd), sum(v.numel() for v in sd.values())) == (111, 46_747_132)
    assert sd["nets.0.convs.5.parametrizations.weight.original1"].shape == (1024, 1024, 5)
    assert sd["nets.5.convs.4.parametrizations.weight.original1"].shape == (1024, 1024, 5, 1)


def test_groups_must_divide_channels() -> None:
    bad = dataclasses.replace(CFG, scale_groups=(1, 3, 4, 4, 4, 1))
    with pytest.raises(ValueError, match="scale_groups value 3"):
        VITSDiscriminator(bad)

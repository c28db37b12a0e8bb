"""HiFi-GAN generator (tiny preset)."""

from __future__ import annotations

import pytest
import torch

from vits_surgery.config import VITSConfig, preset
from vits_surgery.models.commons import has_weight_norm, restore_weight_norms
from vits_surgery.models.decoder import Generator, ResBlock1, ResBlock2

GIN = 8


def _config(resblock: str) -> VITSConfig:
    return preset("tiny", **{"decoder.resblock": resblock})


def _generator(resblock: str = "2", gin: int = GIN) -> Generator:
    torch.manual_seed(0)
    cfg = _config(resblock)
    return Generator(cfg.decoder, cfg.inter_channels, gin).eval()


def _inputs(b: int = 2, t: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    channels = preset("tiny").inter_channels
    return torch.randn(b, channels, t, generator=gen), torch.randn(b, GIN, 1, generator=gen)


@pytest.mark.parametrize("resblock", ["1", "2"])
def test_output_shape_and_range(resblock: str) -> None:
    dec = _generator(resblock)
    z, g = _inputs()
    audio = dec(z, g=g)
    assert audio.shape == (2, 1, 6 * _config(resblock).audio.hop_length)
    assert audio.abs().max() <= 1.0
    block = ResBlock1 if resblock == "1" else ResBlock2
    assert all(isinstance(b, block) for b in dec.resblocks)
    assert len(dec.resblocks) == len(dec.ups) * len(_config(resblock).decoder.resblock_kernel_sizes)


@pytest.mark.parametrize("resblock", ["1", "2"])
def test_gradients_reach_every_parameter(resblock: str) -> None:
    dec = _generator(resblock).train()
    z, g = _inputs()
    z.requires_grad_(True)
    g.requires_grad_(True)
    dec(z, g=g).square().sum().backward()
    for name, p in dec.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert z.grad.abs().sum() > 0 and g.grad.abs().sum() > 0


def test_batch_equals_per_item_and_speaker_matters() -> None:
    dec = _generator()
    z, g = _inputs(b=3)
    batch = dec(z, g=g)
    for i in range(3):
        torch.testing.assert_close(dec(z[i : i + 1], g=g[i : i + 1]), batch[i : i + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(dec(z, g=g.flip(0)), batch)


def test_weight_norm_fold_keeps_outputs_and_can_be_restored() -> None:
    dec = _generator("1")
    z, g = _inputs()
    n_wn = sum(has_weight_norm(m) for m in dec.modules())
    cfg = _config("1").decoder
    n_convs = sum(2 * len(d) for d in cfg.resblock_dilation_sizes) * len(cfg.upsample_rates)
    assert n_wn == len(cfg.upsample_rates) + n_convs
    with torch.no_grad():
        before = dec(z, g=g)
        assert dec.remove_weight_norm() == n_wn
        assert not any(has_weight_norm(m) for m in dec.modules())
        assert not any("parametrizations" in k for k in dec.state_dict())
        folded = dec(z, g=g)
        assert restore_weight_norms(dec) == n_wn
        restored = dec(z, g=g)
    torch.testing.assert_close(folded, before, rtol=0, atol=1e-6)
    torch.testing.assert_close(restored, before, rtol=0, atol=1e-6)


def test_layer_layout_follows_coqui() -> None:
    dec = _generator()
    sd = dec.state_dict()
    ch0 = preset("tiny").decoder.upsample_initial_channel
    assert not has_weight_norm(dec.conv_pre) and "conv_pre.weight" in sd
    assert not has_weight_norm(dec.conv_post) and dec.conv_post.bias is None
    assert not has_weight_norm(dec.cond_layer) and sd["cond_layer.weight"].shape == (ch0, GIN, 1)
    # transposed conv: weight-norm g has the *input* channels on dim 0
    assert sd["ups.0.parametrizations.weight.original0"].shape == (ch0, 1, 1)
    assert sd["resblocks.0.convs.1.parametrizations.weight.original1"].shape == (ch0 // 2, ch0 // 2, 3)
    up = dec.ups[0]
    assert up.padding[0] == (up.kernel_size[0] - up.stride[0]) // 2
    assert not hasattr(_generator(gin=0), "cond_layer")
    cfg = preset("tiny", **{"decoder.conv_post_bias": True})
    assert Generator(cfg.decoder, cfg.inter_channels).conv_post.bias is not None


def test_init_is_hifigan_normal() -> None:
    dec = _generator()
    v = dec.ups[0].parametrizations.weight.original1.detach()
    assert 0.009 < float(v.std()) < 0.011 and abs(float(v.mean())) < 1e-3
    # weight norm starts at the initial weights: g = ||v|| per output channel
    torch.testing.assert_close(dec.ups[0].weight.detach(), v)


def test_full_size_counts_match_reference_checkpoints() -> None:
    """Coqui 0.28 ``Vits(VitsConfig())`` decoder and Piper medium ``dec`` (reference/*.md)."""
    with torch.device("meta"):
        coqui = Generator(VITSConfig().decoder, 192, 0).state_dict()
        coqui_spk = Generator(VITSConfig().decoder, 192, 256).state_dict()
        piper = Generator(preset("piper_medium").decoder, 192, 0).state_dict()
    assert (len(coqui), sum(v.numel() for v in coqui.values())) == (231, 14_337_024)
    assert coqui_spk["cond_layer.weight"].shape == (512, 256, 1)
    assert (len(piper), sum(v.numel() for v in piper.values())) == (66, 1_664_768)


def test_speaker_vector_without_cond_layer_is_an_error() -> None:
    dec = _generator(gin=0)
    z, g = _inputs()
    with pytest.raises(ValueError, match="gin_channels=0"):
        dec(z, g=g)

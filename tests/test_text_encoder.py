"""Text encoder, relative-position attention and channel norms (tiny preset)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from vits_surgery.config import preset
from vits_surgery.models.attention import Encoder, RelativePositionMultiHeadAttention
from vits_surgery.models.commons import length_mask, remove_weight_norms
from vits_surgery.models.norms import GlowLayerNorm, LayerNorm
from vits_surgery.models.text_encoder import TextEncoder

CFG = preset("tiny")
TE = CFG.text_encoder
C = CFG.inter_channels
LENGTHS = torch.tensor([11, 7, 2])


def _encoder(**changes: object) -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder(dataclasses.replace(TE, **changes), C).eval()


def _tokens(lengths: torch.Tensor = LENGTHS, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, TE.n_vocab, (len(lengths), int(lengths.max())), generator=gen)


# ----------------------------------------------------------------------------- norms
def test_layer_norm_matches_torch_layer_norm_over_channels() -> None:
    torch.manual_seed(0)
    norm = LayerNorm(6)
    with torch.no_grad():
        norm.gamma.normal_()
        norm.beta.normal_()
    ref = torch.nn.LayerNorm(6, eps=1e-5)
    ref.load_state_dict({"weight": norm.gamma, "bias": norm.beta})
    x = torch.randn(2, 6, 5)
    torch.testing.assert_close(norm(x), ref(x.transpose(1, 2)).transpose(1, 2))


def test_glow_layer_norm_layout_and_eps() -> None:
    glow, plain = GlowLayerNorm(6), LayerNorm(6, eps=1e-4)
    assert glow.gamma.shape == (1, 6, 1) and glow.beta.shape == (1, 6, 1)
    with torch.no_grad():
        plain.gamma.normal_()
        plain.beta.normal_()
        glow.gamma.copy_(plain.gamma.view(1, -1, 1))
        glow.beta.copy_(plain.beta.view(1, -1, 1))
    x = torch.randn(2, 6, 5) * 1e-2  # small variance: eps matters
    torch.testing.assert_close(glow(x), plain(x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(glow(x), LayerNorm(6)(x) * plain.gamma.view(1, -1, 1) + plain.beta.view(1, -1, 1), atol=1e-4)


# ----------------------------------------------------------------------------- attention
def _naive_relative_attention(attn: RelativePositionMultiHeadAttention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Shaw et al. relative attention written with explicit loops (an independent reference)."""
    b, c, t = x.shape
    h, d, w = attn.n_heads, attn.head_channels, attn.window_size
    q, k, v = (conv(x).view(b, h, d, t) for conv in (attn.conv_q, attn.conv_k, attn.conv_v))
    ek, ev = attn.emb_rel_k[0], attn.emb_rel_v[0]  # [2w+1, d]
    out = torch.zeros(b, h, d, t)
    for bi in range(b):
        for hi in range(h):
            for i in range(t):
                scores = torch.empty(t)
                for j in range(t):
                    s = q[bi, hi, :, i] @ k[bi, hi, :, j]
                    if abs(j - i) <= w:
                        s = s + q[bi, hi, :, i] @ ek[j - i + w]
                    keep = mask[bi, 0, i] * mask[bi, 0, j]
                    scores[j] = s / math.sqrt(d) if keep else -1e4
                p = torch.softmax(scores, dim=0)
                for j in range(t):
                    value = v[bi, hi, :, j] + (ev[j - i + w] if abs(j - i) <= w else 0.0)
                    out[bi, hi, :, i] += p[j] * value
    return attn.conv_o(out.reshape(b, c, t))


@pytest.mark.parametrize("t", [3, 9])  # shorter and longer than the window (4)
def test_relative_attention_matches_loop_reference(t: int) -> None:
    torch.manual_seed(0)
    attn = RelativePositionMultiHeadAttention(8, 8, 2, window_size=4).eval()
    x = torch.randn(2, 8, t)
    mask = length_mask(torch.tensor([t, t - 1]), t)
    got = attn(x, mask.unsqueeze(2) * mask.unsqueeze(-1))
    torch.testing.assert_close(got, _naive_relative_attention(attn, x, mask), atol=1e-5, rtol=1e-5)


def test_encoder_state_dict_keys_are_coquis() -> None:
    enc = Encoder(8, 16, 2, 1, 3, 0.0, 4)
    expected = {
        "attn_layers.0.emb_rel_k": (1, 9, 4),
        "attn_layers.0.emb_rel_v": (1, 9, 4),
        **{f"attn_layers.0.conv_{n}.weight": (8, 8, 1) for n in "qkvo"},
        **{f"attn_layers.0.conv_{n}.bias": (8,) for n in "qkvo"},
        "norm_layers_1.0.gamma": (8,),
        "norm_layers_1.0.beta": (8,),
        "ffn_layers.0.conv_1.weight": (16, 8, 3),
        "ffn_layers.0.conv_1.bias": (16,),
        "ffn_layers.0.conv_2.weight": (8, 16, 3),
        "ffn_layers.0.conv_2.bias": (8,),
        "norm_layers_2.0.gamma": (8,),
        "norm_layers_2.0.beta": (8,),
    }
    assert {k: tuple(v.shape) for k, v in enc.state_dict().items()} == expected


# ----------------------------------------------------------------------------- text encoder
def test_shapes_and_padded_positions_are_zero() -> None:
    out = _encoder()(_tokens(), LENGTHS)
    t = int(LENGTHS.max())
    assert out.hidden.shape == (3, TE.hidden_channels, t)
    assert out.m_p.shape == out.logs_p.shape == (3, C, t)
    torch.testing.assert_close(out.mask, length_mask(LENGTHS, t))
    for tensor in (out.hidden, out.m_p, out.logs_p):
        assert torch.all(tensor * (1 - out.mask) == 0)
        assert tensor.abs().sum() > 0


def test_garbage_past_lengths_changes_nothing() -> None:
    enc, tokens = _encoder(), _tokens()
    other = tokens.clone()
    past = ~length_mask(LENGTHS, tokens.shape[1])[:, 0].bool()
    other[past] = (other[past] + 5) % TE.n_vocab
    a, b = enc(tokens, LENGTHS), enc(other, LENGTHS)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)


def test_batch_equals_per_item() -> None:
    enc, tokens = _encoder(), _tokens()
    batch = enc(tokens, LENGTHS)
    for i, n in enumerate(LENGTHS.tolist()):
        single = enc(tokens[i : i + 1, :n], LENGTHS[i : i + 1])
        torch.testing.assert_close(single.m_p, batch.m_p[i : i + 1, :, :n], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(single.logs_p, batch.logs_p[i : i + 1, :, :n], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(single.hidden, batch.hidden[i : i + 1, :, :n], atol=1e-5, rtol=1e-5)


def test_gradients_reach_every_parameter() -> None:
    enc = _encoder().train()
    out = enc(_tokens(), LENGTHS)
    (out.hidden.pow(2).sum() + out.m_p.sum() + out.logs_p.exp().sum()).backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_dropout_only_in_training_and_eval_is_deterministic() -> None:
    enc, tokens = _encoder(), _tokens()
    torch.testing.assert_close(enc(tokens, LENGTHS).m_p, enc(tokens, LENGTHS).m_p, atol=0, rtol=0)
    enc.train()
    torch.manual_seed(0)
    a = enc(tokens, LENGTHS).m_p
    torch.manual_seed(1)
    assert not torch.allclose(a, enc(tokens, LENGTHS).m_p)


def test_embedding_init_and_scale() -> None:
    enc = _encoder(n_vocab=4000)
    std = enc.emb.weight.std().item()
    assert std == pytest.approx(TE.hidden_channels**-0.5, rel=0.05)


def test_language_embedding_widens_the_encoder() -> None:
    enc = _encoder(language_embedding_channels=4)
    assert enc.proj.in_channels == TE.hidden_channels + 4
    tokens = _tokens()
    lang = torch.randn(3, 4, 1)
    out = enc(tokens, LENGTHS, lang_emb=lang)
    assert out.hidden.shape == (3, TE.hidden_channels + 4, int(LENGTHS.max()))
    other = enc(tokens, LENGTHS, lang_emb=lang + 1.0)
    assert not torch.allclose(out.m_p, other.m_p)
    with pytest.raises(ValueError, match="lang_emb"):
        enc(tokens, LENGTHS)
    with pytest.raises(ValueError, match="channels"):
        enc(tokens, LENGTHS, lang_emb=torch.randn(3, 3, 1))
    with pytest.raises(ValueError, match="language_embedding_channels is 0"):
        _encoder()(tokens, LENGTHS, lang_emb=lang)


def test_no_weight_norm_to_fold() -> None:
    """Coqui applies no weight norm inside the text encoder; folding must be a no-op."""
    enc = _encoder()
    before = enc(_tokens(), LENGTHS).m_p
    assert remove_weight_norms(enc) == 0
    torch.testing.assert_close(enc(_tokens(), LENGTHS).m_p, before, atol=0, rtol=0)

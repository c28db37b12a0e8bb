"""optimize_for_inference: same waveforms as the model it copies, which it leaves trainable.

Outputs must equal the unmodified model's to 1e-5 (zero noise and a seeded generator) on the
tiny preset (both residual-block types, speakers, a non-mean-only flow, the deterministic duration
predictor), with LoRA adapters, and on the real joe voice. Speed is measured by
``benchmarks/infer.py``, never here.
"""

from __future__ import annotations

import pytest
import torch

import vits_surgery
from vits_surgery.config import preset
from vits_surgery.models.commons import has_weight_norm
from vits_surgery.models.inference import (
    ChannelsLastGenerator,
    InferenceVITS,
    MeanOnlyReverseCoupling,
    UnconditionedFastWN,
    compiler_available,
    optimize_for_inference,
)
from vits_surgery.models.vits import VITS

TOL = 1e-5

VARIANTS = {
    "tiny": {},
    "resblock1_speakers": {
        "decoder.resblock": "1",
        "decoder.resblock_dilation_sizes": ((1, 3, 5), (1, 3, 5)),
        "n_speakers": 3,
        "gin_channels": 8,
    },
    "affine_flow_deterministic_dp": {"flow.mean_only": False, "duration_predictor.stochastic": False},
}


def _model(variant: str = "tiny", seed: int = 0) -> VITS:
    torch.manual_seed(seed)
    model = VITS(preset("tiny", **VARIANTS[variant]))
    with torch.no_grad():  # a trained-looking flow and duration predictor (both start as identities)
        for name, p in model.named_parameters():
            if name.startswith(("flow.", "duration_predictor.")):
                p.add_(0.05 * torch.randn_like(p))
            elif name.startswith("decoder.resblocks.") and name.endswith("original0"):
                p.mul_(20.0)  # residual branches as strong as a trained decoder's (init is ~0.2x the input)
    return model.eval()


def _tokens(n_vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(4, n_vocab, (2, 23), generator=g)
    lengths = torch.tensor([23, 15])
    tokens[1, 15:] = 0
    return tokens, lengths


def _infer(model: VITS, seed: int | None, **kwargs):
    tokens, lengths = _tokens(model.config.text_encoder.n_vocab)
    if seed is None:
        kwargs.update(noise_scale=0.0, noise_scale_w=0.0)
    else:
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        return model.infer(tokens, lengths, **kwargs)


def _assert_same(ref, out) -> None:
    assert torch.equal(ref.durations, out.durations)
    assert torch.equal(ref.audio_lengths, out.audio_lengths)
    assert ref.audio.shape == out.audio.shape
    assert ref.audio.abs().max() > 1e-3  # a real signal, not silence on both sides
    assert (ref.audio - out.audio).abs().max().item() <= TOL


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("seed", [None, 7], ids=["zero_noise", "seeded_generator"])
def test_outputs_equal_the_unmodified_model(variant: str, seed: int | None) -> None:
    model = _model(variant)
    fast = optimize_for_inference(model)
    speaker = torch.tensor([2, 0]) if model.config.n_speakers else None
    _assert_same(_infer(model, seed, speaker=speaker), _infer(fast, seed, speaker=speaker))


@pytest.mark.parametrize("elements", [2**9, 3000])
def test_decoder_stages_in_time_chunks_match(monkeypatch, elements: int) -> None:
    """Chunks far smaller than the default, so the tiny decoder's stages are cut into many
    pieces (widths that do not divide the stage length, a batch of two lengths)."""
    import vits_surgery.models.inference as inference

    for variant in ("tiny", "resblock1_speakers"):
        model = _model(variant)
        fast = optimize_for_inference(model)
        calls = []
        original = ChannelsLastGenerator._stage_in_chunks

        def spy(self, i, x, width, tail, original=original, calls=calls):
            calls.append((i, x.shape[-1], width))
            return original(self, i, x, width, tail)

        monkeypatch.setattr(inference, "CHUNK_ELEMENTS", elements)
        monkeypatch.setattr(ChannelsLastGenerator, "_stage_in_chunks", spy)
        speaker = torch.tensor([1, 2]) if model.config.n_speakers else None
        _assert_same(_infer(model, None, speaker=speaker), _infer(fast, None, speaker=speaker))
        assert any(i == len(model.config.decoder.upsample_rates) - 1 for i, _, _ in calls)  # the tail too
        assert all(t > 2 * w for _, t, w in calls)
        monkeypatch.undo()


def test_the_copy_takes_the_fast_paths() -> None:
    model = _model()
    fast = optimize_for_inference(model)
    assert isinstance(fast, InferenceVITS) and isinstance(fast, VITS)
    assert fast.discriminator is None and model.discriminator is not None
    assert not any(has_weight_norm(m) for m in fast.modules())
    assert type(fast.decoder) is ChannelsLastGenerator
    assert all(type(layer) is MeanOnlyReverseCoupling for layer in fast.flow.flows)
    assert type(fast.posterior_encoder.enc) is UnconditionedFastWN
    w = fast.decoder.resblocks[0].convs[0].weight
    assert w.unsqueeze(2).is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    assert not fast.training
    out = fast.infer(torch.tensor([5, 6, 7, 8]))  # no inference_mode here: the copy enters it
    assert out.audio.is_inference()


def test_original_is_untouched_and_still_trains() -> None:
    model = _model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = optimize_for_inference(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert (
        model.training
        and has_weight_norm(model.decoder.ups[0])
        and has_weight_norm(model.flow.flows[0].enc.in_layers[0])
    )

    # one training step on the original: every organ gets gradients, the optimizer moves the
    # original's weight-norm parameters and not the copy's weights
    torch.manual_seed(0)
    cfg = model.config
    tokens, lengths = _tokens(cfg.text_encoder.n_vocab)
    spec = torch.rand(2, cfg.spec_channels, 40)
    out = model(tokens, lengths, spec, torch.tensor([40, 31]))
    loss = out.audio_hat.pow(2).mean() + out.duration_nll.mean() + (out.z_p - out.m_p_expanded).pow(2).mean()
    loss.backward()
    for organ in ("text_encoder", "duration_predictor", "posterior_encoder", "flow", "decoder"):
        grads = [p.grad for p in getattr(model, organ).parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), organ
    v = model.decoder.ups[0].parametrizations.weight.original1
    assert v.grad is not None
    fast_weight = fast.decoder.ups[0].weight.clone()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(v, before["decoder.ups.0.parametrizations.weight.original1"])
    assert torch.equal(fast.decoder.ups[0].weight, fast_weight)


def test_copy_refuses_training_and_bad_input() -> None:
    fast = optimize_for_inference(_model())
    with pytest.raises(RuntimeError, match="inference-only copy"):
        fast(
            torch.zeros(1, 3, dtype=torch.long), torch.tensor([3]), torch.zeros(1, 129, 8), torch.tensor([8])
        )
    with pytest.raises(TypeError, match="needs a VITS model"):
        optimize_for_inference(torch.nn.Linear(2, 2))


def test_voice_conversion_matches() -> None:
    model = _model("resblock1_speakers")
    fast = optimize_for_inference(model)
    spec = torch.rand(1, model.config.spec_channels, 30)
    with torch.inference_mode():
        ref = model.voice_conversion(
            spec, torch.tensor([30]), 0, 2, generator=torch.Generator().manual_seed(3)
        )
    out = fast.voice_conversion(spec, torch.tensor([30]), 0, 2, generator=torch.Generator().manual_seed(3))
    assert ref.shape == out.shape and ref.abs().max() > 1e-3
    assert (ref - out).abs().max().item() <= TOL


def test_lora_adapters_are_merged_into_the_copy() -> None:
    from vits_surgery.surgery.lora import inject_lora, lora_layers, lora_state

    model = _model()
    inject_lora(model, {"decoder": 2, "flow": 2}, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_b"):
                p.normal_(0.0, 0.5)
    baseline = _infer(_model(), None)
    ref = _infer(model, None)
    assert (ref.audio - baseline.audio).abs().max() > 1e-3  # the adapters change the voice
    fast = optimize_for_inference(model)
    _assert_same(ref, _infer(fast, None))
    assert not lora_layers(fast)
    assert lora_layers(model) and not any(lora_state(m).merged for m in lora_layers(model).values())


def test_compile_without_a_compiler_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(RuntimeError, match="C\\+\\+ compiler"):
        optimize_for_inference(_model(), compile=True)


@pytest.mark.slow
def test_compiled_decoder_runs_and_matches() -> None:
    if compiler_available() is None:
        pytest.skip("torch.compile on a CPU needs a C++ compiler (g++, c++, clang++ or $CXX); none found")
    model = _model()
    fast = optimize_for_inference(model, compile=True)
    ref, out = _infer(model, None), _infer(fast, None)
    assert ref.audio.shape == out.audio.shape
    assert (ref.audio - out.audio).abs().max().item() <= 1e-4


def test_public_export() -> None:
    assert vits_surgery.optimize_for_inference is optimize_for_inference


# ----------------------------------------------------------------------------- the real joe voice
@pytest.fixture(scope="module")
def joe(joe_voice):
    from vits_surgery.text.tokenizer import Tokenizer

    onnx_path, _ = joe_voice
    model = vits_surgery.load(onnx_path)
    ids = Tokenizer.from_config(model.config.text).encode("Keep the timbre, change the rhythm.")
    return model, torch.tensor([ids])


@pytest.mark.parametrize("seed", [None, 11], ids=["zero_noise", "seeded_generator"])
def test_joe_voice_outputs_equal(joe, seed: int | None) -> None:
    model, tokens = joe
    fast = optimize_for_inference(model)
    kwargs = {"noise_scale": 0.0, "noise_scale_w": 0.0} if seed is None else {}
    with torch.inference_mode():
        ref = model.infer(
            tokens, generator=None if seed is None else torch.Generator().manual_seed(seed), **kwargs
        )
    out = fast.infer(
        tokens, generator=None if seed is None else torch.Generator().manual_seed(seed), **kwargs
    )
    assert torch.equal(ref.durations, out.durations)
    assert ref.audio.shape == out.audio.shape and ref.audio.abs().max() > 0.05
    assert (ref.audio - out.audio).abs().max().item() <= TOL

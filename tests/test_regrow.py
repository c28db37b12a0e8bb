"""Organ regrowth on a tiny VITS: the regrown organs learn, nothing else changes, the cache works."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from vits_surgery.config import preset
from vits_surgery.models.vits import VITS
from vits_surgery.surgery import regrow as regrow_mod
from vits_surgery.surgery import regrow_fit
from vits_surgery.surgery.regrow import REGROWABLE, organs_from_report, regrow
from vits_surgery.surgery.regrow_data import (
    default_texts,
    duration_recovery,
    synthesize_utterances,
    tokenize_texts,
)
from vits_surgery.surgery.regrow_fit import sdp_nll_per_token

TEXTS = (
    "the cat sat.", "a red boat.", "go home now!", "big blue sky.", "we ran far.", "hot tea, please.",
    "my old dog.", "sing it again?", "ten green pens.", "a fox jumped.", "stop that noise.", "fresh bread.",
    "cold wind blows.", "read the map.", "she smiled.", "pick a card.", "the bell rang.", "lift the box.",
    "a warm day.", "count to five.", "open the door.", "the sun rose.",
)
STEPS = {"posterior_encoder": 200, "duration_posterior": 30, "discriminator": 5}
LR = {"posterior_encoder": 1e-2}
N_TRAIN, N_HELDOUT = 18, 4


def _voice() -> VITS:
    """A tiny random VITS shaped like a trained voice: durations of several frames per token
    and a prior narrow enough that the alignment is informative."""
    torch.manual_seed(0)
    model = VITS(preset("tiny")).eval()
    with torch.no_grad():
        model.duration_predictor.flows[0].translation[0] = -1.5  # logw ~ 1.5: ~4-5 frames per token
        model.text_encoder.proj.bias[model.config.inter_channels :] -= 1.0  # logs_p ~ -1
    return model


def _regrow(model: VITS, cache_dir, **kwargs):
    return regrow(model, n_utterances=N_TRAIN, n_heldout=N_HELDOUT, steps=STEPS, lr=LR, batch_size=8,
                  crop_frames=32, cache_dir=cache_dir, texts=TEXTS, progress=False, **kwargs)


@pytest.fixture(scope="module")
def regrown(tmp_path_factory):
    """(voice before, voice after, report, cache dir, held-out utterances of another draw)."""
    before = _voice()
    cache_dir = tmp_path_factory.mktemp("regrow_cache")
    after = copy.deepcopy(before)
    report = _regrow(after, cache_dir)
    tokens = tokenize_texts(before, ["the dog ran home.", "a big red sun.", "pick up the pen."])
    heldout = synthesize_utterances(before, tokens, generator=torch.Generator().manual_seed(7), progress=False)
    return before, after, report, cache_dir, heldout


def test_posterior_recovers_teacher_durations(regrown) -> None:
    before, after, report, _, heldout = regrown
    gen = torch.Generator
    base = duration_recovery(before, heldout, sample=False, generator=gen().manual_seed(0))
    grown = duration_recovery(after, heldout, sample=False, generator=gen().manual_seed(0))
    assert grown >= base + 0.15, (base, grown)
    assert report.duration_recovery is not None and report.duration_recovery_before is not None
    assert report.duration_recovery > report.duration_recovery_before + 0.05
    assert report.losses["posterior_encoder"]["last"] < report.losses["posterior_encoder"]["first"]
    assert math.log(0.1) - 0.1 < report.metrics["posterior_log_std"] < 0.5  # floor holds, no collapse


def test_only_regrown_organs_change(regrown) -> None:
    before, after, report, _, _ = regrown
    paths = [p for organ in report.organs for p in REGROWABLE[organ]]
    old, new = before.state_dict(), after.state_dict()
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    outside = sorted(k for k in changed if not any(k.startswith(p + ".") for p in paths))
    assert not outside, outside
    for path in paths:
        assert any(k.startswith(path + ".") for k in changed), f"{path} did not change"
    assert not after.training
    assert all(p.requires_grad for p in after.parameters())  # flags restored as they were


def test_sdp_nll_on_teacher_durations_falls(regrown) -> None:
    before, after, report, _, heldout = regrown
    with torch.no_grad():
        nll_before = sdp_nll_per_token(before, heldout, generator=torch.Generator().manual_seed(3))
        nll_after = sdp_nll_per_token(after, heldout, generator=torch.Generator().manual_seed(3))
    assert nll_after < nll_before - 0.05, (float(nll_before), float(nll_after))
    assert report.metrics["sdp_nll"] < report.metrics["sdp_nll_before"]


def test_second_call_is_a_cache_hit(regrown, monkeypatch) -> None:
    _, after, report, cache_dir, _ = regrown

    def no_training(*args, **kwargs):
        raise AssertionError("a cache hit must not synthesize or train")

    monkeypatch.setattr(regrow_mod, "synthesize_utterances", no_training)
    monkeypatch.setattr(regrow_mod, "FITTERS", {k: no_training for k in regrow_fit.FITTERS})
    again = _voice()
    hit = _regrow(again, cache_dir)
    assert hit.cached and hit.cache_path == report.cache_path
    assert hit.duration_recovery == report.duration_recovery
    new, grown = again.state_dict(), after.state_dict()
    assert all(torch.equal(new[k], grown[k]) for k in grown)


def test_cache_key_covers_weights_and_settings(regrown, monkeypatch) -> None:
    """Other source weights or other settings must not hit the first entry."""
    _, _, report, cache_dir, _ = regrown
    key = regrow_mod._fingerprint
    model = _voice()
    settings = dict(report.settings)
    base = key(model, report.organs, settings)
    assert key(model, report.organs, {**settings, "lr": {"posterior_encoder": 1.0}}) != base
    with torch.no_grad():
        model.decoder.conv_pre.bias.add_(1e-3)
    assert key(model, report.organs, settings) != base
    fresh = _voice()
    with torch.no_grad():  # the regrown organs' own (random) weights are not part of the key
        fresh.posterior_encoder.proj.bias.add_(1.0)
        fresh.discriminator.nets[0].conv_post.bias.add_(1.0)
    assert key(fresh, report.organs, settings) == base


def test_organs_from_report_and_errors() -> None:
    fake = SimpleNamespace(created=[("posterior_encoder.pre.weight", ""), ("duration_predictor.post_pre.bias", ""),
                                    ("duration_predictor.flows.1.proj.bias", "")])
    assert organs_from_report(fake) == ("posterior_encoder", "duration_posterior")
    model = VITS(preset("tiny"), with_discriminator=False)
    with pytest.raises(ValueError, match="cannot regrow 'decoder'"):
        regrow(model, organs=["decoder"], use_cache=False, progress=False)
    with pytest.raises(ValueError, match="without one"):
        regrow(model, organs=["discriminator"], use_cache=False, progress=False)
    with pytest.raises(ValueError, match="needs 6 texts"):
        regrow(model, organs="enc_q", n_utterances=4, n_heldout=2, texts=["a b c."], use_cache=False)


def test_default_texts_are_varied_and_reproducible() -> None:
    texts = default_texts(50)
    assert texts == default_texts(50) and len(set(texts)) >= 45
    assert any(t.endswith("?") for t in texts) and any("," in t for t in texts)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_alignment_loss_is_the_teacher_token_cross_entropy(temperature) -> None:
    """alignment_loss: -log softmax over the utterance's tokens of the prior log-likelihood
    summed over channels (divided by the temperature), at the teacher token, masked mean;
    padding tokens never win."""
    torch.manual_seed(0)
    c, t_x, s = 3, 4, 5
    z_p = torch.randn(2, c, s)
    m_p, logs_p = torch.randn(2, c, t_x), 0.1 * torch.randn(2, c, t_x)
    token = torch.tensor([[0, 0, 1, 2, 3], [0, 1, 1, 2, 2]])
    token_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])  # the second item has 3 tokens
    mask = torch.tensor([[[1, 1, 1, 1, 1]], [[1, 1, 1, 1, 0]]], dtype=torch.float32)
    batch = SimpleNamespace(m_p=m_p, logs_p=logs_p, token=token, token_mask=token_mask)
    got = regrow_fit.alignment_loss(z_p, batch, mask, temperature)
    total, n = 0.0, 0
    for b in range(2):
        for j in range(s):
            if mask[b, 0, j] == 0:
                continue
            logits = []
            for i in range(t_x):
                if token_mask[b, i] == 0:
                    continue
                var = torch.exp(2 * logs_p[b, :, i])
                ll = -0.5 * math.log(2 * math.pi) - logs_p[b, :, i] - 0.5 * (z_p[b, :, j] - m_p[b, :, i]) ** 2 / var
                logits.append(ll.sum() / temperature)
            logits = torch.stack(logits)
            total += float(-(logits[token[b, j]] - torch.logsumexp(logits, 0)))
            n += 1
    assert float(got) == pytest.approx(total / n, rel=1e-5)


def _count_calls(monkeypatch, name: str) -> list[int]:
    """Wrap ``regrow_fit.<name>`` so each call appends to the returned list."""
    calls: list[int] = []
    real = getattr(regrow_fit, name)

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(regrow_fit, name, spy)
    return calls


def _regrow_posterior_briefly(model: VITS | None = None, **kwargs):
    """Three posterior-encoder steps on a tiny voice, no cache."""
    return regrow(_voice() if model is None else model, organs=["posterior_encoder"], n_utterances=6,
                  n_heldout=2, steps=3, batch_size=2, crop_frames=16, texts=TEXTS, progress=False,
                  use_cache=False, **kwargs)


def test_align_weight_reaches_the_posterior_fit(monkeypatch) -> None:
    calls = _count_calls(monkeypatch, "alignment_loss")
    report = _regrow_posterior_briefly(align_weight=0.5)
    assert len(calls) == 3 and report.steps["posterior_encoder"] == 3
    assert all(math.isfinite(v) for v in report.curves["posterior_encoder"])


def test_align_steps_add_a_final_alignment_phase(monkeypatch) -> None:
    """align_steps > 0: the main fit runs without the alignment loss, then a second optimizer
    run of align_steps steps at align_lr_factor times the learning rate adds it."""
    calls = _count_calls(monkeypatch, "alignment_loss")
    runs: list[tuple[str, int, float]] = []
    real_run = regrow_fit._run_steps

    def spy_run(name, params, step_loss, steps, lr, progress):
        runs.append((name, steps, lr))
        return real_run(name, params, step_loss, steps, lr, progress)

    monkeypatch.setattr(regrow_fit, "_run_steps", spy_run)
    report = _regrow_posterior_briefly(align_weight=0.5, align_steps=2, align_lr_factor=0.25, lr=4e-3)
    assert [(name, steps) for name, steps, _ in runs] == [("posterior_encoder", 3),
                                                         ("posterior_encoder (alignment)", 2)]
    assert runs[0][2] == pytest.approx(4e-3) and runs[1][2] == pytest.approx(1e-3)
    assert len(calls) == 2  # only in the final phase
    assert report.steps["posterior_encoder"] == 5 and len(report.curves["posterior_encoder"]) == 5
    assert report.settings["align_steps"] == 2
    runs.clear()
    _regrow_posterior_briefly(align_steps=2)  # no alignment weight: no final phase
    assert [name for name, _, _ in runs] == ["posterior_encoder"]
    with pytest.raises(ValueError, match="align_steps"):
        regrow_fit.FitOptions(align_steps=-1)
    with pytest.raises(ValueError, match="align_temperature"):
        regrow_fit.FitOptions(align_temperature=0.0)


def test_posterior_loss_without_fitting_the_log_std() -> None:
    """fit_log_std=False: same value, same gradient on the mean, and the log-std gets only the
    floor hinge's gradient (zero above the floor)."""
    torch.manual_seed(0)
    m, z = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    logs = torch.full((2, 3, 5), -0.5)
    logs[0, 0, 0] = -3.0  # below the floor
    mask = torch.tensor([[[1, 1, 1, 1, 1]], [[1, 1, 1, 0, 0]]], dtype=torch.float32)
    grads = []
    for fit in (True, False):
        m_q, logs_q = m.clone().requires_grad_(), logs.clone().requires_grad_()
        loss = regrow_fit.posterior_loss(m_q, logs_q, z, mask, math.log(0.1), fit_log_std=fit)
        loss.backward()
        grads.append((loss.item(), m_q.grad, logs_q.grad))
    (v_fit, gm_fit, gs_fit), (v_fixed, gm_fixed, gs_fixed) = grads
    assert v_fixed == pytest.approx(v_fit, rel=1e-6)
    assert torch.allclose(gm_fixed, gm_fit)
    assert gs_fit.abs().sum() > 0 and gs_fit[0, 1:].abs().sum() > 0
    hinge_only = torch.zeros_like(gs_fixed)
    hinge_only[0, 0, 0] = 2 * (-3.0 - math.log(0.1)) / float(mask.sum() * 3)
    assert torch.allclose(gs_fixed, hinge_only, atol=1e-7)


def test_align_log_std_frees_the_log_std_only_in_the_alignment_phase(monkeypatch) -> None:
    flags: list[bool] = []
    real = regrow_fit.posterior_loss

    def spy(*args, **kwargs):
        flags.append(args[5] if len(args) > 5 else kwargs.get("fit_log_std", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(regrow_fit, "posterior_loss", spy)
    report = _regrow_posterior_briefly(align_weight=0.5, align_steps=2, align_log_std="alignment")
    assert flags == [True, True, True, False, False]
    assert report.settings["align_log_std"] == "alignment"
    flags.clear()
    _regrow_posterior_briefly(align_weight=0.5, align_steps=2)
    assert flags == [True] * 5
    with pytest.raises(ValueError, match="align_log_std"):
        regrow_fit.FitOptions(align_log_std="mean")


@pytest.mark.parametrize("kl_weight, expected_calls", [(0.0, 0), (0.5, 3)])
def test_kl_weight_reaches_the_posterior_fit(monkeypatch, kl_weight, expected_calls) -> None:
    calls = _count_calls(monkeypatch, "kl_loss")
    report = _regrow_posterior_briefly(kl_weight=kl_weight)
    assert len(calls) == expected_calls and report.steps["posterior_encoder"] == 3
    assert report.settings["kl_weight"] == kl_weight


def test_bf16_autocast_runs_the_module_in_bfloat16_and_hands_back_float32() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(4, 4, 3, padding=1)
    x = torch.randn(2, 4, 9)
    seen = []
    probe = conv.register_forward_hook(lambda _m, _a, out: seen.append(out.dtype))
    with regrow_fit.bf16_autocast(conv, torch.device("cpu")):
        y = conv(x)
    probe.remove()
    assert seen == [torch.bfloat16] and y.dtype == torch.float32
    ref = conv(x)
    assert not torch.equal(y, ref) and torch.allclose(y, ref, atol=5e-2)
    y.sum().backward()  # gradients flow back through the cast
    assert conv.weight.grad is not None and conv.weight.grad.dtype == torch.float32
    assert not conv._forward_hooks and not conv._forward_pre_hooks  # the hooks leave with the context
    assert torch.is_autocast_enabled("cpu") is False
    with regrow_fit.bf16_autocast(conv, torch.device("cpu"), enabled=False):
        assert torch.equal(conv(x), ref)


def test_precision_options(monkeypatch) -> None:
    with pytest.raises(ValueError, match="precision"):
        regrow_fit.FitOptions(precision="fp16")
    cpu = torch.device("cpu")
    assert regrow_fit.resolve_precision("fp32", cpu) == "fp32"
    assert regrow_fit.resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(regrow_fit, "cpu_has_fast_bf16", lambda: True)
    assert regrow_fit.resolve_precision("auto", cpu) == "bf16"
    assert regrow_fit.resolve_precision("auto", torch.device("meta")) == "fp32"
    monkeypatch.setattr(regrow_fit, "cpu_has_fast_bf16", lambda: False)
    assert regrow_fit.resolve_precision("auto", cpu) == "fp32"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precision_reaches_the_posterior_fit(monkeypatch, precision) -> None:
    dtypes = []
    model = _voice()
    model.posterior_encoder.enc.register_forward_hook(
        lambda _m, _a, out: dtypes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else out.dtype))
    report = _regrow_posterior_briefly(model, precision=precision)
    # the three training steps run under bf16 autocast when asked; evaluation stays in float32
    assert dtypes.count(torch.bfloat16) == (3 if precision == "bf16" else 0)
    assert dtypes.count(torch.float32) == len(dtypes) - dtypes.count(torch.bfloat16) >= 1
    assert report.settings["precision"] == precision
    assert all(math.isfinite(v) for v in report.curves["posterior_encoder"])


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
    fp32 = regrow_fit.frozen_flow(model, torch.float32)
    assert torch.allclose(fp32(z, mask), ref, atol=1e-5)
    bf16 = regrow_fit.frozen_flow(model, torch.bfloat16)
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


@pytest.mark.parametrize("precision, flow_precision, expected", [
    ("bf16", None, None), ("fp32", "bf16", torch.bfloat16), ("fp32", "auto", torch.bfloat16), ("bf16", "fp32", None),
])
def test_flow_precision_reaches_the_posterior_fit(monkeypatch, precision, flow_precision, expected) -> None:
    """The alignment term runs the posterior through a frozen bfloat16 copy of the flow when
    ``flow_precision`` is bf16 ("auto": where the CPU has bfloat16 units, as for ``precision``),
    through the model's own flow otherwise (the default, whatever ``precision`` is)."""
    monkeypatch.setattr(regrow_fit, "cpu_has_fast_bf16", lambda: True)
    made: list[torch.dtype] = []
    real = regrow_fit.frozen_flow

    def spy(model, dtype=torch.float32):
        made.append(dtype)
        return real(model, dtype)

    monkeypatch.setattr(regrow_fit, "frozen_flow", spy)
    flow_calls: list[bool] = []  # grad enabled at each call of the model's own flow
    model = _voice()
    model.flow.register_forward_hook(lambda *_: flow_calls.append(torch.is_grad_enabled()))
    extra = {} if flow_precision is None else {"flow_precision": flow_precision}
    report = _regrow_posterior_briefly(model, precision=precision, align_weight=0.5, **extra)
    assert made == ([] if expected is None else [expected])
    assert report.settings["flow_precision"] == ("bf16" if expected is not None else "fp32")
    assert all(math.isfinite(v) for v in report.curves["posterior_encoder"])
    assert flow_calls.count(True) == (0 if expected is not None else 3)  # the three training steps
    assert flow_calls.count(False) >= 1  # the held-out evaluation uses the model's own flow either way
    with pytest.raises(ValueError, match="flow_precision"):
        regrow_fit.FitOptions(flow_precision="fp16")


def test_discriminator_pool_is_sized_to_the_steps() -> None:
    utts = list(range(300))  # stand-ins: only the selection is under test
    opts = regrow_fit.FitOptions(batch_size=8, segments_per_utterance=2)
    gen = torch.Generator().manual_seed(0)
    picked = regrow_fit.pool_utterances(utts, 30, opts, gen)  # 30 * 8 / 2 = 120 utterances
    assert len(picked) == 120 and len(set(picked)) == 120 and picked == sorted(picked)
    assert picked != utts[:120]  # a random subset, not the first ones
    assert len(regrow_fit.pool_utterances(utts, 1, opts, gen)) == regrow_fit.MIN_POOL_UTTERANCES
    assert regrow_fit.pool_utterances(utts, 100, opts, gen) == utts  # 400 needed, 300 there: all
    assert regrow_fit.pool_utterances(utts[:10], 1, opts, gen) == utts[:10]


def test_whitened_prior_loss_is_the_error_in_prior_standard_deviations() -> None:
    torch.manual_seed(0)
    z_p, z_t, logs_e = torch.randn(2, 3, 5), torch.randn(2, 3, 5), 0.3 * torch.randn(2, 3, 5)
    mask = torch.tensor([[[1, 1, 1, 1, 1]], [[1, 1, 1, 0, 0]]], dtype=torch.float32)
    got = regrow_fit.whitened_prior_loss(z_p, z_t, logs_e, mask)
    terms = [0.5 * float(((z_p[b, c, t] - z_t[b, c, t]) / logs_e[b, c, t].exp()) ** 2)
             for b in range(2) for c in range(3) for t in range(5) if mask[b, 0, t]]
    assert float(got) == pytest.approx(sum(terms) / len(terms), rel=1e-5)


@pytest.mark.parametrize("prior_weight, expected_calls", [(0.0, 0), (0.5, 3)])
def test_prior_weight_reaches_the_posterior_fit(monkeypatch, prior_weight, expected_calls) -> None:
    calls = _count_calls(monkeypatch, "whitened_prior_loss")
    report = _regrow_posterior_briefly(prior_weight=prior_weight)
    assert len(calls) == expected_calls and report.settings["prior_weight"] == prior_weight


def test_compiled_forward_swaps_in_a_compiled_forward_and_restores_it() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(4, 4, 3, padding=1)
    x = torch.randn(2, 4, 9)
    ref = conv(x)
    with regrow_fit.compiled_forward(conv):
        assert "forward" in vars(conv)  # the instance carries the compiled forward
        y = conv(x)
    assert "forward" not in vars(conv)
    assert torch.allclose(y, ref, atol=1e-5)
    assert list(conv.state_dict()) == ["weight", "bias"]


def test_compile_reaches_the_posterior_fit() -> None:
    model = _voice()
    keys = list(model.posterior_encoder.state_dict())
    report = _regrow_posterior_briefly(model, compile=True, precision="fp32")
    assert report.settings["compile"] is True and report.steps["posterior_encoder"] == 3
    assert all(math.isfinite(v) for v in report.curves["posterior_encoder"])
    assert list(model.posterior_encoder.state_dict()) == keys and "forward" not in vars(model.posterior_encoder.enc)

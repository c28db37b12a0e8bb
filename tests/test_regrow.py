"""Organ regrowth on a tiny VITS: the regrown organs learn, nothing else changes, the cache works."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from vits_surgery.config import preset
from vits_surgery.models.vits import VITS
from vits_surgery.regrowth import REGROWABLE, RegrowOptions, metrics, options, organs_from_report, regrow
from vits_surgery.regrowth import core as regrow_mod
from vits_surgery.regrowth import fit as regrow_fit
from vits_surgery.regrowth.metrics import duration_recovery, sdp_nll_per_token
from vits_surgery.regrowth.teacher import default_texts, synthesize_utterances, tokenize_texts

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


def _options(**changes) -> RegrowOptions:
    base = {"n_utterances": N_TRAIN, "n_heldout": N_HELDOUT, "steps": STEPS, "lr": LR, "batch_size": 8,
            "crop_frames": 32, "progress": False}
    return RegrowOptions(**{**base, **changes})


def _regrow(model: VITS, cache_dir, organs=None, **changes):
    return regrow(model, organs, _options(**changes), cache_dir=cache_dir, texts=TEXTS)


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
        regrow(model, organs="enc_q", options=RegrowOptions(n_utterances=4, n_heldout=2), texts=["a b c."],
               use_cache=False)


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


def _count_calls(monkeypatch, module, name: str) -> list[int]:
    """Wrap ``module.<name>`` so each call appends to the returned list."""
    calls: list[int] = []
    real = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


def _regrow_posterior_briefly(model: VITS | None = None, **changes):
    """Three posterior-encoder steps on a tiny voice, no cache."""
    opts = RegrowOptions(n_utterances=6, n_heldout=2, steps=3, batch_size=2, crop_frames=16, progress=False, **changes)
    return regrow(_voice() if model is None else model, ["posterior_encoder"], opts, texts=TEXTS, use_cache=False)


def test_align_weight_reaches_the_posterior_fit(monkeypatch) -> None:
    calls = _count_calls(monkeypatch, regrow_fit, "alignment_loss")
    report = _regrow_posterior_briefly(align_weight=0.5)
    assert len(calls) == 3 and report.steps["posterior_encoder"] == 3
    assert all(math.isfinite(v) for v in report.curves["posterior_encoder"])


def test_align_steps_add_a_final_alignment_phase(monkeypatch) -> None:
    """align_steps > 0: the main fit runs without the alignment loss, then a second optimizer
    run of align_steps steps at align_lr_factor times the learning rate adds it."""
    calls = _count_calls(monkeypatch, regrow_fit, "alignment_loss")
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
        RegrowOptions(align_steps=-1)
    with pytest.raises(ValueError, match="align_lr_factor"):
        RegrowOptions(align_lr_factor=0.0)


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
        RegrowOptions(align_log_std="mean")


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
        RegrowOptions(precision="fp16")
    cpu = torch.device("cpu")
    assert options.resolve_precision("fp32", cpu) == "fp32"
    assert options.resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(options, "cpu_has_fast_bf16", lambda: True)
    assert options.resolve_precision("auto", cpu) == "bf16"
    assert options.resolve_precision("auto", torch.device("meta")) == "fp32"
    monkeypatch.setattr(options, "cpu_has_fast_bf16", lambda: False)
    assert options.resolve_precision("auto", cpu) == "fp32"


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


def test_discriminator_pool_is_sized_to_the_steps() -> None:
    utts = list(range(300))  # stand-ins: only the selection is under test
    opts = RegrowOptions(batch_size=8, segments_per_utterance=2)
    gen = torch.Generator().manual_seed(0)
    picked = regrow_fit.pool_utterances(utts, 30, opts, gen)  # 30 * 8 / 2 = 120 utterances
    assert len(picked) == 120 and len(set(picked)) == 120 and picked == sorted(picked)
    assert picked != utts[:120]  # a random subset, not the first ones
    assert len(regrow_fit.pool_utterances(utts, 1, opts, gen)) == regrow_fit.MIN_POOL_UTTERANCES
    assert regrow_fit.pool_utterances(utts, 100, opts, gen) == utts  # 400 needed, 300 there: all
    assert regrow_fit.pool_utterances(utts[:10], 1, opts, gen) == utts[:10]


def test_options_presets() -> None:
    assert RegrowOptions.quick() == RegrowOptions()
    quick = RegrowOptions.quick()
    assert (quick.n_utterances, quick.heldout(), quick.steps, quick.align_weight) == (120, 12, None, 0.0)
    thorough = RegrowOptions.thorough()
    assert (thorough.n_utterances, thorough.heldout()) == (1000, 60)
    assert thorough.steps == {"posterior_encoder": 4500, "duration_posterior": 250, "discriminator": 60}
    assert (thorough.align_weight, thorough.align_steps, thorough.align_log_std) == (1.0, 2000, "alignment")
    assert RegrowOptions.thorough(n_utterances=10).n_utterances == 10
    assert "progress" not in quick.cache_settings()


def test_deprecated_keywords_warn_and_removed_experiments_refuse(monkeypatch) -> None:
    seen = []
    monkeypatch.setattr(regrow_mod, "_regrow_uncached", lambda *a, **k: seen.append(a[6]) or regrow_mod.RegrowReport(()))
    with pytest.warns(DeprecationWarning, match=r"regrow\(n_utterances=\.\.\.\) is deprecated"):
        regrow(_voice(), ["posterior_encoder"], n_utterances=6, n_heldout=2, texts=TEXTS, use_cache=False,
               progress=False)
    assert (seen[-1].n_utterances, seen[-1].n_heldout) == (6, 2)
    with pytest.warns(DeprecationWarning, match="kl_weight"):  # the old default: ignored, with a warning
        regrow(_voice(), ["posterior_encoder"], _options(steps=1, lr=None), kl_weight=0.0, texts=TEXTS, use_cache=False)
    for key, value in (("kl_weight", 0.5), ("prior_weight", 0.1), ("align_temperature", 2.0), ("compile", True),
                       ("flow_precision", "bf16")):
        with pytest.raises(TypeError, match=f"{key}.*benchmarks/regrow_terms.py"):
            regrow(_voice(), ["posterior_encoder"], _options(), texts=TEXTS, **{key: value})
    with pytest.raises(TypeError, match="unexpected keyword argument 'stepz'"):
        regrow(_voice(), stepz=3)


def test_deprecated_module_paths_warn() -> None:
    import vits_surgery.surgery.regrow as old
    import vits_surgery.surgery.regrow_data as old_data
    import vits_surgery.surgery.regrow_fit as old_fit
    from vits_surgery.regrowth import teacher

    with pytest.warns(DeprecationWarning, match="vits_surgery.regrowth.core.regrow"):
        assert old.regrow is regrow
    with pytest.warns(DeprecationWarning, match="TeacherUtterance"):
        assert old_data.Utterance is teacher.TeacherUtterance
    with pytest.warns(DeprecationWarning, match="TeacherUtterance"):
        assert teacher.Utterance is teacher.TeacherUtterance
    with pytest.warns(DeprecationWarning, match="RegrowOptions"):
        assert old_fit.FitOptions is RegrowOptions


def test_cache_key_covers_tokens_versions_and_device(regrown) -> None:
    import vits_surgery

    _, _, report, _, _ = regrown
    settings = report.settings
    assert settings["library"] == vits_surgery.__version__ and settings["torch"] == torch.__version__
    assert settings["device"] == "cpu" and len(settings["tokens"]) == 64
    key, model = regrow_mod._fingerprint, _voice()
    base = key(model, report.organs, settings)
    for field, other in (("library", "0.0.0"), ("torch", "0.0"), ("device", "cuda:0"), ("tokens", "0" * 64)):
        assert key(model, report.organs, {**settings, field: other}) != base, field


def test_token_ids_key_the_cache_not_only_the_text(tmp_path, monkeypatch) -> None:
    """Same texts, same config, other token ids (e.g. another phonemizer version): another entry."""
    first = _regrow(_voice(), tmp_path, organs=["duration_posterior"], steps=2, lr=None)
    assert _regrow(_voice(), tmp_path, organs=["duration_posterior"], steps=2, lr=None).cached
    real = regrow_mod.tokenize_texts
    monkeypatch.setattr(regrow_mod, "tokenize_texts", lambda model, texts: [ids[::-1] for ids in real(model, texts)])
    second = _regrow(_voice(), tmp_path, organs=["duration_posterior"], steps=2, lr=None)
    assert not second.cached and second.cache_path != first.cache_path
    assert second.settings["tokens"] != first.settings["tokens"] and second.settings["config"] == first.settings["config"]


def test_duration_posterior_alone_keys_the_posterior_encoder_it_measures_with(tmp_path) -> None:
    """Regrowing only the duration posterior still measures recovery through the posterior
    encoder: another posterior encoder is another entry, so its metrics are never stale."""
    first = _regrow(_voice(), tmp_path, organs=["duration_posterior"], steps=2, lr=None)
    again = _regrow(_voice(), tmp_path, organs=["duration_posterior"], steps=2, lr=None)
    assert again.cached and again.metrics == first.metrics
    changed = _voice()
    with torch.no_grad():
        changed.posterior_encoder.proj.bias.add_(0.5)
    fresh = _regrow(changed, tmp_path, organs=["duration_posterior"], steps=2, lr=None)
    assert not fresh.cached
    assert fresh.metrics["recovery_all_tokens"] != first.metrics["recovery_all_tokens"] or \
        fresh.metrics["kl"] != first.metrics["kl"]
    with torch.no_grad():  # the discriminator is not read when it does not regrow: not in the key
        changed.discriminator.nets[0].conv_post.bias.add_(1.0)
    assert _regrow(changed, tmp_path, organs=["duration_posterior"], steps=2, lr=None).cached


def test_recovery_counts_phoneme_tokens_and_all_tokens(regrown) -> None:
    _, after, report, _, heldout = regrown
    special = metrics.special_token_ids(after)
    assert special  # the tiny front end interleaves a blank
    hits = {"phonemes": [0, 0], "all": [0, 0]}
    with torch.no_grad():
        for u in heldout:
            durations, _, _ = metrics._training_path(after.eval(), u, 0.0, None)
            ok = (durations - u.durations).abs() <= 1
            phoneme = torch.tensor([int(t) not in special for t in u.tokens])
            hits["phonemes"][0] += int((ok & phoneme).sum())
            hits["phonemes"][1] += int(phoneme.sum())
            hits["all"][0] += int(ok.sum())
            hits["all"][1] += ok.numel()
    assert 0 < hits["phonemes"][1] < hits["all"][1]  # blanks left out
    for tokens, (ok, n) in hits.items():
        assert duration_recovery(after, heldout, sample=False, tokens=tokens) == pytest.approx(ok / n)
    with pytest.raises(ValueError, match="tokens"):
        duration_recovery(after, heldout, tokens="phones")
    keys = {"recovery_phonemes", "recovery_all_tokens", "recovery_mean_phonemes", "recovery_mean_all_tokens"}
    assert keys <= set(report.metrics) and "recovery" not in report.metrics
    assert report.duration_recovery == report.metrics["recovery_phonemes"]
    assert "phoneme tokens" in report.summary()


def test_extra_terms_see_the_step_and_add_to_the_loss(monkeypatch) -> None:
    seen = []

    class Probe:
        needs_sample = True

        def __call__(self, step):
            seen.append((step.phase, step.sampled, tuple(step.z_p.shape), step.post.mask.shape[-1]))
            return step.z_p.new_zeros(())

        def __repr__(self) -> str:
            return "Probe()"

    report = _regrow_posterior_briefly(extra_terms=[Probe()], align_weight=0.5, align_steps=1)
    assert [s[0] for s in seen] == ["main"] * 3 + ["alignment"]
    assert all(s[1] for s in seen) and report.settings["extra_terms"] == ["Probe()"]

"""Auto-RGN: relative gradient norms, their ranking, and the plans built from them."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from surgery_helpers import speech_batch, tiny_model

from vits_surgery import audio
from vits_surgery import losses as L
from vits_surgery.models.commons import slice_segments
from vits_surgery.surgery.auto import plan_from_rgn, relative_gradient_norms, sub_organ_of
from vits_surgery.surgery.freeze import apply_plan
from vits_surgery.surgery.plan import SurgeryPlan
from vits_surgery.surgery.registry import ComponentRegistry, reachable_losses
from vits_surgery.surgery.trainer import SurgicalTrainer, TrainConfig

ONLY = {  # loss weights that keep a single generator term
    term: {t: (1.0 if t == term else 0.0) for t in ("gen/kl", "gen/dur", "gen/mel", "gen/adv", "gen/fm")}
    for term in ("gen/kl", "gen/dur", "gen/mel")
}


@pytest.fixture(scope="module")
def batches():
    config = tiny_model().config
    return [speech_batch(config, 2, seed=i, max_seconds=0.3) for i in range(2)]


@pytest.fixture(scope="module")
def report(batches):
    return relative_gradient_norms(tiny_model(), batches, n_batches=2)


def _hand_losses(model, batch, gen):
    """The full VITS generator loss of one batch, written out with the model's ``forward``."""
    cfg = model.config
    out = model(batch.tokens, batch.token_lengths, batch.spec, batch.spec_lengths, generator=gen)
    seg, hop = cfg.segment_size, cfg.audio.hop_length
    spec = slice_segments(batch.spec, out.segment_starts, seg)
    a = cfg.audio
    target = audio.amp_to_log(
        audio.spec_to_mel(spec, a.sample_rate, a.n_fft, a.n_mels, a.mel_fmin, a.mel_fmax)
    )
    with torch.no_grad():
        real = model.discriminator(slice_segments(batch.wav, out.segment_starts * hop, seg * hop))
    fake = model.discriminator(out.audio_hat)
    terms = {
        "gen/kl": L.kl_loss(out.z_p, out.logs_q, out.m_p_expanded, out.logs_p_expanded, out.y_mask),
        "gen/dur": L.duration_loss(out.duration_nll, out.x_mask),
        "gen/mel": L.mel_loss(target, audio.log_mel(out.audio_hat, a)),
        "gen/adv": L.generator_adversarial_loss(fake.real_scores),
        "gen/fm": L.feature_matching_loss(real.real_features, fake.real_features),
    }
    return L.weighted_total(terms, L.DEFAULT_WEIGHTS)


def test_rgn_equals_a_hand_computation(batches):
    model = tiny_model()
    report = relative_gradient_norms(model, batches, n_batches=2, seed=3)
    hand = copy.deepcopy(model)
    hand.train()
    names = ["decoder.conv_post.weight", "text_encoder.proj.weight", "flow.flows.0.pre.weight"]
    organ = [(n, p) for n, p in hand.named_parameters() if n.startswith("posterior_encoder.")]
    params = dict(hand.named_parameters())
    torch.manual_seed(3)
    gen = torch.Generator().manual_seed(3)
    norms: dict[str, list[float]] = {n: [] for n in names}
    organ_norms = []
    for batch in batches:
        total = _hand_losses(hand, batch, gen)
        grads = torch.autograd.grad(
            total, [params[n] for n in names] + [p for _, p in organ], allow_unused=True
        )
        for n, g in zip(names, grads, strict=False):
            norms[n].append(float(g.norm()))
        organ_norms.append(
            math.sqrt(sum(float(g.pow(2).sum()) for g in grads[len(names) :] if g is not None))
        )
    for n in names:
        expected = sum(norms[n]) / 2 / float(params[n].detach().norm())
        row = report.row(n, "tensor")
        assert row.rgn == pytest.approx(expected, rel=1e-4), n
        assert row.grad_norm == pytest.approx(sum(norms[n]) / 2, rel=1e-4)
    organ_param_norm = math.sqrt(sum(float(p.detach().pow(2).sum()) for _, p in organ))
    row = report.row("posterior_encoder")
    assert row.rgn == pytest.approx(sum(organ_norms) / 2 / organ_param_norm, rel=1e-4)
    assert row.numel == sum(p.numel() for _, p in organ)


def test_model_flags_grads_and_rng_are_left_as_they_were(batches):
    model = tiny_model()
    apply_plan(model, SurgeryPlan.cadence())  # a plan already applied: frozen modules in eval
    model.train()
    marker = torch.full_like(model.decoder.conv_post.weight, 7.0)
    model.decoder.conv_post.weight.grad = marker
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    train_method = model.__dict__["train"]
    rng = torch.get_rng_state()
    relative_gradient_norms(model, batches, n_batches=2)
    assert torch.equal(torch.get_rng_state(), rng)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert model.__dict__["train"] is train_method
    assert model.decoder.conv_post.weight.grad is marker and bool((marker == 7.0).all())
    assert all(p.grad is None for n, p in model.named_parameters() if n != "decoder.conv_post.weight")
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())
    model.train()  # the cadence plan's frozen-eval behaviour still works
    assert not model.text_encoder.training and model.duration_predictor.training


@pytest.mark.parametrize("term", sorted(ONLY))
def test_only_the_organs_a_term_reaches_score(term, batches):
    model = tiny_model()
    report = relative_gradient_norms(model, batches[:1], n_batches=1, loss_weights=ONLY[term])
    reach = reachable_losses(model.config)
    expected = {o for o, terms in reach.items() if term in terms and o != "discriminator"}
    assert report.terms == (term,)
    assert set(report.ranking()) == expected
    assert report.organs[0].name in expected and report.organs[0].rank == 1
    for row in report.organs:
        assert (row.rgn > 0) == (row.name in expected), row
    if term == "gen/dur":
        assert report.ranking() == ["duration_predictor"]


def test_ranking_and_normalisation(report):
    for level in ("organ", "sub_organ", "tensor"):
        rows = report.rows(level)
        assert [r.rank for r in rows] == list(range(1, len(rows) + 1))
        finite = [r.rgn for r in rows if math.isfinite(r.rgn)]
        assert finite == sorted(finite, reverse=True)
        assert rows[0].normalized == 1.0
        assert all(r.normalized == pytest.approx(r.rgn / rows[0].rgn) for r in rows if math.isfinite(r.rgn))
    registry = ComponentRegistry(tiny_model())
    assert {r.name for r in report.organs} == set(registry.groups["generator"])
    total = sum(r.numel for r in report.organs)
    assert total == sum(r.numel for r in report.sub_organs) == sum(r.numel for r in report.tensors)
    assert total == sum(registry.num_parameters(o) for o in registry.groups["generator"])
    zero = [r for r in report.tensors if r.param_norm == 0]  # zero-initialised layers
    assert zero and all(math.isnan(r.rgn) and r.rank > len(report.tensors) - len(zero) for r in zero)
    assert set(report.losses) == set(report.terms) and all(math.isfinite(v) for v in report.losses.values())


def test_report_prints_as_tables(report):
    text = str(report)
    order = [text.index(f"  {r.name} ") for r in report.organs]
    assert order == sorted(order)
    assert "RGN" in text and "normalized" in text and "sub-organ" in text
    page = report._repr_html_()
    assert page.count("<table>") == 2 and report.organs[0].name in page
    data = json.loads(json.dumps(report.to_dict()))
    assert [r["name"] for r in data["organs"]] == [r.name for r in report.organs]
    assert data["n_batches"] == 2 and data["terms"] == list(report.terms)
    assert report.table("tensor", limit=3).endswith(f"... {len(report.tensors) - 3} more")


def test_sub_organ_paths():
    assert sub_organ_of("decoder.ups.0.parametrizations.weight.original0") == "decoder.ups.0"
    assert sub_organ_of("decoder.resblocks.3.convs.1.bias") == "decoder.resblocks.3"
    assert sub_organ_of("text_encoder.encoder.attn_layers.0.conv_q.weight") == "text_encoder.encoder"
    assert (
        sub_organ_of("text_encoder.encoder.attn_layers.0.conv_q.weight", 2)
        == "text_encoder.encoder.attn_layers.0"
    )
    assert sub_organ_of("speaker_embedding.weight") == "speaker_embedding"
    with pytest.raises(ValueError, match="depth"):
        sub_organ_of("decoder.conv_pre.weight", 0)


def test_auto_plan_is_a_valid_plan(batches, report, tmp_path):
    import vits_surgery

    model = tiny_model()
    plan = vits_surgery.auto_plan(model, batches, top_k=2, n_batches=2, scale_lr=True)
    with pytest.warns(DeprecationWarning, match="auto_plan"):  # the old spelling, one release
        assert SurgeryPlan.auto(model, batches, top_k=2, n_batches=2, scale_lr=True) == plan
    assert plan.name == "auto" and list(plan.train) == report.ranking()[:2]
    top, second = (report.row(n) for n in plan.train)
    assert plan.lr_scale == pytest.approx({top.name: 1.0, second.name: second.rgn / top.rgn})
    groups = apply_plan(model, plan)
    assert set(groups) >= set(plan.train)
    assert SurgeryPlan.from_json(plan.to_json()) == plan
    trainer = SurgicalTrainer(model, plan, out_dir=tmp_path, lr=1e-3, config=TrainConfig(progress=False))
    lrs = {g["name"]: g["lr"] for g in trainer.optimizers["generator"].param_groups}
    assert lrs == pytest.approx({top.name: 1e-3, second.name: 1e-3 * second.rgn / top.rgn})


def test_threshold_top_k_and_sub_organs(report, batches):
    plan = plan_from_rgn(report, top_k=None, threshold=0.02)
    assert list(plan.train) == [r.name for r in report.organs if r.normalized >= 0.02]
    assert 1 <= len(plan.train) < len(report.organs) and plan.lr_scale == {}
    plan = plan_from_rgn(report, top_k=3, level="sub_organ")
    assert list(plan.train) == report.ranking("sub_organ")[:3]
    apply_plan(tiny_model(), plan)
    dur_only = plan_from_rgn(
        relative_gradient_norms(tiny_model(), batches[:1], n_batches=1, loss_weights=ONLY["gen/dur"]), top_k=3
    )
    assert dur_only.train == ("duration_predictor",)  # the only organ with a gradient
    assert dur_only.loss_weights == {"gen/kl": 0.0, "gen/mel": 0.0, "gen/adv": 0.0, "gen/fm": 0.0}


def test_per_tensor_learning_rates_reach_the_optimizer(report, tmp_path):
    plan = plan_from_rgn(report, top_k=1, per_tensor_lr=True)
    organ = report.organs[0].name
    tensors = [r for r in report.tensors if r.organ == organ]
    assert set(plan.train) == {r.name for r in tensors}
    top = max(r.rgn for r in tensors if math.isfinite(r.rgn))
    expected = {
        r.name: max(r.rgn / top if math.isfinite(r.rgn) else (1.0 if r.grad_norm > 0 else 0.0), 1e-3)
        for r in tensors
    }
    model = tiny_model()
    trainer = SurgicalTrainer(model, plan, out_dir=tmp_path, lr=2e-3, config=TrainConfig(progress=False))
    groups = trainer.optimizers["generator"].param_groups
    params = dict(model.named_parameters())
    assert {g["name"]: g["lr"] for g in groups} == pytest.approx({n: 2e-3 * s for n, s in expected.items()})
    assert all(g["params"] == [params[g["name"]]] for g in groups)
    assert len({round(g["lr"], 12) for g in groups}) > 5  # the scales really differ
    trained = {
        n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("discriminator.")
    }
    assert trained == {n for n in params if n.startswith(organ + ".")}


def test_bad_arguments_are_refused(report, batches):
    with pytest.raises(ValueError, match="top_k"):
        plan_from_rgn(report, top_k=0)
    with pytest.raises(ValueError, match="threshold"):
        plan_from_rgn(report, threshold=1.5)
    with pytest.raises(ValueError, match="choose one"):
        plan_from_rgn(report, per_tensor_lr=True, scale_lr=True)
    with pytest.raises(ValueError, match="level"):
        plan_from_rgn(report, level="tensor")
    with pytest.raises(ValueError, match="n_batches"):
        relative_gradient_norms(tiny_model(), batches, n_batches=0)
    with pytest.raises(ValueError, match="no batch"):
        relative_gradient_norms(tiny_model(), [])
    with pytest.raises(TypeError, match="Batch"):
        relative_gradient_norms(tiny_model(), [{"tokens": 1}])
    with pytest.raises(KeyError, match="no organ named"):
        report.row("decodr")


def test_auto_rgn_builds_no_trainer_and_takes_a_loss_path(batches, report, monkeypatch):
    """The scores come from the shared LossPath (no SurgicalTrainer is built); a LossPath
    subclass changes the loss they rank by; the deprecated trainer_cls still works, with a warning."""
    from vits_surgery.surgery import trainer as trainer_module
    from vits_surgery.surgery.step import LossPath

    def no_trainer(*args, **kwargs):
        raise AssertionError("Auto-RGN must not build a trainer")

    monkeypatch.setattr(trainer_module.SurgicalTrainer, "__init__", no_trainer)
    model = tiny_model()
    again = relative_gradient_norms(model, batches, n_batches=2)
    assert again.ranking() == report.ranking()

    class DoubledDuration(LossPath):
        def generator_losses(self, batch, out, disc_out=None):
            losses = super().generator_losses(batch, out, disc_out)
            return {k: (2 * v if k == "gen/dur" else v) for k, v in losses.items()}

    doubled = relative_gradient_norms(model, batches, n_batches=2, loss_path_cls=DoubledDuration)
    assert doubled.losses["gen/dur"] == pytest.approx(2 * again.losses["gen/dur"], rel=1e-5)
    monkeypatch.undo()
    with pytest.warns(DeprecationWarning, match="trainer_cls"):
        old = relative_gradient_norms(model, batches, n_batches=2, trainer_cls=SurgicalTrainer)
    assert old.ranking() == again.ranking()

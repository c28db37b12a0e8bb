"""The cached cadence step: same gradients as the full path, fallback, cache keys, corrupt
entries, ``fit`` end to end and bit-exact resume."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch
from surgery_helpers import speech_batch, tiny_config, tiny_model

from vits_surgery.convert.native import read_native
from vits_surgery.data.dataset import Sample
from vits_surgery.data.loader import collate
from vits_surgery.durations.cache import DurationCache, MASDurations
from vits_surgery.durations.step import CadenceStep, utterance_batches
from vits_surgery.models.vits import TrainNoise
from vits_surgery.surgery.callbacks import RunLogger, read_run
from vits_surgery.surgery.plan import SurgeryPlan
from vits_surgery.surgery.rundir import step_dir
from vits_surgery.surgery.trainer import SurgicalTrainer, TrainConfig

LOG = "vits_surgery.durations"


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VITS_SURGERY_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def batches():
    config = tiny_config()
    return [speech_batch(config, 2, seed=i) for i in range(3)]


def _trainer(plan, out_dir, model=None, data=None, **cfg):
    """A trainer whose cached cadence step (if any) takes the "mas" source (the "auto" default is
    tested in test_auto_source.py)."""
    cfg.setdefault("progress", False)
    cfg.setdefault("seed", 0)
    trainer = SurgicalTrainer(model or tiny_model(), plan, data, out_dir=out_dir, config=TrainConfig(**cfg))
    if trainer.cadence is not None:
        trainer.cadence = CadenceStep(trainer, source="mas")
    return trainer


def _sampled_posterior_noise(trainer, batch):
    """The posterior noise the "mas" source draws for each utterance (seeded from its key)."""
    cache = trainer.cadence.cache
    c = trainer.model.config.inter_channels
    noise = torch.zeros(len(batch), c, batch.spec.shape[-1])
    for i in range(len(batch)):
        n = int(batch.spec_lengths[i])
        gen = torch.Generator().manual_seed(int(cache.key(batch, i)[:15], 16))
        noise[i, :, :n] = torch.randn((c, n), generator=gen)
    return noise


def _dp_grads(model):
    return {n: p.grad.clone() for n, p in model.duration_predictor.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("speakers", [0, 3])
def test_cached_step_gives_the_full_step_gradients(speakers, tmp_path):
    overrides = {"n_speakers": speakers, "gin_channels": 8} if speakers else {}
    if speakers:
        overrides["duration_predictor.condition_on_speaker"] = True
    trainer = _trainer(SurgeryPlan.cadence(), tmp_path, model=tiny_model(**overrides))
    model = trainer.model
    assert isinstance(trainer.cadence, CadenceStep)
    batch = speech_batch(model.config, 3, seed=4)
    if speakers:
        batch = dataclasses.replace(batch, speakers=torch.tensor([0, 2, 1]))
    d_noise = torch.randn(len(batch), 2, batch.tokens.shape[1], generator=torch.Generator().manual_seed(3))
    model.train()
    # the full pruned path, with the posterior draw the cache takes for each utterance
    noise = TrainNoise(posterior=_sampled_posterior_noise(trainer, batch), duration=d_noise)
    torch.manual_seed(7)
    out = trainer.forward_generator(batch, noise)
    full = trainer.generator_losses(batch, out)["gen/dur"]
    full.backward()
    full_grads = _dp_grads(model)
    model.zero_grad(set_to_none=True)
    # the cached path: same durations, the duration predictor alone
    cached = trainer.cadence.losses(batch, TrainNoise(duration=d_noise))
    model.zero_grad(set_to_none=True)
    calls = []
    hooks = [getattr(model, o).register_forward_pre_hook(lambda *a, o=o: calls.append(o))
             for o in ("text_encoder", "posterior_encoder", "flow", "decoder")]
    torch.manual_seed(7)
    cached = trainer.cadence.losses(batch, TrainNoise(duration=d_noise))["gen/dur"]
    cached.backward()
    for h in hooks:
        h.remove()
    assert calls == []  # served from the cache: no frozen organ runs
    inputs = trainer.cadence.cache.inputs(batch)
    assert torch.equal(inputs.durations, out.path.sum(dim=2).unsqueeze(1))
    torch.testing.assert_close(cached, full, rtol=1e-6, atol=1e-6)
    assert set(_dp_grads(model)) == set(full_grads) and full_grads
    for n, g in _dp_grads(model).items():
        torch.testing.assert_close(g, full_grads[n], rtol=1e-5, atol=1e-7, msg=lambda m, n=n: f"{n}: {m}")


def test_a_plan_that_trains_an_upstream_organ_takes_the_full_path(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOG)
    for plan, why in [
        (SurgeryPlan(train=["duration_predictor", "text_encoder"]), "also trains text_encoder"),
        (SurgeryPlan(train=["duration_predictor", "flow"]), "also trains flow"),
        (SurgeryPlan(train=["duration_predictor", "posterior_encoder"]), "also trains posterior_encoder"),
        (SurgeryPlan.cadence(frozen_eval=False), "frozen_eval=False"),
    ]:
        caplog.clear()
        trainer = _trainer(plan, tmp_path)
        assert trainer.cadence is None
        assert "cadence: full path" in caplog.text and why in caplog.text
    caplog.clear()
    assert _trainer(SurgeryPlan.timbre(), tmp_path).cadence is None
    assert "cadence" not in caplog.text

    class Custom(SurgicalTrainer):
        def generator_losses(self, batch, out, disc_out=None):
            return super().generator_losses(batch, out, disc_out)

    custom = Custom(tiny_model(), SurgeryPlan.cadence(), out_dir=tmp_path, config=TrainConfig(progress=False))
    assert custom.cadence is None and "Custom overrides generator_losses" in caplog.text
    assert _trainer(SurgeryPlan(train=["duration_predictor.flows"]), tmp_path).cadence is not None
    assert _trainer(SurgeryPlan(lora={"duration_predictor": 2}), tmp_path).cadence is not None


def test_full_path_trainer_still_trains_the_duration_predictor(batches, tmp_path):
    trainer = _trainer(SurgeryPlan(train=["duration_predictor", "text_encoder"]), tmp_path)
    logs = trainer.training_step(batches[0])
    assert set(logs) >= {"gen/dur", "gen/kl"} and trainer.step == 1


class _Fixed:
    """A stand-in duration source: one frame per token."""

    name = "fixed"
    reads = ()

    def settings(self):
        return {}

    def __call__(self, model, inputs):
        return inputs.text.mask[:, 0].long()


def test_cache_key_covers_weights_tokens_audio_and_source(batches, tmp_path):
    model = tiny_model()
    batch = batches[0]
    cache = DurationCache(model, "mas", tmp_path)
    key = cache.key(batch, 0)
    assert key == DurationCache(model, "mas", tmp_path).key(batch, 0)  # stable
    assert key != cache.key(batch, 1)
    for organ in ("text_encoder", "posterior_encoder", "flow", "decoder"):
        with torch.no_grad():
            p = next(getattr(model, organ).parameters())
            saved = p.clone()
            p.add_(1e-3)
            cache.reset()
            changed = cache.key(batch, 0) != key
            p.copy_(saved)
            cache.reset()
        assert changed == (organ != "decoder"), organ  # the decoder is not read
    assert cache.key(batch, 0) == key
    tokens = batch.tokens.clone()
    tokens[0, 0] = tokens[0, 0] % 10 + 1 if tokens[0, 0] != 1 else 2
    assert cache.key(dataclasses.replace(batch, tokens=tokens), 0) != key
    assert cache.key(dataclasses.replace(batch, spec=batch.spec * 1.01), 0) != key
    assert DurationCache(model, MASDurations(noise_scale=0.0), tmp_path).key(batch, 0) != key
    fixed = DurationCache(model, _Fixed(), tmp_path)
    assert fixed.key(batch, 0) != key
    inputs = fixed.inputs(batch)
    assert torch.equal(inputs.durations[:, 0], inputs.x_mask[:, 0])
    with pytest.raises(ValueError, match="unknown duration source"):
        DurationCache(model, "nope", tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other_key"])
def test_a_corrupt_entry_is_recomputed_with_a_warning(damage, batches, tmp_path, caplog):
    model, batch = tiny_model(), batches[0]
    first = DurationCache(model, "mas", tmp_path)
    reference = first.inputs(batch)
    assert first.stats["computed"] == 2
    path = first.path(first.key(batch, 0))
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not a safetensors file")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # a valid file holding another utterance's entry
        path.write_bytes(first.path(first.key(batch, 1)).read_bytes())
    caplog.set_level(logging.WARNING, logger=LOG)
    second = DurationCache(model, "mas", tmp_path)
    again = second.inputs(batch)
    assert "unreadable or inconsistent" in caplog.text and str(path) in caplog.text
    assert second.stats["corrupt"] == 1 and second.stats["computed"] == 1 and second.stats["loaded"] == 1
    torch.testing.assert_close(again.hidden, reference.hidden)
    assert torch.equal(again.durations, reference.durations)
    third = DurationCache(model, "mas", tmp_path)  # the rewritten entry loads
    third.inputs(batch)
    assert third.stats["loaded"] == 2 and third.stats["computed"] == 0
    assert not list(tmp_path.rglob("*.tmp*"))


def test_precompute_reads_a_loader_once_without_moving_it(tmp_path):
    config = tiny_config()
    batch = speech_batch(config, 4, seed=9)
    samples = [
        Sample(tokens=batch.tokens[i, : int(batch.token_lengths[i])], spec=batch.spec[i, :, : int(batch.spec_lengths[i])],
               wav=batch.wav[i, :, : int(batch.spec_lengths[i]) * config.audio.hop_length], speaker=None,
               text=batch.texts[i], id=batch.ids[i])
        for i in range(4)
    ]
    loader = torch.utils.data.DataLoader(samples, batch_size=2, shuffle=True, collate_fn=collate)
    chunks = list(utterance_batches(loader, batch_size=3))
    assert [len(b) for b in chunks] == [3, 1]
    assert utterance_batches(iter([batch])) is None
    trainer = _trainer(SurgeryPlan.cadence(), tmp_path, data=loader)
    rng, gen = torch.get_rng_state(), trainer.rng.get_state()
    trainer.cadence.prepare(loader)
    assert torch.equal(torch.get_rng_state(), rng) and torch.equal(trainer.rng.get_state(), gen)
    assert trainer.cadence.prepared["computed"] == 4
    for b in loader:  # every training batch is then served from memory
        trainer.cadence.cache.inputs(b)
    assert trainer.cadence.cache.stats["computed"] == 4


def test_fit_end_to_end_on_cached_inputs(batches, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOG)
    trainer = _trainer(SurgeryPlan.cadence(), tmp_path / "run", data=batches, save_every=0, log_every=0)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.callbacks.append(RunLogger())
    logs = trainer.fit(max_steps=4)
    assert trainer.step == 4 and math_finite(logs["gen/dur"])
    assert "cadence: cached durations (source: mas), 6 utterances precomputed in" in caplog.text
    for n, p in trainer.model.named_parameters():
        assert torch.equal(p, before[n]) != n.startswith("duration_predictor."), n
    run = read_run(tmp_path / "run")
    assert run["cadence"]["path"] == "cached" and run["cadence"]["source"] == "mas"
    assert run["cadence"]["utterances"] == 6 and run["cadence"]["computed"] == 6
    assert json.loads(json.dumps(run["cadence"])) == run["cadence"]
    # a second run on the same data loads every entry
    caplog.clear()
    again = _trainer(SurgeryPlan.cadence(), tmp_path / "run2", data=batches, save_every=0, log_every=0)
    again.fit(max_steps=1)
    assert again.cadence.prepared["loaded"] == 6 and again.cadence.prepared["computed"] == 0


def math_finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


@pytest.mark.parametrize("wipe_cache", [False, True])
def test_resume_is_bit_exact_on_cached_inputs(wipe_cache, batches, tmp_path, monkeypatch):
    def run(out, steps, resume=False):
        trainer = _trainer(SurgeryPlan.cadence(), out, data=batches, save_every=2, log_every=0, keep_last=3)
        trainer.fit(max_steps=steps, resume=resume)
        return trainer

    straight = run(tmp_path / "a", 6)
    run(tmp_path / "b", 2)
    if wipe_cache:  # the resumed process recomputes every entry
        monkeypatch.setenv("VITS_SURGERY_CACHE", str(tmp_path / "fresh_cache"))
    resumed = run(tmp_path / "b", 6, resume=True)
    assert resumed.cadence.prepared["computed"] == (6 if wipe_cache else 0)
    a, _, _ = read_native(step_dir(tmp_path / "a", 6))
    b, _, _ = read_native(step_dir(tmp_path / "b", 6))
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(straight.rng.get_state(), resumed.rng.get_state())

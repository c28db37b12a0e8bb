"""ComponentRegistry: names, aliases, sub-organs, groups, table, loss reachability."""

from __future__ import annotations

import pytest
import torch
from surgery_helpers import explicit_noise, reference_losses, speech_batch, tiny_model

from vits_surgery.losses import discriminator_loss
from vits_surgery.models.commons import slice_segments
from vits_surgery.surgery.freeze import apply_plan
from vits_surgery.surgery.plan import SurgeryPlan
from vits_surgery.surgery.registry import ALIASES, ComponentRegistry


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def multi():
    return tiny_model(n_speakers=3, gin_channels=8)


def _ids(params):
    return [id(p) for p in params]


def test_organs_present(model, multi):
    reg = ComponentRegistry(model)
    assert "speaker_embedding" not in reg.organs
    assert set(reg.organs) == {"text_encoder", "duration_predictor", "posterior_encoder", "flow", "decoder", "discriminator"}
    assert "speaker_embedding" in ComponentRegistry(multi).organs
    assert _ids(reg.parameters("decoder")) == _ids(model.decoder.parameters())


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_aliases_resolve_to_the_same_parameters(multi, alias):
    reg = ComponentRegistry(multi)
    organ = ALIASES[alias]
    assert reg.resolve(alias) == (organ,)
    assert _ids(reg.parameters(alias)) == _ids(getattr(multi, organ).parameters())


def test_dotted_sub_organs_and_parameters(model):
    reg = ComponentRegistry(model)
    assert _ids(reg.parameters("decoder.ups.2")) == _ids(model.decoder.ups[2].parameters())
    # an alias as the head of a dotted path
    assert reg.resolve("dec.ups.2") == ("decoder.ups.2",)
    assert reg.resolve("waveform_decoder.ups.1") == ("decoder.ups.1",)
    assert reg.organ_of("enc_p.encoder.attn_layers.0") == "text_encoder"
    # a single parameter path
    assert _ids(reg.parameters("text_encoder.emb.weight")) == [id(model.text_encoder.emb.weight)]
    assert reg.losses("decoder.ups.2") == reg.losses("decoder")


def test_unknown_names_suggest_closest(model, multi):
    reg = ComponentRegistry(model)
    with pytest.raises(KeyError, match="did you mean 'decoder'"):
        reg.resolve("decodr")
    with pytest.raises(KeyError, match="decoder.ups.2"):
        reg.parameters("decoder.upz.2")
    with pytest.raises(KeyError, match="decoder.ups"):
        reg.resolve("decoder.ups.7")
    with pytest.raises(KeyError, match="no 'speaker_embedding'"):
        reg.resolve("emb_g")
    # the message is readable (no KeyError quoting)
    with pytest.raises(KeyError) as err:
        reg.resolve("flw")
    assert str(err.value).startswith("unknown component 'flw'")
    assert ComponentRegistry(multi).resolve("emb_g") == ("speaker_embedding",)


def test_groups(model):
    reg = ComponentRegistry(model)
    reg.register("upsamplers", ["decoder.ups.1", "dec.ups.2"])
    expected = list(model.decoder.ups[1].parameters()) + list(model.decoder.ups[2].parameters())
    assert _ids(reg.parameters("upsamplers")) == _ids(expected)
    reg.register("upper", ["upsamplers", "flow"])  # groups nest
    assert reg.resolve("upper") == ("decoder.ups.1", "decoder.ups.2", "flow")
    assert reg.losses("upper") == ("gen/kl", "gen/mel", "gen/adv", "gen/fm")
    # built-in generator group: every organ but the discriminator
    gen_ids = set(_ids(reg.parameters("generator")))
    assert gen_ids == {id(p) for n, p in model.named_parameters() if not n.startswith("discriminator.")}
    for bad in ("decoder", "dec", "generator", "a.b"):
        with pytest.raises(ValueError):
            reg.register(bad, ["flow"])
    with pytest.raises(KeyError, match="did you mean"):
        reg.register("oops", ["decoder.upss"])
    with pytest.raises(ValueError, match="no members"):
        reg.register("empty", [])


def test_table_text_and_html():
    model = tiny_model()
    reg = ComponentRegistry(model)
    apply_plan(model, SurgeryPlan.cadence(), reg)
    rows = {r["name"]: r for r in reg.rows()}
    assert rows["duration_predictor"]["trainable"] == rows["duration_predictor"]["params"] > 0
    assert rows["decoder"]["trainable"] == 0
    assert rows["decoder"]["params"] == sum(p.numel() for p in model.decoder.parameters())
    text = reg.table()
    assert str(reg) == text
    lines = text.splitlines()
    assert lines[0].split() == ["organ", "params", "trainable", "losses"]
    dp_line = next(line for line in lines if line.startswith("duration_predictor"))
    assert f"{rows['duration_predictor']['params']:,}" in dp_line and "gen/dur" in dp_line
    assert "frozen" in next(line for line in lines if line.startswith("decoder"))
    html_text = reg._repr_html_()
    assert html_text.startswith("<table>") and "duration_predictor" in html_text and "frozen" in html_text


def _organs_reached(model, loss, reg):
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    reached = set()
    for organ in reg.organs:
        if any(p.grad is not None for p in reg.parameters(organ)):  # in the graph (zero-init layers give 0)
            reached.add(organ)
    return reached


@pytest.mark.parametrize(
    "overrides",
    [{}, {"duration_predictor.detach_input": False, "n_speakers": 2, "gin_channels": 8}],
    ids=["default", "speakers-undetached"],
)
def test_reachability_matches_autograd(overrides):
    """The registry's loss -> organ table equals what autograd actually reaches."""
    torch.manual_seed(0)
    model = tiny_model(**overrides)
    model.train()
    reg = ComponentRegistry(model)
    batch = speech_batch(model.config, 2)
    if model.speaker_embedding is not None:
        batch.speakers = torch.tensor([0, 1])
    noise = explicit_noise(model, batch)
    losses = reference_losses(model, batch, noise)
    observed: dict[str, set[str]] = {o: set() for o in reg.organs}
    for term, loss in losses.items():
        for organ in _organs_reached(model, loss, reg) - {"discriminator"}:  # D is frozen in the G step
            observed[organ].add(term)
    out = model(batch.tokens, batch.token_lengths, batch.spec, batch.spec_lengths, batch.speakers, noise=noise)
    hop, seg = model.hop_length, model.config.segment_size
    y = slice_segments(batch.wav, out.segment_starts * hop, seg * hop)
    scores = model.discriminator(y, out.audio_hat.detach())
    for term, loss in discriminator_loss(scores.real_scores, scores.fake_scores).items():
        for organ in _organs_reached(model, loss, reg):
            observed[organ].add(term)
    for organ in reg.organs:
        assert set(reg.losses(organ)) == observed[organ], organ
    if overrides:
        assert "gen/dur" in reg.losses("text_encoder") and "gen/dur" in reg.losses("speaker_embedding")
    else:
        assert reg.losses("text_encoder") == ("gen/kl",)

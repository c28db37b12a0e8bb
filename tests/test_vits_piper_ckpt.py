"""Original VITS ``G_*.pth`` / ``D_*.pth`` and Piper Lightning ``.ckpt`` files, built from key manifests.

The manifests (``tests/fixtures/manifests``, made by ``scripts/make_manifests.py`` from the
reference appendices) list every key and shape of the real reference models. Each test writes
random tensors of exactly those keys and shapes into files laid out as the originals are
(legacy ``weight_g`` / ``weight_v``, ``{"model": ..., "iteration": ...}``, Lightning dicts with
``model_g.`` / ``model_d.`` and a pickled ``PosixPath``), loads them with ``vits_surgery.load``
and checks that

- every source tensor lands where the format's documented layout says (flow couplings at even
  indices, SDP ConvFlows at odd ones, ``dp.flows.0.m`` -> translation, ``dec.cond``), comparing
  effective weights after weight norm;
- nothing is created except what the report lists;
- inference runs (finite audio of the right length);
- exporting back gives exactly the manifest's keys and shapes, with the same values.
"""

from __future__ import annotations

import json
import math
import pathlib
from functools import cache
from pathlib import Path

import pytest
import torch

import vits_surgery
from vits_surgery.convert import detect_format
from vits_surgery.convert.report import ConversionError
from vits_surgery.convert.vits import native_to_vits

MANIFESTS = Path(__file__).parent / "fixtures" / "manifests"


@cache
def manifest(name: str) -> dict[str, tuple[int, ...]]:
    data = json.loads((MANIFESTS / name).read_text(encoding="utf-8"))
    return {k: tuple(s) for k, s in data["keys"].items()}


def ljs_base_g() -> dict[str, tuple[int, ...]]:
    return manifest("vits_ljs_base_G.json")


def vctk_base_g() -> dict[str, tuple[int, ...]]:
    return {**ljs_base_g(), **manifest("vits_vctk_base_G_additions.json")}


def ljs_nosdp_g() -> dict[str, tuple[int, ...]]:
    return {**{k: s for k, s in ljs_base_g().items() if not k.startswith("dp.")}, **manifest("vits_ljs_nosdp_dp.json")}


def piper_g(speakers: int = 1) -> dict[str, tuple[int, ...]]:
    extra = manifest("piper_medium_multispeaker_additions.json") if speakers > 1 else {}
    return {k[len("model_g.") :]: s for k, s in {**manifest("piper_medium_model_g.json"), **extra}.items()}


def random_state(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Distinct random tensors (slices of one random pool at random offsets) of the given shapes."""
    gen = torch.Generator().manual_seed(seed)
    pool = 0.1 * torch.randn(1 << 23, generator=gen)
    out = {}
    for key, shape in shapes.items():
        n = math.prod(shape)
        start = int(torch.randint(0, pool.numel() - n, (1,), generator=gen))
        out[key] = pool[start : start + n].clone().view(shape)
    return out


# ----------------------------------------------------------------------------- original configs
# configs/ljs_base.json of jaywalnut310/vits (formats.md §2); vctk_base and ljs_nosdp differ as noted there.
LJS_BASE = {
    "train": {
        "log_interval": 200, "eval_interval": 1000, "seed": 1234, "epochs": 20000, "learning_rate": 2e-4,
        "betas": [0.8, 0.99], "eps": 1e-9, "batch_size": 64, "fp16_run": True, "lr_decay": 0.999875,
        "segment_size": 8192, "init_lr_ratio": 1, "warmup_epochs": 0, "c_mel": 45, "c_kl": 1.0,
    },
    "data": {
        "training_files": "filelists/ljs_audio_text_train_filelist.txt.cleaned",
        "validation_files": "filelists/ljs_audio_text_val_filelist.txt.cleaned",
        "text_cleaners": ["english_cleaners2"], "max_wav_value": 32768.0, "sampling_rate": 22050,
        "filter_length": 1024, "hop_length": 256, "win_length": 1024, "n_mel_channels": 80,
        "mel_fmin": 0.0, "mel_fmax": None, "add_blank": True, "n_speakers": 0, "cleaned_text": True,
    },
    "model": {
        "inter_channels": 192, "hidden_channels": 192, "filter_channels": 768, "n_heads": 2, "n_layers": 6,
        "kernel_size": 3, "p_dropout": 0.1, "resblock": "1", "resblock_kernel_sizes": [3, 7, 11],
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "upsample_rates": [8, 8, 2, 2],
        "upsample_initial_channel": 512, "upsample_kernel_sizes": [16, 16, 4, 4], "n_layers_q": 3,
        "use_spectral_norm": False,
    },
}
VCTK_BASE = {
    "train": {**LJS_BASE["train"], "epochs": 10000},
    "data": {**LJS_BASE["data"], "n_speakers": 109},
    "model": {**LJS_BASE["model"], "gin_channels": 256},
}
LJS_NOSDP = {**LJS_BASE, "model": {**LJS_BASE["model"], "use_sdp": False}}


def write_vits(folder: Path, g: dict, config: dict, d: dict | None = None, config_name: str = "config.json") -> Path:
    """G_1.pth (+ D_1.pth) and the JSON config, laid out as original VITS training writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    optimizer = {"state": {}, "param_groups": [{"lr": 2e-4, "betas": (0.8, 0.99), "eps": 1e-9, "params": [0, 1]}]}
    torch.save({"model": g, "iteration": 7, "optimizer": optimizer, "learning_rate": 2e-4}, folder / "G_1.pth")
    if d is not None:
        torch.save({"model": d, "iteration": 7, "optimizer": optimizer, "learning_rate": 2e-4}, folder / "D_1.pth")
    (folder / config_name).write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder / "G_1.pth"


# ----------------------------------------------------------------------------- Piper
def piper_hparams(speakers: int = 1, cli_strings: bool = False) -> dict:
    """Old ``piper_train`` hyper-parameters of a medium voice (constructor args, PosixPath dataset)."""
    tuples = {
        "resblock_kernel_sizes": (3, 5, 7), "resblock_dilation_sizes": ((1, 2), (2, 6), (3, 12)),
        "upsample_rates": (8, 8, 4), "upsample_kernel_sizes": (16, 16, 8),
    }
    if cli_strings:  # LightningCLI may store these as strings (Piper literal_evals them)
        tuples = {k: str(v) for k, v in tuples.items()}
    return {
        "num_symbols": 256, "num_speakers": speakers, "sample_rate": 22050, "resblock": "2", **tuples,
        "upsample_initial_channel": 256, "filter_length": 1024, "hop_length": 256, "win_length": 1024,
        "mel_channels": 80, "sample_bytes": 2, "channels": 1, "mel_fmin": 0.0, "mel_fmax": None,
        "inter_channels": 192, "hidden_channels": 192, "filter_channels": 768, "n_heads": 2, "n_layers": 6,
        "kernel_size": 3, "p_dropout": 0.1, "n_layers_q": 3, "use_spectral_norm": False,
        "gin_channels": 0,  # the constructor default; Piper uses 512 when num_speakers > 1
        "use_sdp": True, "segment_size": 8192, "learning_rate": 2e-4, "betas": (0.8, 0.99), "eps": 1e-9,
        "batch_size": 32, "lr_decay": 0.999875, "init_lr_ratio": 1.0, "warmup_epochs": 0, "c_mel": 45,
        "c_kl": 1.0, "grad_clip": None, "dataset": [pathlib.PosixPath("/data/voice/dataset.jsonl")],
    }


def write_piper(path: Path, g: dict, d: dict | None, hparams: dict) -> Path:
    """A Lightning checkpoint as piper_train writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"model_g.{k}": v for k, v in g.items()}
    state.update({f"model_d.{k}": v for k, v in (d or {}).items()})
    torch.save(
        {
            "epoch": 2164, "global_step": 1_000_000, "pytorch-lightning_version": "1.7.7", "state_dict": state,
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"current": {"completed": 2164}}}},
            "callbacks": {}, "optimizer_states": [{"state": {}, "param_groups": [{"lr": 2e-4}]}],
            "lr_schedulers": [{"gamma": 0.999875, "last_epoch": 2164}], "hparams_name": "kwargs",
            "hyper_parameters": hparams,
        },
        path,
    )
    return path


# ----------------------------------------------------------------------------- where keys belong
_ORGANS = {"enc_p": "text_encoder", "enc_q": "posterior_encoder", "flow": "flow", "dp": "duration_predictor",
           "dec": "decoder", "emb_g": "speaker_embedding", "discriminators": "discriminator.nets"}


def native_location(key: str) -> str:
    """Where an original-VITS tensor belongs in vits_surgery, from the documented layouts (formats.md §2)."""
    organ, rest = key.split(".", 1)
    parts = rest.split(".")
    if organ == "flow":  # [Coupling, Flip] x 4: couplings at even indices
        assert int(parts[1]) % 2 == 0, key
        parts[1] = str(int(parts[1]) // 2)
    elif organ == "dp" and parts[0] in ("flows", "post_flows"):  # [Affine, (ConvFlow, Flip) x 4]
        i = int(parts[1])
        if i == 0:
            parts[2] = {"m": "translation", "logs": "log_scale"}[parts[2]]
        else:
            assert i % 2 == 1, key
            parts[1] = str((i + 1) // 2)
    elif organ == "dec" and parts[0] == "cond":
        parts[0] = "cond_layer"
    return ".".join([_ORGANS[organ], *parts])


def assert_tensors_landed(model: torch.nn.Module, source: dict[str, torch.Tensor]) -> set[str]:
    """Every source tensor sits at its documented place; weight-normed pairs give the same weight.

    Returns:
        The native keys the source tensors filled.
    """
    seen = set()
    state = model.state_dict()
    for key, value in source.items():
        if key.endswith(("weight_g", "weight_v")):
            if key.endswith("weight_v"):
                continue
            module = model.get_submodule(native_location(key[: -len(".weight_g")]))
            g, v = value, source[key[: -len("_g")] + "_v"]
            norm = torch.linalg.vector_norm(v, dim=tuple(range(1, v.dim())), keepdim=True)
            torch.testing.assert_close(module.weight, g * v / norm, rtol=1e-5, atol=1e-6, msg=key)
            assert torch.equal(module.parametrizations.weight.original0, g), key
            assert torch.equal(module.parametrizations.weight.original1, v), key
            seen.update(f"{native_location(key[: -len('.weight_g')])}.parametrizations.weight.original{i}"
                        for i in (0, 1))
        else:
            target = native_location(key)
            assert torch.equal(state[target], value), key
            seen.add(target)
    return seen


def check_export(model, g_shapes: dict, d_shapes: dict, g_src: dict, d_src: dict | None) -> None:
    """native_to_vits gives exactly the manifest's keys and shapes, and the source values."""
    g, d = native_to_vits(model.state_dict())
    assert {k: tuple(v.shape) for k, v in g.items()} == g_shapes
    assert {k: tuple(v.shape) for k, v in d.items()} == d_shapes
    for key, value in g_src.items():
        assert torch.equal(g[key], value), key
    for key, value in (d_src or {}).items():
        assert torch.equal(d[key], value), key


def check_infer(model, speaker: int | None = None, max_frames: int = 24) -> None:
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(1, model.config.text_encoder.n_vocab, (1, 11), generator=gen)
    with torch.no_grad():
        out = model.infer(tokens, speaker=speaker, noise_scale=0.0, noise_scale_w=0.0, max_frames=max_frames)
    frames = int(min(max(out.durations.sum().item(), 1), max_frames))
    assert out.audio.shape == (1, 1, frames * model.hop_length)
    assert out.audio_lengths.tolist() == [frames * model.hop_length]
    assert torch.isfinite(out.audio).all() and out.audio.abs().max() > 0


# ----------------------------------------------------------------------------- tests: original VITS
@pytest.fixture(scope="module")
def ljs(tmp_path_factory):
    g, d = random_state(ljs_base_g(), 1), random_state(manifest("vits_D.json"), 2)
    path = write_vits(tmp_path_factory.mktemp("ljs_base"), g, LJS_BASE, d)
    model, report = vits_surgery.load(path, return_report=True)
    return path, g, d, model, report


def test_ljs_base_g_and_d_load_strictly_into_place(ljs):
    path, g, d, model, report = ljs
    assert detect_format(path) == "vits"
    assert len(report.mapped) == len(g) + len(d) == 838 + 111
    assert not report.created and not report.dropped
    seen = assert_tensors_landed(model, g) | assert_tensors_landed(model, d)
    assert seen == set(model.state_dict())  # every model tensor came from the files
    cfg = model.config
    assert (cfg.text_encoder.n_vocab, cfg.decoder.resblock, cfg.audio.hop_length) == (178, "1", 256)
    assert len(cfg.text.symbols) == 178 and cfg.text.style == "vits"


def test_ljs_base_infers_and_exports_back_exactly(ljs):
    _, g, d, model, _ = ljs
    check_infer(model)
    check_export(model, ljs_base_g(), manifest("vits_D.json"), g, d)


def test_vctk_generator_only_gets_a_listed_fresh_discriminator(tmp_path):
    g = random_state(vctk_base_g(), 3)
    path = write_vits(tmp_path / "vctk", g, VCTK_BASE, config_name="vctk_base.json")
    model, report = vits_surgery.load(path, return_report=True, config_path=tmp_path / "vctk" / "vctk_base.json")
    assert (model.config.n_speakers, model.config.gin_channels) == (109, 256)
    assert_tensors_landed(model, g)
    created = {k for k, _ in report.created}
    assert created == {k for k in model.state_dict() if k.startswith("discriminator.")}
    assert all("created fresh" in reason for _, reason in report.created)
    assert any("generator-only" in n for n in report.notes)
    check_infer(model, speaker=108)
    check_export(model, vctk_base_g(), manifest("vits_D.json"), g, None)


def test_nosdp_deterministic_predictor(tmp_path):
    g = random_state(ljs_nosdp_g(), 4)
    model, report = vits_surgery.load(write_vits(tmp_path / "nosdp", g, LJS_NOSDP), return_report=True)
    assert not model.config.duration_predictor.stochastic
    assert_tensors_landed(model, g)
    assert {k for k, _ in report.created} == {k for k in model.state_dict() if k.startswith("discriminator.")}
    check_infer(model)
    check_export(model, ljs_nosdp_g(), manifest("vits_D.json"), g, None)


def test_misshaped_and_missing_keys_are_named(tmp_path):
    g = random_state(ljs_nosdp_g(), 5)
    g["flow.flows.4.enc.in_layers.2.weight_v"] = torch.zeros(384, 192, 3)
    del g["enc_p.proj.bias"]  # a missing generator key is an error, never a fresh tensor
    with pytest.raises(ConversionError) as err:
        vits_surgery.load(write_vits(tmp_path / "bad", g, LJS_NOSDP))
    assert "missing keys: text_encoder.proj.bias" in str(err.value)
    assert "flow.flows.2.enc.in_layers.2.parametrizations.weight.original1: checkpoint shape (384, 192, 3)" in str(
        err.value
    )


# ----------------------------------------------------------------------------- tests: Piper .ckpt
@pytest.mark.parametrize("speakers", [1, 4], ids=["single", "multi"])
def test_piper_ckpt_loads_strictly_and_exports_back(tmp_path, speakers):
    g = random_state(piper_g(speakers), 10 + speakers)
    d = random_state(manifest("vits_D.json"), 20) if speakers == 1 else None
    path = write_piper(tmp_path / "voice" / "epoch=2164-step=1000000.ckpt", g, d,
                       piper_hparams(speakers, cli_strings=speakers > 1))
    assert detect_format(path) == "piper-ckpt"
    model, report = vits_surgery.load(path, return_report=True)
    cfg = model.config
    assert (cfg.decoder.resblock, cfg.decoder.upsample_rates, cfg.text_encoder.n_vocab) == ("2", (8, 8, 4), 256)
    assert cfg.text.style == "piper"
    assert_tensors_landed(model, g)
    if d is not None:
        assert not report.created
        assert_tensors_landed(model, d)
    else:
        assert (cfg.n_speakers, cfg.gin_channels) == (4, 512)
        assert {k for k, _ in report.created} == {k for k in model.state_dict() if k.startswith("discriminator.")}
    assert len(report.mapped) == len(g) + len(d or {})
    check_infer(model, speaker=3 if speakers > 1 else None)
    check_export(model, piper_g(speakers), manifest("vits_D.json"), g, d)


def test_gin_channels_without_speakers_keeps_the_conditioning_layers(tmp_path):
    # the original builds dec.cond / cond_layer / dp.cond whenever gin_channels != 0, and emb_g only
    # for several speakers: a single-speaker config that keeps vctk's gin_channels has them
    g = {k: v for k, v in random_state(vctk_base_g(), 7).items() if k != "emb_g.weight"}
    config = {**VCTK_BASE, "data": {**VCTK_BASE["data"], "n_speakers": 0}}
    model, report = vits_surgery.load(write_vits(tmp_path / "gin", g, config), return_report=True)
    assert (model.config.n_speakers, model.config.gin_channels) == (0, 256)
    assert model.speaker_embedding is None
    assert_tensors_landed(model, g)
    check_export(model, {k: s for k, s in vctk_base_g().items() if k != "emb_g.weight"}, manifest("vits_D.json"),
                 g, None)

"""Listening checkpoints: WAVs at step 0 and every N, reproducible audio, TensorBoard content."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from vits_surgery import plots
from vits_surgery.config import preset
from vits_surgery.models.vits import VITS
from vits_surgery.surgery.listening import ListeningCallback, TensorBoardLogger, get_writer
from vits_surgery.text import Tokenizer

CFG = preset("tiny")
SENTENCES = ["Hello world.", "A second, longer sentence for the model."]


@pytest.fixture()
def model() -> VITS:
    torch.manual_seed(0)
    return VITS(CFG)


def _flags(module: torch.nn.Module) -> list[bool]:
    return [m.training for m in module.modules()]


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"audio": 0, "images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_baseline_and_every_n_steps_with_reproducible_audio(model: VITS, tmp_path: Path) -> None:
    trainer = SimpleNamespace(model=model, step=0)
    model.train()
    model.text_encoder.eval()  # a frozen organ stays in eval
    flags = _flags(model)
    cb = ListeningCallback(SENTENCES, every=2, out_dir=tmp_path, seed=7, tensorboard=False)

    cb.on_fit_start(trainer)
    for step in (1, 2, 3):
        cb.on_step_end(trainer, step, {})
    assert _flags(model) == flags
    dirs = sorted(p.name for p in (tmp_path / "samples").iterdir() if p.is_dir())
    assert dirs == ["step_0000000", "step_0000002"]
    assert json.loads((tmp_path / "samples" / "sentences.json").read_text()) == list(SENTENCES)
    for d in dirs:
        assert sorted(p.name for p in (tmp_path / "samples" / d).iterdir()) == ["00.wav", "01.wav"]
    for i in range(len(SENTENCES)):
        a = sf.read(str(tmp_path / "samples/step_0000000" / f"{i:02d}.wav"))[0]
        b = sf.read(str(tmp_path / "samples/step_0000002" / f"{i:02d}.wav"))[0]
        assert a.size > 0 and np.array_equal(a, b)  # same weights + same seed: same audio
        assert torch.equal(cb.rendered[0]["audio"][i], cb.rendered[2]["audio"][i])

    again = cb.sample(model, 2)
    assert again is cb.rendered[2]  # a step renders once
    cb.on_sample(trainer, 2, again)
    assert len(cb.rendered) == 2

    with torch.no_grad():  # training changes the decoder: the next checkpoint sounds different
        for p in model.decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cb.on_step_end(trainer, 4, {})
    assert not torch.equal(cb.rendered[4]["audio"][0], cb.rendered[0]["audio"][0])
    assert _flags(model) == flags


def test_seed_and_sentence_index_set_the_noise(model: VITS, tmp_path: Path) -> None:
    a = ListeningCallback(SENTENCES[:1] * 2, every=1, out_dir=tmp_path / "a", seed=1, tensorboard=False)
    b = ListeningCallback(SENTENCES[:1], every=1, out_dir=tmp_path / "b", seed=2, tensorboard=False)
    ra, rb = a.sample(model, 0), b.sample(model, 0)
    assert torch.equal(ra["audio"][1], rb["audio"][0])  # sentence i uses seed + i
    assert not torch.equal(ra["audio"][0], ra["audio"][1])


def test_samples_follow_the_inference_path(model: VITS, tmp_path: Path) -> None:
    cb = ListeningCallback(SENTENCES, every=5, out_dir=tmp_path, tensorboard=False)
    out = cb.sample(model, 0)  # no tokenizer given: built from model.config.text
    tok = Tokenizer(CFG.text)
    hop = CFG.audio.hop_length
    assert out["tokens"] == [tok.encode(s) for s in SENTENCES]
    for i in range(len(SENTENCES)):
        dur, path, audio = out["durations"][i], out["alignments"][i], out["audio"][i]
        assert dur.shape == (len(out["tokens"][i]),)
        assert path.shape == (len(out["tokens"][i]), int(dur.sum()))
        assert torch.equal(path.sum(dim=1), dur)
        assert audio.numel() == int(dur.sum()) * hop
        assert out["paths"][i] == tmp_path / "samples" / "step_0000000" / f"{i:02d}.wav"
        assert sf.info(str(out["paths"][i])).samplerate == CFG.audio.sample_rate

    slow = ListeningCallback(SENTENCES[:1], every=1, out_dir=tmp_path / "slow", length_scale=40.0,
                             max_seconds=0.2, tensorboard=False)
    capped = slow.sample(model, 0)["audio"][0]
    assert capped.numel() == math.ceil(0.2 * CFG.audio.sample_rate / hop) * hop


def test_tensorboard_holds_audio_images_and_scalars(model: VITS, tmp_path: Path) -> None:
    trainer = SimpleNamespace(model=model, step=0)
    listen = ListeningCallback(SENTENCES, every=3, out_dir=tmp_path)
    scalars = TensorBoardLogger(tmp_path)
    listen.on_fit_start(trainer)
    for step in (1, 2, 3):
        logs = {"gen/mel": 10.0 / step, "gen/kl": float("nan")}
        scalars.on_step_end(trainer, step, logs)
        listen.on_step_end(trainer, step, logs)
    listen.on_fit_end(trainer)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    acc = _events(tmp_path / "tensorboard")
    tags = acc.Tags()
    for i in range(len(SENTENCES)):
        assert f"listen/{i:02d}/audio" in tags["audio"]
        for name in ("mel", "alignment", "durations"):
            assert f"listen/{i:02d}/{name}" in tags["images"]
    assert [e.step for e in acc.Audio("listen/00/audio")] == [0, 3]
    assert acc.Audio("listen/00/audio")[0].sample_rate == CFG.audio.sample_rate
    assert [e.step for e in acc.Images("listen/01/mel")] == [0, 3]
    assert [round(e.value, 4) for e in acc.Scalars("gen/mel")] == [10.0, 5.0, round(10 / 3, 4)]
    assert "gen/kl" not in tags["scalars"]  # non-finite values are not logged


def test_missing_tensorboard_names_the_package(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        get_writer(tmp_path / "no_tb")
    with pytest.raises(ImportError, match="pip install tensorboard"):
        ListeningCallback(SENTENCES, every=1, out_dir=tmp_path / "x")


def test_plots_render_images() -> None:
    mel = torch.linspace(-5, 1, 20 * 30).reshape(20, 30)
    img = plots.figure_to_array(plots.mel_figure(mel, title="mel", hop_seconds=0.004))
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.std() > 0
    fig = plots.durations_figure([1, 3, 2], labels=["a", "_", "b"])
    assert plots.figure_to_array(fig).shape[2] == 3
    with pytest.raises(ValueError, match="2 labels"):
        plots.durations_figure([1, 3, 2], labels=["a", "b"])
    heat = plots.heatmap_array(np.array([[0.0, 0.0], [1.0, 1.0]]), height=4)
    assert heat.shape == (4, 2, 3)
    assert heat[0, 0].sum() > heat[-1, 0].sum()  # the high row is drawn at the top, brighter


@pytest.fixture()
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_fit_on_real_audio_writes_listening_checkpoints(tmp_path: Path, one_thread) -> None:
    """SurgicalTrainer + data pipeline + listening callback: finite losses, WAVs at steps 0 and 1."""
    import subprocess

    from vits_surgery.data import TextAudioDataset, from_pairs, make_loader
    from vits_surgery.surgery.plan import SurgeryPlan
    from vits_surgery.surgery.trainer import SurgicalTrainer, TrainConfig

    pairs = []
    for i, text in enumerate(["Hello there.", "A new rhythm.", "Listen now."]):
        wav = tmp_path / f"{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
        pairs.append((wav, text))
    data = TextAudioDataset(from_pairs(pairs), CFG, cache_dir=tmp_path / "cache")
    loader = make_loader(data, batch_size=2, seed=3)
    torch.manual_seed(0)
    model = VITS(CFG)
    listen = ListeningCallback(SENTENCES[:1], every=1, out_dir=tmp_path / "run", tensorboard=False)
    trainer = SurgicalTrainer(
        model, SurgeryPlan.cadence(), train_data=loader, out_dir=tmp_path / "run",
        config=TrainConfig(lr=1e-2, save_every=0, progress=False, device="cpu"),
        callbacks=[listen, TensorBoardLogger(tmp_path / "run")],
    )
    logs = trainer.fit(max_steps=1)
    assert logs and all(math.isfinite(v) for v in logs.values())
    steps = sorted(p.name for p in (tmp_path / "run" / "samples").iterdir() if p.is_dir())
    assert steps == ["step_0000000", "step_0000001"]
    base, last = listen.rendered[0]["durations"][0], listen.rendered[1]["durations"][0]
    assert not torch.equal(base, last)  # the duration predictor trained: the rhythm moved
    assert torch.equal(listen.rendered[0]["alignments"][0].sum(1), base)
    assert "gen/dur" in _events(tmp_path / "run" / "tensorboard").Tags()["scalars"]


def test_tensorboard_writers_are_closed_at_fit_end(model: VITS, tmp_path: Path) -> None:
    """Both TensorBoard callbacks share one writer per folder and close it when fit ends; a
    later fit opens a fresh one."""
    pytest.importorskip("tensorboard")
    from vits_surgery.surgery import listening

    trainer = SimpleNamespace(model=model, step=0)
    key = str((tmp_path / "tensorboard").resolve())
    scalars = TensorBoardLogger(tmp_path)
    listen = ListeningCallback(SENTENCES[:1], every=1, out_dir=tmp_path, tensorboard=True)
    assert key in listening._WRITERS
    writer = listening._WRITERS[key]
    closed = []
    real_close = writer.close
    writer.close = lambda: closed.append(True) or real_close()
    scalars.on_step_end(trainer, 1, {"gen/dur": 1.0})
    listen.on_step_end(trainer, 1, {})
    listen.on_fit_end(trainer)
    scalars.on_fit_end(trainer)
    assert closed == [True] and key not in listening._WRITERS  # closed once, forgotten
    scalars.on_step_end(trainer, 2, {"gen/dur": 0.5})  # the next fit gets a new writer
    assert listening._WRITERS[key] is not writer
    assert listening.close_writer(tmp_path / "tensorboard") and not listening.close_writer(tmp_path / "tensorboard")

"""Native checkpoints, atomic writes, exact resume and the out_dir lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from surgery_helpers import speech_batch, tiny_model
from torch.utils.data import DataLoader

from vits_surgery import _files
from vits_surgery.convert import native
from vits_surgery.surgery import rundir
from vits_surgery.surgery.plan import SurgeryPlan
from vits_surgery.surgery.trainer import SurgicalTrainer, TrainConfig


@pytest.fixture(scope="module")
def batches():
    config = tiny_model().config
    return [speech_batch(config, 1, seed=i, max_seconds=0.35 + 0.05 * i) for i in range(3)]


def test_save_and_load_native_round_trip(tmp_path):
    model = tiny_model(seed=3, n_speakers=2, gin_channels=8)
    path = native.save(model, tmp_path / "voice", metadata={"note": "hello"})
    assert path == tmp_path / "voice" / "model.safetensors"
    loaded = native.load_native(tmp_path / "voice")
    assert loaded.config == model.config and not loaded.training
    assert loaded.discriminator is not None
    original = model.state_dict()
    assert set(loaded.state_dict()) == set(original)
    assert all(torch.equal(v, original[k]) for k, v in loaded.state_dict().items())
    tensors, config, meta = native.read_native(path)
    assert config == model.config and meta["note"] == "hello"
    assert json.loads(meta["vits_surgery_config"])["n_speakers"] == 2
    assert meta["vits_surgery_format_version"] == str(native.FORMAT_VERSION)
    # a bare file, without the discriminator
    file = native.save(model, tmp_path / "g.safetensors")
    generator_only = native.load_native(file, with_discriminator=False)
    assert generator_only.discriminator is None
    assert not list(tmp_path.rglob(".*tmp*"))  # no temporary files left behind


def test_foreign_and_future_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(native.CheckpointError, match="not written by vits_surgery"):
        native.load_native(tmp_path / "x.safetensors")
    model = tiny_model()
    path = native.save(model, tmp_path / "v")
    tensors, config, meta = native.read_native(path)
    meta["vits_surgery_format_version"] = "99"
    save_file(tensors, str(tmp_path / "future.safetensors"), metadata=meta)
    with pytest.raises(native.CheckpointError, match="version 99"):
        native.load_native(tmp_path / "future.safetensors")
    with pytest.raises(FileNotFoundError):
        native.load_native(tmp_path / "missing")


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "f.bin"
    _files.atomic_write(target, lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _files.atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def _run(tmp_path, data, steps, resume=False, seed_model=0):
    trainer = SurgicalTrainer(
        tiny_model(seed=seed_model), SurgeryPlan.full(), data, out_dir=tmp_path,
        config=TrainConfig(progress=False, seed=11, save_every=2, keep_last=0),
    )
    trainer.fit(steps, resume=resume)
    return trainer


class _Samples(list):
    """A map-style dataset of ``data.Sample`` with the ``lengths`` the bucketing sampler needs."""

    def __init__(self, batches):
        from vits_surgery.data.dataset import Sample

        super().__init__(
            Sample(
                tokens=b.tokens[0, : b.token_lengths[0]], spec=b.spec[0, :, : b.spec_lengths[0]],
                wav=b.wav[0, :, : b.wav_lengths[0]], speaker=None, text=b.texts[0], id=b.ids[0],
            )
            for b in batches
        )
        self.lengths = [int(b.spec_lengths[0]) for b in batches]


@pytest.mark.parametrize("loader", ["dataloader", "resumable"])
def test_resume_is_bit_exact(batches, tmp_path, loader):
    """N steps + resume + N steps == 2N uninterrupted steps, bit for bit (full plan: dropout,
    noise, GAN, both optimizers; 3 shuffled batches per epoch, so the resume lands mid-epoch
    and then crosses into the next epoch). ``dataloader``: a plain shuffling DataLoader, rebuilt
    and fast-forwarded; ``resumable``: ``data.make_loader``, which keeps its own position."""
    from vits_surgery.data.loader import make_loader

    def data():
        if loader == "dataloader":
            return DataLoader(batches, batch_size=None, shuffle=True)
        return make_loader(_Samples(batches), batch_size=1, seed=5, shuffle=True)

    straight = _run(tmp_path / "a", data(), 4)
    _run(tmp_path / "b", data(), 2)
    resumed = _run(tmp_path / "b", data(), 4, resume=True, seed_model=99)  # weights come from the checkpoint
    assert resumed.step == 4 and resumed.epoch == straight.epoch == 1
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = straight.state_dict(), resumed.state_dict()
    for name in sa["optimizers"]:
        for pid, st in sa["optimizers"][name]["state"].items():
            for key, value in st.items():
                assert torch.equal(value, sb["optimizers"][name]["state"][pid][key])
    state = torch.load(rundir.step_dir(tmp_path / "b", 4) / rundir.STATE_FILE, weights_only=True)
    assert state["step"] == 4 and set(state["optimizers"]) == {"generator", "discriminator"}
    assert [s for s, _ in rundir.checkpoint_dirs(tmp_path / "b")] == [2, 4]


def test_resume_with_another_plan_is_refused(batches, tmp_path):
    _run(tmp_path, batches, 1)
    trainer = SurgicalTrainer(
        tiny_model(), SurgeryPlan.cadence(), batches, out_dir=tmp_path, config=TrainConfig(progress=False)
    )
    with pytest.raises(native.CheckpointError, match="optimizers"):
        trainer.load_checkpoint(rundir.latest_checkpoint(tmp_path))


def test_keep_last_prunes_old_checkpoints(tmp_path):
    for step in (1, 2, 3, 4):
        d = rundir.step_dir(tmp_path, step)
        d.mkdir(parents=True)
        (d / native.MODEL_FILE).write_bytes(b"x")
        (d / rundir.STATE_FILE).write_bytes(b"x")
    (tmp_path / "checkpoints" / ".step_00000005.tmp").mkdir()  # an interrupted write is ignored
    assert rundir.latest_checkpoint(tmp_path).name == "step_00000004"
    removed = rundir.prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in removed] == ["step_00000001", "step_00000002"]
    assert [s for s, _ in rundir.checkpoint_dirs(tmp_path)] == [3, 4]


def test_out_dir_lock(tmp_path, caplog):
    lock = rundir.OutDirLock(tmp_path).acquire()
    with pytest.raises(native.CheckpointError, match="another trainer in this process"):
        rundir.OutDirLock(tmp_path).acquire()
    lock.release()
    # a live process holds it
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / ".lock").write_text(f"{sleeper.pid} {os.uname().nodename}\n")
        with pytest.raises(native.CheckpointError, match=f"PID {sleeper.pid}"):
            rundir.OutDirLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    # now its PID is dead: the stale lock is taken over
    with rundir.OutDirLock(tmp_path) as taken:
        assert taken.acquired
        assert (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())
    assert "stale lock" in caplog.text
    assert not (tmp_path / ".lock").exists()


def test_two_trainers_on_one_out_dir(batches, tmp_path):
    first = SurgicalTrainer(
        tiny_model(), SurgeryPlan.cadence(), batches, out_dir=tmp_path, config=TrainConfig(progress=False)
    )

    class Nested(SurgicalTrainer):
        def training_step(self, batch, noise=None):
            first.fit(1)  # a second fit on the same out_dir while this one runs
            return super().training_step(batch, noise)

    second = Nested(tiny_model(), SurgeryPlan.cadence(), batches, out_dir=tmp_path, config=TrainConfig(progress=False))
    with pytest.raises(native.CheckpointError, match="already used"):
        second.fit(1)
    first.fit(1)  # the lock was released

"""``kill -9`` of real training processes, then resume; two processes on one out_dir.

Each process runs ``tests/reliability_worker.py`` (``SurgicalTrainer.fit`` on the tiny preset,
cadence plan, a checkpoint every ``SAVE_EVERY`` steps, ``keep_last=2``) and reports its
steps, saves and resume point on stdout. The test kills it with SIGKILL at a random moment
after a step, or while it is inside a save (half-way through writing the weights file or the
trainer state, before the finished checkpoint directory is renamed into place, or half-way
through deleting an old checkpoint), restarts it with ``resume=True``, and checks that

- every restart loads the newest committed checkpoint cleanly (stale lock and half-written
  temporary files notwithstanding) and so loses at most the steps since that checkpoint;
- the run finished through all the kills ends with weights bit-identical to an uninterrupted
  run, with no temporary files or lock left behind.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import torch
from reliability_worker import make_trainer

from vits_surgery.convert import native
from vits_surgery.surgery import rundir

WORKER = Path(__file__).with_name("reliability_worker.py")
SAVE_EVERY = 2
MAX_STEPS = 30  # leaves room for every round, however far a random kill lets a run go
#: A worker that neither prints nor exits for this long is killed and the test fails.
WATCHDOG_S = 120


class Worker:
    """A worker process and the events it printed."""

    def __init__(self, out_dir: Path, *extra: str) -> None:
        env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(out_dir), str(MAX_STEPS), "--save-every", str(SAVE_EVERY), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        self.events: list[tuple[str, int | None]] = []
        self._watchdog = threading.Timer(WATCHDOG_S, self.proc.kill)
        self._watchdog.start()

    def wait_for(self, kind: str, value: int | None = None) -> None:
        """Read events until ``kind`` (with ``value``, if given) arrives."""
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait()
                raise AssertionError(
                    f"worker ended (rc {self.proc.returncode}) before '{kind} {value}'; events {self.events}; "
                    f"stderr:\n{self.proc.stderr.read()[-3000:]}"
                )
            word, _, arg = line.strip().partition(" ")
            self.events.append((word, int(arg) if arg else None))
            if word == kind and (value is None or self.events[-1][1] == value):
                return

    def kill(self) -> None:
        """SIGKILL, then reap (a zombie's PID would still look alive to the lock)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._watchdog.cancel()
        self.proc.stdout.read()

    def finish(self) -> str:
        out, err = self.proc.communicate()
        self._watchdog.cancel()
        for line in out.splitlines():
            word, _, arg = line.strip().partition(" ")
            self.events.append((word, int(arg) if arg else None))
        return err

    def last(self, kind: str) -> int | None:
        values = [v for k, v in self.events if k == kind]
        return values[-1] if values else None


def _tmp_litter(out_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if ".tmp" in p.name or ".old-" in p.name)


def test_kill_9_at_random_moments_and_inside_saves_then_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    rng = random.Random(1234)
    # How each process is stopped: ("random", k) = at a random moment after its k-th step,
    # ("hang", "FN:N") = inside a save (see reliability_worker). atomic_write calls per save:
    # 1 = model.safetensors, 2 = trainer_state.pt, 3 = plan.json.
    rounds = [
        ("random", 3),
        ("hang", "atomic_write:2"),  # first save of this run, half of trainer_state.pt written
        ("hang", "commit_dir:1"),  # checkpoint complete in its temp dir, not renamed into place
        ("hang", "atomic_write:4"),  # second save, half of model.safetensors written
        ("hang", "prune_mid:1"),  # committed; killed while deleting the oldest checkpoint
        ("random", 1),
    ]
    saved = 0  # newest step a killed process reported committed
    for how, what in rounds:
        worker = Worker(out, *(["--hang", what] if how == "hang" else []))
        worker.wait_for("resumed")
        resumed = worker.last("resumed")
        assert resumed >= saved, f"resumed at {resumed}, but step {saved} had been saved ({how} {what})"
        assert resumed % SAVE_EVERY == 0
        if how == "random":
            worker.wait_for("step", resumed + what)
            threading.Event().wait(rng.uniform(0.0, 0.1))
        else:
            worker.wait_for("hanging")
        worker.kill()
        reached = max([resumed] + [v for k, v in worker.events if k == "step"])
        saved = max([saved] + [v for k, v in worker.events if k == "saved"])
        newest = rundir.latest_checkpoint(out)
        on_disk = 0 if newest is None else int(newest.name.split("_")[1])
        assert on_disk >= saved
        assert reached - on_disk <= SAVE_EVERY, f"{reached - on_disk} steps would be lost ({how} {what})"
        if newest is not None:  # what a resume will read is whole
            native.read_native(newest)
            assert rundir.load_trainer_state(newest)["step"] == on_disk

    final = Worker(out)
    err = final.finish()
    assert final.proc.returncode == 0, err[-3000:]
    assert final.last("resumed") >= saved
    assert final.last("done") == MAX_STEPS
    assert "stale lock" in err  # the killed run's lock was taken over
    assert _tmp_litter(out) == []
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        f"step_{MAX_STEPS - SAVE_EVERY:08d}", f"step_{MAX_STEPS:08d}",
    ]  # no half-deleted checkpoint left behind
    assert not (out / ".lock").exists()
    assert [s for s, _ in rundir.checkpoint_dirs(out)] == [MAX_STEPS - SAVE_EVERY, MAX_STEPS]  # keep_last=2

    straight = make_trainer(tmp_path / "straight", SAVE_EVERY)
    straight.fit(MAX_STEPS)
    resumed_weights, _, _ = native.read_native(rundir.latest_checkpoint(out))
    reference = straight.model.state_dict()
    assert resumed_weights.keys() == reference.keys()
    assert all(torch.equal(resumed_weights[k], reference[k]) for k in reference)


def test_two_processes_on_one_out_dir(tmp_path: Path) -> None:
    holder = Worker(tmp_path, "--hang", "fit_start:1")
    try:
        holder.wait_for("hanging")
        second = Worker(tmp_path)
        err = second.finish()
        assert second.proc.returncode != 0
        assert "CheckpointError" in err and f"locked by a running trainer (PID {holder.proc.pid})" in err
        assert ("resumed", 0) not in second.events  # it never started training
    finally:
        holder.kill()
    assert rundir.latest_checkpoint(tmp_path) is None

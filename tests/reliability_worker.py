"""A real training process for the kill / resume and lock tests (``tests/test_kill_resume.py``).

Runs ``SurgicalTrainer.fit`` on the tiny preset (cadence plan, three fixed synthetic batches)
with ``resume=True`` and reports on stdout, one flushed line per event::

    resumed <step>      fit started at this step (0 on a fresh run)
    step <step>         an optimizer update finished
    saved <step>        a checkpoint was committed
    hanging             the process stopped where ``--hang`` asked (waiting to be killed)
    done <step>         fit returned

``--hang FN:N`` stops inside the N-th call (1-based, counted from process start) of
``vits_surgery._files.atomic_write`` or ``vits_surgery.surgery.rundir.FN``: for ``atomic_write`` after writing half of the file, for
``commit_dir`` and ``prune_checkpoints`` before doing anything. ``prune_mid:N`` stops in the
N-th prune that has a checkpoint to delete, after deleting that checkpoint's weights file only.
``--hang fit_start:1`` stops once the run holds its out_dir lock. Usage::

    python tests/reliability_worker.py OUT_DIR MAX_STEPS [--save-every 2] [--hang atomic_write:2]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vits_surgery import _files, audio
from vits_surgery.batch import Batch
from vits_surgery.config import preset
from vits_surgery.convert import native
from vits_surgery.models.vits import VITS
from vits_surgery.surgery import rundir
from vits_surgery.surgery.callbacks import Callback
from vits_surgery.surgery.plan import SurgeryPlan
from vits_surgery.surgery.trainer import SurgicalTrainer, TrainConfig

MODEL_SEED = 0
TRAIN_SEED = 11


def make_batches(n: int = 3) -> list[Batch]:
    """``n`` one-item batches of deterministic synthetic speech-like audio (tiny preset)."""
    cfg = preset("tiny")
    a = cfg.audio
    rng = np.random.default_rng(123)
    out = []
    for i in range(n):
        frames = 40 + 8 * i
        t = np.arange(frames * a.hop_length) / a.sample_rate
        f0 = 120 + 40 * i + 30 * np.sin(2 * np.pi * 3 * t)
        wav = 0.3 * np.sin(2 * np.pi * np.cumsum(f0) / a.sample_rate) + 0.01 * rng.standard_normal(t.size)
        w = torch.from_numpy(wav.astype(np.float32)).view(1, 1, -1)  # [1, 1, N]
        spec = audio.spectrogram(w[:, 0], a)[..., :frames]  # [1, F, T_y]
        n_tok = 8 + i
        tokens = torch.from_numpy(rng.integers(1, cfg.text_encoder.n_vocab, (1, n_tok)))
        out.append(Batch(
            tokens=tokens, token_lengths=torch.tensor([n_tok]), spec=spec, spec_lengths=torch.tensor([frames]),
            wav=w, wav_lengths=torch.tensor([w.shape[-1]]), texts=[f"utt {i}"], ids=[f"u{i}"],
        ))
    return out


def make_trainer(out_dir: str | Path, save_every: int, keep_last: int = 2, callbacks: list | None = None):
    """The trainer every process of a kill test builds (same model seed, data and config)."""
    torch.manual_seed(MODEL_SEED)
    model = VITS(preset("tiny"))
    config = TrainConfig(progress=False, seed=TRAIN_SEED, save_every=save_every, keep_last=keep_last, log_every=0)
    return SurgicalTrainer(model, SurgeryPlan.cadence(), make_batches(), out_dir=out_dir, config=config,
                           callbacks=callbacks)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _hang() -> None:
    _say("hanging")
    while True:
        time.sleep(60)


class _Reporter(Callback):
    def __init__(self, hang_at_start: bool) -> None:
        self.hang_at_start = hang_at_start

    def on_fit_start(self, trainer) -> None:
        _say(f"resumed {trainer.step}")
        if self.hang_at_start:
            _hang()

    def on_step_end(self, trainer, step, logs) -> None:
        _say(f"step {step}")

    def on_save(self, trainer, step, path) -> None:
        _say(f"saved {step}")


class _HalfFile:
    """A file proxy that writes half of the first ``write`` and then hangs."""

    def __init__(self, f) -> None:
        self.f = f

    def write(self, data: bytes) -> int:
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        _hang()
        return 0  # never reached


def _install_hang(spec: str) -> bool:
    """Patch ``_files.atomic_write`` or ``rundir.<fn>`` to hang on its N-th call; returns True for ``fit_start``."""
    name, _, nth = spec.partition(":")
    nth_call = int(nth or 1)
    if name == "fit_start":
        return True
    if name == "prune_mid":
        return _install_prune_mid(nth_call)
    module = _files if name == "atomic_write" else rundir
    real = getattr(module, name)
    calls = [0]

    @functools.wraps(real)
    def patched(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth_call:
            if name == "atomic_write":
                path, write = args
                return real(path, lambda f: write(_HalfFile(f)))
            _hang()
        return real(*args, **kwargs)

    setattr(module, name, patched)
    return False


def _install_prune_mid(nth_call: int) -> bool:
    real = rundir.prune_checkpoints
    calls = [0]

    def patched(root, keep_last):
        found = rundir.checkpoint_dirs(root)
        if keep_last > 0 and len(found) > keep_last:
            calls[0] += 1
            if calls[0] == nth_call:
                (found[0][1] / native.MODEL_FILE).unlink()  # a deletion cut short
                _hang()
        return real(root, keep_last)

    rundir.prune_checkpoints = patched
    return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("max_steps", type=int)
    parser.add_argument("--save-every", type=int, default=2)
    parser.add_argument("--hang", default=None, help="FN:N, see the module docstring")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    hang_at_start = _install_hang(args.hang) if args.hang else False
    trainer = make_trainer(args.out_dir, args.save_every, callbacks=[_Reporter(hang_at_start)])
    trainer.fit(args.max_steps, resume=True)
    _say(f"done {trainer.step}")


if __name__ == "__main__":
    main()

"""Benchmark one SurgicalTrainer step for the full, cadence and timbre plans.

Usage:
    python benchmarks/train_step.py [--plans full cadence timbre] [--rounds 5] [--warmup 2]
                                    [--threads 2] [--clock process|thread]
                                    [--preset coqui_vits] [--json out.json]

Workload: ``VITS(preset)`` with its discriminator, built from a fixed seed, and one batch of 4
utterances of about 3 s (plans: ``full``, ``cadence``, ``timbre``, ``accent`` and
``timbre-mel``, the timbre organs trained on mel + KL without the discriminator): 66150 / 63945 / 61740 / 59535 samples at 22.05 kHz (258 / 249 / 241 /
232 spectrogram frames) and 91 / 87 / 83 / 79 random token ids, the batch of the Coqui numbers
of the Coqui anchor numbers quoted in ``docs/benchmarks.md``. Spectrograms are precomputed (they belong to the
data pipeline). A step is ``SurgicalTrainer.training_step``: forward, losses, backward, AdamW
(and for GAN plans the discriminator update).

Timing: one process holds a model and a trainer per plan and runs their steps round-robin
(``--rounds`` rounds after ``--warmup`` untimed ones), so load changes on a shared machine hit
every plan alike. Reported: median and minimum wall time and CPU time per step, GFLOP per step
(``torch.utils.flop_counter`` on one step), and each plan's ratios to the full step. With
``--clock thread --threads 1`` the CPU time is the calling thread's own: no OpenMP worker spins
in it, the steadiest number on a loaded machine. The FLOP ratio does not depend on the machine.

Memory: each plan first runs in its own subprocess (model, trainer, 2 steps) whose peak RSS
(``ru_maxrss``) is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

LENGTHS = (66150, 63945, 61740, 59535)
TOKENS = (91, 87, 83, 79)


def _batch(config):
    import numpy as np
    import torch

    from vits_surgery import audio
    from vits_surgery.batch import Batch

    rng = np.random.default_rng(0)
    hop = config.audio.hop_length
    frames = [audio.num_frames(n, config.audio.n_fft, hop) for n in LENGTHS]
    t_y = max(frames)
    wav = torch.zeros(len(LENGTHS), 1, max(LENGTHS))
    for i, n in enumerate(LENGTHS):
        wav[i, 0, :n] = torch.from_numpy((0.1 * rng.standard_normal(n)).astype("float32"))
    spec = audio.spectrogram(wav, config.audio)[..., :t_y]  # [B, F, T_y]
    wav = wav[..., : t_y * hop]  # the Batch contract: N = T_y * hop
    spec_lengths = torch.tensor(frames)
    spec = spec * (torch.arange(t_y)[None, None, :] < spec_lengths[:, None, None])
    tokens = torch.zeros(len(TOKENS), max(TOKENS), dtype=torch.long)
    for i, n in enumerate(TOKENS):
        tokens[i, :n] = torch.from_numpy(rng.integers(1, config.text_encoder.n_vocab, n))
    return Batch(tokens, torch.tensor(TOKENS), spec, spec_lengths, wav, spec_lengths * hop)


def _trainer(plan_name: str, preset_name: str, device: str = "cpu", amp: str | None = None):
    import torch

    from vits_surgery.config import preset
    from vits_surgery.models.vits import VITS
    from vits_surgery.surgery.plan import SurgeryPlan
    from vits_surgery.surgery.trainer import SurgicalTrainer, TrainConfig

    plans = {
        "full": SurgeryPlan.full,
        "cadence": SurgeryPlan.cadence,
        "timbre": SurgeryPlan.timbre,
        "accent": SurgeryPlan.accent,
        # the timbre organs on mel + KL alone: no discriminator, no adversarial terms
        "timbre-mel": lambda: SurgeryPlan(
            train=SurgeryPlan.timbre().train,
            train_discriminator=False,
            loss_weights={"gen/adv": 0.0, "gen/fm": 0.0},
            name="timbre-mel",
        ),
    }
    torch.manual_seed(0)
    model = VITS(preset(preset_name))
    config = TrainConfig(progress=False, seed=0, save_every=0, log_every=0, device=device, amp=amp)
    return SurgicalTrainer(model, plans[plan_name](), out_dir=os.devnull, config=config)


def time_plans(args: argparse.Namespace) -> dict[str, dict]:
    """Round-robin timing of every plan in this process."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args.threads)
    trainers = {name: _trainer(name, args.preset) for name in args.plans}
    batch = _batch(next(iter(trainers.values())).model.config)
    clock = time.thread_time if args.clock == "thread" else time.process_time
    out: dict[str, dict] = {}
    for name, trainer in trainers.items():
        with FlopCounterMode(display=False) as counter:  # the first warm-up step
            trainer.training_step(batch)
        out[name] = {
            "plan": name,
            "wall": [],
            "cpu": [],
            "gflop": counter.get_total_flops() / 1e9,
            "trainable": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "terms": list(trainer.step_plan.terms),
        }
    for r in range(args.warmup - 1 + args.rounds):
        for name, trainer in trainers.items():
            w0, c0 = time.perf_counter(), clock()
            trainer.training_step(batch)
            if r >= args.warmup - 1:
                out[name]["wall"].append(time.perf_counter() - w0)
                out[name]["cpu"].append(clock() - c0)
        print(f"round {r + 1} done", file=sys.stderr)
    return out


def peak_rss(args: argparse.Namespace) -> dict:
    """Model, trainer and 2 steps of one plan; peak RSS in MB."""
    import torch

    torch.set_num_threads(args.threads)
    trainer = _trainer(args.memory, args.preset)
    after_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    batch = _batch(trainer.model.config)
    for _ in range(2):
        trainer.training_step(batch)
    return {
        "after_build_mb": after_build,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _row(r: dict, full: dict) -> str:
    def ratio(key: str, fn) -> str:
        return "1" if r is full else f"1/{fn(full[key]) / fn(r[key]):.1f}"

    terms = ", ".join(t.split("/")[1] for t in r["terms"]) + (" (+D)" if "gen/adv" in r["terms"] else "")
    return (
        f"| {r['plan']} | {statistics.median(r['wall']):.3f} / {min(r['wall']):.3f} | "
        f"{statistics.median(r['cpu']):.3f} / {min(r['cpu']):.3f} | {r['gflop']:.0f} | "
        f"{ratio('wall', statistics.median)} / {ratio('wall', min)} | "
        f"{ratio('cpu', statistics.median)} / {ratio('cpu', min)} | 1/{full['gflop'] / r['gflop']:.1f} | "
        f"{r['trainable'] / 1e6:.2f} M | {terms} | {r['rss']['peak_mb']:.0f} MB |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", nargs="+", default=["full", "cadence", "timbre"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=("process", "thread"), default="process")
    parser.add_argument("--preset", default="coqui_vits")
    parser.add_argument("--json", default=None, help="write raw results here")
    parser.add_argument("--memory", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        print(json.dumps(peak_rss(args)))
        return
    if "full" not in args.plans:
        args.plans.insert(0, "full")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    load_start = os.getloadavg()[0]
    rss = {}
    for name in args.plans:  # first, while this process is small: Linux keeps ru_maxrss across exec
        cmd = [
            sys.executable,
            __file__,
            "--memory",
            name,
            "--threads",
            str(args.threads),
            "--preset",
            args.preset,
        ]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        rss[name] = json.loads(done.stdout.strip().splitlines()[-1])
    results = time_plans(args)
    for name in args.plans:
        results[name]["rss"] = rss[name]
    import torch

    print(
        f"torch {torch.__version__}, {platform.machine()}, {args.threads} thread(s), {args.clock} CPU clock, "
        f"preset {args.preset}, batch 4 x ~3 s, {args.warmup} warm-up + {args.rounds} timed rounds; "
        f"1-min load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end"
    )
    print()
    print(
        "| plan | wall s/step (median / min) | CPU s/step (median / min) | GFLOP/step | "
        "vs full: wall | CPU | GFLOP | trainable | terms | peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.plans:
        print(_row(results[name], results["full"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

"""Benchmark one SurgicalTrainer step for the full, cadence and timbre plans.

Usage:
    python benchmarks/train_step.py [--plans full cadence timbre] [--rounds 5] [--warmup 2]
                                    [--threads 2] [--clock process|thread]
                                    [--preset coqui_vits] [--json out.json] [--no-memory]

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
(``torch.utils.flop_counter`` on one step), each plan's ratios to the full step, and the spread
of the per-round ratios (each round times every plan back to back, so a round's ratio compares
steps run under the same load). With
``--clock thread --threads 1`` the CPU time is the calling thread's own: no OpenMP worker spins
in it, the steadiest number on a loaded machine. The FLOP ratio does not depend on the machine.

Memory: each plan first runs in its own subprocesses (model, trainer, 2 steps) whose peak RSS
(``ru_maxrss``, reported in MiB) is reported twice: with a cold numba cache (an empty
``NUMBA_CACHE_DIR``: the alignment kernels compile in that process) and with a warm one (the
cache the cold run left). The JSON (``--json``) holds every raw number, the command line and the
machine.
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
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402

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
    """Model, trainer and 2 steps of one plan; peak RSS in MiB (``ru_maxrss`` is in KiB on Linux)."""
    import torch

    torch.set_num_threads(args.threads)
    trainer = _trainer(args.memory, args.preset)
    after_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    batch = _batch(trainer.model.config)
    for _ in range(2):
        trainer.training_step(batch)
    return {
        "after_build_mib": after_build,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _ratios(r: dict, full: dict, key: str) -> list[float]:
    """Per-round ratio full / plan of one clock (the rounds run every plan back to back)."""
    return [f / x for f, x in zip(full[key], r[key], strict=True)]


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def _row(r: dict, full: dict) -> str:
    def ratio(key: str, fn) -> str:
        return "1" if r is full else f"1/{fn(full[key]) / fn(r[key]):.1f}"

    terms = ", ".join(t.split("/")[1] for t in r["terms"]) + (" (+D)" if "gen/adv" in r["terms"] else "")
    rss = r.get("rss")
    memory = f"{rss['cold']['peak_mib']:.0f} / {rss['warm']['peak_mib']:.0f} MiB" if rss else "not measured"
    return (
        f"| {r['plan']} | {statistics.median(r['wall']):.3f} / {min(r['wall']):.3f} | "
        f"{statistics.median(r['cpu']):.3f} / {min(r['cpu']):.3f} | {r['gflop']:.0f} | "
        f"{ratio('wall', statistics.median)} / {ratio('wall', min)} | "
        f"{ratio('cpu', statistics.median)} / {ratio('cpu', min)} | 1/{full['gflop'] / r['gflop']:.1f} | "
        f"{r['trainable'] / 1e6:.2f} M | {terms} | {memory} |"
    )


def _ratio_row(r: dict, full: dict) -> str:
    return (
        f"| {r['plan']} | 1/{_spread(_ratios(r, full, 'wall'))} | 1/{_spread(_ratios(r, full, 'cpu'))} | "
        f"{len(r['wall'])} |"
    )


def _memory(name: str, args: argparse.Namespace, env: dict[str, str]) -> dict:
    """Peak RSS of one plan with a cold, then a warm numba cache (separate processes)."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
        for state in ("cold", "warm"):
            cmd = [sys.executable, __file__, "--memory", name, "--threads", str(args.threads), "--preset", args.preset]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**env, "NUMBA_CACHE_DIR": cache})
            out[state] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", nargs="+", default=["full", "cadence", "timbre"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=("process", "thread"), default="process")
    parser.add_argument("--preset", default="coqui_vits")
    parser.add_argument("--json", default=None, help="write raw results here")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
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
    if not args.no_memory:  # first, while this process is small: Linux keeps ru_maxrss across exec
        rss = {name: _memory(name, args, env) for name in args.plans}
    results = time_plans(args)
    for name in rss:
        results[name]["rss"] = rss[name]
    import torch

    machine = {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
    }
    print(
        f"torch {torch.__version__}, {machine['cpu']} ({machine['logical_cpus']} logical CPUs), "
        f"{args.threads} thread(s), {args.clock} CPU clock, preset {args.preset}, batch 4 x ~3 s, "
        f"{args.warmup} warm-up + {args.rounds} timed rounds; 1-min load average {load_start:.1f} at start, "
        f"{machine['load_average_1min']['end']:.1f} at end"
    )
    print()
    print(
        "| plan | wall s/step (median / min) | CPU s/step (median / min) | GFLOP/step | "
        "vs full: wall | CPU | GFLOP | trainable | terms | peak RSS (cold / warm numba cache) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.plans:
        print(_row(results[name], results["full"]))
    print()
    print("| plan | per-round ratio to full, wall: median (range) | CPU: median (range) | rounds |")
    print("|---|---|---|---|")
    for name in args.plans:
        if name != "full":
            print(_ratio_row(results[name], results["full"]))
    if args.json:
        payload = {"command": [Path(sys.executable).name, *sys.argv], "machine": machine, "plans": results}
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1)


if __name__ == "__main__":
    main()

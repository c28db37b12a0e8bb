"""Benchmark monotonic alignment search backends against PyPI monotonic-align.

Usage:
    python benchmarks/mas.py [--repeats 60] [--threads 1 --clock thread] [--batch 16 --text 150 --mel 800]
                             [--workload both|full|variable] [--json docs/results/mas_X.json]
    python benchmarks/mas.py --processes 10 --repeats 15 --workload variable --threads 1 --clock thread

All candidates run in one process, interleaved round-robin (each repetition times every
candidate once, so machine noise hits them alike), after warm-up calls (which also pay the
numba JIT / cache load). Reported: median and minimum time in ms, and the ratio of each
median to monotonic-align's median, both fed pre-transposed contiguous input (its best case)
and including the two transposes its layout needs.

``--processes N`` runs the whole measurement in N fresh processes, one after the other, and
reports each process's medians: a kernel whose speed depends on the process (allocator state,
thread pools) shows up there and not in a single run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import monotonic_align
import numba
import torch

from vits_surgery.align import maximum_path


def make_case(batch: int, text: int, mel: int, variable: bool, seed: int = 0):
    """float32 randn log_p [B, T_text, T_mel] and its mask (full, or variable lengths)."""
    g = torch.Generator().manual_seed(seed)
    log_p = torch.randn(batch, text, mel, generator=g)
    if variable:  # text 40%..100%, mel 50%..100% of the maximum, first item full size
        t_x = torch.randint(int(0.4 * text), text + 1, (batch,), generator=g)
        t_y = torch.randint(mel // 2, mel + 1, (batch,), generator=g)
        t_x[0], t_y[0] = text, mel
    else:
        t_x, t_y = torch.full((batch,), text), torch.full((batch,), mel)
    tokens = torch.arange(text)[None, :, None] < t_x[:, None, None]
    frames = torch.arange(mel)[None, None, :] < t_y[:, None, None]
    return log_p, (tokens & frames).float()


def candidates(log_p: torch.Tensor, mask: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    log_p_t = log_p.transpose(1, 2).contiguous()  # [B, T_mel, T_text], prepared outside the timing
    mask_t = mask.transpose(1, 2).contiguous()
    return {
        "numba (ours)": lambda: maximum_path(log_p, mask, backend="numba"),
        "cython (ours, wraps monotonic-align)": lambda: maximum_path(log_p, mask, backend="cython"),
        "torch (ours)": lambda: maximum_path(log_p, mask, backend="torch"),
        "monotonic-align, pre-transposed input": lambda: monotonic_align.maximum_path(log_p_t, mask_t),
        "monotonic-align incl. transposes": lambda: (
            monotonic_align.maximum_path(
                log_p.transpose(1, 2).contiguous(), mask.transpose(1, 2).contiguous()
            )
            .transpose(1, 2)
            .contiguous()
        ),
        "transpose [B,T_text,T_mel] alone": lambda: log_p.transpose(1, 2).contiguous(),
    }


def measure(
    fns: dict[str, Callable[[], torch.Tensor]], repeats: int, slow: set[str], clock: Callable[[], float]
) -> dict[str, list[float]]:
    for fn in fns.values():  # warm-up (numba compile or cache load, allocator)
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            if name in slow and r % 10:  # slow backends: every 10th repetition only
                continue
            start = clock()
            fn()
            times[name].append((clock() - start) * 1e3)
    return times


def summarize(times: dict[str, list[float]]) -> dict[str, dict]:
    """Per candidate: median, min, runs, ratios of the median to monotonic-align's, raw times."""
    med = {name: statistics.median(v) for name, v in times.items()}
    ref = med["monotonic-align, pre-transposed input"]
    ref_t = med["monotonic-align incl. transposes"]
    return {
        name: {
            "median_ms": med[name],
            "min_ms": min(v),
            "runs": len(v),
            "vs_ma_pretransposed": med[name] / ref,
            "vs_ma_incl_transposes": med[name] / ref_t,
            "times_ms": v,
        }
        for name, v in times.items()
    }


def report(title: str, rows: dict[str, dict]) -> None:
    print(f"\n{title}")
    print("| candidate | median ms | min ms | runs | vs m-a pre-transposed | vs m-a incl. transposes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        print(
            f"| {name} | {r['median_ms']:.2f} | {r['min_ms']:.2f} | {r['runs']} | "
            f"{r['vs_ma_pretransposed']:.2f}x | {r['vs_ma_incl_transposes']:.2f}x |"
        )


WORKLOADS = {"full": "full mask", "variable": "variable lengths (text 40-100%, mel 50-100%)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--text", type=int, default=150)
    parser.add_argument("--mel", type=int, default=800)
    parser.add_argument("--workload", choices=("both", *WORKLOADS), default="both")
    parser.add_argument(
        "--clock",
        choices=("wall", "thread"),
        default="wall",
        help="thread: CPU time of the calling thread (needs --threads 1); insensitive to other "
        "processes taking the CPU, for a loaded machine",
    )
    parser.add_argument("--processes", type=int, default=0, help="repeat the run in N fresh processes")
    parser.add_argument("--json", help="write the results (raw times included) to this file")
    args = parser.parse_args()
    if args.clock == "thread" and args.threads != 1:
        parser.error("--clock thread measures one thread only; use it with --threads 1")
    result = fresh_processes(args) if args.processes else run(args)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"\nwrote {args.json}")


def settings(args: argparse.Namespace) -> dict:
    from importlib.metadata import version

    import monotonic_align as _  # noqa: F401  (version below)

    return {
        "command": "python " + " ".join(sys.argv),
        "threads": args.threads,
        "clock": args.clock,
        "repeats": args.repeats,
        "shape": [args.batch, args.text, args.mel],
        "torch": torch.__version__,
        "numba": numba.__version__,
        "monotonic_align": version("monotonic-align"),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
    }


def run(args: argparse.Namespace) -> dict:
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    torch.set_num_threads(args.threads)
    if args.threads > 1:
        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    result = settings(args) | {"load_before": os.getloadavg(), "workloads": {}}
    print(
        f"torch {torch.__version__}, numba {numba.__version__}, threads {args.threads}, "
        f"B={args.batch} T_text={args.text} T_mel={args.mel}, {args.repeats} repeats, {args.clock} clock"
    )
    print(f"machine: {result['cpu']}, {os.cpu_count()} CPUs, load average {_load()}")
    for workload, title in WORKLOADS.items():
        if args.workload not in ("both", workload):
            continue
        log_p, mask = make_case(args.batch, args.text, args.mel, workload == "variable")
        fns = candidates(log_p, mask)
        expected = fns["monotonic-align incl. transposes"]()
        for name in ("numba (ours)", "cython (ours, wraps monotonic-align)", "torch (ours)"):
            if not torch.equal(fns[name](), expected):
                raise SystemExit(f"{name} returned a different path than monotonic-align")
        rows = summarize(measure(fns, args.repeats, slow={"torch (ours)"}, clock=clock))
        report(title, rows)
        result["workloads"][workload] = rows
    result["load_after"] = os.getloadavg()
    print(f"\nload average after: {_load()}")
    return result


def fresh_processes(args: argparse.Namespace) -> dict:
    """The same run in ``args.processes`` fresh interpreters; each process's medians."""
    result = settings(args) | {"load_before": os.getloadavg(), "processes": []}
    ours, ref = "numba (ours)", "monotonic-align, pre-transposed input"
    print(
        f"{args.processes} fresh processes, {args.repeats} repeats each, {args.clock} clock, threads {args.threads}"
    )
    print("| process | workload | numba median ms | m-a median ms | ratio |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for p in range(args.processes):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "run.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--json", out]
            for name in ("repeats", "threads", "batch", "text", "mel", "workload", "clock"):
                cmd += [f"--{name}", str(getattr(args, name))]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            with open(out) as f:
                run_result = json.load(f)
        entry = {"process": p, "workloads": {}}
        for workload, rows in run_result["workloads"].items():
            a, b = rows[ours]["median_ms"], rows[ref]["median_ms"]
            entry["workloads"][workload] = {"numba_median_ms": a, "ma_median_ms": b, "ratio": a / b}
            print(f"| {p} | {workload} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
        result["processes"].append(entry)
    result["load_after"] = os.getloadavg()
    print(f"\nload average before / after: {result['load_before']} / {result['load_after']}")
    return result


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()

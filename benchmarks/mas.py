"""Benchmark monotonic alignment search backends against PyPI monotonic-align.

Usage:
    python benchmarks/mas.py [--repeats 60] [--threads 2] [--batch 16 --text 150 --mel 800]

All candidates run in one process, interleaved round-robin (each repetition times every
candidate once, so machine noise hits them alike), after warm-up calls (which also pay the
numba JIT / cache load). Reported: median and minimum wall time in ms, and the ratio of each
median to monotonic-align's median, both fed pre-transposed contiguous input (its best case,
as in the reference measurement) and including the two transposes its layout needs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
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


def report(title: str, times: dict[str, list[float]]) -> None:
    med = {name: statistics.median(v) for name, v in times.items()}
    ref = med["monotonic-align, pre-transposed input"]
    ref_t = med["monotonic-align incl. transposes"]
    print(f"\n{title}")
    print("| candidate | median ms | min ms | runs | vs m-a pre-transposed | vs m-a incl. transposes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, v in times.items():
        print(
            f"| {name} | {med[name]:.2f} | {min(v):.2f} | {len(v)} | {med[name] / ref:.2f}x | {med[name] / ref_t:.2f}x |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--text", type=int, default=150)
    parser.add_argument("--mel", type=int, default=800)
    parser.add_argument(
        "--clock",
        choices=("wall", "thread"),
        default="wall",
        help="thread: CPU time of the calling thread (needs --threads 1); insensitive to other "
        "processes taking the CPU, for a loaded machine",
    )
    args = parser.parse_args()
    if args.clock == "thread" and args.threads != 1:
        parser.error("--clock thread measures one thread only; use it with --threads 1")
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    print(
        f"torch {torch.__version__}, numba {numba.__version__}, threads {args.threads}, "
        f"B={args.batch} T_text={args.text} T_mel={args.mel}, {args.repeats} repeats, {args.clock} clock"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {_load()}"
    )
    for variable in (False, True):
        log_p, mask = make_case(args.batch, args.text, args.mel, variable)
        fns = candidates(log_p, mask)
        expected = fns["monotonic-align incl. transposes"]()
        for name in ("numba (ours)", "cython (ours, wraps monotonic-align)", "torch (ours)"):
            if not torch.equal(fns[name](), expected):
                raise SystemExit(f"{name} returned a different path than monotonic-align")
        times = measure(fns, args.repeats, slow={"torch (ours)"}, clock=clock)
        report("variable lengths (text 40-100%, mel 50-100%)" if variable else "full mask", times)
    print(f"\nload average after: {_load()}")


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()

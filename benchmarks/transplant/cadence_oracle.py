"""Cadence with the teacher's own durations: is the gap in the alignment or in the duration predictor?

The cadence transplant on ``D_cad`` learns from durations that MAS finds through the regrown
posterior encoder. ``D_cad`` was synthesized by the recipient itself at length_scale 1.35, so
its exact integer durations are known (``D_cad/train/durations.jsonl``). This script trains the
same organ (the whole stochastic duration predictor) with the same optimizer settings as
``run_transplants.py`` on those exact durations instead, and probes the implied speaking rate
on the test sentences as the run does. If the rate now reaches the donor's, the alignment is
what holds the transplant back; if it stops short again, the duration predictor's training is.

Usage:
    python benchmarks/transplant/cadence_oracle.py --recipient bench_data/quick_recipient \
        [--steps 400 --lr 1e-3 --lr-end 0.1 --batch-size 8] [--out oracle.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_ROOT, dump_json, read_corpus  # noqa: E402
from run_transplants import DurationProbe  # noqa: E402

logger = logging.getLogger("cadence_oracle")


def load_teacher(path: Path) -> list[tuple[list[int], list[int]]]:
    """(token ids, integer durations) per utterance of a ``durations.jsonl``."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r["ids"], r["durations"]) for r in rows]


def batch(pairs: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded ids [B, T], lengths [B], durations [B, 1, T]."""
    t = max(len(ids) for ids, _ in pairs)
    ids = torch.zeros(len(pairs), t, dtype=torch.long)
    dur = torch.zeros(len(pairs), 1, t)
    for i, (x, d) in enumerate(pairs):
        ids[i, : len(x)] = torch.tensor(x)
        dur[i, 0, : len(d)] = torch.tensor(d, dtype=torch.float32)
    return ids, torch.tensor([len(x) for x, _ in pairs]), dur


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--donor", default="D_cad")
    ap.add_argument("--recipient", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lr-end", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--probe-every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    import vits_surgery
    from vits_surgery.models.commons import length_mask
    from vits_surgery.surgery.train_config import TrainConfig
    from vits_surgery.text import Tokenizer

    model = vits_surgery.load(args.recipient).eval()
    tokenizer = Tokenizer.from_config(model.config)
    teacher = load_teacher(args.data / args.donor / "train" / "durations.jsonl")
    probe = DurationProbe([it.text for it in read_corpus(args.data / "R" / "test")], args.probe_every)
    for p in model.parameters():
        p.requires_grad_(False)
    dp = model.duration_predictor
    params = list(dp.parameters())
    for p in params:
        p.requires_grad_(True)
    cfg = TrainConfig()  # the optimizer settings a SurgicalTrainer run uses
    opt = torch.optim.AdamW(params, lr=args.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    gamma = TrainConfig.decay_to(args.lr_end, max(1, args.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: gamma**step)
    rng = random.Random(args.seed)
    history = [{"step": 0, "phones_per_second": probe.rate(model, tokenizer)}]
    logger.info("step 0: rate %.3f", history[-1]["phones_per_second"])
    t0 = time.time()
    losses = []
    for step in range(1, args.steps + 1):
        ids, lengths, dur = batch(rng.sample(teacher, args.batch_size))
        with torch.no_grad():
            hidden = model.encode_text(ids, lengths).hidden
        dp.train()
        x_mask = length_mask(lengths, ids.shape[1], hidden.dtype)
        nll = dp.nll(hidden, x_mask, dur)
        loss = nll.sum() / x_mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % args.probe_every == 0:
            history.append({"step": step, "phones_per_second": probe.rate(model, tokenizer)})
            logger.info("step %d: loss %.3f rate %.3f", step, losses[-1], history[-1]["phones_per_second"])
    result = {
        "command": " ".join(["python", "benchmarks/transplant/cadence_oracle.py", *(argv or sys.argv[1:])]),
        "donor": args.donor,
        "steps": args.steps,
        "lr": args.lr,
        "lr_end": args.lr * args.lr_end,
        "batch_size": args.batch_size,
        "seconds": time.time() - t0,
        "probe": history,
        "loss_first": sum(losses[:20]) / max(1, len(losses[:20])),
        "loss_last": sum(losses[-20:]) / max(1, len(losses[-20:])),
    }
    if args.out:
        dump_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""MAS duration recovery of a regrown voice with its posterior noise scaled.

Loads a voice saved by ``benchmarks/regrow_joe.py --save DIR``, synthesizes held-out utterances
from sentences that the regrowth did not use (the same sentence list and order as that script,
starting after ``--skip`` of them), and runs the training path (posterior encoder, flow, MAS
against the text prior) with the posterior sample ``m_q + s * eps * sigma_q`` for each noise
scale ``s`` (0 = the mean, 1 = the sample training uses), a few draws each, plus MAS on the
teacher z itself (the ceiling). Prints the fraction of tokens within ``--tolerance`` frames of
the teacher durations.

Usage::

    python benchmarks/regrow_joe.py --organs posterior_encoder --n-utterances 200 --n-heldout 30 \\
        --steps-posterior 800 --align-weight 0.1 --align-steps 300 --skip-finetune --save runs/joe200
    python benchmarks/posterior_noise.py runs/joe200 --skip 230 --n 60
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import vits_surgery
from vits_surgery.regrowth import duration_recovery, synthesize_utterances, tokenize_texts

sys.path.insert(0, str(Path(__file__).resolve().parent))
from regrow_joe import SENTENCES, pick_sentences  # noqa: E402


@torch.no_grad()
def teacher_recovery(model, utts, tolerance: int) -> float:
    """Fraction of tokens whose MAS duration on the teacher z itself (pushed through the flow)
    is within ``tolerance`` frames of the teacher's: the ceiling of any posterior encoder."""
    ok = total = 0
    for u in utts:
        enc = model.encode_text(u.tokens.unsqueeze(0), torch.tensor([u.tokens.numel()]))
        mask = torch.ones(1, 1, u.frames)
        z_p = model.flow(u.z.unsqueeze(0), mask).z
        durations = model.align(z_p, enc.m_p, enc.logs_p, enc.mask, mask).sum(dim=2)[0]
        ok += int(((durations - u.durations).abs() <= tolerance).sum())
        total += durations.numel()
    return ok / max(total, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("voice", type=Path, help="a voice saved with vits_surgery.save (regrown posterior encoder)")
    p.add_argument("--skip", type=int, default=230, help="sentences the regrowth used (train + held out)")
    p.add_argument("--n", type=int, default=60, help="fresh held-out utterances")
    p.add_argument("--scales", type=float, nargs="*", default=[0.0, 0.5, 0.75, 1.0])
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--tolerance", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = vits_surgery.load(args.voice).eval()
    texts = pick_sentences(SENTENCES, args.skip + args.n, 50, 100, seed=0)[args.skip :]
    utts = synthesize_utterances(model, tokenize_texts(model, texts), generator=torch.Generator().manual_seed(7),
                                 progress=False)
    print(f"{len(utts)} held-out utterances, {sum(u.tokens.numel() for u in utts)} tokens")
    for scale in args.scales:
        draws = [duration_recovery(model, utts, args.tolerance, sample=scale > 0,
                                   generator=torch.Generator().manual_seed(seed), noise_scale=scale)
                 for seed in range(args.draws if scale else 1)]
        print(f"noise scale {scale:g}: " + ", ".join(f"{r:.1%}" for r in draws))
    print(f"teacher z (ceiling): {teacher_recovery(model, utts, args.tolerance):.1%}")


if __name__ == "__main__":
    main()

"""Calibration of the ``"auto"`` duration source: the prior-fit gap of each benchmark donor.

Usage:
    python benchmarks/cadence/source_choice.py [--data bench_data/transplant]
        [--speakers D_cad,D,D_tim,F_awb,F_kal] [--utterances 12] [--references 6]
        [--threads 2] [--json docs/results/cadence_source_choice.json]

For each donor corpus ``<data>/<spk>/train`` (LJSpeech layout), the first ``--utterances``
utterances of its metadata (features computed in a temporary folder) go through
:func:`vits_surgery.durations.mas.prior_fit_gap` with the recipient
``<data>/models/joe_regrown``: the donor's mean prior fit (posterior mean, flow, MAS against
the text prior; nats per frame per channel), the fit of the recipient's own synthesis of the
first ``--references`` of those texts (seed 0..), and the gap ``reference - donor``, in two
normalisations (``gap``: the full Gaussian log-likelihood; ``gap_z``: without the log-std
terms). Donors: ``D_cad`` the recipient itself slowed 1.35x (MAS durations are right), ``D``
flite slt slowed, ``D_tim`` flite slt, ``F_awb`` flite awb, ``F_kal`` festival kal (forced
alignment is right).

Prints a table and writes the JSON (per speaker: both gaps, both fits, per-utterance fits,
seconds), with the threshold of ``vits_surgery.durations.cache.AutoDurations`` and the margin of
each donor to it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "transplant"))
from common import DEFAULT_ROOT  # noqa: E402  ($TRANSPLANT_DATA or bench_data/transplant)

RECIPIENT_LIKE = ("D_cad",)


def donor_batches(root: Path, spk: str, model, n: int, cache: Path, batch_size: int = 4):
    """The first ``n`` utterances of ``<root>/<spk>/train`` as batches (metadata order)."""
    from vits_surgery.data import TextAudioDataset, read_ljspeech
    from vits_surgery.data.loader import collate

    items = read_ljspeech(root / spk / "train")[:n]
    data = TextAudioDataset(items, model.config, cache_dir=cache / spk, max_seconds=30.0)
    samples = [data[i] for i in range(len(data))]
    return [collate(samples[i : i + batch_size]) for i in range(0, len(samples), batch_size)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_ROOT))
    ap.add_argument("--speakers", default="D_cad,D,D_tim,F_awb,F_kal")
    ap.add_argument("--utterances", type=int, default=12)
    ap.add_argument("--references", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="docs/results/cadence_source_choice.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import vits_surgery
    from vits_surgery.durations.cache import AutoDurations
    from vits_surgery.durations.mas import prior_fit_gap

    root = Path(args.data)
    model = vits_surgery.load(root / "models" / "joe_regrown")
    model.eval()
    threshold = AutoDurations.threshold
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spk in args.speakers.split(","):
            t0 = time.time()
            batches = donor_batches(root, spk, model, args.utterances, Path(tmp))
            res = prior_fit_gap(model, batches, args.utterances, args.references)
            rows[spk] = {**res.to_dict(), "seconds": time.time() - t0,
                         "expected": "mas" if spk in RECIPIENT_LIKE else "forced",
                         "chosen": "mas" if res.gap < threshold else "forced"}
            print(f"{spk}: gap {res.gap:.3f} (gap_z {res.gap_z:.3f}), {time.time() - t0:.0f} s", flush=True)

    print(f"\n{'donor':8} {'donor fit':>10} {'ref fit':>10} {'gap':>8} {'gap_z':>8}  expected chosen")
    for spk, r in rows.items():
        print(f"{spk:8} {r['donor']:10.3f} {r['reference']:10.3f} {r['gap']:8.3f} {r['gap_z']:8.3f}  "
              f"{r['expected']:8} {r['chosen']}")
    like = [r["gap"] for s, r in rows.items() if s in RECIPIENT_LIKE]
    other = [r["gap"] for s, r in rows.items() if s not in RECIPIENT_LIKE]
    summary = {"threshold": threshold}
    if like and other:
        summary.update(max_recipient_like=max(like), min_foreign=min(other),
                       margin_below=threshold - max(like), margin_above=min(other) - threshold,
                       separated=max(like) < threshold < min(other))
        print(f"\nthreshold {threshold}: recipient-like max {max(like):.3f}, foreign min {min(other):.3f}, "
              f"margins {summary['margin_below']:.3f} below / {summary['margin_above']:.3f} above")
    out = {
        "recipient": str(root / "models" / "joe_regrown"), "utterances": args.utterances,
        "references": args.references, "unit": "nats per frame per channel", "summary": summary,
        "speakers": rows, "machine": {"python": platform.python_version(), "torch": torch.__version__,
                                      "threads": args.threads},
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The trivial baseline of a cadence transplant: the recipient with ``length_scale`` set to the
donor's mean rate, no training.

Usage:
    python benchmarks/transplant/length_scale_baseline.py [--data bench_data/transplant]
        --donor D [--length-scale 1.3154]

Writes ``<data>/runs/lengthscale_<donor>/`` as ``report.py`` reads a run: ``samples/`` (the
test sentences with the same seeds as the recipient corpus, at the given length scale, and
their integer durations) and ``result.json`` (plan ``cadence``, so the cadence targets are
checked). The default length scale is the recipient's mean VAD rate over the donor's on the
test sentences (``report.py``'s speaker table, ``<data>/report/speakers.json``): a generous
baseline, since it is fitted on the very sentences it is measured on.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_ROOT, SAMPLE_RATE, dump_json, joe_synthesize, read_corpus  # noqa: E402

logger = logging.getLogger("length_scale_baseline")


def rate_ratio(root: Path, donor: str) -> float:
    """Recipient phones/s over the donor's, from ``report.py``'s speaker table."""
    rows = {r["speaker"]: r for r in json.loads((root / "report" / "speakers.json").read_text())}
    return rows["R"]["phones_per_second"] / rows[donor]["phones_per_second"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--donor", default="D")
    ap.add_argument("--length-scale", type=float, default=None, help="default: from report/speakers.json")
    ap.add_argument("--recipient", type=Path, default=None, help="default: <data>/models/joe_regrown")
    ap.add_argument("--n-test", type=int, default=20)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    import vits_surgery
    from vits_surgery.audio import save_wav
    from vits_surgery.text import Tokenizer

    torch.set_num_threads(1)
    scale = args.length_scale if args.length_scale is not None else rate_ratio(args.data, args.donor)
    recipient = args.recipient or args.data / "models" / "joe_regrown"
    model = vits_surgery.load(recipient).eval()
    tokenizer = Tokenizer.from_config(model.config)
    run_dir = args.data / "runs" / f"lengthscale_{args.donor}"
    samples = run_dir / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    t0, durations = time.time(), {}
    for it in read_corpus(args.data / "R" / "test", args.n_test):
        audio, _, dur = joe_synthesize(model, tokenizer, it.text, int(it.id.split("-")[-1]), length_scale=scale)
        save_wav(samples / f"{it.id}.wav", audio, SAMPLE_RATE)
        durations[it.id] = dur
    dump_json(samples / "durations.json", durations)
    result = {
        "plan": "cadence", "donor": args.donor, "baseline": "length_scale", "length_scale": scale,
        "steps": 0, "lr": 0.0, "batch_size": 0, "wall_seconds": time.time() - t0, "seconds_per_step": 0.0,
        "device": "cpu", "threads": 1, "trainable_parameters": 0, "model": str(recipient),
    }
    dump_json(run_dir / "result.json", result)
    logger.info("length_scale %.4f: %d test sentences in %s", scale, len(durations), samples)


if __name__ == "__main__":
    main()

"""Where a cadence transplant loses the donor's rhythm: its targets, its training, or its noise.

``rhythm.py`` found that a cadence transplant takes the donor's tempo but not its word-level
rhythm. This probe writes the test sentences of three kinds of set next to the runs, so that
``rhythm.py`` can score them against the donor with the same aligner:

- ``targets``: the recipient speaking the donor's own forced-alignment durations (the targets
  the duration predictor is trained on; ``timing="words"``), no training at all. If this set
  does not reach the donor's rhythm, the targets do not hold it;
- ``w<x>`` for a trained run: the run's model with duration noise ``noise_scale_w = x``
  (``w0`` = the predictor's mean-path durations; the config's own value is what the run's
  samples used);
- ``recipient_w<x>``: the recipient itself at the same noise, the baseline for the noise's share.

Each set lands in ``<data>/runs/probe_<donor>_<set>/samples/<id>.wav``, so::

    python benchmarks/cadence/rhythm_probe.py --donor F_kal --run cadence_F_kal_words --noise 0.8,0
    python benchmarks/transplant/rhythm.py --donor F_kal --baseline runs/lengthscale_F_kal \\
        --sets R,runs/probe_F_kal_targets,runs/probe_F_kal_w0.8,runs/probe_F_kal_w0,F_kal

``<data>`` defaults to ``$TRANSPLANT_DATA``; the recipient is ``<data>/models/joe_regrown``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "transplant"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_ROOT, SAMPLE_RATE, read_corpus  # noqa: E402
from split_check import synth  # noqa: E402  (noise seeded by the sentence's index, as the report's samples are)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--donor", required=True)
    ap.add_argument("--run", default=None, help="a trained cadence run under <data>/runs/ (optional)")
    ap.add_argument("--noise", default="0", help="comma-separated noise_scale_w values for the run and the recipient")
    ap.add_argument("--sets", default="targets,run,recipient", help="which of targets,run,recipient to write")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import vits_surgery
    from vits_surgery.audio import save_wav
    from vits_surgery.durations import donor_durations
    from vits_surgery.text import Tokenizer

    wanted = set(args.sets.split(","))
    recipient = vits_surgery.load(args.data / "models" / "joe_regrown").eval()
    tokenizer = Tokenizer.from_config(recipient.config)
    items = read_corpus(args.data / args.donor / "test", args.n)
    noises = [float(x) for x in args.noise.split(",") if x]
    models = {}
    if "recipient" in wanted:
        models.update({f"recipient_w{x:g}": (recipient, x) for x in noises})
    if "run" in wanted and args.run:
        trained = vits_surgery.load(args.data / "runs" / args.run / "final").eval()
        models.update({f"w{x:g}": (trained, x) for x in noises})
    for it in items:
        seed = int(it.id.split("-")[-1])
        ids = tokenizer.encode(it.text)
        out = {}
        if "targets" in wanted:
            (d,) = donor_durations(recipient, [(it.wav, it.text)], source="forced", timing="words")
            if d is not None:
                out["targets"] = synth(recipient, ids, seed, durations=d)[0]
        for name, (model, w) in models.items():
            out[name] = synth(model, ids, seed, noise_scale_w=w)[0]
        for name, audio in out.items():
            folder = args.data / "runs" / f"probe_{args.donor}_{name}" / "samples"
            folder.mkdir(parents=True, exist_ok=True)
            save_wav(folder / f"{it.id}.wav", audio, SAMPLE_RATE)
        print(it.id, sorted(out), flush=True)


if __name__ == "__main__":
    main()

"""Quick look at a trained voice on the test sentences: WER, median F0, similarity to the donor.

Usage: python benchmarks/transplant/quick_eval.py MODEL_DIR --donor D [--noise-scale 0.667] [--n 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_ROOT, SAMPLE_RATE, joe_synthesize, read_corpus  # noqa: E402
from report import reference_embeddings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--data", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--donor", default="D")
    ap.add_argument("--noise-scale", type=float, default=None)
    ap.add_argument("--n", type=int, default=20)
    args = ap.parse_args()
    import vits_surgery
    from vits_surgery.audio import save_wav
    from vits_surgery.evaluate import evaluate_corpus
    from vits_surgery.text import Tokenizer

    torch.set_num_threads(2)
    model = vits_surgery.load(args.model).eval()
    if args.noise_scale is not None:
        import dataclasses

        model.config = dataclasses.replace(model.config, noise_scale=args.noise_scale)
    tok = Tokenizer.from_config(model.config)
    items = read_corpus(args.data / "R" / "test", args.n)
    refs = {k: v for k, v in reference_embeddings(args.data).items() if k in ("R", args.donor)}
    with tempfile.TemporaryDirectory() as tmp:
        wavs = []
        for it in items:
            audio, _, _ = joe_synthesize(model, tok, it.text, seed=int(it.id.split("-")[-1]))
            wavs.append(Path(tmp) / f"{it.id}.wav")
            save_wav(wavs[-1], audio, SAMPLE_RATE)
        res = evaluate_corpus(wavs, [it.text for it in items], ref_wavs=refs)
    sim = res.get("similarity", {})
    print(f"{args.model} ns={model.config.noise_scale}: WER {res['wer']:.3f} F0 {res['f0']['median']:.1f} "
          f"cos R {sim.get('R', {}).get('mean', np.nan):.3f} cos {args.donor} {sim.get(args.donor, {}).get('mean', np.nan):.3f}")


if __name__ == "__main__":
    main()

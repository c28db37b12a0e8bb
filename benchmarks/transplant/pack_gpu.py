"""Pack what the GPU timbre runs need into one small folder that can travel to a GPU machine.

Usage:
    python benchmarks/transplant/pack_gpu.py [--data bench_data/transplant] --out gpu_pack
        [--donors D_tim,D] [--bitrate-level 0.6]

The folder holds, in the layout ``gpu_timbre.sh`` reads as its DATA:

- ``models/joe_regrown``: the regrown recipient in fp16, generator only (the discriminator,
  46 M parameters, is left behind: the GPU run trains a fresh one, after a warm-up of the
  discriminator alone, see ``run_transplants.py --disc-warmup``);
- ``<donor>/train``: the donor's first ``--limit`` training utterances as 16 kHz Opus at about
  31 kbit/s (``metadata.csv`` names ``wavs/<id>.ogg``). The flite donors are 16 kHz voices, so
  nothing above 8 kHz is lost; the data pipeline resamples to 22050 Hz on reading. Opus is
  lossy: the GPU runs train on coded audio, every evaluation uses the original WAVs;
- ``<donor>/train/tokens.json``: the token ids of each sentence, so no phonemizer is needed
  there (``run_transplants.donor_loader`` reads them instead of phonemizing).

Prints the size of each part; the device tool takes at most 64 MiB with the working tree.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_ROOT, read_corpus, write_metadata  # noqa: E402

logger = logging.getLogger("pack_gpu")
PACK_RATE = 16000


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def pack_model(src: Path, dst: Path) -> None:
    """Generator-only fp16 copy of a native checkpoint."""
    import torch

    import vits_surgery

    model = vits_surgery.load(src)
    model.discriminator = None
    vits_surgery.save(model.to(torch.float16), dst)


def pack_donor(root: Path, donor: str, out: Path, level: float, limit: int | None) -> None:
    """``<donor>/train`` (its first ``limit`` utterances) as 16 kHz Opus, with ``tokens.json``."""
    import soundfile as sf

    import vits_surgery
    from vits_surgery.audio import load_audio, resample
    from vits_surgery.text import Tokenizer

    items = read_corpus(root / donor / "train", limit)
    dst = out / donor / "train"
    (dst / "wavs").mkdir(parents=True, exist_ok=True)
    for it in items:
        audio, sr = load_audio(it.wav)
        audio = resample(audio, sr, PACK_RATE)
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        if peak > 0.999:
            audio = audio * (0.999 / peak)
        sf.write(
            dst / "wavs" / f"{it.id}.ogg",
            audio,
            PACK_RATE,
            format="OGG",
            subtype="OPUS",
            compression_level=level,
        )
    write_metadata(dst, [(f"wavs/{it.id}.ogg", it.text) for it in items])
    tokenizer = Tokenizer.from_config(vits_surgery.load(root / "models" / "joe_regrown").config)
    table = {it.text: tokenizer.encode(it.text) for it in items}
    (dst / "tokens.json").write_text(json.dumps(table), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--donors", default="D_tim,D")
    ap.add_argument(
        "--bitrate-level",
        type=float,
        default=0.9,
        help="libsndfile Opus compression level 0..1 (0.9: about 31 kbit/s)",
    )
    ap.add_argument("--limit", type=int, default=300, help="utterances per donor (the first by id)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.out.exists():
        shutil.rmtree(args.out)
    pack_model(args.data / "models" / "joe_regrown", args.out / "models" / "joe_regrown")
    logger.info("model: %.1f MiB", folder_mb(args.out / "models"))
    for donor in args.donors.split(","):
        pack_donor(args.data, donor, args.out, args.bitrate_level, args.limit)
        logger.info("%s: %.1f MiB", donor, folder_mb(args.out / donor))
    logger.info("total: %.1f MiB", folder_mb(args.out))


if __name__ == "__main__":
    main()

"""Build further foreign donor corpora for the transplant benchmark, at each voice's own pace.

Usage:
    python benchmarks/transplant/build_foreign.py --voice flite:awb --name F_awb [--n-train 120]
    python benchmarks/transplant/build_foreign.py --voice festival:kal_diphone --name F_kal

The sentence ids are those of ``build_donors.py`` (the same seeded split; a larger
``--n-train`` adds sentences without changing ``test`` or ``ref``), so every speaker reads
the same test sentences. The audio is resampled to 22050 Hz and scaled to joe's median RMS
(``<data>/calibration.json``), and the voice keeps its own duration model: no stretch, so
its rhythm and pauses are its synthesizer's, not joe's. Festival voices also write each
utterance's segment timings (``segs/<id>.json``: phone, end time in seconds).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_ROOT,
    SAMPLE_RATE,
    SENTENCES,
    dump_json,
    flite_synthesize,
    level_match,
    read_sentences,
    split_sentences,
    utt_id,
    write_metadata,
)

logger = logging.getLogger("build_foreign")

_FESTIVAL_SCRIPT = """
(voice_{voice})
(set! utt (Utterance Text "{text}"))
(utt.synth utt)
(utt.save.wave utt "{wav}" 'riff)
(utt.save.segs utt "{segs}")
"""


def festival_synthesize(voice: str, text: str) -> tuple[np.ndarray, list[tuple[str, float]]]:
    """One festival utterance at 22050 Hz and its segments ``(phone, end seconds)``."""
    from vits_surgery.audio import load_audio, resample

    safe = text.replace("\\", " ").replace('"', " ")
    with tempfile.TemporaryDirectory(prefix="festival_") as tmp:
        wav, segs, scm = Path(tmp) / "out.wav", Path(tmp) / "out.segs", Path(tmp) / "in.scm"
        scm.write_text(_FESTIVAL_SCRIPT.format(voice=voice, text=safe, wav=wav, segs=segs), encoding="utf-8")
        subprocess.run(["festival", "-b", str(scm)], check=True, capture_output=True, env=dict(os.environ, LC_ALL="C"))
        audio, sr = load_audio(wav)
        rows = []
        for line in segs.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] != "#":
                try:
                    rows.append((parts[2], float(parts[0])))
                except ValueError:
                    continue
    return resample(audio, sr, SAMPLE_RATE), rows


def synthesize(engine: str, voice: str, text: str) -> tuple[np.ndarray, list[tuple[str, float]] | None]:
    if engine == "flite":
        return flite_synthesize(voice, text, 1.0), None
    if engine == "festival":
        return festival_synthesize(voice, text)
    raise SystemExit(f"unknown engine {engine!r}: use flite:<voice> or festival:<voice>")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--sentences", type=Path, default=SENTENCES)
    ap.add_argument("--voice", required=True, help="flite:<voice> or festival:<voice>")
    ap.add_argument("--name", required=True, help="speaker folder name, e.g. F_awb")
    ap.add_argument("--n-train", type=int, default=120)
    ap.add_argument("--splits", default="test,ref,train")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from vits_surgery.audio import save_wav

    calib = json.loads((args.out / "calibration.json").read_text())
    lo, hi = calib.get("sentence_chars", [30, 100])
    sentences = read_sentences(args.sentences)
    candidates = [i for i, s in enumerate(sentences) if lo <= len(s) <= hi]
    sizes = {name: len(calib["splits"][name]) for name in ("test", "ref", "calib")}
    sizes["train"] = args.n_train
    splits = {
        name: [candidates[k] for k in idx]
        for name, idx in split_sentences(len(candidates), sizes, calib.get("seed", 1234)).items()
    }
    for name in ("test", "ref"):  # the same held-out ids as every other speaker
        if [utt_id(i) for i in splits[name]] != calib["splits"][name]:
            raise SystemExit(f"the {name} split differs from calibration.json: wrong --sentences?")
    engine, _, voice = args.voice.partition(":")
    target_rms = float(calib["joe"]["median_rms"])
    t0 = time.time()
    for split in args.splits.split(","):
        folder = args.out / args.name / split
        (folder / "wavs").mkdir(parents=True, exist_ok=True)
        items = [(i, sentences[i]) for i in splits[split]]

        def one(item: tuple[int, str], folder: Path = folder) -> None:
            index, text = item
            path = folder / "wavs" / f"{utt_id(index)}.wav"
            if path.is_file():
                return
            audio, segs = synthesize(engine, voice, text)
            save_wav(path, level_match(audio, target_rms), SAMPLE_RATE)
            if segs is not None:
                (folder / "segs").mkdir(exist_ok=True)
                dump_json(folder / "segs" / f"{utt_id(index)}.json", segs)

        with cf.ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(one, items))
        write_metadata(folder, [(utt_id(i), t) for i, t in items])
        logger.info("%s/%s: %d utterances", args.name, split, len(items))
    dump_json(
        args.out / args.name / "corpus.json",
        {"speaker": args.name, "voice": args.voice, "stretch": 1.0, "target_rms": target_rms,
         "sample_rate": SAMPLE_RATE, "build_seconds": time.time() - t0,
         "splits": {k: len(splits[k]) for k in args.splits.split(",")}},
    )


if __name__ == "__main__":
    main()

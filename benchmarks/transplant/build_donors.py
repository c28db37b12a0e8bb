"""Build the recipient and donor corpora of the transplant benchmark.

Usage:
    python benchmarks/transplant/build_donors.py [--out bench_data/transplant]
        [--n-train 400] [--n-test 20] [--n-ref 20] [--n-calib 60] [--jobs 2]
        [--flite-voice slt] [--speakers R,D_cad,D_tim,D]

Speakers (sentences of 30-100 characters from the shared LJSpeech sentence list, one seeded
split shared by all, so every speaker reads the same ids):

- ``R``: the Piper joe voice at its own pace (test, ref and calibration sentences only: the
  recipient's training data is the voice itself).
- ``D_cad``: joe at ``length_scale`` 1.35, the exact cadence ground truth; the integer
  durations per token are kept in ``durations.jsonl``.
- ``D_tim``: a flite voice whose median F0 differs from joe's by >= 4 semitones, its
  ``duration_stretch`` fitted so that its speech time matches joe's on the calibration
  sentences (fit at 1.0, then one update ``s *= target / measured``).
- ``D``: the same flite voice fitted to 1.35x joe's speech time.

Flite audio (16 kHz) is resampled to 22050 Hz and scaled to joe's median RMS, so loudness is no
cue. joe's noise generator is seeded with the sentence index, so R and D_cad are paired.
Everything measured during the build goes to ``<out>/calibration.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import logging
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_ROOT,
    SAMPLE_RATE,
    SENTENCES,
    SLOW,
    dump_json,
    flite_synthesize,
    joe_synthesize,
    level_match,
    load_joe,
    read_sentences,
    rms,
    split_sentences,
    utt_id,
    write_metadata,
)

logger = logging.getLogger("build_donors")
MIN_SEMITONES = 4.0

# ----------------------------------------------------------------------------- joe workers
_JOE = None


def _init_joe() -> None:
    global _JOE
    import torch

    torch.set_num_threads(1)
    _JOE = load_joe()


def _joe_job(job: tuple[int, str, float]) -> tuple[int, np.ndarray, list[int], list[int]]:
    index, text, length_scale = job
    audio, ids, durations = joe_synthesize(*_JOE, text, seed=index, length_scale=length_scale)
    return index, audio, ids, durations


def build_joe(folder: Path, jobs_list: list[tuple[int, str]], length_scale: float, jobs: int) -> None:
    """Synthesize ``(index, text)`` pairs with joe into ``folder`` (resumes: existing ids are kept)."""
    from vits_surgery.audio import save_wav

    (folder / "wavs").mkdir(parents=True, exist_ok=True)
    dur_path = folder / "durations.jsonl"
    done = {}
    if dur_path.is_file():
        for line in dur_path.read_text().splitlines():
            rec = json.loads(line)
            if (folder / "wavs" / f"{rec['id']}.wav").is_file():
                done[rec["id"]] = rec
    todo = [(i, t, length_scale) for i, t in jobs_list if utt_id(i) not in done]
    logger.info("%s: %d utterances to synthesize (%d done)", folder, len(todo), len(done))
    t0 = time.time()
    with mp.get_context("spawn").Pool(jobs, initializer=_init_joe) as pool, open(dur_path, "a") as f:
        for k, (index, audio, ids, durations) in enumerate(pool.imap_unordered(_joe_job, todo), 1):
            save_wav(folder / "wavs" / f"{utt_id(index)}.wav", audio, SAMPLE_RATE)
            f.write(json.dumps({"id": utt_id(index), "ids": ids, "durations": durations}) + "\n")
            f.flush()
            if k % 25 == 0:
                logger.info("  %d/%d in %.0f s", k, len(todo), time.time() - t0)
    write_metadata(folder, [(utt_id(i), t) for i, t in jobs_list])


def build_flite(
    folder: Path, jobs_list: list[tuple[int, str]], voice: str, stretch: float, target_rms: float, jobs: int
) -> None:
    """Synthesize with flite into ``folder``, level-matched to ``target_rms``."""
    from vits_surgery.audio import save_wav

    def one(item: tuple[int, str]) -> None:
        index, text = item
        audio = level_match(flite_synthesize(voice, text, stretch), target_rms)
        save_wav(folder / "wavs" / f"{utt_id(index)}.wav", audio, SAMPLE_RATE)

    with cf.ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, jobs_list))
    write_metadata(folder, [(utt_id(i), t) for i, t in jobs_list])


# ----------------------------------------------------------------------------- measuring
def speech_seconds(audios: list[np.ndarray]) -> float:
    """Total speech time (energy VAD, pauses >= 150 ms removed)."""
    from vits_surgery.evaluate import energy_vad

    return float(sum(energy_vad(a, SAMPLE_RATE).speech_seconds for a in audios))


def load_folder(folder: Path, indices: list[int]) -> list[np.ndarray]:
    from vits_surgery.audio import load_audio

    return [load_audio(folder / "wavs" / f"{utt_id(i)}.wav")[0] for i in indices]


def flite_speech_seconds(voice: str, items: list[tuple[int, str]], stretch: float, jobs: int) -> float:
    with cf.ThreadPoolExecutor(jobs) as pool:
        audios = list(pool.map(lambda it: flite_synthesize(voice, it[1], stretch), items))
    return speech_seconds(audios)


def fit_stretch(voice: str, items: list[tuple[int, str]], target_seconds: float, jobs: int) -> dict:
    """flite ``duration_stretch`` giving ``target_seconds`` of speech on ``items``: fit + one update."""
    base = flite_speech_seconds(voice, items, 1.0, jobs)
    first = target_seconds / base
    measured = flite_speech_seconds(voice, items, first, jobs)
    second = first * target_seconds / measured
    check = flite_speech_seconds(voice, items, second, jobs)
    return {
        "stretch": second,
        "first_fit": first,
        "speech_seconds_at_1": base,
        "speech_seconds_first_fit": measured,
        "speech_seconds_final": check,
        "target_speech_seconds": target_seconds,
        "final_ratio_to_target": check / target_seconds,
    }


def pick_flite_voice(voice: str, joe_f0: float, items: list[tuple[int, str]], jobs: int) -> dict:
    """Median F0 of the flite voice and its distance to joe's; refuses < 4 semitones."""
    from vits_surgery.evaluate import f0_stats, semitones

    with cf.ThreadPoolExecutor(jobs) as pool:
        audios = list(pool.map(lambda it: flite_synthesize(voice, it[1], 1.0), items))
    f0 = f0_stats([(a, SAMPLE_RATE) for a in audios]).median
    gap = semitones(f0, joe_f0)
    if abs(gap) < MIN_SEMITONES:
        raise SystemExit(
            f"flite {voice!r} has median F0 {f0:.1f} Hz, {gap:+.2f} semitones from joe's "
            f"{joe_f0:.1f} Hz; the benchmark needs >= {MIN_SEMITONES} (try --flite-voice slt)"
        )
    return {"voice": voice, "median_f0": f0, "semitones_from_joe": gap}


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--sentences", type=Path, default=SENTENCES)
    ap.add_argument("--n-train", type=int, default=400)
    ap.add_argument("--n-test", type=int, default=20)
    ap.add_argument("--n-ref", type=int, default=20)
    ap.add_argument("--n-calib", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--min-chars", type=int, default=30, help="shortest sentence used (characters)")
    ap.add_argument("--max-chars", type=int, default=100, help="longest sentence used (about 5 s of joe)")
    ap.add_argument("--flite-voice", default="slt")
    ap.add_argument("--speakers", default="R,D_tim,D,D_cad")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    speakers = args.speakers.split(",")

    sentences = read_sentences(args.sentences)
    sizes = {"train": args.n_train, "test": args.n_test, "ref": args.n_ref, "calib": args.n_calib}
    candidates = [i for i, s in enumerate(sentences) if args.min_chars <= len(s) <= args.max_chars]
    splits = {
        name: [candidates[k] for k in idx]
        for name, idx in split_sentences(len(candidates), sizes, args.seed).items()
    }
    pairs = {name: [(i, sentences[i]) for i in idx] for name, idx in splits.items()}
    out = args.out
    calib_path = out / "calibration.json"
    calib = json.loads(calib_path.read_text()) if calib_path.is_file() else {}
    calib.update(
        splits={k: [utt_id(i) for i in v] for k, v in splits.items()},
        seed=args.seed,
        sentences=str(args.sentences),
        sentence_chars=[args.min_chars, args.max_chars],
    )

    # R: joe at its own pace on the held-out and calibration sentences
    t0 = time.time()
    for split in ("calib", "test", "ref"):
        build_joe(out / "R" / split, pairs[split], 1.0, args.jobs)
    calib["R_seconds"] = time.time() - t0
    joe_calib = load_folder(out / "R" / "calib", splits["calib"])
    from vits_surgery.evaluate import f0_stats

    joe_f0 = f0_stats([(a, SAMPLE_RATE) for a in joe_calib]).median
    joe_speech = speech_seconds(joe_calib)
    target_rms = float(np.median([rms(a) for a in joe_calib]))
    calib["joe"] = {"median_f0": joe_f0, "calib_speech_seconds": joe_speech, "median_rms": target_rms}
    logger.info(
        "joe: median F0 %.1f Hz, %.1f s of speech on %d calibration sentences",
        joe_f0,
        joe_speech,
        len(joe_calib),
    )

    if "D_tim" in speakers or "D" in speakers:
        calib["flite"] = pick_flite_voice(args.flite_voice, joe_f0, pairs["calib"], args.jobs)
        calib["D_tim"] = fit_stretch(args.flite_voice, pairs["calib"], joe_speech, args.jobs)
        calib["D"] = fit_stretch(args.flite_voice, pairs["calib"], SLOW * joe_speech, args.jobs)
        logger.info(
            "flite %s: %s; stretch D_tim %.4f, D %.4f",
            args.flite_voice,
            calib["flite"],
            calib["D_tim"]["stretch"],
            calib["D"]["stretch"],
        )
    dump_json(calib_path, calib)

    for spk in speakers:
        if spk == "R":
            continue
        t0 = time.time()
        for split in ("test", "ref", "train"):
            folder = out / spk / split
            if spk == "D_cad":
                build_joe(folder, pairs[split], SLOW, args.jobs)
            else:
                build_flite(
                    folder, pairs[split], args.flite_voice, calib[spk]["stretch"], target_rms, args.jobs
                )
        info = {
            "speaker": spk,
            "build_seconds": time.time() - t0,
            "sample_rate": SAMPLE_RATE,
            "splits": {k: len(pairs[k]) for k in ("train", "test", "ref")},
        }
        info.update(
            {"length_scale": SLOW}
            if spk == "D_cad"
            else {"flite_voice": args.flite_voice, "stretch": calib[spk]["stretch"], "target_rms": target_rms}
        )
        dump_json(out / spk / "corpus.json", info)
        logger.info("%s built in %.0f s", spk, info["build_seconds"])
    dump_json(
        out / "R" / "corpus.json",
        {
            "speaker": "R",
            "voice": "piper joe (en_US medium)",
            "length_scale": 1.0,
            "sample_rate": SAMPLE_RATE,
        },
    )


if __name__ == "__main__":
    main()

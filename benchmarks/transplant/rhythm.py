"""Rhythm of a cadence transplant, blind to global tempo.

Every audio set (a speaker's test sentences or a transplant run's samples) is force-aligned
word by word with the library's aligner (:func:`vits_surgery.durations.forced.forced_align`).
Per sentence, each word's duration is divided by the sentence's total word (speech) time,
which removes the global tempo, then by the word's phone count (espeak-ng, as
:func:`vits_surgery.evaluate.count_phones` counts them), so long words do not dominate; the
log of that is the word's value. A set's rhythm similarity to the donor is the Pearson
correlation of those values over every word of every test sentence both aligned (paired by
word index; a sentence whose word sequences differ is skipped), ``corr_within`` the same with
each sentence's values centred first (without the sentence-length term all sets share), and
``distance`` the RMS difference in log units. A set that is the donor at another tempo scores correlation 1 and
distance 0.

Also per set: the pause fraction (share of the span from the first word's start to the last
word's end that lies between words) and the phrase-final lengthening (the last word's
normalised duration over the sentence's mean normalised duration), both averaged over the
paired sentences. With ``--baseline``, ``closure`` is the fraction of the baseline's distance
to the donor that a set closes: ``(d_base - d_set) / d_base``.

Usage:
    python benchmarks/transplant/rhythm.py [--data bench_data/transplant] --donor D
        --sets R,runs/lengthscale_D,runs/cadence_D_forced,D [--baseline runs/lengthscale_D]
        [--n-test 20] [--json OUT]

A set name is a speaker (``<data>/<spk>/test/wavs``) or ``runs/<name>``
(``<data>/runs/<name>/samples``); the texts come from ``<data>/R/test/metadata.csv`` (the same
ids for every speaker). Alignments are cached as ``<data>/eval/rhythm/<set>/<id>.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_ROOT, dump_json, read_corpus  # noqa: E402

logger = logging.getLogger("rhythm")

#: Shortest word duration counted (one aligner frame), so the log stays finite.
MIN_WORD_SECONDS = 0.01


# ----------------------------------------------------------------------------- the measure
def word_values(durations: Sequence[float], phone_counts: Sequence[int]) -> np.ndarray:
    """Log of each word's share of the sentence's speech time per phone.

    ``log((d_i / sum_j d_j) / n_i)``: a global tempo factor on every ``d`` cancels.
    """
    d = np.maximum(np.asarray(durations, dtype=np.float64), MIN_WORD_SECONDS)
    n = np.maximum(np.asarray(phone_counts, dtype=np.float64), 1.0)
    if d.shape != n.shape or d.size == 0:
        raise ValueError(f"need one phone count per word, got {d.shape} durations and {n.shape} counts")
    return np.log(d / d.sum() / n)


def pause_fraction(spans: Sequence[tuple[float, float]]) -> float:
    """Share of ``[first start, last end]`` not covered by a word (the pauses between words)."""
    if not spans:
        raise ValueError("no word spans")
    span = spans[-1][1] - spans[0][0]
    if span <= 0:
        return 0.0
    speech = sum(max(e - s, 0.0) for s, e in spans)
    return float(min(max(1.0 - speech / span, 0.0), 1.0))


def final_lengthening(durations: Sequence[float], phone_counts: Sequence[int]) -> float:
    """The last word's normalised duration over the sentence's mean normalised duration."""
    v = np.exp(word_values(durations, phone_counts))
    return float(v[-1] / v.mean())


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation (nan for fewer than two points or a constant series)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2:
        return math.nan
    x, y = x - x.mean(), y - y.mean()
    den = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y / den) if den > 0 else math.nan


def rms_difference(x: Sequence[float], y: Sequence[float]) -> float:
    """Root mean square of ``x - y``."""
    diff = np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64)
    return float(np.sqrt(np.mean(diff**2))) if diff.size else math.nan


def sentence_profile(words: Sequence[dict], phone_counts: Sequence[int]) -> dict:
    """Values, pause fraction and final lengthening of one aligned sentence.

    ``words``: ``{"word", "start", "end"}`` dicts in order.
    """
    durations = [w["end"] - w["start"] for w in words]
    return {
        "words": [w["word"] for w in words],
        "values": word_values(durations, phone_counts).tolist(),
        "pause_fraction": pause_fraction([(w["start"], w["end"]) for w in words]),
        "final_lengthening": final_lengthening(durations, phone_counts),
    }


def compare(candidate: dict[str, dict], donor: dict[str, dict]) -> dict:
    """Rhythm of a set against the donor from their sentence profiles (``id -> profile``).

    Sentences are paired by id when both aligned and their word sequences match. ``corr`` pools
    the values of all paired words; ``corr_within`` first centres each sentence's values, so the
    sentence-level term ``-log(phones in the sentence)`` that every set shares does not count.
    """
    xs, ys, xc, yc, pause_x, pause_y, final_x = [], [], [], [], [], [], []
    skipped = 0
    for uid in sorted(set(candidate) & set(donor)):
        a, b = candidate[uid], donor[uid]
        if a["words"] != b["words"]:
            skipped += 1
            continue
        xs.extend(a["values"])
        ys.extend(b["values"])
        xc.extend(np.asarray(a["values"]) - np.mean(a["values"]))
        yc.extend(np.asarray(b["values"]) - np.mean(b["values"]))
        pause_x.append(a["pause_fraction"])
        pause_y.append(b["pause_fraction"])
        final_x.append(a["final_lengthening"])
    return {
        "corr": pearson(xs, ys),
        "corr_within": pearson(xc, yc),
        "distance": rms_difference(xs, ys),
        "pause_fraction": float(np.mean(pause_x)) if pause_x else math.nan,
        "pause_fraction_diff": float(np.mean(pause_x) - np.mean(pause_y)) if pause_x else math.nan,
        "final_lengthening": float(np.mean(final_x)) if final_x else math.nan,
        "sentences_paired": len(pause_x),
        "sentences_skipped": skipped,
        "words_paired": len(xs),
    }


def closure(d_base: float, d_trans: float) -> float:
    """Fraction of the baseline's distance to the donor that the transplant closes."""
    return (d_base - d_trans) / d_base if d_base > 0 else math.nan


# ----------------------------------------------------------------------------- audio sets
def set_folder(root: Path, name: str) -> Path:
    """``runs/<x>`` -> ``<root>/runs/<x>/samples``; a speaker -> ``<root>/<spk>/test/wavs``."""
    if name.startswith("runs/"):
        return root / name / "samples"
    return root / name / "test" / "wavs"


@functools.cache
def phone_count(word: str, language: str = "en-us") -> int:
    """Phones espeak-ng reads in one word (at least 1)."""
    from vits_surgery.evaluate import count_phones

    return max(int(count_phones(word, language=language)), 1)


def align_wav(path: Path, text: str, cache: Path) -> list[dict] | None:
    """Word segments of ``text`` in ``path`` (cached), or ``None`` when alignment failed."""
    stat = path.stat()
    key = {"size": stat.st_size, "mtime": stat.st_mtime, "text": text}
    if cache.exists():
        stored = json.loads(cache.read_text())
        if stored.get("key") == key:
            return stored["words"]
    from vits_surgery.audio import load_audio
    from vits_surgery.durations.forced import AlignmentError, forced_align

    audio, sr = load_audio(path)
    try:
        spans = forced_align(audio, sr, text)
        words = [{"word": s.text, "start": s.start, "end": s.end} for s in spans]
    except (AlignmentError, ValueError) as err:
        logger.warning("%s: %s", path, err)
        words = None
    dump_json(cache, {"key": key, "words": words})
    return words


def profile_set(root: Path, name: str, items) -> dict[str, dict]:
    """``id -> sentence profile`` of every test sentence of a set that aligned."""
    folder = set_folder(root, name)
    out = {}
    for it in items:
        wav = folder / f"{it.id}.wav"
        if not wav.exists():
            logger.warning("%s: missing", wav)
            continue
        words = align_wav(wav, it.text, root / "eval" / "rhythm" / name / f"{it.id}.json")
        if words:
            out[it.id] = sentence_profile(words, [phone_count(w["word"]) for w in words])
    return out


def _fmt(x: float, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def table(rows: list[dict]) -> str:
    """The printed table."""
    head = (f"{'set':28s} {'corr':>6s} {'c_in':>6s} {'dist':>6s} {'pause':>6s} {'dpause':>7s} {'final':>6s} "
            f"{'closure':>7s} {'sents':>5s} {'words':>5s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['set']:28s} {_fmt(r['corr'], '6.3f')} {_fmt(r['corr_within'], '6.3f')} {_fmt(r['distance'], '6.3f')} "
            f"{_fmt(r['pause_fraction'], '6.3f')} {_fmt(r['pause_fraction_diff'], '+7.3f')} "
            f"{_fmt(r['final_lengthening'], '6.2f')} {_fmt(r.get('closure'), '+7.2f')} "
            f"{r['sentences_paired']:5d} {r['words_paired']:5d}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--donor", default="D")
    ap.add_argument("--sets", default="R,runs/lengthscale_D,runs/cadence_D_forced,D",
                    help="comma-separated sets (speaker names or runs/<name>)")
    ap.add_argument("--baseline", default=None,
                    help="set whose distance to the donor the others' closure is measured against")
    ap.add_argument("--n-test", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("vits_surgery").setLevel(logging.WARNING)

    root = args.data
    items = read_corpus(root / "R" / "test", limit=args.n_test)
    names = [s.strip() for s in args.sets.split(",") if s.strip()]
    present = [n for n in names if set_folder(root, n).is_dir()]
    for n in sorted(set(names) - set(present)):
        logger.warning("skipping %s: no folder %s", n, set_folder(root, n))
    if not set_folder(root, args.donor).is_dir():
        raise SystemExit(f"donor folder {set_folder(root, args.donor)} is missing")

    profiles = {}
    for n in dict.fromkeys([args.donor, *present]):
        profiles[n] = profile_set(root, n, items)
        logger.info("%s: %d/%d sentences aligned", n, len(profiles[n]), len(items))
    rows = [{"set": n, "aligned": len(profiles[n]), **compare(profiles[n], profiles[args.donor])} for n in present]
    if args.baseline:
        if args.baseline not in profiles:
            profiles[args.baseline] = profile_set(root, args.baseline, items)
        d_base = compare(profiles[args.baseline], profiles[args.donor])["distance"]
        for r in rows:
            r["closure"] = closure(d_base, r["distance"])
    print(f"rhythm vs donor {args.donor} ({len(items)} test sentences)")
    print(table(rows))
    if args.json:
        dump_json(args.json, {
            "donor": args.donor, "baseline": args.baseline, "n_test": len(items), "rows": rows,
            "measure": "per-word log(duration / sentence speech time / phone count); corr = Pearson vs "
                       "donor over paired words, corr_within = the same with each sentence centred, "
                       "distance = RMS difference (log units)",
        })


if __name__ == "__main__":
    main()

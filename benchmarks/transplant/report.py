"""Measure the transplant runs and write the report (tables, WAVs, an HTML page with players).

Usage:
    python benchmarks/transplant/report.py [--data bench_data/transplant] [--runs ...]
        [--n-test 20] [--players 5]

For each run in ``<data>/runs/<plan>_<donor>/`` (made by ``run_transplants.py``) the final
model reads the held-out test sentences with the same seeds as the recipient corpus (seed =
sentence index, length_scale 1.0). Three sets are measured on the same ids: the recipient
before (``R/test``, the joe voice itself), the donor (``<donor>/test``) and the result.
Metrics (``vits_surgery.evaluate``): phones per second of speech (energy VAD) and from the
predicted durations, median F0, resemblyzer cosine to the recipient's and the donor's
centroids (built from the ``ref`` split), and pocketsphinx WER. Writes
``<data>/report/summary.json``, ``summary.md`` (the tables) and ``index.html``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_ROOT, SAMPLE_RATE, dump_json, joe_synthesize, read_corpus  # noqa: E402
from targets import check_targets  # noqa: E402

logger = logging.getLogger("report")
SPEAKERS = ("R", "D_cad", "D_tim", "D")
"""The benchmark's own speakers; further donors (``build_foreign.py``: ``F_<voice>``) join when present."""


def speakers(root: Path) -> tuple[str, ...]:
    """``SPEAKERS`` and every ``F_*`` corpus folder under ``root`` with a ``ref`` split."""
    extra = sorted(p.name for p in root.glob("F_*") if (p / "ref").is_dir())
    return SPEAKERS + tuple(extra)


def _jsonable(res: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in res.items() if k != "embeddings"}


def reference_embeddings(root: Path) -> dict[str, np.ndarray]:
    """[M, 256] resemblyzer embeddings of each speaker's ``ref`` split (cached in ``<data>/eval``)."""
    from vits_surgery.evaluate import speaker_embeddings

    out = {}
    for spk in speakers(root):
        cache = root / "eval" / f"ref_{spk}.npy"
        if not cache.is_file() and (root / spk / "ref").is_dir():
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, speaker_embeddings([it.wav for it in read_corpus(root / spk / "ref")]))
        if cache.is_file():
            out[spk] = np.load(cache)
    return out


def measure(wavs: list[Path], texts: list[str], refs: dict[str, np.ndarray], cache: Path | None) -> dict:
    """``evaluate_corpus`` with every speaker's centroid as reference (cached as JSON)."""
    from vits_surgery.evaluate import evaluate_corpus

    if cache is not None and cache.is_file():
        cached = json.loads(cache.read_text())
        if set(refs) <= set(cached.get("similarity", {})):  # measured against every speaker we have now
            return cached
    res = _jsonable(evaluate_corpus(wavs, texts, ref_wavs=refs))
    if cache is not None:
        dump_json(cache, res)
    return res


def durations_of(folder: Path) -> dict[str, list[int]]:
    """id -> integer durations from a ``durations.jsonl`` (joe-made corpora only)."""
    path = folder / "durations.jsonl"
    if not path.is_file():
        return {}
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["id"]: r["durations"] for r in recs}


def synthesize_result(run_dir: Path, items: list[Any]) -> tuple[list[Path], dict[str, list[int]]]:
    """The run's final model on the test sentences (seed = sentence index); cached WAVs."""
    import torch

    import vits_surgery
    from vits_surgery.audio import save_wav
    from vits_surgery.text import Tokenizer

    out_dir = run_dir / "samples"
    dur_path = out_dir / "durations.json"
    wavs = [out_dir / f"{it.id}.wav" for it in items]
    if dur_path.is_file() and all(w.is_file() for w in wavs):
        return wavs, json.loads(dur_path.read_text())
    torch.set_num_threads(2)
    model = vits_surgery.load(run_dir / "final")
    tokenizer = Tokenizer.from_config(model.config)
    durations = {}
    for it, wav in zip(items, wavs, strict=True):
        audio, _, dur = joe_synthesize(model, tokenizer, it.text, seed=int(it.id.split("-")[-1]))
        save_wav(wav, audio, SAMPLE_RATE)
        durations[it.id] = dur
    dump_json(dur_path, durations)
    return wavs, durations


def duration_rate(durations: dict[str, list[int]], items: list[Any], phones: list[int]) -> float:
    """Mean phones/s implied by integer durations (NaN when the corpus has none)."""
    from vits_surgery.evaluate import rate_from_durations

    if not durations:
        return float("nan")
    rates = [
        rate_from_durations(n, np.asarray(durations[it.id]), 256, SAMPLE_RATE)
        for it, n in zip(items, phones, strict=True)
    ]
    return float(np.mean(rates))


def row(name: str, res: dict, donor: str, dur_rate: float) -> dict[str, Any]:
    """One table row from an ``evaluate_corpus`` result."""
    sim = res.get("similarity", {})
    return {
        "set": name,
        "phones_per_second": res["rate"]["phones_per_second"]["mean"],
        "phones_per_second_sd": res["rate"]["phones_per_second"]["sd"],
        "phones_per_second_from_durations": dur_rate,
        "f0_median": res["f0"]["median"],
        "similarity_recipient": sim.get("R", {}).get("mean", float("nan")),
        "similarity_donor": sim.get(donor, {}).get("mean", float("nan")),
        "wer": res["wer"],
    }


def evaluate_run(root: Path, run_dir: Path, refs: dict[str, np.ndarray], n_test: int) -> dict[str, Any]:
    """The three rows (recipient before, donor, result), the targets and the evidence of one run."""
    from vits_surgery.evaluate import count_phones

    result_info = json.loads((run_dir / "result.json").read_text())
    donor, plan = result_info["donor"], result_info["plan"]
    items = read_corpus(root / "R" / "test", n_test)
    texts, phones = [it.text for it in items], count_phones([it.text for it in items])
    res_wavs, res_dur = synthesize_result(run_dir, items)
    r_dur = durations_of(root / "R" / "test")
    sets = {
        "recipient (before)": (
            [it.wav for it in read_corpus(root / "R" / "test", n_test)],
            r_dur,
            root / "eval" / "R_test.json",
        ),
        f"donor ({donor})": (
            [it.wav for it in read_corpus(root / donor / "test", n_test)],
            durations_of(root / donor / "test"),
            root / "eval" / f"{donor}_test.json",
        ),
        "result": (res_wavs, res_dur, run_dir / "eval.json"),
    }
    rows, measured = [], {}
    for name, (wavs, durs, cache) in sets.items():
        measured[name] = measure(wavs, texts, refs, cache)
        rows.append(row(name, measured[name], donor, duration_rate(durs, items, phones)))
    same = sum(res_dur[it.id] == r_dur.get(it.id) for it in items)
    evidence = {"identical_durations": same, "n_test": len(items)}
    return {
        "run": run_dir.name,
        "plan": plan,
        "donor": donor,
        "training": result_info,
        "rows": rows,
        "targets": check_targets(plan, rows, evidence),
        "evidence": evidence,
    }


def donor_table(root: Path, refs: dict[str, np.ndarray], n_test: int) -> list[dict[str, Any]]:
    """The speakers themselves on the test sentences: rate, F0, similarity, WER, paired ratios to R."""
    from vits_surgery.evaluate import semitones

    items = read_corpus(root / "R" / "test", n_test)
    texts = [it.text for it in items]
    base = measure([it.wav for it in items], texts, refs, root / "eval" / "R_test.json")
    out = []
    for spk in speakers(root):
        if not (root / spk / "test" / "metadata.csv").is_file():
            continue
        res = measure(
            [it.wav for it in read_corpus(root / spk / "test", n_test)],
            texts,
            refs,
            root / "eval" / f"{spk}_test.json",
        )
        ratio = [
            u["speech_seconds"] / b["speech_seconds"] if b["speech_seconds"] > 0 else float("nan")
            for u, b in zip(res["utterances"], base["utterances"], strict=True)
        ]
        out.append(
            {
                "speaker": spk,
                "phones_per_second": res["rate"]["phones_per_second"]["mean"],
                "phones_per_second_sd": res["rate"]["phones_per_second"]["sd"],
                "speech_time_ratio_to_R": float(np.mean(ratio)),
                "speech_time_ratio_to_R_sd": float(np.std(ratio, ddof=1)),
                "f0_median": res["f0"]["median"],
                "f0_semitones_from_R": semitones(res["f0"]["median"], base["f0"]["median"]),
                **{f"similarity_{k}": v["mean"] for k, v in res.get("similarity", {}).items()},
                "wer": res["wer"],
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--runs", default=None, help="comma-separated run folder names (default: all)")
    ap.add_argument("--n-test", type=int, default=20)
    ap.add_argument("--donors-only", action="store_true", help="only the table of the speakers themselves")
    ap.add_argument("--players", type=int, default=5, help="test sentences with audio players per run")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from render import render_html, render_markdown, render_speakers

    refs = reference_embeddings(args.data)
    donors = donor_table(args.data, refs, args.n_test)
    dump_json(args.data / "report" / "speakers.json", donors)
    print(render_speakers(donors))
    if args.donors_only:
        return
    runs_root = args.data / "runs"
    names = (
        args.runs.split(",")
        if args.runs
        else sorted(p.name for p in runs_root.iterdir() if (p / "result.json").is_file())
    )
    reports = [evaluate_run(args.data, runs_root / name, refs, args.n_test) for name in names]
    out = args.data / "report"
    dump_json(out / "summary.json", reports)
    (out / "summary.md").write_text(render_speakers(donors) + "\n" + render_markdown(reports))
    render_html(args.data, reports, out / "index.html", args.players, args.n_test)
    logger.info("report written to %s", out)
    print((out / "summary.md").read_text())


if __name__ == "__main__":
    main()

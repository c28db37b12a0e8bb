"""Diagnose the transplant benchmark's donors against the regrown joe voice.

Usage:
    python benchmarks/transplant/diagnose_donors.py [--donors D_cad,D_tim,D] [--threads 1]
        [--out bench_data/diag_out] [--table]

Each donor gets ``<out>/<donor>/diagnosis.json`` and ``diagnosis.html``; ``--table`` only reads
those files and prints the markdown table of docs/benchmarks.md ("Donor diagnosis"). The
recipient is joe with the posterior encoder and the SDP posterior flows regrown as the demo
does (120 utterances, library defaults; cached after the first run). Donors ``D_de``, ``D_8k``,
``D_clip`` and ``D_short`` come from ``build_bad_donors.py`` and are sampled with 8 utterances.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_ROOT  # noqa: E402

BAD = ("D_de", "D_8k", "D_clip", "D_short")


def donor_dirs(corpora: Path, bad: Path) -> dict[str, Path]:
    out = {name: corpora / name / "train" for name in ("D_cad", "D_tim", "D")}
    out.update({name: bad / name for name in BAD})
    return out


def run(names: list[str], dirs: dict[str, Path], out: Path, threads: int) -> None:
    import torch

    from vits_surgery import load
    from vits_surgery.convert.piper_voice import find_joe_voice
    from vits_surgery.diagnose import diagnose
    from vits_surgery.regrowth import RegrowOptions, regrow

    torch.set_num_threads(threads)
    model, report = load(find_joe_voice()[0], return_report=True)
    regrow(model, organs=("posterior_encoder", "duration_posterior"), report=report,
           options=RegrowOptions.quick(n_utterances=120))
    for name in names:
        d = diagnose(model, dirs[name], n_utterances=8 if name in BAD else 16)
        d.voice = "joe (regrown)"
        d.write(out / name)
        print(f"===== {name}\n{d}", flush=True)


def _f(x: float | None, fmt: str) -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)


def table(names: list[str], out: Path) -> str:
    head = ("| donor | rate ratio | F0 shift (st) | cosine to joe (joe's own) | MAS duration ratio vowel / consonant / all "
            "| contrast DP / TE / PE / flow / decoder | recommendation | wall (CPU) |")
    lines = [head, "|" + "---|" * 8]
    for name in names:
        path = out / name / "diagnosis.json"
        if not path.is_file():
            continue
        d = json.loads(path.read_text())
        rec, p, r = d["recommendation"], d["profile"], d["ranking"]
        if p is None:
            reasons = "; ".join(f["message"] for f in d["findings"] if f["severity"] == "unusable")
            lines.append(f"| {name} | | | | | | **unusable**: {reasons} | {d['seconds']['total']:.0f} s "
                         f"({d['seconds'].get('cpu_total', math.nan):.0f} s) |")
            continue
        c = {o["organ"]: o["contrast"] for o in r["organs"]}
        dr = p["duration_ratio"]
        contrast = " / ".join(_f(c.get(o), ".2f") for o in
                              ("duration_predictor", "text_encoder", "posterior_encoder", "flow", "decoder"))
        lines.append(
            f"| {name} | {_f(p['rate_ratio'], '.3f')} | {_f(p['f0_shift_semitones'], '+.2f')} | "
            f"{_f(p['similarity'], '.3f')} ({_f(p['recipient']['self_similarity'], '.3f')}) | "
            f"{_f(dr.get('vowel'), '.2f')} / {_f(dr.get('consonant'), '.2f')} / {_f(dr.get('all'), '.2f')} | "
            f"{contrast} | **{rec['kind']}**: {', '.join(rec['organs']) or 'nothing'} | "
            f"{d['seconds']['total']:.0f} s ({d['seconds'].get('cpu_total', math.nan):.0f} s) |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--donors", default="D_cad,D_tim,D," + ",".join(BAD))
    ap.add_argument("--corpora", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--bad", type=Path, default=DEFAULT_ROOT.parent / "diag_donors")
    ap.add_argument("--out", type=Path, default=DEFAULT_ROOT.parent / "diag_out")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--table", action="store_true", help="only print the table of finished diagnoses")
    args = ap.parse_args()
    names = args.donors.split(",")
    if not args.table:
        run(names, donor_dirs(args.corpora, args.bad), args.out, args.threads)
    print(table(names, args.out))


if __name__ == "__main__":
    main()

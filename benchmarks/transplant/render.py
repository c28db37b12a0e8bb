"""Markdown tables, loss curves and the HTML page of the transplant report."""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any

from common import read_corpus

COLUMNS = [
    ("set", "set", None),
    ("phones/s (audio)", "phones_per_second", 2),
    ("phones/s (durations)", "phones_per_second_from_durations", 2),
    ("median F0 Hz", "f0_median", 1),
    ("cos to recipient", "similarity_recipient", 3),
    ("cos to donor", "similarity_donor", 3),
    ("WER", "wer", 3),
]


def fmt(value: float, digits: int = 2) -> str:
    """A number for a table ('-' for NaN)."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _cell(value: Any, digits: int | None) -> str:
    return str(value) if digits is None else fmt(value, digits)


def _training_line(t: dict[str, Any]) -> str:
    return (
        f"{t['steps']} steps, lr {t['lr']:g}, batch {t['batch_size']}, {t['wall_seconds'] / 60:.1f} min wall "
        f"({t['seconds_per_step']:.2f} s/step, {t['device']}, {t['threads']} threads), "
        f"{t['trainable_parameters'] / 1e6:.2f} M trainable parameters"
    )


SPEAKER_COLUMNS = [
    ("speaker", "speaker", None),
    ("phones/s", "phones_per_second", 2),
    ("speech time / R (paired)", "speech_time_ratio_to_R", 3),
    ("median F0 Hz", "f0_median", 1),
    ("F0 vs R (st)", "f0_semitones_from_R", 2),
    ("cos to R", "similarity_R", 3),
    ("cos to D_tim", "similarity_D_tim", 3),
    ("WER", "wer", 3),
]


def render_speakers(rows: list[dict[str, Any]]) -> str:
    """The table of the speakers themselves (test sentences)."""
    lines = ["| " + " | ".join(c[0] for c in SPEAKER_COLUMNS) + " |", "|" + "---|" * len(SPEAKER_COLUMNS)]
    for r in rows:
        lines.append(
            "| " + " | ".join(_cell(r.get(key, float("nan")), d) for _, key, d in SPEAKER_COLUMNS) + " |"
        )
    return "\n".join(lines) + "\n"


def render_markdown(reports: list[dict[str, Any]]) -> str:
    """One table per run plus its targets."""
    lines = []
    for rep in reports:
        lines += [
            f"### {rep['plan']} transplant, donor {rep['donor']}",
            "",
            _training_line(rep["training"]),
            "",
        ]
        lines.append("| " + " | ".join(c[0] for c in COLUMNS) + " |")
        lines.append("|" + "---|" * len(COLUMNS))
        for r in rep["rows"]:
            lines.append("| " + " | ".join(_cell(r[key], d) for _, key, d in COLUMNS) + " |")
        lines.append("")
        for t in rep["targets"]:
            mark = "met" if t["met"] else "**missed**"
            lines.append(
                f"- {t['name']}: {fmt(float(t['value']), 3)} (target {t['op']} {t['threshold']}): {mark}"
            )
        lines.append("")
    return "\n".join(lines)


def loss_curve(run_dir: Path, out_png: Path) -> bool:
    """Plot the loss terms of ``metrics.jsonl`` and the duration-rate probe; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    result = json.loads((run_dir / "result.json").read_text())
    path = run_dir / "metrics.jsonl"  # absent for runs imported from a device: result.json has a subsample
    rows = (
        [json.loads(x) for x in path.read_text().splitlines()]
        if path.is_file()
        else result.get("metrics", [])
    )
    probe = result.get("probe", [])
    keys = sorted({k for r in rows for k in r if k.startswith(("gen/", "disc/"))})
    probe_keys = [k for k in ("phones_per_second", "f0_median", "similarity_R") if probe and k in probe[0]]
    probe_keys += sorted(k for k in (probe[0] if probe else {}) if k.startswith("similarity_D"))
    if not keys and not probe_keys:
        return False
    n = len(keys) + len(probe_keys)
    fig, axes = plt.subplots(1, n, figsize=(3.0 * n, 2.6), squeeze=False)
    for ax, key in zip(axes[0], keys + probe_keys, strict=True):
        series = rows if key in keys else probe
        ax.plot(
            [r["step"] for r in series if key in r],
            [r[key] for r in series if key in r],
            lw=0.8,
            marker=None if key in keys else ".",
        )
        ax.set_title(key if key in keys else f"probe: {key}", fontsize=9)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return True


def _players(root: Path, rep: dict[str, Any], page_dir: Path, n: int, n_test: int) -> str:
    items = read_corpus(root / "R" / "test", n_test)[:n]
    run_dir = root / "runs" / rep["run"]
    cols = [
        ("recipient (before)", root / "R" / "test" / "wavs"),
        (f"donor ({rep['donor']})", root / rep["donor"] / "test" / "wavs"),
        ("result", run_dir / "samples"),
    ]
    out = ["<table><tr><th>sentence</th>" + "".join(f"<th>{html.escape(c)}</th>" for c, _ in cols) + "</tr>"]
    for it in items:
        cells = "".join(
            f'<td><audio controls preload="none" src="{html.escape(os.path.relpath(folder / (it.id + ".wav"), page_dir))}"></audio></td>'
            for _, folder in cols
        )
        out.append(f"<tr><td>{html.escape(it.text)}</td>{cells}</tr>")
    return "\n".join(out + ["</table>"])


def render_html(root: Path, reports: list[dict[str, Any]], out: Path, players: int, n_test: int) -> None:
    """index.html: per run the training line, the table, the targets, curves and audio players."""
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = [
        "<!doctype html><meta charset='utf-8'><title>Transplant benchmark</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}td,th{border:1px solid #ccc;"
        "padding:3px 6px;font-size:13px}table{border-collapse:collapse;margin:8px 0}.missed{color:#b00}</style>",
        "<h1>Transplant benchmark</h1>",
    ]
    for rep in reports:
        parts.append(f"<h2>{html.escape(rep['plan'])} transplant, donor {html.escape(rep['donor'])}</h2>")
        parts.append(f"<p>{html.escape(_training_line(rep['training']))}</p><table><tr>")
        parts.append("".join(f"<th>{html.escape(c[0])}</th>" for c in COLUMNS) + "</tr>")
        for r in rep["rows"]:
            parts.append(
                "<tr>" + "".join(f"<td>{html.escape(_cell(r[k], d))}</td>" for _, k, d in COLUMNS) + "</tr>"
            )
        parts.append("</table><ul>")
        for t in rep["targets"]:
            cls = "" if t["met"] else " class='missed'"
            parts.append(
                f"<li{cls}>{html.escape(t['name'])}: {fmt(float(t['value']), 3)} "
                f"(target {html.escape(t['op'])} {t['threshold']}) {'met' if t['met'] else 'missed'}</li>"
            )
        parts.append("</ul>")
        png = out.parent / f"{rep['run']}_curves.png"
        if loss_curve(root / "runs" / rep["run"], png):
            parts.append(f"<img src='{png.name}' style='max-width:100%'>")
        parts.append(_players(root, rep, out.parent, players, n_test))
    out.write_text("\n".join(parts) + "\n", encoding="utf-8")

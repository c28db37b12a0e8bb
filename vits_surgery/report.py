"""One self-contained HTML page per run: plan, organ table, config, loss curves, listening
checkpoints (audio players per step, baseline first), plots and the metric table.

Everything (audio, images) is embedded as data URIs, so the page can be mailed or archived.
Inputs are the files a run folder holds: ``run.json`` and ``metrics.jsonl``
(:class:`~vits_surgery.surgery.callbacks.RunLogger`), ``samples/step_*/NN.wav``
(:class:`~vits_surgery.surgery.listening.ListeningCallback`), ``plots/*.png`` and
``evaluation.json`` (a list of table rows, or ``{"rows": [...], "columns": [...]}``).
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .surgery.callbacks import read_metrics, read_run

__all__ = ["build_report", "svg_line_chart"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
pre{background:#f7f7f7;padding:.6rem;overflow:auto;font-size:.85rem}
.step{margin:.6rem 0;padding:.4rem .8rem;border-left:4px solid #4a7} .baseline{border-color:#c84}
.sample{display:inline-block;margin:.3rem 1rem .3rem 0;vertical-align:top}
.charts svg{margin:.3rem;border:1px solid #eee;background:#fff}
.muted{color:#777;font-size:.9rem} img{max-width:100%}
"""

_PALETTE = ("#2a6fdb", "#d9502c", "#3b9b47", "#8d4fc2", "#c49a00", "#1d9aa8", "#777777")


def _esc(value: Any) -> str:
    return html.escape(str(value))


def svg_line_chart(
    title: str, series: dict[str, Sequence[tuple[float, float]]], width: int = 340, height: int = 200
) -> str:
    """A small inline SVG line chart (x = step) of one or more series."""
    points = [p for s in series.values() for p in s if math.isfinite(p[1])]
    if not points:
        return ""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys)
    if y1 <= y0:  # a constant series: pad by a fraction of its value
        pad = abs(y0) * 0.05 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    left, right, top, bottom = 48, 8, 22, 24

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{_esc(title)}">',
        f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="12">{_esc(title)}</text>',
        f'<text x="4" y="{top + 8}" font-size="10">{y1:.3g}</text>',
        f'<text x="4" y="{height - bottom}" font-size="10">{y0:.3g}</text>',
        f'<text x="{left}" y="{height - 6}" font-size="10">{x0:g}</text>',
        f'<text x="{width - right}" y="{height - 6}" font-size="10" text-anchor="end">{x1:g}</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#999"/>',
    ]
    for i, (name, pts) in enumerate(series.items()):
        color = _PALETTE[i % len(_PALETTE)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts if math.isfinite(y))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{coords}"/>')
        parts.append(f'<text x="{left + 4 + 90 * i}" y="{top + 10}" font-size="10" fill="{color}">{_esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _loss_charts(rows: list[dict[str, float]]) -> str:
    keys = sorted({k for r in rows for k in r if "/" in k and not k.startswith(("time/", "lr/"))})
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(key.split("/", 1)[0], []).append(key)
    charts = []
    for key in keys:
        series = {key: [(r["step"], r[key]) for r in rows if key in r]}
        charts.append(svg_line_chart(key, series))
    lr_keys = sorted({k for r in rows for k in r if k.startswith("lr/")})
    if lr_keys:
        charts.append(svg_line_chart("learning rate", {k: [(r["step"], r[k]) for r in rows if k in r] for k in lr_keys}))
    return '<div class="charts">' + "".join(charts) + "</div>" if charts else "<p class='muted'>no losses logged</p>"


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _samples(run_dir: Path) -> str:
    steps = sorted(
        (int(m.group(1)), p)
        for p in (run_dir / "samples").glob("step_*")
        if p.is_dir() and (m := re.fullmatch(r"step_(\d+)", p.name))
    )
    if not steps:
        return "<p class='muted'>no listening checkpoints</p>"
    texts: list[str] = []
    meta = run_dir / "samples" / "sentences.json"
    if meta.is_file():
        texts = json.loads(meta.read_text(encoding="utf-8"))
    out = []
    for step, folder in steps:
        cls = "step baseline" if step == 0 else "step"
        label = "step 0 (baseline, before any update)" if step == 0 else f"step {step}"
        players = []
        for i, wav in enumerate(sorted(folder.glob("*.wav"))):
            caption = _esc(texts[i]) if i < len(texts) else _esc(wav.name)
            players.append(
                f'<div class="sample"><div class="muted">{caption}</div>'
                f'<audio controls preload="none" src="{_data_uri(wav, "audio/wav")}"></audio></div>'
            )
        out.append(f'<div class="{cls}"><b>{label}</b><br>{"".join(players)}</div>')
    return "".join(out)


def _table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return ""
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return _esc("" if v is None else v)

    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _evaluation(run_dir: Path) -> str:
    path = run_dir / "evaluation.json"
    if not path.is_file():
        return "<p class='muted'>no evaluation.json in this run</p>"
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        return _table(data.get("rows", []), data.get("columns"))
    return _table(data)


def _plots(run_dir: Path) -> str:
    images = sorted((run_dir / "plots").glob("*.png"))
    return "".join(
        f'<figure><img alt="{_esc(p.stem)}" src="{_data_uri(p, "image/png")}"><figcaption class="muted">'
        f"{_esc(p.stem)}</figcaption></figure>"
        for p in images
    )


def build_report(run_dir: str | Path, out: str | Path | None = None, title: str | None = None) -> Path:
    """Write ``report.html`` for a run folder and return its path.

    Args:
        run_dir: the trainer's ``out_dir``.
        out: output path (default ``run_dir/report.html``).
        title: page title (default: the plan's organs).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no such run folder: {run_dir}")
    info = read_run(run_dir)
    rows = read_metrics(run_dir)
    plan = info.get("plan", {})
    organs = ", ".join(plan.get("train", [])) or "?"
    title = title or f"Transplant report: {organs}"
    tc = info.get("train_config", {})
    summary = [
        ("organs trained", organs),
        ("learning rate", tc.get("lr")),
        ("steps", rows[-1]["step"] if rows else 0),
        ("trainable parameters", info.get("trainable_parameters")),
        ("wall time (s)", rows[-1].get("time") if rows else None),
        ("started", info.get("started")),
    ]
    step_plan = info.get("step_plan", {})
    sections = [
        f"<h1>{_esc(title)}</h1><p class='muted'>{_esc(run_dir.resolve())}</p>",
        "<h2>Plan</h2>" + _table([{"item": k, "value": v} for k, v in summary], ["item", "value"]),
        "<p>Each step computes: " + _esc(", ".join(step_plan.get("terms", [])) or "?")
        + ("; runs the decoder" if step_plan.get("decode") else "; never runs the decoder")
        + ("; trains the discriminator" if step_plan.get("train_discriminator") else "") + ".</p>",
        "<h2>Metrics</h2>" + _evaluation(run_dir),
        "<h2>Losses</h2>" + _loss_charts(rows),
        "<h2>Listening checkpoints</h2>" + _samples(run_dir),
        "<h2>Plots</h2>" + (_plots(run_dir) or "<p class='muted'>none</p>"),
        "<h2>Organ table</h2><pre>" + _esc(info.get("organ_table", "")) + "</pre>",
        "<h2>Configuration</h2><details><summary>plan, training and model config</summary><pre>"
        + _esc(json.dumps({k: info.get(k) for k in ("plan", "train_config", "model_config")}, indent=2))
        + "</pre></details>",
    ]
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(sections)}</body></html>"
    )
    out_path = Path(out) if out is not None else run_dir / "report.html"
    out_path.write_text(page, encoding="utf-8")
    return out_path

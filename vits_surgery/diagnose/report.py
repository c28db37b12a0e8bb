"""The diagnosis as text, JSON and one self-contained HTML page (the run report's style)."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from typing import Any

from ..report import _CSS, _esc, _table

#: A :class:`~vits_surgery.diagnose.run.Diagnosis` (the renderers only read its fields; run.py
#: imports this module, so the type is named here, not imported).
Diagnosis = Any

__all__ = ["summary_text", "write_report", "html_page"]

_SEVERITY_COLOR = {"ok": "#3b9b47", "warning": "#c49a00", "unusable": "#d9502c"}
_EXTRA_CSS = """
.verdict{padding:.6rem 1rem;border-left:6px solid #2a6fdb;background:#f4f8ff;margin:1rem 0}
.verdict.unusable{border-color:#d9502c;background:#fff4f1} .sev{font-weight:600}
.pair{display:inline-block;margin:.3rem 1.2rem .3rem 0;vertical-align:top;font-size:.9rem}
td.l,th.l{text-align:left}
"""


def _num(x: Any, fmt: str = ".3g") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def summary_text(d: Diagnosis) -> str:
    """The printable summary of a diagnosis."""
    rec = d.recommendation
    lines = [f"donor {d.donor}: {d.scan.n_readable} files, {d.scan.total_seconds / 60:.1f} min, "
             f"{d.scan.sample_rate} Hz; voice {d.voice}", "", "checks:"]
    lines += [f"  [{f.severity:>8}] {f.check:<12} {f.message}" for f in d.findings]
    if d.profile is not None:
        lines += ["", f"profile ({d.profile.n_utterances} paired utterances):"]
        lines += [f"  {x}" for x in d.profile.lines()]
    if d.wer:
        lines.append(f"  word errors     donor {d.wer['donor']:.2f}, recipient {d.wer['recipient']:.2f}")
    if d.ranking is not None:
        lines += ["", f"contrastive organ ranking (RGN on the donor / on the voice's own speech, "
                      f"{d.ranking.n_batches} batches each):"]
        lines += [f"  {x}" for x in d.ranking.table().splitlines()]
    organs = ", ".join(rec.organs) or "nothing"
    lines += ["", f"recommendation: {rec.kind}: train {organs}", f"  why: {rec.why}"]
    lines += [f"  note: {n}" for n in rec.notes]
    lines.append(f"({d.seconds.get('total', math.nan):.0f} s wall, {d.seconds.get('cpu_total', math.nan):.0f} s CPU)")
    return "\n".join(lines)


def _wav_uri(audio: Any, rate: int) -> str:
    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(audio, dtype=np.float32), -1, 1), rate, format="WAV", subtype="PCM_16")
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode()


def _pairs(d: Diagnosis, n: int = 2) -> str:
    s = d.sample
    if s is None or not s.texts:
        return ""
    rate = d.voice_rate
    out = []
    for i in range(min(n, len(s.texts))):
        a, sr = s.donor[i]
        out.append(f"<div class='pair'><div>{_esc(s.texts[i][:80])}</div>donor <audio controls src='{_wav_uri(a, sr)}'>"
                   f"</audio><br>voice <audio controls src='{_wav_uri(s.recipient[i], rate)}'></audio></div>")
    return "<h2>Listen</h2>" + "".join(out)


def _ranking_rows(d: Diagnosis) -> str:
    if d.ranking is None:
        return ""
    top = max((abs(math.log(r.contrast)) for r in d.ranking.organs if math.isfinite(r.contrast) and r.contrast > 0),
              default=1.0) or 1.0
    rows = []
    for r in d.ranking.organs:
        bar = ""
        if math.isfinite(r.contrast) and r.contrast > 0:
            w = 120 * abs(math.log(r.contrast)) / top
            color = "#d9502c" if r.contrast > 1 else "#2a6fdb"
            bar = f"<svg width='130' height='12'><rect width='{w:.0f}' height='12' fill='{color}'/></svg>"
        rows.append(f"<tr><td>{r.rank}</td><td class='l'>{_esc(r.organ)}</td><td>{_num(r.rgn_donor, '.4g')}</td>"
                    f"<td>{_num(r.rgn_recipient, '.4g')}</td><td>{_num(r.contrast)}</td><td>{bar}</td></tr>")
    head = "<tr><th>rank</th><th class='l'>organ</th><th>RGN donor</th><th>RGN voice</th><th>contrast</th><th>log contrast</th></tr>"
    return ("<h2>Contrastive organ ranking</h2><p class='muted'>relative gradient norm on the donor's batches over the "
            f"same on the voice's own speech of the same texts ({d.ranking.n_batches} batches each)</p>"
            f"<table>{head}{''.join(rows)}</table>")


def _profile(d: Diagnosis) -> str:
    p = d.profile
    if p is None:
        return ""
    rows = [
        {"measure": "speaking rate (phones/s)", "donor": p.donor.phones_per_second, "voice": p.recipient.phones_per_second,
         "donor vs voice": f"x{_num(p.rate_ratio)}"},
        {"measure": "median F0 (Hz)", "donor": p.donor.f0_median, "voice": p.recipient.f0_median,
         "donor vs voice": f"{_num(p.f0_shift_semitones, '+.2f')} st"},
        {"measure": "F0 range p5-p95 (st)", "donor": p.donor.f0_range_semitones, "voice": p.recipient.f0_range_semitones,
         "donor vs voice": ""},
        {"measure": "speaker cosine to the voice", "donor": p.similarity, "voice": p.recipient.self_similarity,
         "donor vs voice": ""},
    ]
    if d.wer:
        rows.append({"measure": "word error rate", "donor": d.wer["donor"], "voice": d.wer["recipient"], "donor vs voice": ""})
    rows = [{k: (_num(v, ".4g") if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    durs = [{"phone class": k, "donor / voice frames": _num(v, ".3f")} for k, v in p.duration_ratio.items()]
    return (f"<h2>Profile</h2><p class='muted'>{p.n_utterances} donor utterances and the voice reading the same texts"
            "</p>" + _table(rows, ["measure", "donor", "voice", "donor vs voice"])
            + f"<h3>Duration ratio per phone class ({_esc(p.duration_source)})</h3>"
            + _table(durs, ["phone class", "donor / voice frames"]))


def html_page(d: Diagnosis) -> str:
    """The self-contained HTML page."""
    rec = d.recommendation
    cls = "verdict unusable" if rec.kind == "unusable" else "verdict"
    checks = "".join(
        f"<tr><td>{_esc(f.check)}</td><td class='sev' style='color:{_SEVERITY_COLOR.get(f.severity, '#222')}'>"
        f"{_esc(f.severity)}</td><td class='l'>{_esc(f.message)}</td></tr>" for f in d.findings)
    notes = "".join(f"<li>{_esc(n)}</li>" for n in rec.notes)
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in d.seconds.items())
    body = (
        f"<h1>Donor diagnosis</h1><p class='muted'>donor {_esc(d.donor)} ({d.scan.n_readable} files, "
        f"{d.scan.total_seconds / 60:.1f} min, {d.scan.sample_rate} Hz) &middot; voice {_esc(d.voice)}</p>"
        f"<div class='{cls}'><b>{_esc(rec.kind)}: train {_esc(', '.join(rec.organs) or 'nothing')}</b>"
        f"<div>{_esc(rec.why)}</div>{f'<ul>{notes}</ul>' if notes else ''}</div>"
        f"<h2>Checks</h2><table><tr><th>check</th><th>result</th><th class='l'>reason</th></tr>{checks}</table>"
        f"{_profile(d)}{_ranking_rows(d)}{_pairs(d)}<p class='muted'>{_esc(timings)}</p>"
    )
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Donor diagnosis</title>"
            f"<style>{_CSS}{_EXTRA_CSS}</style></head><body>{body}</body></html>")


def write_report(d: Diagnosis, out_dir: str | Path) -> dict[str, Path]:
    """Write ``diagnosis.json`` and ``diagnosis.html``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "diagnosis.json", "html": out / "diagnosis.html"}
    paths["json"].write_text(json.dumps(d.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    paths["html"].write_text(html_page(d), encoding="utf-8")
    return paths

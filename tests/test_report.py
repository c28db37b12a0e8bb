"""The HTML run report: built from a real (tiny) training run, checked as text and in a real browser."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from surgery_helpers import speech_batch, tiny_model

from vits_surgery import ListeningCallback, SurgeryPlan, SurgicalTrainer, TrainConfig, build_report
from vits_surgery.surgery.callbacks import RunLogger, read_metrics

SENTENCES = ["Hello world.", "A second sentence."]
EVALUATION = {
    "columns": ["voice", "phones/s", "vs recipient"],
    "rows": [
        {"voice": "recipient (before)", "phones/s": 11.25, "vs recipient": 1.0},
        {"voice": "transplanted (after)", "phones/s": 9.5, "vs recipient": 0.8444},
    ],
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder written by the trainer: run.json, metrics.jsonl, listening WAVs at steps 0, 1, 2."""
    out = tmp_path_factory.mktemp("report") / "run"
    model = tiny_model()
    data = [speech_batch(model.config, 2, seed=i, max_seconds=0.4) for i in range(2)]
    listen = ListeningCallback(SENTENCES, every=1, out_dir=out, tensorboard=False, max_seconds=1.0)
    trainer = SurgicalTrainer(
        model, SurgeryPlan.cadence(), data, out_dir=out,
        config=TrainConfig(lr=1e-2, save_every=0, progress=False, device="cpu"),
        callbacks=[RunLogger(), listen],
    )
    trainer.fit(max_steps=2)
    (out / "evaluation.json").write_text(json.dumps(EVALUATION), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def page(run_dir: Path) -> str:
    return build_report(run_dir).read_text(encoding="utf-8")


def _wavs(run_dir: Path) -> list[Path]:
    """Listening WAVs in step order (the zero-padded folder names sort numerically)."""
    return sorted((run_dir / "samples").glob("step_*/*.wav"))


def test_one_player_per_listening_wav_with_the_wav_embedded(run_dir: Path, page: str) -> None:
    wavs = _wavs(run_dir)
    assert [p.parent.name for p in wavs][:: len(SENTENCES)] == ["step_0000000", "step_0000001", "step_0000002"]
    sources = re.findall(r'<audio[^>]*\ssrc="data:audio/wav;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(sources) == page.count("<audio") == len(wavs)
    # the players hold the WAV files byte for byte, in step order: the baseline's come first
    assert [base64.b64decode(s) for s in sources] == [p.read_bytes() for p in wavs]
    assert page.index("step 0 (baseline") < page.index("<b>step 1</b>") < page.index("<b>step 2</b>")
    assert page.index("step 0 (baseline") < page.index("<audio")
    for text in SENTENCES:
        assert page.count(f'<div class="muted">{text}</div>') == 3


def test_loss_curves_learning_rate_and_metric_table(run_dir: Path, page: str) -> None:
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    losses = sorted(k for k in rows[0] if "/" in k and not k.startswith(("time/", "lr/")))
    assert "gen/dur" in losses
    labels = re.findall(r'<svg [^>]*aria-label="([^"]+)"', page)
    assert labels == [*losses, "learning rate"]
    assert page.count("<polyline") == len(losses) + 1
    table = page[page.index("<h2>Metrics</h2>") : page.index("<h2>Losses</h2>")]
    assert "<th>voice</th><th>phones/s</th><th>vs recipient</th>" in table
    assert "<td>transplanted (after)</td><td>9.5</td><td>0.8444</td>" in table
    assert "duration_predictor" in page  # the plan and the organ table


# A probe appended to a copy of the page: it waits for every player to decode its WAV and
# writes what the browser actually rendered into the DOM, which --dump-dom then prints.
_PROBE = """<script>
window.addEventListener('load', async () => {
  const audios = [...document.querySelectorAll('audio')];
  const durations = await Promise.all(audios.map(a => new Promise(done => {
    a.addEventListener('loadedmetadata', () => done(a.duration), {once: true});
    a.addEventListener('error', () => done(-1), {once: true});
    a.preload = 'metadata'; a.load();
  })));
  const svgs = [...document.querySelectorAll('svg')].map(s => {
    const r = s.getBoundingClientRect(); return [r.width, r.height]; });
  const players = audios.map(a => a.getBoundingClientRect().width);
  const pre = document.createElement('pre'); pre.id = 'probe';
  pre.textContent = JSON.stringify({durations, svgs, players});
  document.body.appendChild(pre);
});
</script>"""


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip("no chromium on PATH: scripts/setup.sh installs it (apt-get install chromium)")
    return exe


def _run_browser(exe: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--mute-audio",
        f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0",
    ]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=90, check=False)


@pytest.mark.slow
def test_page_renders_in_headless_chromium(run_dir: Path, page: str, tmp_path: Path) -> None:
    exe = _chromium()
    report = run_dir / "report.html"
    shot = tmp_path / "shot.png"
    res = _run_browser(exe, tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", report.as_uri())
    assert shot.is_file(), f"chromium wrote no screenshot (rc {res.returncode}): {res.stderr[-2000:]}"
    import matplotlib.image

    pixels = np.asarray(matplotlib.image.imread(shot))[..., :3]
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.std() > 0.05  # text, tables, charts and players: not a blank page
    assert (pixels.min(axis=-1) < 0.5).mean() > 0.005  # some dark ink (text, lines)
    assert "Uncaught" not in res.stderr

    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    res = _run_browser(exe, tmp_path, "--virtual-time-budget=20000", "--dump-dom", probed.as_uri())
    assert "Uncaught" not in res.stderr, res.stderr[-2000:]
    match = re.search(r'<pre id="probe">(.*?)</pre>', res.stdout)
    assert match, f"the probe did not report (rc {res.returncode}): {res.stderr[-2000:]}"
    probe = json.loads(match.group(1).replace("&quot;", '"'))
    n_wavs = len(_wavs(run_dir))
    assert len(probe["durations"]) == n_wavs and len(probe["players"]) == n_wavs
    # the browser decoded every embedded WAV (duration > 0) and laid out visible players and charts
    assert all(d > 0 for d in probe["durations"]), probe["durations"]
    assert all(w > 0 for w in probe["players"])
    assert len(probe["svgs"]) == page.count("<svg") and all(w > 0 and h > 0 for w, h in probe["svgs"])
    assert torch.tensor(probe["durations"]).max() <= 1.0 + 1e-3  # ListeningCallback's max_seconds

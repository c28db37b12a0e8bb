"""The ``vits-surgery`` command, run as a real process."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

FIXTURE = Path(__file__).parent / "fixtures" / "coqui" / "graphemes_sdp" / "model.pth"
COMMANDS = ["inspect", "convert", "synth", "regrow", "transplant", "diagnose", "evaluate", "report", "demo"]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "vits_surgery.cli", *args], capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"vits-surgery {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command: str) -> None:
    out = cli(command, "--help").stdout
    assert "examples:" in out and f"vits-surgery {command}" in out


def test_inspect_convert_synth_round_trip(tmp_path) -> None:
    out = cli("inspect", str(FIXTURE)).stdout
    assert "coqui checkpoint" in out and "duration_predictor" in out
    native = tmp_path / "native"
    out = cli("convert", str(FIXTURE), str(native)).stdout
    assert "wrote native checkpoint" in out and (native / "model.safetensors").is_file()
    wav = tmp_path / "hello.wav"
    out = cli("synth", "--voice", str(native), "--text", "Hello there.", "--out", str(wav), "--seed", "3").stdout
    audio, sr = sf.read(wav)
    assert sr == 22050 and len(audio) > 1000 and "wrote" in out
    again = tmp_path / "again.wav"
    cli("synth", "--voice", str(native), "--text", "Hello there.", "--out", str(again), "--seed", "3")
    assert (sf.read(again)[0] == audio).all()


def test_user_errors_are_one_sentence_without_traceback(tmp_path) -> None:
    proc = cli("inspect", str(tmp_path / "missing.pth"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.startswith("error:")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    proc = cli("inspect", str(bad), check=False)
    assert proc.returncode == 2 and "bad.pth" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("--debug", "inspect", str(bad), check=False)
    assert "Traceback" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt-get install espeak-ng)")
def test_transplant_and_report(tmp_path) -> None:
    donor = tmp_path / "donor"
    (donor / "wavs").mkdir(parents=True)
    lines = []
    for i, text in enumerate(["Hello there.", "A donor speaks slowly.", "Rhythm is an organ too."]):
        subprocess.run(["espeak-ng", "-s", "120", "-w", str(donor / "wavs" / f"d{i}.wav"), text], check=True)
        lines.append(f"d{i}|{text}|{text}")
    (donor / "metadata.csv").write_text("\n".join(lines) + "\n")
    native = tmp_path / "native"
    cli("convert", str(FIXTURE), str(native))
    run = tmp_path / "run"
    out = cli("transplant", "--voice", str(native), "--plan", "cadence", "--donor", str(donor), "--out-dir", str(run),
              "--steps", "2", "--batch-size", "2", "--sample-every", "1", "--save-every", "2",
              "--sentences", "Hello.").stdout
    assert "done: 2 steps" in out
    assert (run / "metrics.jsonl").is_file() and (run / "samples" / "step_0000000" / "00.wav").is_file()
    html = cli("report", str(run)).stdout
    assert "report.html" in html and "<audio" in (run / "report.html").read_text()

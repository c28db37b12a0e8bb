"""``VITS_SURGERY_STRICT_SKIPS=1`` (set by CI) turns a skip off the allow-list into a failed run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLE = '''
import pytest

def test_passes():
    pass

def test_no_gpu():
    pytest.skip("needs a CUDA device")

def test_missing_tool():
    pytest.skip("needs espeak-ng")

@pytest.mark.xfail(reason="a known failure is not a skip")
def test_known_failure():
    assert False
'''


def _run(folder: Path, strict: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VITS_SURGERY_STRICT_SKIPS"}
    if strict:
        env["VITS_SURGERY_STRICT_SKIPS"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(folder)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=folder)


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_strict_mode_fails_on_skips_off_the_allow_list(tmp_path: Path, strict: bool) -> None:
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    proc = _run(tmp_path, strict)
    out = proc.stdout + proc.stderr
    assert "1 passed, 2 skipped, 1 xfailed" in out, out
    if strict:
        assert proc.returncode == 1, out
        assert "test_sample.py::test_missing_tool: needs espeak-ng" in out
        assert "test_no_gpu:" not in out.split("skips not allowed")[1]  # CUDA is on the allow-list
    else:
        assert proc.returncode == 0 and "skips not allowed" not in out, out

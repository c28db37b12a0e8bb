"""Machine facts the benchmark scripts print beside their numbers."""

from __future__ import annotations

import platform
import sys
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def coqui_python(given: str | None) -> str | None:
    """The Python that runs a benchmark's Coqui part: ``given`` (``--coqui-python``), else this
    Python when it imports Coqui TTS, else None (the part is not measured)."""
    if given:
        return given
    try:
        import TTS  # noqa: F401
    except ImportError:
        return None
    return sys.executable

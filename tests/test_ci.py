"""``.ci/run`` runs what the README promises: its test command exactly, strict skips, lint, the demo."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    """The commands of the README's first bash block, comments stripped."""
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S).group(1)
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command_strictly_with_lint_and_the_demo() -> None:
    demo, tests = _readme_commands()[:2]
    assert demo.startswith("bash scripts/setup.sh && .venv/bin/vits-surgery demo")
    assert tests == "bash scripts/setup.sh && .venv/bin/python -m pytest -q -rs"
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert tests in ci
    assert "export VITS_SURGERY_STRICT_SKIPS=1" in ci[: ci.index(tests)]
    assert ".venv/bin/ruff check ." in ci
    assert any(line.startswith(".venv/bin/vits-surgery demo --quick") for line in ci)

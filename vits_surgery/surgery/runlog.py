"""A run's plain-text record: ``run.json`` (what was trained, how) and ``metrics.jsonl`` (losses).

:class:`RunLogger` is a callback; the HTML report (:mod:`vits_surgery.report`) reads these
files, so a run folder is self-describing without TensorBoard.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .callbacks import Callback

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import SurgicalTrainer

__all__ = ["RunLogger", "read_metrics", "read_run"]


class RunLogger(Callback):
    """Writes ``run.json`` at the start of ``fit`` and one JSON line per step to ``metrics.jsonl``.

    Args:
        out_dir: the run folder (default: the trainer's ``out_dir``).
        every: log every N steps.
    """

    def __init__(self, out_dir: str | Path | None = None, every: int = 1) -> None:
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.every = max(1, every)
        self._t0 = 0.0

    def _dir(self, trainer: SurgicalTrainer) -> Path:
        path = self.out_dir or Path(trainer.out_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def on_fit_start(self, trainer: SurgicalTrainer) -> None:
        self._t0 = time.time()
        info: dict[str, Any] = {
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "start_step": trainer.step,
            "plan": json.loads(trainer.plan.to_json()),
            "train_config": trainer.config.to_dict(),
            "model_config": trainer.model.config.to_dict(),
            "organ_table": trainer.registry.table(),
            "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "step_plan": {
                "terms": list(trainer.step_plan.terms),
                "grad": dict(trainer.step_plan.grad),
                "decode": trainer.step_plan.decode,
                "train_discriminator": trainer.step_plan.train_discriminator,
            },
        }
        from ..durations.step import describe_cadence  # cadence seam: step path and duration source

        info["cadence"] = describe_cadence(trainer)
        tmp = self._dir(trainer) / "run.json.tmp"
        tmp.write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
        os.replace(tmp, self._dir(trainer) / "run.json")

    def on_step_end(self, trainer: SurgicalTrainer, step: int, logs: dict[str, float]) -> None:
        if step % self.every:
            return
        row = {"step": step, "time": round(time.time() - self._t0, 3)}
        row.update({k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and math.isfinite(v)})
        with open(self._dir(trainer) / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """Rows of ``metrics.jsonl`` (a truncated last line from an interrupted run is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """``run.json`` as a dict ({} if absent)."""
    path = Path(run_dir) / "run.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

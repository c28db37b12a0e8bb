"""Callbacks observe training; they never change parameters or the optimisation.

This module holds the protocol (:class:`Callback`, :class:`CallbackList`) and the observers
every run can use: :class:`ProgressBar` (a tqdm bar with live losses) and :class:`RunLogger`
(``run.json`` and ``metrics.jsonl``, which the HTML report reads).

Subclass :class:`Callback` and override the hooks you need; every hook is a no-op by default.
The trainer calls them in this order::

    on_fit_start -> (on_step_end -> [on_save])* -> on_fit_end

(``on_sample`` follows ``on_step_end`` only on the deprecated ``listener=`` path of the trainer.)

``logs`` is a flat ``dict[str, float]`` with namespaced keys (``gen/mel``, ``disc/real``,
``lr/decoder``, ``time/step``...).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._files import atomic_write_text
from ..durations.step import describe_cadence

SurgicalTrainer = Any  # callbacks observe a trainer; they do not import it

__all__ = ["Callback", "CallbackList", "ProgressBar", "progress_iter", "RunLogger", "read_metrics", "read_run"]


class Callback:
    """Base class of training observers."""

    def on_fit_start(self, trainer: SurgicalTrainer) -> None:
        """Called once before the first step (after a resume, with the restored step)."""

    def on_step_end(self, trainer: SurgicalTrainer, step: int, logs: dict[str, float]) -> None:
        """Called after each optimisation step with that step's losses and learning rates."""

    def on_sample(self, trainer: SurgicalTrainer, step: int, samples: dict[str, Any]) -> None:
        """Deprecated path (removed in vits_surgery 0.3): called with the samples of the trainer's
        ``listener=`` at step 0 and every ``sample_every`` steps."""

    def on_save(self, trainer: SurgicalTrainer, step: int, path: Path) -> None:
        """Called after a checkpoint was written to ``path``."""

    def on_fit_end(self, trainer: SurgicalTrainer) -> None:
        """Called once when ``fit`` returns (also after an interruption)."""


class CallbackList(Callback):
    """Fans every hook out to a list of callbacks, in order."""

    def __init__(self, callbacks: list[Callback] | None = None) -> None:
        self.callbacks: list[Callback] = list(callbacks or [])

    def append(self, callback: Callback) -> None:
        """Add a callback at the end."""
        self.callbacks.append(callback)

    def on_fit_start(self, trainer: SurgicalTrainer) -> None:
        for cb in self.callbacks:
            cb.on_fit_start(trainer)

    def on_step_end(self, trainer: SurgicalTrainer, step: int, logs: dict[str, float]) -> None:
        for cb in self.callbacks:
            cb.on_step_end(trainer, step, logs)

    def on_sample(self, trainer: SurgicalTrainer, step: int, samples: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_sample(trainer, step, samples)

    def on_save(self, trainer: SurgicalTrainer, step: int, path: Path) -> None:
        for cb in self.callbacks:
            cb.on_save(trainer, step, path)

    def on_fit_end(self, trainer: SurgicalTrainer) -> None:
        for cb in self.callbacks:
            cb.on_fit_end(trainer)


# ----------------------------------------------------------------------------- progress
class ProgressBar(Callback):
    """Shows ``step / max_steps`` and running averages of the loss terms.

    Args:
        keys: log-key prefixes shown in the postfix.
        smoothing: weight of the newest value in the exponential moving average (1 = raw).
        total: bar length; defaults to the ``max_steps`` of the running ``fit``.
        **tqdm_kwargs: passed to ``tqdm`` (e.g. ``file=``, ``disable=``, ``leave=``).
    """

    def __init__(
        self,
        keys: Sequence[str] = ("gen/", "disc/"),
        smoothing: float = 0.1,
        total: int | None = None,
        **tqdm_kwargs: Any,
    ) -> None:
        self.keys = tuple(keys)
        self.smoothing = smoothing
        self.total = total
        self.tqdm_kwargs = tqdm_kwargs
        self.bar: Any = None
        self.averages: dict[str, float] = {}

    def on_fit_start(self, trainer: SurgicalTrainer) -> None:
        from tqdm.auto import tqdm

        total = self.total if self.total is not None else getattr(trainer, "max_steps", None)
        kwargs = {"dynamic_ncols": True, "desc": f"surgery:{trainer.plan.name}", "unit": "step"}
        kwargs.update(self.tqdm_kwargs)
        self.bar = tqdm(total=total, initial=trainer.step, **kwargs)
        self.averages = {}

    def on_step_end(self, trainer: SurgicalTrainer, step: int, logs: dict[str, float]) -> None:
        if self.bar is None:
            return
        for key, value in logs.items():
            if key.startswith(self.keys):
                old = self.averages.get(key)
                self.averages[key] = value if old is None else old + self.smoothing * (value - old)
        postfix = {key.split("/", 1)[1] if key.startswith("gen/") else key: f"{v:.3f}" for key, v in self.averages.items()}
        if "skipped" in logs:
            postfix["skipped"] = str(trainer.skipped_steps)
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(step - self.bar.n)

    def on_fit_end(self, trainer: SurgicalTrainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def progress_iter(items, desc: str = "", enabled: bool = True):  # noqa: ANN001, ANN201 - any iterable
    """``tqdm(items)`` when tqdm is available and ``enabled``, else ``items`` unchanged."""
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a core dependency
        return items
    return tqdm(items, desc=desc, leave=False, dynamic_ncols=True)


# ----------------------------------------------------------------------------- run record
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
        info["cadence"] = describe_cadence(trainer)  # the cadence step's path and duration source
        atomic_write_text(self._dir(trainer) / "run.json", json.dumps(info, indent=2, default=str))

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

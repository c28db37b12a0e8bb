"""Callbacks observe training; they never change parameters or the optimisation.

Subclass :class:`Callback` and override the hooks you need; every hook is a no-op by default.
The trainer calls them in this order::

    on_fit_start -> (on_step_end -> [on_sample] -> [on_save])* -> on_fit_end

``logs`` is a flat ``dict[str, float]`` with namespaced keys (``gen/mel``, ``disc/real``,
``lr/decoder``, ``time/step``...).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import SurgicalTrainer

__all__ = ["Callback", "CallbackList"]


class Callback:
    """Base class of training observers."""

    def on_fit_start(self, trainer: SurgicalTrainer) -> None:
        """Called once before the first step (after a resume, with the restored step)."""

    def on_step_end(self, trainer: SurgicalTrainer, step: int, logs: dict[str, float]) -> None:
        """Called after each optimisation step with that step's losses and learning rates."""

    def on_sample(self, trainer: SurgicalTrainer, step: int, samples: dict[str, Any]) -> None:
        """Called after a listening checkpoint (step 0 = baseline) with its synthesized samples."""

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

"""A tqdm progress bar with live losses (the trainer adds it when ``TrainConfig.progress``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .callbacks import Callback

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import SurgicalTrainer

__all__ = ["ProgressBar"]


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

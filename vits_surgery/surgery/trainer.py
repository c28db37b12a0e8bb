"""SurgicalTrainer: fine-tune the organs of a plan, computing only what they need.

Override surface (each method is small; subclass to change behaviour, use callbacks to
observe):

- :meth:`SurgicalTrainer.configure_optimizers` -> ``{"generator": opt, "discriminator": opt}``
- :meth:`SurgicalTrainer.configure_schedulers` -> ``{name: LRScheduler}``
- :meth:`SurgicalTrainer.forward_generator` -> :class:`~vits_surgery.models.vits.VITSTrainOutput`
- :meth:`SurgicalTrainer.generator_losses` / :meth:`SurgicalTrainer.discriminator_losses`
  -> ``{"gen/mel": tensor, ...}``
- :meth:`SurgicalTrainer.training_step` -> ``{"gen/mel": float, ...}`` (one batch; callable
  from a notebook loop)
- :attr:`SurgicalTrainer.loss_path_cls`: the :class:`~vits_surgery.surgery.step.LossPath`
  class whose ``forward`` and losses the step runs (the seam for a step with another forward)

**What runs.** :class:`~vits_surgery.surgery.step.StepPlan` derives from the registry's
data-flow graph which loss terms reach a trainable organ (terms with weight 0 are never
computed) and which stages need gradients. A cadence plan runs the text encoder, posterior
encoder and flow under ``no_grad``, MAS, and the duration predictor with gradients; no decoder,
no discriminator, no mel. A stage runs with gradients only when a trainable organ is at or
upstream of it and its output feeds a computed term. The trainer logs the plan in words at
set-up (``grad: ...; no_grad: ...; skipped: ...``).

**Listening.** Listening checkpoints are a callback
(:class:`~vits_surgery.surgery.listening.ListeningCallback`) like every other observer.

**Distributed.** Under ``torchrun`` the process group is initialised from the environment.
Gradients of the trainable parameters are averaged across ranks with one flattened
all-reduce per optimizer after each accumulation window (together with the non-finite flag,
so every rank skips or steps alike). Frozen parameters never take part, so they cannot stall
synchronisation as they would in ``DistributedDataParallel``, whose reducer also expects one
``forward`` per ``backward`` while this trainer calls the model's stages directly and prunes
them. Rank 0 alone writes checkpoints, samples and callbacks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import _files
from .._deprecated import warn_renamed
from ..batch import Batch
from ..convert import native
from ..durations.step import CadenceStep
from ..losses import weighted_total
from ..models.vits import VITS, TrainNoise, VITSTrainOutput
from . import rundir, runtime
from .callbacks import Callback, CallbackList
from .freeze import apply_resolved, preserved
from .plan import SurgeryPlan
from .registry import ComponentRegistry
from .step import LossPath, StepPlan
from .train_config import TrainConfig

__all__ = ["TrainConfig", "StepPlan", "LossPath", "SurgicalTrainer", "NonFiniteLossError"]  # re-exported

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had NaN/inf losses or gradients."""


class SurgicalTrainer:
    """Fine-tune the organs of a :class:`SurgeryPlan` on a donor's data.

    Args:
        model: the recipient voice (moved to ``config.device``; frozen per the plan).
        plan: what trains.
        train_data: an iterable of :class:`~vits_surgery.batch.Batch` (a DataLoader, a list);
            re-iterated each epoch (``set_epoch(epoch)`` is called on it or its sampler when
            present).
        lr: learning rate; overrides ``config.lr`` when given.
        out_dir: checkpoints, samples and the run lock go here.
        config: optimisation settings.
        callbacks: observers (rank 0).
        registry: the model's registry, for user-registered groups.

    Attributes:
        loss_path_cls: the :class:`~vits_surgery.surgery.step.LossPath` class the trainer builds
            (a class attribute: subclass the trainer, or set it, to replace a step's forward).
        loss_path: the instance the steps run; ``rng`` is its random generator.
    """

    loss_path_cls: type[LossPath] = LossPath

    def __init__(
        self,
        model: VITS,
        plan: SurgeryPlan,
        train_data: Iterable[Batch] | None = None,
        lr: float | None = None,
        out_dir: str | Path = "runs/surgery",
        config: TrainConfig | None = None,
        callbacks: list[Callback] | None = None,
        registry: ComponentRegistry | None = None,
        listener: Any = None,
    ) -> None:
        callbacks = list(callbacks or [])
        if listener is not None:  # deprecated: listening is a callback
            warn_renamed("SurgicalTrainer(listener=...)", "callbacks=[ListeningCallback(...)]")
            callbacks = [c for c in callbacks if c is not listener] + [_LegacyListener(listener)]
        self.config = config or TrainConfig()
        if lr is not None:
            self.config = dataclasses.replace(self.config, lr=lr)
        self.rank, self.world_size = runtime.init_from_env()
        self.device = torch.device(self.config.device or runtime.default_device())
        self.model = model.to(self.device)
        self.plan = plan
        self.registry = registry or ComponentRegistry(model)
        self.resolved = plan.resolve(self.registry, self.config.loss_weights, self.config.loss_terms)
        apply_resolved(model, self.resolved, frozen_eval=plan.frozen_eval)
        self.weights = self.resolved.loss_weights
        self.step_plan = StepPlan.derive(model, self.resolved)
        if self.resolved.trained_organs and not self.step_plan.terms:
            raise ValueError(
                f"plan {plan.name!r} trains {', '.join(self.resolved.trained_organs)}, but no loss term with a "
                f"non-zero weight reaches it (weights: {self.weights})"
            )
        self.train_data = train_data
        self.stream = runtime.BatchStream(train_data or [], self.rank, self.world_size)
        self.out_dir = Path(out_dir)
        self.callbacks = CallbackList(callbacks)
        if self.config.progress and self.rank == 0:
            from .callbacks import ProgressBar

            self.callbacks.append(ProgressBar())
        self.step = 0
        self.max_steps: int | None = None
        #: why the last ``fit`` ended before ``max_steps`` (see :meth:`request_stop`), else None
        self.stop_reason: str | None = None
        self.skipped_steps = 0
        self._consecutive_bad = 0
        self._micro = 0
        self._scaler_stepped = False
        self._bad = {"generator": False, "discriminator": False}
        self.rng = torch.Generator(device=self.device)
        if self.config.seed is not None:
            runtime.seed_everything(self.config.seed + self.rank, self.rng)
        self.loss_path = self.loss_path_cls(model, self.step_plan, self.weights, self.config.amp, self.rng)
        runtime.broadcast_model(model)
        groups = self.resolved.groups
        self.generator_params = [p for name, pairs in groups.items() if name != "discriminator" for _, p in pairs]
        self.discriminator_params = [p for _, p in groups.get("discriminator", [])]
        self.optimizers = self.configure_optimizers()
        self.schedulers = self.configure_schedulers(self.optimizers)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.config.amp == "fp16")
        #: the duration predictor alone on cached inputs when the plan allows it, else None
        self.cadence: CadenceStep | None = CadenceStep.for_trainer(self)
        self._log_setup()

    @property
    def generator(self) -> torch.Generator:
        """Deprecated name of :attr:`rng` (removed in vits_surgery 0.3)."""
        warn_renamed("SurgicalTrainer.generator", "SurgicalTrainer.rng")
        return self.rng

    @property
    def epoch(self) -> int:
        """Epochs of ``train_data`` completed."""
        return self.stream.epoch

    # ------------------------------------------------------------------ set-up hooks
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """AdamW over the trainable parameters only: one group per plan entry (``lr * scale``)."""
        cfg = self.config
        out: dict[str, torch.optim.Optimizer] = {}
        kwargs = {"betas": cfg.betas, "eps": cfg.eps, "weight_decay": cfg.weight_decay}
        gen_groups = [
            {"params": [p for _, p in pairs], "lr": cfg.lr * self.resolved.lr_scale[name], "name": name}
            for name, pairs in self.resolved.groups.items()
            if name != "discriminator"
        ]
        if gen_groups:
            out["generator"] = torch.optim.AdamW(gen_groups, lr=cfg.lr, **kwargs)
        if self.discriminator_params:
            lr_d = (cfg.lr_discriminator or cfg.lr) * self.resolved.lr_scale["discriminator"]
            group = {"params": self.discriminator_params, "lr": lr_d, "name": "discriminator"}
            out["discriminator"] = torch.optim.AdamW([group], lr=lr_d, **kwargs)
        return out

    def configure_schedulers(
        self, optimizers: dict[str, torch.optim.Optimizer]
    ) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        """Linear warm-up then exponential decay (per step or per epoch), one per optimizer."""
        cfg = self.config

        def factor(step: int) -> float:
            warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
            exponent = self.epoch if cfg.lr_decay_every == "epoch" else step
            return warm * cfg.lr_decay**exponent

        return {name: torch.optim.lr_scheduler.LambdaLR(opt, factor) for name, opt in optimizers.items()}

    def _log_setup(self) -> None:
        lrs = ", ".join(
            f"{g['name']}={g['lr']:.3g}" for opt in self.optimizers.values() for g in opt.param_groups
        )
        counts = {k: sum(p.numel() for _, p in v) for k, v in self.resolved.groups.items()}
        logger.info(
            "surgery plan %r: learning rate %.3g (%s); trainable parameters %s; computing %s",
            self.plan.name,
            self.config.lr,
            lrs,
            counts,
            ", ".join(self.step_plan.terms) or "no generator term",
        )
        logger.info("step plan: %s", self.step_plan.describe())

    # ------------------------------------------------------------------ forward and losses
    def forward_generator(self, batch: Batch, noise: TrainNoise | None = None) -> VITSTrainOutput:
        """The pruned training forward (:meth:`LossPath.forward <vits_surgery.surgery.step.LossPath.forward>`).

        Fields the plan does not need are None (``duration_nll``, ``audio_hat``).
        """
        return self.loss_path.forward(batch, noise)

    def real_segment(self, batch: Batch, out: VITSTrainOutput) -> torch.Tensor:
        """The waveform slice [B, 1, S * hop] matching ``out.audio_hat``."""
        return self.loss_path.real_segment(batch, out)

    def mel_target(self, batch: Batch, out: VITSTrainOutput) -> torch.Tensor:
        """Log-mel [B, n_mels, S] of the linear-spectrogram slice (as VITS computes it)."""
        return self.loss_path.mel_target(batch, out)

    def discriminator_losses(self, batch: Batch, out: VITSTrainOutput) -> dict[str, torch.Tensor]:
        """``disc/real``, ``disc/fake`` on the real slice and the detached generated slice."""
        return self.loss_path.discriminator_losses(batch, out)

    def generator_losses(
        self, batch: Batch, out: VITSTrainOutput, disc_out: Any = None
    ) -> dict[str, torch.Tensor]:
        """The generator terms of :attr:`StepPlan.terms` (unweighted, fp32).

        Args:
            disc_out: the discriminator's output on (real, generated) slices; computed here
                when an adversarial term needs it and it is None.
        """
        return self.loss_path.generator_losses(batch, out, disc_out)

    # ------------------------------------------------------------------ one step
    def training_step(self, batch: Batch, noise: TrainNoise | None = None) -> dict[str, float]:
        """Forward, backward and (every ``grad_accum`` calls) an optimizer update.

        Returns:
            Loss terms (unweighted) and, after an update, ``lr/<group>``, ``grad_norm/<opt>``
            and ``skipped`` (1.0 when the update was skipped for a non-finite value).
        """
        self.model.train()
        batch = batch.to(self.device)
        if not (bool(torch.isfinite(batch.spec).all()) and bool(torch.isfinite(batch.wav).all())):
            logger.warning("batch %s holds NaN/inf spectrogram or waveform values: its update is skipped", batch.ids)
            self._bad = dict.fromkeys(self._bad, True)
        scale = 1.0 / self.config.grad_accum
        last = self._micro + 1 == self.config.grad_accum
        logs: dict[str, float] = {}
        cached = self.cadence is not None  # the cached cadence step: no forward here (CadenceStep.losses)
        with self.loss_path.autocast():
            out = None if cached else self.forward_generator(batch, noise)
        if self.step_plan.train_discriminator:
            with self.loss_path.autocast():
                d_losses = self.discriminator_losses(batch, out)
            logs.update(self._backward("discriminator", d_losses, self.discriminator_params, scale))
        if "generator" in self.optimizers:
            with self.loss_path.autocast():
                g_losses = self.cadence.losses(batch, noise) if cached else self.generator_losses(batch, out)
            logs.update(self._backward("generator", g_losses, self.generator_params, scale))
        self._micro = 0 if last else self._micro + 1
        if last:
            logs.update(self._update())
            self._after_update(logs)
        return logs

    def _backward(
        self, name: str, losses: dict[str, torch.Tensor], params: list[nn.Parameter], scale: float
    ) -> dict[str, float]:
        total = weighted_total(losses, self.weights)
        logs = {k: float(v.detach()) for k, v in losses.items()}
        logs[f"loss/{name}"] = float(total.detach())
        if not math.isfinite(logs[f"loss/{name}"]):
            self._bad[name] = True
            return logs
        if total.requires_grad:
            self.scaler.scale(total * scale).backward(inputs=params)
        return logs

    def _update(self) -> dict[str, float]:
        """Step every optimizer of the window, or none of them.

        Both backward passes run before either optimizer steps (so the generator's adversarial
        terms see the discriminator of this window, not its update). A non-finite loss or
        gradient in either network skips the whole window: no optimizer step at all.
        """
        names = [n for n in ("discriminator", "generator") if n in self.optimizers]
        if not self.step_plan.train_discriminator:
            names = [n for n in names if n != "discriminator"]
        logs: dict[str, float] = {}
        # a list, not a generator: every rank must all-reduce every network, so any() may not short-circuit
        bad = any([runtime.all_reduce_gradients(self._params_of(n), self._bad[n], self.world_size) for n in names])
        overflow = False
        if not bad:
            for name in names:
                self.scaler.unscale_(self.optimizers[name])
                norm = runtime.grad_norm(self._params_of(name), self.config.grad_clip)
                logs[f"grad_norm/{name}"] = norm
                overflow = overflow or not math.isfinite(norm)
        if overflow and self.scaler.is_enabled():
            # fp16 overflow: no optimizer steps; update() below lowers the scale (normal early on)
            self._scaler_stepped = bool(names)
        elif bad or overflow:
            for name in names:
                logs[f"skipped/{name}"] = 1.0
        else:
            for name in names:
                self.scaler.step(self.optimizers[name])
            self._scaler_stepped = bool(names)
        for name in names:
            self.optimizers[name].zero_grad(set_to_none=True)
            self._bad[name] = False
        return logs

    def _params_of(self, name: str) -> list[nn.Parameter]:
        return self.generator_params if name == "generator" else self.discriminator_params

    def _after_update(self, logs: dict[str, float]) -> None:
        skipped = any(k.startswith("skipped/") for k in logs)
        if self._scaler_stepped:
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
            self.scaler.update()
            self._scaler_stepped = False
            if self.scaler.is_enabled() and self.scaler.get_scale() < scale and not skipped:
                # fp16 overflow: GradScaler skipped the update and lowered its scale (normal early on)
                logs["skipped/amp_overflow"] = 1.0
                return
        if skipped:
            self.skipped_steps += 1
            self._consecutive_bad += 1
            logs["skipped"] = 1.0
            logger.warning(
                "step %d: non-finite loss or gradient, update skipped (%d in a row, %d in total)",
                self.step, self._consecutive_bad, self.skipped_steps,
            )
            if self._consecutive_bad >= self.config.max_consecutive_nonfinite:
                raise NonFiniteLossError(
                    f"{self._consecutive_bad} consecutive updates had NaN/inf losses or gradients "
                    f"(last losses: { {k: v for k, v in logs.items() if '/' in k} }); training stopped at "
                    f"step {self.step}. The last checkpoint in {self.out_dir} is intact: lower the "
                    "learning rate, check the data, or try amp=None"
                )
            return
        self._consecutive_bad = 0
        self.step += 1
        for sched in self.schedulers.values():
            sched.step()
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                logs[f"lr/{group['name']}"] = float(group["lr"])

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        max_steps: int,
        sample_every: int | None = None,
        save_every: int | None = None,
        resume: bool | str | Path = False,
    ) -> dict[str, float]:
        """Train until ``self.step == max_steps``.

        Args:
            max_steps: total optimizer updates (counting those before a resume).
            sample_every: deprecated and ignored (listening is a callback with its own ``every``).
            save_every: overrides ``config.save_every``.
            resume: True = the latest checkpoint in ``out_dir`` (if any), or a checkpoint path.

        Training ends early after a step during which :meth:`request_stop` was called.

        Returns:
            The logs of the last step.
        """
        if self.train_data is None:
            raise ValueError("fit() needs train_data (pass it to SurgicalTrainer)")
        self.max_steps = max_steps
        self.stop_reason = None
        if sample_every is not None:
            warn_renamed("fit(sample_every=...)", "ListeningCallback(every=...)")
            for cb in self.callbacks.callbacks:
                if isinstance(cb, _LegacyListener):
                    cb.every = sample_every
        save_every = self.config.save_every if save_every is None else save_every
        lock = rundir.OutDirLock(self.out_dir).acquire() if self.rank == 0 else None
        logs: dict[str, float] = {}
        try:
            if resume:
                path = rundir.latest_checkpoint(self.out_dir) if resume is True else Path(resume)
                if path is not None:
                    self.load_checkpoint(path)
            if self.cadence is not None:  # each utterance's cadence inputs, computed once
                self.cadence.prepare(self.train_data)
            self._fire("on_fit_start", self)
            batches = iter(self.stream)
            while self.step < max_steps and self.stop_reason is None:
                t0, before = time.perf_counter(), self.step
                logs = self.training_step(next(batches))
                if self.step == before:
                    continue
                logs["time/step"] = time.perf_counter() - t0
                self._fire("on_step_end", self, self.step, logs)
                if self.config.log_every and self.step % self.config.log_every == 0:
                    logger.info("step %d: %s", self.step, _fmt(logs))
                if save_every and self.step % save_every == 0:
                    self.save_checkpoint()
            if self.stop_reason is not None:
                logger.warning("stopped at step %d of %d: %s", self.step, max_steps, self.stop_reason)
            if not save_every or self.step % save_every != 0:
                self.save_checkpoint()
        finally:
            self._fire("on_fit_end", self)
            if lock is not None:
                lock.release()
        return logs

    def request_stop(self, reason: str) -> None:
        """End ``fit`` after the current step (its logging, sampling and checkpoint run as usual).

        ``fit`` then saves its final checkpoint and returns; :attr:`stop_reason` keeps the
        first reason given (it is reset when ``fit`` starts). Callbacks call this to stop early.
        Under ``torch.distributed`` call it on every rank (callbacks run on rank 0 only).
        """
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("request_stop() needs a non-empty reason string saying why training stops")
        if self.stop_reason is None:
            self.stop_reason = reason
            logger.info("step %d: stop requested: %s", self.step, reason)

    def _fire(self, hook: str, *args: Any) -> None:
        if self.rank == 0:
            getattr(self.callbacks, hook)(*args)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Optimizers, schedulers, scaler, counters, RNG states, data position, and the cached
        cadence step's reference duration predictor."""
        return {
            "step": self.step,
            "data": self.stream.state_dict(),
            "skipped_steps": self.skipped_steps,
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "schedulers": {k: v.state_dict() for k, v in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "rng": runtime.rng_state(self.rng),
            "plan": self.plan.to_json(),
            "train_config": json.dumps(self.config.to_dict()),
            "cadence": self.cadence.state_dict() if self.cadence is not None else {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if set(state["optimizers"]) != set(self.optimizers):
            raise native.CheckpointError(
                f"the checkpoint has optimizers {sorted(state['optimizers'])} but this plan builds "
                f"{sorted(self.optimizers)}: resume with the plan it was trained with"
            )
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        for k, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][k])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.stream.load_state_dict(state["data"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        runtime.set_rng_state(state["rng"], self.rng)
        if self.cadence is not None and state.get("cadence"):
            self.cadence.load_state_dict(state["cadence"])

    def save_checkpoint(self, path: str | Path | None = None) -> Path | None:
        """Write model + trainer state atomically (rank 0); prune to ``keep_last``."""
        if self._micro != 0:
            raise RuntimeError("save_checkpoint() in the middle of a gradient-accumulation window")
        final = Path(path) if path is not None else rundir.step_dir(self.out_dir, self.step)
        if self.rank == 0:
            tmp = final.with_name(f".{final.name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while saving
            tmp.mkdir(parents=True)
            try:
                native.save(self.model, tmp, metadata={"vits_surgery_plan": self.plan.to_json()})
                rundir.save_trainer_state(self.state_dict(), tmp / rundir.STATE_FILE)
                _files.atomic_write_text(tmp / "plan.json", self.plan.to_json())
            except BaseException:  # disk full, interrupted: the previous checkpoint stays the latest
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            rundir.commit_dir(tmp, final)
            if path is None:
                rundir.prune_checkpoints(self.out_dir, self.config.keep_last)
            logger.info("step %d: checkpoint written to %s", self.step, final)
            self._fire("on_save", self, self.step, final)
        runtime.barrier(self.world_size)
        return final

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore model weights and trainer state from a checkpoint directory."""
        path = Path(path)
        tensors, _, _ = native.read_native(path)
        native.load_state_strict(self.model, tensors, path / native.MODEL_FILE if path.is_dir() else path)
        self.load_state_dict(rundir.load_trainer_state(path))
        logger.info("resumed from %s at step %d", path, self.step)


def _fmt(logs: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in logs.items() if k.startswith(("gen/", "disc/", "lr/", "grad_norm/")))


class _LegacyListener(Callback):
    """The deprecated ``listener=`` path (removed in vits_surgery 0.3): ``listener(trainer, step)``
    at step 0 and every ``TrainConfig.sample_every`` steps, in eval mode without gradients, its
    result passed to the other callbacks' ``on_sample``."""

    def __init__(self, listener: Any) -> None:
        self.listener = listener
        self.every: int | None = None

    def _render(self, trainer: SurgicalTrainer, step: int) -> None:
        with preserved(trainer.model), torch.no_grad():
            trainer.model.eval()
            samples = self.listener(trainer, step)
        if samples is not None:
            for cb in trainer.callbacks.callbacks:
                if cb is not self:
                    cb.on_sample(trainer, step, samples)

    def _period(self, trainer: SurgicalTrainer) -> int:
        return self.every if self.every is not None else trainer.config.sample_every

    def on_fit_start(self, trainer: SurgicalTrainer) -> None:
        if self._period(trainer) and trainer.step == 0:
            self._render(trainer, 0)

    def on_step_end(self, trainer: SurgicalTrainer, step: int, logs: dict[str, float]) -> None:
        period = self._period(trainer)
        if period and step % period == 0:
            self._render(trainer, step)

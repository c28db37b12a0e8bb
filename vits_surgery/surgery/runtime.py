"""Run-time plumbing of the trainer: process group, gradient sync, RNG states, batch stream.

The trainer averages gradients itself (one flattened all-reduce per optimizer and
accumulation window) instead of wrapping the model in ``DistributedDataParallel``; see
:mod:`vits_surgery.surgery.trainer` for why. The distributed helpers are no-ops in a single
process. :class:`BatchStream` turns any iterable of batches into an endless stream whose
position (epoch, batch, shuffle state) is saved with checkpoints.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "BatchStream",
    "init_from_env",
    "default_device",
    "seed_everything",
    "broadcast_model",
    "all_reduce_gradients",
    "grad_norm",
    "data_stride",
    "barrier",
    "rng_state",
    "set_rng_state",
]

logger = logging.getLogger(__name__)


def init_from_env() -> tuple[int, int]:
    """Initialise the default process group from torchrun's environment when needed.

    Returns:
        ``(rank, world_size)``; ``(0, 1)`` outside a distributed launch.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return 0, 1
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    logger.info("process group initialised: rank %d of %d (%s)", dist.get_rank(), world, backend)
    return dist.get_rank(), dist.get_world_size()


def default_device() -> str:
    """``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``."""
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def seed_everything(seed: int, generator: torch.Generator | None = None) -> None:
    """Seed python ``random``, numpy, torch (CPU and CUDA) and ``generator``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if generator is not None:
        generator.manual_seed(seed)


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def broadcast_model(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (as DDP does at construction)."""
    if _world() <= 1:
        return
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor.data, src=0)


def all_reduce_gradients(params: list[nn.Parameter], bad: bool, world_size: int) -> bool:
    """Average the gradients of ``params`` over ranks (missing grads count as zero).

    The local non-finite flag travels in the same buffer, so all ranks agree on skipping.

    Returns:
        True when any rank flagged a non-finite loss.
    """
    if world_size <= 1:
        return bad
    device = params[0].device if params else torch.device("cpu")
    flat = [p.grad.reshape(-1).float() if p.grad is not None else torch.zeros(p.numel(), device=device) for p in params]
    flag = torch.tensor([1.0 if bad else 0.0], device=device)
    buffer = torch.cat([*flat, flag])
    dist.all_reduce(buffer)
    offset = 0
    for p in params:
        n = p.numel()
        avg = (buffer[offset : offset + n] / world_size).view_as(p).to(p.dtype)
        if p.grad is None:
            p.grad = avg.clone()
        else:
            p.grad.copy_(avg)
        offset += n
    return bool(buffer[-1] > 0)


def grad_norm(params: list[nn.Parameter], clip: float | None) -> float:
    """Global L2 norm of the gradients, clipped to ``clip`` when given."""
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(with_grad, clip if clip else float("inf"))
    return float(norm)


def data_stride(data: Any, world_size: int) -> int:
    """1 when the loader already shards by rank (its sampler has ``num_replicas``), else the world size."""
    if world_size <= 1:
        return 1
    for obj in (getattr(data, "sampler", None), getattr(data, "batch_sampler", None), data):
        if getattr(obj, "num_replicas", 1) > 1:
            return 1
    return world_size


def barrier(world_size: int) -> None:
    """Wait for every rank (no-op in one process)."""
    if world_size > 1:
        dist.barrier()


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG state the trainer depends on, as tensors and plain Python values."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gauss": float(np_state[4]),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "generator": generator.get_state(),
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    generator.set_state(state["generator"])


class BatchStream:
    """Endless batches from ``data`` with an exact, saveable position.

    A loader with ``state_dict()`` / ``load_state_dict()`` (e.g. ``data.make_loader``) keeps
    its own position: each ``iter()`` yields the rest of its current epoch, and its state is
    saved here. Any other iterable (a list, a ``DataLoader``) is re-iterated once per epoch,
    with ``set_epoch(epoch)`` called on it or its sampler when present, strided by rank under
    ``torch.distributed`` unless its sampler already shards, and fast-forwarded to the saved
    batch after a resume. Iterator creation never disturbs the global torch RNG stream, and a
    shuffling DataLoader re-creates the shuffle of the epoch it was in.

    Args:
        data: an iterable of batches.
        rank: this process's rank.
        world_size: number of processes.
    """

    def __init__(self, data: Iterable[Any], rank: int = 0, world_size: int = 1) -> None:
        self.data = data
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.batch_in_epoch = 0
        self._epoch_rng: torch.Tensor | None = None

    @property
    def stateful(self) -> bool:
        """True when the loader saves its own position."""
        return hasattr(self.data, "state_dict") and hasattr(self.data, "load_state_dict")

    def __iter__(self) -> Iterator[Any]:
        return self._stateful() if self.stateful else self._replayed()

    def _stateful(self) -> Iterator[Any]:
        while True:
            seen = False
            for batch in _iterate_keeping_rng(self.data):
                seen = True
                self.batch_in_epoch += 1
                yield batch
            if not seen and self.batch_in_epoch == 0:
                raise ValueError("train_data yielded no batch")
            self.epoch += 1
            self.batch_in_epoch = 0

    def _replayed(self) -> Iterator[Any]:
        while True:
            data = self.data
            for obj in (data, getattr(data, "sampler", None), getattr(data, "batch_sampler", None)):
                if hasattr(obj, "set_epoch"):
                    obj.set_epoch(self.epoch)
            if self._epoch_rng is None:
                self._epoch_rng = torch.get_rng_state()
            # after a resume mid-epoch this rebuilds the epoch's shuffle from its saved RNG state
            iterator = _iterate_keeping_rng(data, self._epoch_rng)
            stride = data_stride(data, self.world_size)
            seen = False
            for i, batch in enumerate(iterator):
                seen = True
                if i < self.batch_in_epoch or i % stride != self.rank % stride:
                    continue
                self.batch_in_epoch = i + 1
                yield batch
            if not seen:
                raise ValueError("train_data yielded no batch")
            self.epoch += 1
            self.batch_in_epoch = 0
            self._epoch_rng = None

    def state_dict(self) -> dict[str, Any]:
        """Epoch, batch index, the epoch's RNG state and the loader's own state."""
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "epoch_rng": self._epoch_rng,
            "loader": self.data.state_dict() if self.stateful else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a position from :meth:`state_dict` (takes effect on the next ``iter``)."""
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self._epoch_rng = state.get("epoch_rng")
        if state.get("loader") is not None and self.stateful:
            self.data.load_state_dict(state["loader"])


def _iterate_keeping_rng(data: Iterable[Any], rng: torch.Tensor | None = None) -> Iterator[Any]:
    """``iter(data)`` and its first batch drawn from ``rng`` (default: the current state), with
    the global torch RNG left as it was: DataLoaders draw their shuffle and worker seeds there,
    and an uninterrupted run and a resumed one must see the same stream afterwards."""
    current = torch.get_rng_state()
    if rng is not None:
        torch.set_rng_state(rng)
    try:
        iterator = iter(data)
        first = next(iterator, _END)  # samplers draw their seed on the first batch
    finally:
        torch.set_rng_state(current)
    return iter(()) if first is _END else itertools.chain([first], iterator)


_END = object()

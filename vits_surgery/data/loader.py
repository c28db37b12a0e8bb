"""Length-bucketed, deterministic, resumable batching and the ``Batch`` collate.

:class:`BucketSampler` plans each epoch from ``(seed, epoch)`` alone: shuffle the items, cut
the permutation into pools of ``pool_batches`` batches, sort each pool by length, cut it into
batches, shuffle the batch order, and deal the batches to the ranks. The plan is therefore the
same on every run and every rank, and a position ``(epoch, batch index)`` identifies exactly
where training stopped. :class:`ResumableLoader` (from :func:`make_loader`) advances that
position only when a batch reaches the consumer, so its ``state_dict()`` is exact even while
DataLoader workers prefetch ahead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..batch import Batch
from .dataset import Sample
from .report import DataError

__all__ = ["BucketSampler", "ResumableLoader", "collate", "make_loader"]


def collate(samples: Sequence[Sample]) -> Batch:
    """Pad samples into a :class:`~vits_surgery.batch.Batch`.

    Tokens are padded with 0, spectrograms and waveforms with zeros.

    Args:
        samples: dataset items (all with a speaker id, or all without).

    Returns:
        ``Batch`` with tokens [B, T_x], spec [B, F, T_y], wav [B, 1, N] and their lengths.
    """
    if not samples:
        raise DataError("cannot collate an empty list of samples")
    b = len(samples)
    token_lengths = torch.tensor([s.tokens.shape[0] for s in samples], dtype=torch.long)
    spec_lengths = torch.tensor([s.spec.shape[-1] for s in samples], dtype=torch.long)
    wav_lengths = torch.tensor([s.wav.shape[-1] for s in samples], dtype=torch.long)
    n_freq = samples[0].spec.shape[0]
    tokens = torch.zeros(b, int(token_lengths.max()), dtype=torch.long)  # [B, T_x]
    spec = torch.zeros(b, n_freq, int(spec_lengths.max()), dtype=samples[0].spec.dtype)  # [B, F, T_y]
    wav = torch.zeros(b, 1, int(wav_lengths.max()), dtype=samples[0].wav.dtype)  # [B, 1, N]
    for i, s in enumerate(samples):
        tokens[i, : s.tokens.shape[0]] = s.tokens
        spec[i, :, : s.spec.shape[-1]] = s.spec
        wav[i, :, : s.wav.shape[-1]] = s.wav.reshape(1, -1)
    with_speaker = [s.speaker is not None for s in samples]
    if any(with_speaker) and not all(with_speaker):
        raise DataError("cannot collate samples with and without speaker ids in one batch")
    speakers = torch.tensor([s.speaker for s in samples], dtype=torch.long) if all(with_speaker) else None
    return Batch(
        tokens=tokens, token_lengths=token_lengths, spec=spec, spec_lengths=spec_lengths,
        wav=wav, wav_lengths=wav_lengths, speakers=speakers,
        texts=[s.text for s in samples], ids=[s.id for s in samples],
    )


class BucketSampler(Sampler):
    """Batches of similar length, reshuffled per epoch, resumable at a batch position.

    Args:
        lengths: length (e.g. spectrogram frames) of every dataset item.
        batch_size: items per batch.
        seed: base seed; epoch ``e`` is planned from ``(seed, e)``.
        shuffle: shuffle items and batch order (False: one length-sorted pass).
        drop_last: drop batches smaller than ``batch_size`` (and uneven tail batches across ranks).
        pool_batches: batches per length-sorted pool (larger: less padding, less randomness).
        num_replicas: number of data-parallel ranks.
        rank: this rank.

    Attributes:
        epoch: the epoch being (or about to be) consumed.
        position: batches of ``epoch`` already consumed.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 1234,
        shuffle: bool = True,
        drop_last: bool = False,
        pool_batches: int = 32,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if batch_size < 1 or pool_batches < 1:
            raise DataError(f"batch_size ({batch_size}) and pool_batches ({pool_batches}) must be >= 1")
        if not 0 <= rank < num_replicas:
            raise DataError(f"rank {rank} is out of range for num_replicas={num_replicas}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.seed, self.shuffle = int(batch_size), int(seed), bool(shuffle)
        self.drop_last, self.pool_batches = bool(drop_last), int(pool_batches)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.epoch = 0
        self.position = 0
        self._plan_cache: tuple[int, list[list[int]]] | None = None
        if len(self) == 0:
            raise DataError(
                f"{len(self.lengths)} items give no batch of {batch_size} for {num_replicas} rank(s)"
                f"{' with drop_last' if drop_last else ''}"
            )

    def plan(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches (lists of item indices) for ``epoch`` (default: current)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        batches = self._all_batches(epoch)
        mine = batches[self.rank :: self.num_replicas]
        self._plan_cache = (epoch, mine)
        return mine

    def _all_batches(self, epoch: int) -> list[list[int]]:
        n, bs = len(self.lengths), self.batch_size
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        pool = n if not self.shuffle else bs * self.pool_batches
        batches: list[list[int]] = []
        for start in range(0, n, pool):
            chunk = order[start : start + pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches.extend(chunk[i : i + bs].tolist() for i in range(0, len(chunk), bs))
        if self.drop_last:
            batches = [b for b in batches if len(b) == bs]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        r = self.num_replicas
        if len(batches) % r:
            if self.drop_last:
                batches = batches[: len(batches) - len(batches) % r]
            else:  # repeat the first batches so every rank gets the same count
                batches = batches + batches[: r - len(batches) % r]
        return batches

    def __len__(self) -> int:
        return len(self.plan())  # the same for every epoch: only the last pool can be partial

    def __iter__(self) -> Iterator[list[int]]:
        """The remaining batches of the current epoch (from :attr:`position`); does not advance."""
        return iter(self.plan()[self.position :])

    def advance(self, n: int = 1) -> None:
        """Mark ``n`` batches consumed; moves to the next epoch at the end of one."""
        self.position += n
        while self.position >= len(self):
            self.position -= len(self)
            self.epoch += 1

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch."""
        self.epoch, self.position = int(epoch), 0

    def _fingerprint(self) -> str:
        return hashlib.sha1(self.lengths.tobytes()).hexdigest()

    def state_dict(self) -> dict[str, Any]:
        """Position and settings; :meth:`load_state_dict` refuses a state from other data."""
        return {
            "epoch": self.epoch, "position": self.position, "seed": self.seed,
            "batch_size": self.batch_size, "num_replicas": self.num_replicas,
            "n_items": len(self.lengths), "lengths_sha1": self._fingerprint(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state``'s position.

        Raises:
            DataError: the state was made with another dataset, seed, batch size or rank count.
        """
        mine = self.state_dict()
        for key in ("seed", "batch_size", "num_replicas", "n_items", "lengths_sha1"):
            if key in state and state[key] != mine[key]:
                raise DataError(
                    f"sampler state does not match this data: {key} is {state[key]!r} in the state "
                    f"and {mine[key]!r} here"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        if self.position >= len(self):
            raise DataError(f"sampler position {self.position} is past the epoch's {len(self)} batches")


class ResumableLoader:
    """A DataLoader over a :class:`BucketSampler` whose position follows consumed batches.

    Each ``iter()`` yields the rest of the current epoch; the next ``iter()`` continues with the
    next epoch. ``state_dict()`` taken after receiving batch k resumes at batch k + 1.
    """

    def __init__(self, dataset: Dataset, sampler: BucketSampler, **loader_kwargs: Any) -> None:
        self.dataset = dataset
        self.sampler = sampler
        loader_kwargs.setdefault("collate_fn", collate)
        self.loader = DataLoader(dataset, batch_sampler=sampler, **loader_kwargs)

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            self.sampler.advance()
            yield batch

    def forever(self) -> Iterator[Batch]:
        """Batches without end, epoch after epoch (for step-based training loops)."""
        while True:
            yield from self

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def epoch(self) -> int:
        """The epoch being consumed."""
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch."""
        self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state (exact data position)."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a position saved by :meth:`state_dict`."""
        self.sampler.load_state_dict(state)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int = 1234,
    shuffle: bool = True,
    drop_last: bool = False,
    num_workers: int = 0,
    pool_batches: int = 32,
    num_replicas: int | None = None,
    rank: int | None = None,
    pin_memory: bool = False,
) -> ResumableLoader:
    """A resumable, length-bucketed loader of :class:`~vits_surgery.batch.Batch` objects.

    Args:
        dataset: a dataset with a ``lengths`` attribute (e.g. ``TextAudioDataset``).
        batch_size: items per batch (per rank).
        seed: sampler seed.
        shuffle: shuffle each epoch.
        drop_last: drop incomplete batches.
        num_workers: DataLoader worker processes.
        pool_batches: see :class:`BucketSampler`.
        num_replicas: data-parallel ranks (default: ``torch.distributed`` world size, else 1).
        rank: this rank (default: ``torch.distributed`` rank, else 0).
        pin_memory: pin batches in page-locked memory (GPU training).
    """
    lengths = getattr(dataset, "lengths", None)
    if lengths is None:
        raise DataError(f"{type(dataset).__name__} has no 'lengths' attribute for length bucketing")
    dist = torch.distributed
    active = dist.is_available() and dist.is_initialized()
    num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if active else 1)
    rank = rank if rank is not None else (dist.get_rank() if active else 0)
    sampler = BucketSampler(
        lengths, batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last,
        pool_batches=pool_batches, num_replicas=num_replicas, rank=rank,
    )
    return ResumableLoader(
        dataset, sampler, num_workers=num_workers, pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )

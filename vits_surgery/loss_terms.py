"""Extra generator loss terms: the extension point beyond the built-in VITS losses.

A :class:`LossTerm` is one named generator term (``"gen/stft"``) with a default weight and a
statement of what it reads. Add terms to a plan or a trainer config::

    plan = SurgeryPlan.timbre(loss_terms=[MultiResolutionSTFTLoss(weight=2.0)])
    config = TrainConfig(loss_terms=[MultiResolutionSTFTLoss()])    # the plan's win by name

Once added, a term's name is a key of ``loss_weights`` like the built-in ones
(``loss_weights={"gen/stft": 0}`` switches it off: a term of weight 0 is never computed). The
step computes a term only when its weight is not 0 and what it reads reaches a trainable organ:
a ``"waveform"`` term compares the generated segment with the real one, so it reaches what
``gen/mel`` reaches (the decoder, the posterior encoder, the speaker embedding) and makes the
decoder run.

Write a term::

    @register_loss_term
    class EnvelopeLoss(LossTerm):
        name = "gen/envelope"

        def __init__(self, weight: float = 1.0, frame: int = 256) -> None:
            super().__init__(weight)
            self.frame = frame

        def __call__(self, path, batch, out):
            real, fake = path.real_segment(batch, out).float(), out.audio_hat.float()
            ...  # a scalar tensor

``path`` is the step's :class:`~vits_surgery.surgery.step.LossPath` (``real_segment``,
``mel_target``, ``model``), ``batch`` the :class:`~vits_surgery.batch.Batch` and ``out`` the
:class:`~vits_surgery.models.vits.VITSTrainOutput` (``audio_hat``: the generated segment).
Terms are serialised with plans by name and constructor arguments (each argument stored as an
attribute of the same name, or override :meth:`LossTerm.kwargs`); :func:`register_loss_term`
lets :meth:`SurgeryPlan.from_json <vits_surgery.surgery.plan.SurgeryPlan.from_json>` rebuild
them.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import torch

from ._names import did_you_mean
from .losses import DEFAULT_WEIGHTS

__all__ = [
    "LossTerm",
    "MultiResolutionSTFTLoss",
    "READS",
    "UnknownLossTermError",
    "register_loss_term",
    "registered_loss_terms",
    "loss_term_from_dict",
    "loss_terms_from_any",
    "merge_loss_terms",
    "stft_loss",
]

#: What a term may read -> the built-in term whose reach it shares.
READS: dict[str, str] = {"waveform": "gen/mel"}

_REGISTRY: dict[str, type[LossTerm]] = {}

T = TypeVar("T", bound="type[LossTerm]")


class UnknownLossTermError(KeyError):
    """A loss term name that is not registered; the message suggests the closest one."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class LossTerm:
    """One extra generator loss term.

    Class attributes:
        name: the namespaced term name (``"gen/<something>"``): its key in the logs and in
            ``loss_weights``.
        reads: what it reads; ``"waveform"``: the generated and the real segment.

    Args:
        weight: the term's weight (>= 0; 0 = never computed), overridable by ``loss_weights``.
    """

    name: ClassVar[str] = ""
    reads: ClassVar[str] = "waveform"

    def __init__(self, weight: float = 1.0) -> None:
        if not float(weight) >= 0:
            raise ValueError(f"{type(self).__name__}: weight must be >= 0, got {weight}")
        self.weight = float(weight)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.reads not in READS:
            raise ValueError(f"{cls.__name__}.reads must be one of {sorted(READS)}, got {cls.reads!r}")

    def __call__(self, path: Any, batch: Any, out: Any) -> torch.Tensor:
        """The unweighted term, a scalar tensor (the step runs it outside autocast)."""
        raise NotImplementedError(f"{type(self).__name__} does not define __call__(path, batch, out)")

    # ------------------------------------------------------------------ serialisation
    def kwargs(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this term (read from attributes of the same name)."""
        out: dict[str, Any] = {}
        for pname, param in inspect.signature(type(self).__init__).parameters.items():
            if pname == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            if not hasattr(self, pname):
                raise TypeError(
                    f"{type(self).__name__}: constructor argument {pname!r} is not stored as an attribute "
                    "of the same name; store it, or override kwargs(), so the term can be serialised"
                )
            out[pname] = _plain(getattr(self, pname))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"name": ..., "kwargs": {...}}``."""
        return {"name": self.name, "kwargs": self.kwargs()}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.kwargs() == self.kwargs()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__qualname__, self.name))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs().items())
        return f"{type(self).__name__}({args})"


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _check_name(name: str, cls_name: str) -> None:
    if not isinstance(name, str) or not name.startswith("gen/") or len(name) <= 4:
        raise ValueError(f"{cls_name}.name must be a generator term name like 'gen/stft', got {name!r}")
    if name in DEFAULT_WEIGHTS:
        raise ValueError(f"{cls_name}.name {name!r} is a built-in loss term")


def register_loss_term(cls: T) -> T:
    """Class decorator: make a :class:`LossTerm` subclass loadable by name (``from_json``).

    Raises:
        ValueError: the name is not ``gen/...``, is a built-in term, or is taken by another class.
    """
    if not (isinstance(cls, type) and issubclass(cls, LossTerm)):
        raise TypeError(f"register_loss_term expects a LossTerm subclass, got {cls!r}")
    _check_name(cls.name, cls.__name__)
    old = _REGISTRY.get(cls.name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(
            f"loss term name {cls.name!r} is already registered by {old.__module__}.{old.__qualname__}"
        )
    _REGISTRY[cls.name] = cls
    return cls


def registered_loss_terms() -> dict[str, type[LossTerm]]:
    """Registered term name -> class."""
    return dict(_REGISTRY)


def loss_term_from_dict(data: Mapping[str, Any]) -> LossTerm:
    """Inverse of :meth:`LossTerm.to_dict`.

    Raises:
        KeyError: the name is not registered (the message suggests the closest one).
    """
    name = data.get("name")
    if name not in _REGISTRY:
        hint = did_you_mean(str(name), _REGISTRY)
        raise UnknownLossTermError(
            f"unknown loss term {name!r}{hint} (registered: {', '.join(sorted(_REGISTRY)) or 'none'}); "
            "define its class with @register_loss_term before loading"
        )
    return _REGISTRY[name](**dict(data.get("kwargs") or {}))


def loss_terms_from_any(terms: Iterable[LossTerm | Mapping[str, Any]] | None) -> tuple[LossTerm, ...]:
    """Terms from instances or their dicts; checks names are valid and unique."""
    out: list[LossTerm] = []
    for term in terms or ():
        if isinstance(term, Mapping):
            term = loss_term_from_dict(term)
        if not isinstance(term, LossTerm):
            raise TypeError(f"loss_terms holds {term!r}: expected LossTerm instances")
        _check_name(term.name, type(term).__name__)
        if any(t.name == term.name for t in out):
            raise ValueError(f"loss term {term.name!r} appears twice in loss_terms")
        out.append(term)
    return tuple(out)


def merge_loss_terms(*layers: Sequence[LossTerm] | None) -> tuple[LossTerm, ...]:
    """Terms of each layer in turn; a later layer's term replaces an earlier one of the same name."""
    merged: dict[str, LossTerm] = {}
    for layer in layers:
        for term in layer or ():
            merged[term.name] = term
    return tuple(merged.values())


# ---------------------------------------------------------------------- multi-resolution STFT
def _magnitude(x: torch.Tensor, n_fft: int, hop: int, win: int) -> torch.Tensor:
    """|STFT| [N, n_fft // 2 + 1, frames] of [N, T] signals (hann window, centred frames)."""
    window = torch.hann_window(win, device=x.device, dtype=x.dtype)
    # reflect padding needs more samples than half a frame; short segments are zero-padded
    mode = "reflect" if x.shape[-1] > n_fft // 2 else "constant"
    spec = torch.stft(x, n_fft, hop, win, window, center=True, pad_mode=mode, return_complex=True)
    power = spec.real.square() + spec.imag.square()
    return torch.sqrt(power.clamp_min(1e-7))  # clamped: finite gradients where the power is 0


def stft_loss(
    real: torch.Tensor, fake: torch.Tensor, n_fft: int, hop: int, win: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectral convergence and log-magnitude L1 at one resolution (fp32).

    Args:
        real, fake: [B, T] or [B, 1, T] waveforms.

    Returns:
        ``(sc, mag)``: ``mean_b ||S_b - Ŝ_b||_F / ||S_b||_F`` and ``mean |log S - log Ŝ|``.
    """
    real, fake = real.float().reshape(real.shape[0], -1), fake.float().reshape(fake.shape[0], -1)
    mags = _magnitude(torch.cat([real, fake]), n_fft, hop, win)  # one STFT for both
    s, s_hat = mags[: real.shape[0]], mags[real.shape[0] :]
    diff = torch.linalg.vector_norm(s - s_hat, dim=(1, 2))
    sc = (diff / torch.linalg.vector_norm(s, dim=(1, 2)).clamp_min(1e-7)).mean()
    mag = torch.mean(torch.abs(torch.log(s) - torch.log(s_hat)))
    return sc, mag


@register_loss_term
class MultiResolutionSTFTLoss(LossTerm):
    """Spectral convergence + log-magnitude L1 of the generated vs the real segment, averaged
    over several STFT resolutions (hann windows), in fp32.

    Not in any plan by default; add it with ``loss_terms=[MultiResolutionSTFTLoss()]``.

    Args:
        weight: the term's weight.
        fft_sizes, hop_sizes, win_lengths: one entry per resolution.
    """

    name = "gen/stft"
    reads = "waveform"

    def __init__(
        self,
        weight: float = 1.0,
        fft_sizes: Sequence[int] = (512, 1024, 2048),
        hop_sizes: Sequence[int] = (128, 256, 512),
        win_lengths: Sequence[int] = (512, 1024, 2048),
    ) -> None:
        super().__init__(weight)
        self.fft_sizes = tuple(int(v) for v in fft_sizes)
        self.hop_sizes = tuple(int(v) for v in hop_sizes)
        self.win_lengths = tuple(int(v) for v in win_lengths)
        if not self.fft_sizes or not len(self.fft_sizes) == len(self.hop_sizes) == len(self.win_lengths):
            raise ValueError("MultiResolutionSTFTLoss: fft_sizes, hop_sizes and win_lengths need one entry each per resolution")
        for n_fft, hop, win in self.resolutions():
            if not (hop > 0 and 0 < win <= n_fft):
                raise ValueError(f"MultiResolutionSTFTLoss: need hop > 0 and 0 < win <= n_fft, got {(n_fft, hop, win)}")

    def resolutions(self) -> list[tuple[int, int, int]]:
        """``(n_fft, hop, win)`` per resolution."""
        return list(zip(self.fft_sizes, self.hop_sizes, self.win_lengths, strict=True))

    def compute(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """The mean over resolutions of (sc + mag) between two waveforms [B, 1, T]."""
        total = [sum(stft_loss(real, fake, *res)) for res in self.resolutions()]
        return torch.stack(total).mean()  # type: ignore[arg-type]

    def __call__(self, path: Any, batch: Any, out: Any) -> torch.Tensor:
        return self.compute(path.real_segment(batch, out), out.audio_hat)

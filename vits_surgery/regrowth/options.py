"""What a regrowth does: :class:`RegrowOptions`, with the presets :meth:`RegrowOptions.quick`
and :meth:`RegrowOptions.thorough`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "RegrowOptions",
    "REGROWABLE",
    "DEFAULT_STEPS",
    "DEFAULT_LR",
    "PRECISIONS",
    "ALIGN_LOG_STD",
    "LOG_STD_FLOOR",
    "cpu_has_fast_bf16",
    "resolve_precision",
]

#: Regrowable organ -> the module paths it re-creates and trains.
REGROWABLE: dict[str, tuple[str, ...]] = {
    "posterior_encoder": ("posterior_encoder",),
    "duration_posterior": tuple(
        f"duration_predictor.{n}" for n in ("post_pre", "post_proj", "post_convs", "post_flows", "flows.1")
    ),
    "discriminator": ("discriminator",),
}
#: Default optimizer steps per organ.
DEFAULT_STEPS = {"posterior_encoder": 400, "duration_posterior": 300, "discriminator": 100}
#: Default AdamW learning rates per organ.
DEFAULT_LR = {"posterior_encoder": 3e-3, "duration_posterior": 1e-3, "discriminator": 2e-4}
LOG_STD_FLOOR = math.log(0.1)
"""Default floor of the regrown posterior's ``logs_q``."""
PRECISIONS = ("auto", "fp32", "bf16")
ALIGN_LOG_STD = ("nll", "alignment")


@dataclass(frozen=True)
class RegrowOptions:
    """Settings of :func:`~vits_surgery.regrowth.regrow`.

    Attributes:
        n_utterances: synthesized training utterances.
        n_heldout: held-out utterances for the metrics (None: a tenth of ``n_utterances``,
            at least 2).
        steps: optimizer steps, one number for every organ or per organ (None:
            :data:`DEFAULT_STEPS`).
        lr: AdamW learning rate, one number or per organ (None: :data:`DEFAULT_LR`).
        batch_size: crops / sequences / segments per step.
        crop_frames: spectrogram frames per posterior-encoder crop.
        log_std_floor: hinge floor of the posterior ``logs_q`` (keeps the posterior from
            collapsing onto the teacher ``z``).
        noise_scale, noise_scale_w: synthesis noise of the teacher utterances.
        align_weight: weight of the alignment loss (:func:`~vits_surgery.regrowth.fit.alignment_loss`):
            the cross-entropy of each frame's teacher token under the prior, which sharpens the
            token boundaries MAS finds.
        align_steps: 0 = the alignment loss joins every posterior step; > 0 = it is left out
            of the main fit and a final phase of this many extra steps adds it.
        align_lr_factor: learning rate of that final phase relative to the main fit's.
        align_log_std: what sets the posterior's log-std while the alignment loss is on:
            "nll" (the teacher-``z`` likelihood, as in the main fit) or "alignment" (the
            alignment loss on the posterior sample; the floor still holds).
        precision: "auto" (bfloat16 autocast of the posterior encoder's WaveNet stack where
            the CPU has native bfloat16 units, else float32), "fp32" or "bf16".
        segments_per_utterance: discriminator segments cut from each utterance.
        extra_terms: callables added to the posterior encoder's loss at every step, each
            ``term(step) -> scalar tensor`` with ``step`` a
            :class:`~vits_surgery.regrowth.fit.PosteriorStep`; a term with a true
            ``needs_sample`` attribute makes the step draw a posterior sample. The seam for
            experiments (``benchmarks/regrow_terms.py``); a term's ``repr`` goes in the cache key.
        progress: tqdm bars (not part of the cache key).
    """

    n_utterances: int = 120
    n_heldout: int | None = None
    steps: int | Mapping[str, int] | None = None
    lr: float | Mapping[str, float] | None = None
    batch_size: int = 8
    crop_frames: int = 64
    log_std_floor: float = LOG_STD_FLOOR
    noise_scale: float = 0.667
    noise_scale_w: float = 0.8
    align_weight: float = 0.0
    align_steps: int = 0
    align_lr_factor: float = 1 / 3
    align_log_std: str = "nll"
    precision: str = "auto"
    segments_per_utterance: int = 2
    extra_terms: Sequence[Callable[[Any], torch.Tensor]] = field(default_factory=tuple)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"RegrowOptions.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.align_log_std not in ALIGN_LOG_STD:
            raise ValueError(f"RegrowOptions.align_log_std must be one of {ALIGN_LOG_STD}, got {self.align_log_std!r}")
        if self.align_steps < 0:
            raise ValueError(f"RegrowOptions.align_steps must be >= 0, got {self.align_steps}")
        if self.align_lr_factor <= 0:
            raise ValueError(f"RegrowOptions.align_lr_factor must be > 0, got {self.align_lr_factor}")
        if self.n_utterances < 1 or self.batch_size < 1 or self.crop_frames < 1:
            raise ValueError("RegrowOptions.n_utterances, batch_size and crop_frames must be >= 1")
        object.__setattr__(self, "extra_terms", tuple(self.extra_terms))

    @classmethod
    def quick(cls, **overrides: Any) -> RegrowOptions:
        """The defaults: a few minutes on a CPU for a Piper-medium voice."""
        return cls(**overrides)

    @classmethod
    def thorough(cls, **overrides: Any) -> RegrowOptions:
        """The longest recipe: 1000 utterances, 4500 posterior steps plus a 2000-step alignment
        phase whose loss also sets the posterior's spread (docs/benchmarks.md, "Organ regrowth")."""
        recipe: dict[str, Any] = {
            "n_utterances": 1000,
            "n_heldout": 60,
            "steps": {"posterior_encoder": 4500, "duration_posterior": 250, "discriminator": 60},
            "align_weight": 1.0,
            "align_steps": 2000,
            "align_log_std": "alignment",
        }
        return cls(**{**recipe, **overrides})

    def replace(self, **changes: Any) -> RegrowOptions:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)

    def heldout(self) -> int:
        """Held-out utterances: ``n_heldout``, or a tenth of ``n_utterances`` (at least 2)."""
        return max(2, round(0.1 * self.n_utterances)) if self.n_heldout is None else self.n_heldout

    def cache_settings(self) -> dict[str, Any]:
        """The options as the cache key sees them (``progress`` left out, terms by ``repr``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("progress",)}
        out["extra_terms"] = [repr(t) for t in self.extra_terms]
        for key in ("steps", "lr"):
            if isinstance(out[key], Mapping):
                out[key] = dict(out[key])
        return out


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bfloat16 matrix instructions (AMX tiles or AVX512-BF16),
    where oneDNN runs bfloat16 convolutions faster than float32."""
    probes = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    for probe in probes:
        try:
            if probe is not None and probe():
                return True
        except Exception:  # noqa: BLE001 - a private probe that fails means "unknown": stay in fp32
            continue
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision ``"auto"`` stands for on ``device`` ("bf16" or "fp32")."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"

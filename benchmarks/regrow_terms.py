"""Regrowth experiments that lost, kept reproducible through ``RegrowOptions(extra_terms=...)``.

Each term is called by the posterior encoder's fit with the step's
:class:`~vits_surgery.regrowth.fit.PosteriorStep` and returns a scalar added to its loss. The
measurements that retired them are in docs/benchmarks.md ("Organ regrowth"):

- :class:`KLTerm`: the VITS KL term (teacher alignment) on a posterior sample;
- :class:`WhitenedPriorTerm`: the posterior mean through the frozen flow against the teacher
  ``z_p``, in units of the prior's standard deviation;
- :class:`AlignmentTemperature`: the alignment loss with its logits divided by a temperature;
- ``flow_dtype=torch.bfloat16`` on the first two: their flow runs as a frozen bfloat16 copy
  (:func:`frozen_flow`);
- :func:`compiled_forward`: ``torch.compile`` of the posterior encoder's WaveNet stack, as a
  context around ``regrow``.

Usage::

    from regrow_terms import KLTerm
    vits_surgery.regrow(model, options=RegrowOptions(extra_terms=[KLTerm(0.5)]))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from vits_surgery.losses import kl_loss
from vits_surgery.regrowth.fit import alignment_loss

__all__ = ["KLTerm", "WhitenedPriorTerm", "AlignmentTemperature", "whitened_prior_loss", "frozen_flow",
           "compiled_forward"]


def whitened_prior_loss(z_p: torch.Tensor, z_p_teacher: torch.Tensor, logs_e: torch.Tensor,
                        mask: torch.Tensor) -> torch.Tensor:
    """Masked mean of ``0.5 * ((z_p - z_p_teacher) / sigma_p)^2``: the error of the flow output
    in units of the prior's standard deviation along the teacher path, which is the scale MAS
    compares tokens on.

    Args:
        z_p, z_p_teacher, logs_e: [B, C, S]; mask: [B, 1, S].
    """
    err = (z_p - z_p_teacher) * torch.exp(-logs_e)
    return (0.5 * err**2 * mask).sum() / (mask.sum() * z_p.shape[1])


def frozen_flow(model: Any, dtype: torch.dtype = torch.float32) -> Callable[..., torch.Tensor]:
    """``(z, mask, g=None) -> z_p`` through a frozen copy of ``model.flow`` in ``dtype``, weight
    norm folded, output float32. Gradients reach ``z`` (and ``g``), never the copy's weights;
    the model's own flow is neither changed nor shared. The copy is built fresh from the config
    and filled with the effective weights (rather than deep-copied), so it shares none of the
    flow's generated weight-norm classes or hooks, whether or not the flow's weight norm is folded.

    Args (of the returned function):
        z: [B, C, T]; mask: [B, 1, T]; g: [B, gin, 1] or None.
    """
    from vits_surgery.models.commons import remove_weight_norms
    from vits_surgery.models.flow import ResidualCouplingFlow

    cfg = model.config
    copy = ResidualCouplingFlow(cfg.flow, cfg.inter_channels, cfg.gin_channels)
    remove_weight_norms(copy)
    with torch.no_grad():
        # effective weights: ``getattr`` on a weight-norm layer computes g * v / ||v||
        for name, dst in copy.named_modules():
            src = model.flow.get_submodule(name)
            for attr, tensor in [*dst.named_parameters(recurse=False), *dst.named_buffers(recurse=False)]:
                value = getattr(src, attr)
                if value.shape != tensor.shape:
                    raise ValueError(f"flow copy: {name}.{attr} has shape {tuple(value.shape)} in the model, "
                                     f"{tuple(tensor.shape)} in the copy")
                tensor.copy_(value)
    device = next(model.flow.parameters()).device
    copy = copy.to(device=device, dtype=dtype).requires_grad_(False).eval()

    def run(z: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        g = None if g is None else g.to(dtype)
        return copy(z.to(dtype), mask.to(dtype), g=g).z.float()

    return run


@contextmanager
def compiled_forward(module: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Swap ``module.forward`` for its ``torch.compile`` version for as long as the context is
    open; parameters and hooks stay where they are."""
    if not enabled:
        yield
        return
    module.forward = torch.compile(module.forward)
    try:
        yield
    finally:
        del module.forward  # back to the class's forward


class _FlowChoice:
    """The flow a term runs: the model's own (float32), or a frozen copy in ``flow_dtype``."""

    flow_dtype: torch.dtype
    _copy: Any

    def _flow(self, step: Any, z: torch.Tensor) -> torch.Tensor:
        if self.flow_dtype == torch.float32:
            return step.flow(z)
        if self._copy is None:
            self._copy = frozen_flow(step.model, self.flow_dtype)
        return self._copy(z, step.post.mask, step.batch.g)


@dataclass
class KLTerm(_FlowChoice):
    """``weight`` times the VITS KL term (per element) of a posterior sample pushed through the
    frozen flow, against the prior along the teacher durations."""

    weight: float
    flow_dtype: torch.dtype = torch.float32
    needs_sample: bool = True
    _copy: Any = field(default=None, repr=False, compare=False)

    def __call__(self, step: Any) -> torch.Tensor:
        z_p = step.z_p if self.flow_dtype == torch.float32 else self._flow(step, step.post.z)
        b, post = step.batch, step.post
        return self.weight * kl_loss(z_p, post.logs_q, b.m_e, b.logs_e, post.mask) / b.z.shape[1]


@dataclass
class WhitenedPriorTerm(_FlowChoice):
    """``weight`` times the :func:`whitened_prior_loss` of the posterior mean."""

    weight: float
    flow_dtype: torch.dtype = torch.float32
    _copy: Any = field(default=None, repr=False, compare=False)

    def __call__(self, step: Any) -> torch.Tensor:
        with torch.no_grad():
            z_p_teacher = self._flow(step, step.batch.z)
        z_p_mean = self._flow(step, step.post.m_q)
        return self.weight * whitened_prior_loss(z_p_mean, z_p_teacher, step.batch.logs_e, step.post.mask)


@dataclass
class AlignmentTemperature:
    """Turns the library's alignment loss (weight ``weight``, logits at temperature 1) into the
    same loss at ``temperature``: it adds ``weight * (CE_T - CE_1)`` wherever the library's term
    is on (every step, or the final phase when ``final_phase_only``)."""

    weight: float
    temperature: float
    final_phase_only: bool = False
    needs_sample: bool = True

    def __call__(self, step: Any) -> torch.Tensor:
        if self.final_phase_only and step.phase != "alignment":
            return step.z_p.new_zeros(())
        b, mask = step.batch, step.post.mask
        return self.weight * (alignment_loss(step.z_p, b, mask, self.temperature) - alignment_loss(step.z_p, b, mask))

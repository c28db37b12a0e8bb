"""Monotonic rational-quadratic splines (Durkan et al. 2019, "Neural Spline Flows").

A spline with K bins maps ``[left, right]`` onto ``[bottom, top]`` through K+1 knots; each bin
is a ratio of two quadratics fixed by the bin width, height and the derivatives at its two
knots (paper eq. 4). Its inverse solves a quadratic (eqs. 6-8, in the numerically stable root
form) and both directions return ``log |dy/dx|`` (eq. 5; negated for the inverse).

:func:`unconstrained_rational_quadratic_spline` adds linear (identity) tails outside
``[-tail_bound, tail_bound]`` as in the paper's section 3.2 and VITS: the boundary derivatives
are fixed to 1 so the spline joins the tails smoothly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "SplineOutput",
    "rational_quadratic_spline",
    "unconstrained_rational_quadratic_spline",
    "MIN_BIN_WIDTH",
    "MIN_BIN_HEIGHT",
    "MIN_DERIVATIVE",
]

MIN_BIN_WIDTH = 1e-3
"""Smallest bin width as a fraction of the interval (VITS default)."""
MIN_BIN_HEIGHT = 1e-3
"""Smallest bin height as a fraction of the interval (VITS default)."""
MIN_DERIVATIVE = 1e-3
"""Smallest knot derivative (VITS default)."""


class SplineOutput(NamedTuple):
    """Transformed values and ``log |d outputs / d inputs|``, both shaped like the inputs."""

    outputs: torch.Tensor
    logabsdet: torch.Tensor


def _knots(unnormalized: torch.Tensor, low: float, high: float, min_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Knot positions ``[..., K+1]`` and bin sizes ``[..., K]`` on ``[low, high]``."""
    n_bins = unnormalized.shape[-1]
    if min_size * n_bins > 1.0:
        raise ValueError(f"minimal bin size {min_size} is too large for {n_bins} bins")
    fractions = min_size + (1.0 - min_size * n_bins) * torch.softmax(unnormalized, dim=-1)  # [..., K]
    knots = F.pad(torch.cumsum(fractions, dim=-1), (1, 0), value=0.0)  # [..., K+1]
    knots = (high - low) * knots + low
    # pin both ends exactly (the cumulative sum may miss ``high`` by a rounding error)
    knots = torch.cat([torch.full_like(knots[..., :1], low), knots[..., 1:-1], torch.full_like(knots[..., :1], high)], dim=-1)
    return knots, knots[..., 1:] - knots[..., :-1]


def _pick(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[..., index]`` element-wise: table [..., N], index [...] -> [...]."""
    return torch.gather(table, -1, index.unsqueeze(-1)).squeeze(-1)


def rational_quadratic_spline(
    inputs: torch.Tensor,
    unnormalized_widths: torch.Tensor,
    unnormalized_heights: torch.Tensor,
    unnormalized_derivatives: torch.Tensor,
    inverse: bool = False,
    left: float = 0.0,
    right: float = 1.0,
    bottom: float = 0.0,
    top: float = 1.0,
    min_bin_width: float = MIN_BIN_WIDTH,
    min_bin_height: float = MIN_BIN_HEIGHT,
    min_derivative: float = MIN_DERIVATIVE,
) -> SplineOutput:
    """Monotonic RQ spline from ``[left, right]`` to ``[bottom, top]`` (or back when ``inverse``).

    Args:
        inputs: [...] values inside the domain (``[bottom, top]`` when ``inverse``); values
            outside are clamped onto it.
        unnormalized_widths: [..., K] logits of the bin widths (softmax).
        unnormalized_heights: [..., K] logits of the bin heights (softmax).
        unnormalized_derivatives: [..., K+1] knot derivatives before ``softplus``.
        inverse: apply the inverse map.
        left, right, bottom, top: domain and range.
        min_bin_width, min_bin_height, min_derivative: lower bounds (fractions of the interval
            for widths and heights).

    Returns:
        :class:`SplineOutput` (outputs [...], logabsdet [...]); for the inverse, ``logabsdet``
        is ``log |dx/dy|`` (the negative of the forward one at the output).
    """
    n_bins = unnormalized_widths.shape[-1]
    if unnormalized_derivatives.shape[-1] != n_bins + 1:
        raise ValueError(
            f"unnormalized_derivatives must have K+1 = {n_bins + 1} entries, got {unnormalized_derivatives.shape[-1]}"
        )
    xk, widths = _knots(unnormalized_widths, left, right, min_bin_width)  # [..., K+1], [..., K]
    yk, heights = _knots(unnormalized_heights, bottom, top, min_bin_height)
    derivatives = min_derivative + F.softplus(unnormalized_derivatives)  # [..., K+1]

    knots = yk if inverse else xk
    low, high = (bottom, top) if inverse else (left, right)
    value = inputs.clamp(low, high)
    # bin k holds knots[k] <= value < knots[k+1]; the right end belongs to the last bin
    index = (value.unsqueeze(-1) >= knots[..., 1:-1]).sum(dim=-1)  # [...]

    x0, w, y0, h = _pick(xk, index), _pick(widths, index), _pick(yk, index), _pick(heights, index)
    d0, d1 = _pick(derivatives, index), _pick(derivatives[..., 1:], index)
    slope = h / w  # s_k
    curvature = d0 + d1 - 2.0 * slope

    if inverse:
        dy = value - y0
        a = h * (slope - d0) + dy * curvature
        b = h * d0 - dy * curvature
        c = -slope * dy
        disc = (b.pow(2) - 4.0 * a * c).clamp_min(0.0)
        xi = (2.0 * c) / (-b - torch.sqrt(disc))
        outputs = x0 + xi * w
    else:
        xi = (value - x0) / w
        outputs = None
    xi_1mxi = xi * (1.0 - xi)
    denominator = slope + curvature * xi_1mxi
    if not inverse:
        outputs = y0 + h * (slope * xi.pow(2) + d0 * xi_1mxi) / denominator
    numerator = slope.pow(2) * (d1 * xi.pow(2) + 2.0 * slope * xi_1mxi + d0 * (1.0 - xi).pow(2))
    logabsdet = torch.log(numerator) - 2.0 * torch.log(denominator)
    return SplineOutput(outputs, -logabsdet if inverse else logabsdet)


def unconstrained_rational_quadratic_spline(
    inputs: torch.Tensor,
    unnormalized_widths: torch.Tensor,
    unnormalized_heights: torch.Tensor,
    unnormalized_derivatives: torch.Tensor,
    inverse: bool = False,
    tails: str = "linear",
    tail_bound: float = 1.0,
    min_bin_width: float = MIN_BIN_WIDTH,
    min_bin_height: float = MIN_BIN_HEIGHT,
    min_derivative: float = MIN_DERIVATIVE,
) -> SplineOutput:
    """RQ spline on ``[-tail_bound, tail_bound]`` with identity tails outside.

    Args:
        inputs: [...] any real values.
        unnormalized_widths: [..., K].
        unnormalized_heights: [..., K].
        unnormalized_derivatives: [..., K-1] interior knot derivatives (the two boundary
            derivatives are fixed to 1 for the linear tails).
        inverse: apply the inverse map.
        tails: only ``"linear"`` is supported.
        tail_bound: B, half-width of the spline interval.
        min_bin_width, min_bin_height, min_derivative: see :func:`rational_quadratic_spline`.

    Returns:
        :class:`SplineOutput`; outside the interval outputs equal inputs and logabsdet is 0.
    """
    if tails != "linear":
        raise ValueError(f"only linear tails are supported, got tails={tails!r}")
    n_bins = unnormalized_widths.shape[-1]
    if unnormalized_derivatives.shape[-1] != n_bins - 1:
        raise ValueError(
            f"unnormalized_derivatives must have K-1 = {n_bins - 1} entries, got {unnormalized_derivatives.shape[-1]}"
        )
    # softplus(edge) + min_derivative == 1: slope 1 at the boundaries, matching the identity tails
    edge = math.log(math.expm1(1.0 - min_derivative))
    derivatives = F.pad(unnormalized_derivatives, (1, 1), value=edge)  # [..., K+1]
    inside = (inputs >= -tail_bound) & (inputs <= tail_bound)
    spline = rational_quadratic_spline(
        inputs, unnormalized_widths, unnormalized_heights, derivatives, inverse=inverse,
        left=-tail_bound, right=tail_bound, bottom=-tail_bound, top=tail_bound,
        min_bin_width=min_bin_width, min_bin_height=min_bin_height, min_derivative=min_derivative,
    )
    outputs = torch.where(inside, spline.outputs, inputs)
    logabsdet = torch.where(inside, spline.logabsdet, torch.zeros_like(spline.logabsdet))
    return SplineOutput(outputs, logabsdet)

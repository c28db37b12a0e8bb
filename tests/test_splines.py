"""Rational-quadratic spline with linear tails (models.splines)."""

from __future__ import annotations

import pytest
import torch

from vits_surgery.models.splines import rational_quadratic_spline, unconstrained_rational_quadratic_spline

BOUND = 5.0
K = 10


def _params(n: int, k: int = K, seed: int = 0, scale: float = 2.0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    widths = torch.randn(n, k, generator=gen) * scale
    heights = torch.randn(n, k, generator=gen) * scale
    derivatives = torch.randn(n, k - 1, generator=gen) * scale
    return widths, heights, derivatives


def _inputs(n: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen, dtype=torch.float64).float() * BOUND * 0.7
    edges = torch.tensor([-BOUND, BOUND, 0.0, -2 * BOUND, 2 * BOUND, BOUND + 1e-3, -BOUND - 1e-3])
    x[: len(edges)] = edges
    return x


@pytest.mark.parametrize(
    ("dtype", "scale", "atol"),
    # float64 with sharp splines (slopes down to ~1e-6); float32 with moderate ones, since a
    # flat bin amplifies float32 rounding of y by 1/slope in the inverse
    [(torch.float64, 2.0, 1e-8), (torch.float32, 0.5, 1e-4)],
)
def test_inverse_undoes_forward_and_negates_logabsdet(dtype: torch.dtype, scale: float, atol: float) -> None:
    x = _inputs(4000).to(dtype)
    params = [p.to(dtype) for p in _params(4000, scale=scale)]
    y, ld = unconstrained_rational_quadratic_spline(x, *params, tail_bound=BOUND)
    x_back, ld_inv = unconstrained_rational_quadratic_spline(y, *params, inverse=True, tail_bound=BOUND)
    torch.testing.assert_close(x_back, x, atol=atol, rtol=0)
    torch.testing.assert_close(ld_inv, -ld, atol=10 * atol, rtol=0)


def test_logabsdet_is_the_log_derivative() -> None:
    x = _inputs(500).double().requires_grad_(True)
    params = [p.double() for p in _params(500)]
    for inverse in (False, True):
        y, ld = unconstrained_rational_quadratic_spline(x, *params, inverse=inverse, tail_bound=BOUND)
        (dy_dx,) = torch.autograd.grad(y.sum(), x)  # elementwise map: the Jacobian is diagonal
        torch.testing.assert_close(ld, torch.log(dy_dx), atol=1e-8, rtol=1e-8)


def test_monotonic_and_maps_interval_onto_itself() -> None:
    n = 257
    x = torch.linspace(-BOUND, BOUND, n)
    widths, heights, derivatives = (p[:1].expand(n, -1) for p in _params(1, seed=3))
    y, _ = unconstrained_rational_quadratic_spline(x, widths, heights, derivatives, tail_bound=BOUND)
    assert torch.all(y[1:] > y[:-1])
    assert y[0].item() == pytest.approx(-BOUND, abs=1e-5)
    assert y[-1].item() == pytest.approx(BOUND, abs=1e-5)


def test_identity_tails_outside_interval() -> None:
    x = torch.tensor([-40.0, -BOUND - 0.5, BOUND + 0.01, 12.0])
    params = _params(4)
    for inverse in (False, True):
        y, ld = unconstrained_rational_quadratic_spline(x, *params, inverse=inverse, tail_bound=BOUND)
        assert torch.equal(y, x)
        assert torch.equal(ld, torch.zeros_like(x))


def test_slope_is_one_at_the_boundaries() -> None:
    """The linear tails join with slope 1 (boundary derivatives fixed to 1)."""
    x = torch.tensor([-BOUND, BOUND], dtype=torch.float64)
    params = [p.double() for p in _params(2, seed=4)]
    _, ld = unconstrained_rational_quadratic_spline(x, *params, tail_bound=BOUND)
    torch.testing.assert_close(ld, torch.zeros(2, dtype=torch.float64), atol=1e-8, rtol=0)


def test_single_bin_with_unit_end_slopes_is_identity() -> None:
    x = torch.linspace(-1.0, 1.0, 11)
    zeros = torch.zeros(11, 1)
    y, ld = unconstrained_rational_quadratic_spline(x, zeros, zeros, torch.zeros(11, 0), tail_bound=1.0)
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)
    torch.testing.assert_close(ld, torch.zeros(11), atol=1e-6, rtol=0)


def test_bounded_spline_maps_domain_to_range() -> None:
    x = torch.tensor([0.0, 2.0, 4.0])
    w, h, _ = _params(3, k=4, seed=5)
    d = torch.randn(3, 5)
    y, _ = rational_quadratic_spline(x, w, h, d, left=0.0, right=4.0, bottom=-1.0, top=1.0)
    assert y[0].item() == pytest.approx(-1.0, abs=1e-6)
    assert y[2].item() == pytest.approx(1.0, abs=1e-6)
    assert -1.0 < y[1].item() < 1.0


def test_gradients_are_finite_everywhere() -> None:
    x = _inputs(300).requires_grad_(True)
    params = [p.clone().requires_grad_(True) for p in _params(300)]
    for inverse in (False, True):
        y, ld = unconstrained_rational_quadratic_spline(x, *params, inverse=inverse, tail_bound=BOUND)
        grads = torch.autograd.grad((y + ld).sum(), [x, *params])
        assert all(torch.isfinite(g).all() for g in grads)


def test_rejects_wrong_parameter_counts() -> None:
    w, h, d = _params(3)
    with pytest.raises(ValueError, match="K-1"):
        unconstrained_rational_quadratic_spline(torch.zeros(3), w, h, torch.zeros(3, K), tail_bound=BOUND)
    with pytest.raises(ValueError, match="linear"):
        unconstrained_rational_quadratic_spline(torch.zeros(3), w, h, d, tails="circular")

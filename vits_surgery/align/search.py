"""Monotonic alignment search (MAS): the most likely monotonic text-to-frame alignment.

Semantics (VITS, Kim et al. 2021; glow-tts): for one item with ``t_x`` tokens and ``t_y`` mel
frames, a path assigns every frame ``j < t_y`` exactly one token ``i < t_x``; it starts at
``(0, 0)``, ends at ``(t_x - 1, t_y - 1)``, and from one frame to the next the token stays or
advances by one, so every token owns at least one frame. MAS returns the path with the
largest sum of ``log_p`` over its cells, computed with the forward recurrence

    Q[i, j] = log_p[i, j] + max(Q[i - 1, j - 1], Q[i, j - 1])

(out-of-range predecessors count as -1e9, ``Q[-1, -1] = 0``) in float32, then a backtrack from
``(t_x - 1, t_y - 1)``: at frame ``j`` on token ``i`` the path moves to token ``i - 1`` when
``i == j`` or ``Q[i, j - 1] < Q[i - 1, j - 1]``, so on equal values it stays on the same token.
This is the convention of the VITS / Coqui Cython kernels; every backend here returns exactly
the paths of PyPI ``monotonic-align`` (tested).

Backends:

- ``"numba"``: the default on CPU; JIT-compiled on first use and cached on disk.
- ``"cython"``: wraps PyPI ``monotonic-align`` (layout transposed for it).
- ``"torch"``: pure torch, vectorized over the batch with a loop over frames; runs on GPU.
- ``"auto"``: ``numba`` for CPU tensors (``cython``, then ``torch`` when numba is missing),
  ``torch`` for other devices.
"""

from __future__ import annotations

import importlib.util
import logging

import torch

from vits_surgery.align.torch_backend import maximum_path_torch

logger = logging.getLogger(__name__)

BACKENDS = ("numba", "cython", "torch")


def available_backends() -> tuple[str, ...]:
    """Backends whose dependencies are installed (without importing them).

    Returns:
        A subset of ``("numba", "cython", "torch")`` in that order; ``"torch"`` is always present.
    """
    found = []
    if importlib.util.find_spec("numba") is not None:
        found.append("numba")
    if importlib.util.find_spec("monotonic_align") is not None:
        found.append("cython")
    found.append("torch")
    return tuple(found)


def maximum_path(log_p: torch.Tensor, mask: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Most likely monotonic alignment of text tokens to mel frames.

    Args:
        log_p: float ``[B, T_text, T_mel]`` log-likelihood of frame j under token i.
        mask: ``[B, T_text, T_mel]`` float or bool, 1 / True on valid cells; the outer product
            of the text and mel sequence masks. Item lengths are read from it:
            ``t_x = mask[b, :, 0].sum()`` and ``t_y = mask[b, 0, :].sum()``.
        backend: ``"auto"``, ``"numba"``, ``"cython"`` or ``"torch"``.

    Returns:
        ``[B, T_text, T_mel]`` path with log_p's dtype and device: 1 where token i owns frame j,
        0 elsewhere (0 on the whole masked region). No gradient flows through it.

    Raises:
        TypeError: log_p or mask is not a tensor.
        ValueError: on a bad shape or backend name, or an item with fewer mel frames than
            tokens (no monotonic path exists).
        ImportError: the requested backend's package is not installed.
    """
    _check_inputs(log_p, mask)
    chosen = _resolve_backend(backend, log_p.device)
    t_x, t_y = _lengths(mask)
    _check_lengths(t_x, t_y)
    if log_p.numel() == 0:
        return torch.zeros_like(log_p, requires_grad=False)
    with torch.no_grad():
        if chosen == "numba":
            return _maximum_path_numba(log_p, t_x, t_y)
        if chosen == "cython":
            return _maximum_path_cython(log_p, mask)
        return maximum_path_torch(log_p, t_x.to(log_p.device), t_y.to(log_p.device))


def _check_inputs(log_p: torch.Tensor, mask: torch.Tensor) -> None:
    if not isinstance(log_p, torch.Tensor) or not isinstance(mask, torch.Tensor):
        raise TypeError(
            f"log_p and mask must be torch tensors, got {type(log_p).__name__} and {type(mask).__name__}."
        )
    if log_p.dim() != 3:
        raise ValueError(f"log_p must be [B, T_text, T_mel], got shape {tuple(log_p.shape)}.")
    if not log_p.is_floating_point():
        raise ValueError(f"log_p must be a floating-point tensor, got dtype {log_p.dtype}.")
    if mask.shape != log_p.shape:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match log_p shape {tuple(log_p.shape)}; "
            "both are [B, T_text, T_mel]."
        )


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in ("auto", *BACKENDS):
        raise ValueError(
            f"Unknown MAS backend {backend!r}; choose one of 'auto', {', '.join(map(repr, BACKENDS))}."
        )
    if backend == "auto":
        if device.type != "cpu":
            return "torch"
        for candidate, module in (("numba", "numba"), ("cython", "monotonic_align")):
            if importlib.util.find_spec(module) is not None:
                return candidate
        logger.warning(
            "Neither numba nor monotonic-align is installed; MAS falls back to the slow torch backend."
        )
        return "torch"
    if backend == "cython" and importlib.util.find_spec("monotonic_align") is None:
        raise ImportError(
            "The 'cython' MAS backend needs the monotonic-align package: pip install monotonic-align"
        )
    if backend == "numba" and importlib.util.find_spec("numba") is None:
        raise ImportError("The 'numba' MAS backend needs numba: pip install numba")
    return backend


def _lengths(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-item text and mel lengths as int64 CPU tensors ``[B]``."""
    n, t_text, t_mel = mask.shape
    if t_text == 0 or t_mel == 0:
        zeros = torch.zeros(n, dtype=torch.long)
        return zeros, zeros.clone()
    t_x = mask[:, :, 0].sum(1, dtype=torch.float64).round().long().cpu()
    t_y = mask[:, 0, :].sum(1, dtype=torch.float64).round().long().cpu()
    return t_x, t_y


def _check_lengths(t_x: torch.Tensor, t_y: torch.Tensor) -> None:
    bad = torch.nonzero((t_y < t_x) | ((t_x == 0) & (t_y > 0))).flatten()
    if bad.numel() == 0:
        return
    b = int(bad[0])
    tx, ty = int(t_x[b]), int(t_y[b])
    if tx == 0:
        raise ValueError(
            f"Batch item {b} has 0 text tokens but {ty} mel frames; MAS needs at least one token."
        )
    raise ValueError(
        f"Batch item {b} has {ty} mel frames but {tx} text tokens; monotonic alignment needs "
        "T_mel >= T_text (every token must own at least one frame)."
    )


def _maximum_path_numba(log_p: torch.Tensor, t_x: torch.Tensor, t_y: torch.Tensor) -> torch.Tensor:
    import numba

    from vits_surgery.align._numba_kernels import maximum_path_numba

    values = log_p.detach().to(device="cpu", dtype=torch.float32).contiguous()  # [B, T_text, T_mel]
    out = torch.empty(values.shape, dtype=torch.float32)  # one compiled signature only
    torch_threads = torch.get_num_threads()
    n_threads = max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n_threads)
    maximum_path_numba(values.numpy(), t_x.numpy(), t_y.numpy(), out.numpy(), n_threads)
    if torch.get_num_threads() != torch_threads:
        # numba's OpenMP layer starts its pool with omp_set_num_threads(all cores), which torch
        # shares: without this, torch.set_num_threads(1) is silently undone by the first MAS call
        torch.set_num_threads(torch_threads)
    return out.to(device=log_p.device, dtype=log_p.dtype)


def _maximum_path_cython(log_p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    import monotonic_align

    # monotonic-align works in the original VITS layout [B, T_mel, T_text] and needs C-contiguous
    # float32; given [B, T_text, T_mel] it silently returns a wrong path. It reads the lengths
    # from mask sums exactly as _lengths does, so the (transposed) caller's mask is passed on.
    values = log_p.detach().to(device="cpu", dtype=torch.float32).transpose(1, 2).contiguous()
    path = monotonic_align.maximum_path(values, mask.transpose(1, 2))  # [B, T_mel, T_text]
    return path.transpose(1, 2).contiguous().to(device=log_p.device, dtype=log_p.dtype)

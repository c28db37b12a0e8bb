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
import threading

import numpy as np
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
    t_x, t_y, valid = _lengths(mask, compiled=chosen == "numba")
    if not valid:
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


def _lengths(mask: torch.Tensor, compiled: bool = False) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Per-item text and mel lengths as int64 CPU tensors ``[B]``, and False when some item
    has no monotonic path (``_check_lengths`` then says which).

    ``compiled``: read them with the numba kernel when the mask allows it (a contiguous CPU
    float32 / bool tensor); the same sums, rounded the same way.
    """
    n, t_text, t_mel = mask.shape
    if t_text == 0 or t_mel == 0:
        zeros = torch.zeros(n, dtype=torch.long)
        return zeros, zeros.clone(), True
    if compiled and mask.device.type == "cpu" and mask.dtype in (torch.float32, torch.bool) and mask.is_contiguous():
        from vits_surgery.align import _numba_kernels as kernels

        t_x, t_y = torch.empty(n, dtype=torch.long), torch.empty(n, dtype=torch.long)
        valid = kernels.mask_lengths(mask.detach().numpy(), t_x.numpy(), t_y.numpy())
        return t_x, t_y, valid
    # two small copies, then NumPy: a few torch ops per call would cost more than the copies
    tokens = mask[:, :, 0].detach().to(device="cpu", dtype=torch.float64).numpy()
    frames = mask[:, 0, :].detach().to(device="cpu", dtype=torch.float64).numpy()
    t_x = np.rint(tokens.sum(1)).astype(np.int64)  # rint: round half to even, like torch.round
    t_y = np.rint(frames.sum(1)).astype(np.int64)
    return torch.from_numpy(t_x), torch.from_numpy(t_y), _bad_items(t_x, t_y).size == 0


def _bad_items(t_x: np.ndarray, t_y: np.ndarray) -> np.ndarray:
    """Indices of the items without a monotonic path: fewer frames than tokens, or frames and
    no token (the compiled ``mask_lengths`` applies the same rule)."""
    return np.flatnonzero((t_y < t_x) | ((t_x == 0) & (t_y > 0)))


def _check_lengths(t_x: torch.Tensor, t_y: torch.Tensor) -> None:
    tx, ty = t_x.numpy(), t_y.numpy()
    bad = _bad_items(tx, ty)
    if bad.size == 0:
        return
    b = int(bad[0])
    tx, ty = int(tx[b]), int(ty[b])
    if tx == 0:
        raise ValueError(
            f"Batch item {b} has 0 text tokens but {ty} mel frames; MAS needs at least one token."
        )
    raise ValueError(
        f"Batch item {b} has {ty} mel frames but {tx} text tokens; monotonic alignment needs "
        "T_mel >= T_text (every token must own at least one frame)."
    )


def _maximum_path_numba(log_p: torch.Tensor, t_x: torch.Tensor, t_y: torch.Tensor) -> torch.Tensor:
    from vits_surgery.align import _numba_kernels as kernels

    values = log_p.detach().to(device="cpu", dtype=torch.float32).contiguous()  # [B, T_text, T_mel]
    n, t_text, t_mel = values.shape
    out = _output_buffer(values.shape)  # float32: one compiled signature only
    torch_threads = torch.get_num_threads()
    tx, ty = t_x.numpy(), t_y.numpy()
    if min(torch_threads, n) == 1 or int((tx * (ty - tx + 1)).sum()) < SERIAL_BELOW_CELLS:
        # on the calling thread: no thread pool is started or woken
        scratch = _scratch(kernels, t_text, t_mel)
        kernels.maximum_path_serial(values.numpy(), tx, ty, out.numpy(), *scratch)
    else:
        import numba

        n_threads = max(1, min(torch_threads, n, numba.config.NUMBA_NUM_THREADS))
        numba.set_num_threads(n_threads)
        kernels.maximum_path_parallel(values.numpy(), tx, ty, out.numpy(), n_threads)
        if torch.get_num_threads() != torch_threads:
            # numba's OpenMP layer starts its pool with omp_set_num_threads(all cores), which
            # torch shares: without this, torch.set_num_threads(n) is silently undone
            torch.set_num_threads(torch_threads)
    return out.to(device=log_p.device, dtype=log_p.dtype)


# Below this many cells in the bands of valid paths (about 0.1 ms of one thread) a batch runs
# serially even when torch allows more threads: starting the workers would cost more.
SERIAL_BELOW_CELLS = 200_000
# Output buffers kept per thread: a training loop usually still holds the previous step's
# path when it asks for the next one, so two buffers take turns.
OUTPUT_POOL_SIZE = 2

_local = threading.local()


def _output_buffer(shape: torch.Size) -> torch.Tensor:
    """A float32 tensor of ``shape`` that no other live tensor shares memory with.

    A fresh 7.7 MB tensor per call costs page faults whenever the allocator has handed the
    previous one back to the operating system (1-4 ms at training sizes, in some processes and
    not others). So the storage of an earlier result is reused once nothing references it any
    more: no tensor, view or NumPy array of it is alive, which the storage's use count shows.
    The returned tensor is a plain tensor (not a view) on that storage, which may be larger
    than ``shape`` needs.
    """
    numel = shape.numel()
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:  # private torch API; without it, no reuse
        return torch.empty(shape, dtype=torch.float32)
    pool = getattr(_local, "outputs", None)
    if pool is None:
        pool = _local.outputs = []
    free = [k for k, (storage, idle) in enumerate(pool) if use_count(storage._cdata) == idle]
    fitting = [k for k in free if pool[k][0].nbytes() >= 4 * numel]
    if fitting:
        storage = pool[fitting[0]][0]
    else:
        # NumPy asks the kernel for transparent huge pages on large arrays (torch does not):
        # fewer TLB misses when the kernel writes the path
        storage = torch.from_numpy(np.empty(numel, np.float32)).untyped_storage()
        entry = (storage, use_count(storage._cdata))  # the pool's own references
        if free:  # a free buffer too small for this shape: replace it
            pool[free[0]] = entry
        elif len(pool) < OUTPUT_POOL_SIZE:
            pool.append(entry)
    return torch.empty(0, dtype=torch.float32).set_(storage, 0, shape)


def _scratch(kernels, t_text: int, t_mel: int) -> list:
    """The serial kernel's scratch buffers for this thread, grown to fit ``[*, t_text, t_mel]``."""
    key = (t_text, t_mel)
    cached = getattr(_local, "scratch", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    shapes = kernels.scratch_shapes(t_text, t_mel)
    if cached is not None:  # grow every dimension to the larger of old and new
        shapes = [
            (tuple(max(have, need) for have, need in zip(buf.shape, shape, strict=True)), dtype)
            for buf, (shape, dtype) in zip(cached[1], shapes, strict=True)
        ]
        if all(buf.shape == shape for buf, (shape, _) in zip(cached[1], shapes, strict=True)):
            _local.scratch = (key, cached[1])  # big enough already
            return cached[1]
    buffers = [np.zeros(shape, dtype) for shape, dtype in shapes]
    _local.scratch = (key, buffers)
    return buffers


def _maximum_path_cython(log_p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    import monotonic_align

    # monotonic-align works in the original VITS layout [B, T_mel, T_text] and needs C-contiguous
    # float32; given [B, T_text, T_mel] it silently returns a wrong path. It reads the lengths
    # from mask sums exactly as _lengths does, so the (transposed) caller's mask is passed on.
    values = log_p.detach().to(device="cpu", dtype=torch.float32).transpose(1, 2).contiguous()
    path = monotonic_align.maximum_path(values, mask.transpose(1, 2))  # [B, T_mel, T_text]
    return path.transpose(1, 2).contiguous().to(device=log_p.device, dtype=log_p.dtype)

"""Monotonic alignment search: path properties, optimality, backend parity, errors."""

from __future__ import annotations

import importlib.util
import itertools
import subprocess
import sys

import monotonic_align
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vits_surgery
from vits_surgery.align import available_backends, maximum_path

BACKENDS = ("numba", "cython", "torch")
SETTINGS = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])


def make_mask(t_x: list[int], t_y: list[int], t_text: int, t_mel: int) -> torch.Tensor:
    tx = torch.tensor(t_x)[:, None, None]
    ty = torch.tensor(t_y)[:, None, None]
    tokens = torch.arange(t_text)[None, :, None] < tx
    frames = torch.arange(t_mel)[None, None, :] < ty
    return (tokens & frames).float()  # [B, T_text, T_mel]


def reference_path(log_p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PyPI monotonic-align, fed its own [B, T_mel, T_text] layout."""
    path = monotonic_align.maximum_path(log_p.transpose(1, 2).contiguous(), mask.transpose(1, 2).contiguous())
    return path.transpose(1, 2)


@st.composite
def batches(draw, max_text: int, max_mel: int, integer_values: bool | None = None):
    """(log_p [B, T_text, T_mel] float32, mask, t_x list, t_y list)."""
    n = draw(st.integers(1, 3))
    t_x = [draw(st.integers(1, max_text)) for _ in range(n)]
    t_y = [draw(st.integers(tx, max(tx, max_mel))) for tx in t_x]
    t_text = max(t_x) + draw(st.integers(0, 2))
    t_mel = max(max(t_y), t_text) + draw(st.integers(0, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if integer_values is None:
        integer_values = draw(st.booleans())
    if integer_values:  # small integers: exact sums and many ties
        values = rng.integers(-3, 2, size=(n, t_text, t_mel)).astype(np.float32)
    else:
        values = rng.standard_normal((n, t_text, t_mel)).astype(np.float32)
    return torch.from_numpy(values), make_mask(t_x, t_y, t_text, t_mel), t_x, t_y


def check_path(path: torch.Tensor, t_x: list[int], t_y: list[int]) -> None:
    """Structural properties of a valid MAS output."""
    assert set(torch.unique(path).tolist()) <= {0.0, 1.0}
    for b, (tx, ty) in enumerate(zip(t_x, t_y, strict=True)):
        p = path[b]
        assert p[tx:].sum() == 0 and p[:, ty:].sum() == 0, "nonzero outside the mask"
        inner = p[:tx, :ty]
        assert torch.equal(inner.sum(0), torch.ones(ty)), "each frame must have exactly one token"
        assert (inner.sum(1) >= 1).all(), "each token must own at least one frame"
        owner = inner.argmax(0)
        assert owner[0] == 0 and owner[-1] == tx - 1
        steps = owner[1:] - owner[:-1]
        assert ((steps == 0) | (steps == 1)).all(), "tokens advance by 0 or 1 per frame"


def all_paths(t_x: int, t_y: int):
    """Every monotonic path as a list of token indices per frame."""
    for advances in itertools.combinations(range(1, t_y), t_x - 1):
        owner, token = [], 0
        for j in range(t_y):
            if j in advances:
                token += 1
            owner.append(token)
        yield owner


def path_score(values: np.ndarray, owner: list[int]) -> float:
    return float(sum(values[i, j] for j, i in enumerate(owner)))


@SETTINGS
@given(batches(max_text=6, max_mel=12))
def test_paths_are_valid_and_backends_match_monotonic_align(batch) -> None:
    log_p, mask, t_x, t_y = batch
    expected = reference_path(log_p, mask)
    for backend in BACKENDS:
        path = maximum_path(log_p, mask, backend=backend)
        check_path(path, t_x, t_y)
        assert torch.equal(path, expected), f"{backend} differs from monotonic-align"


@SETTINGS
@given(batches(max_text=4, max_mel=7))
def test_path_is_optimal_against_brute_force(batch) -> None:
    log_p, mask, t_x, t_y = batch
    paths = {backend: maximum_path(log_p, mask, backend=backend) for backend in BACKENDS}
    for b, (tx, ty) in enumerate(zip(t_x, t_y, strict=True)):
        values = log_p[b].double().numpy()
        scores = sorted((path_score(values, owner), owner) for owner in all_paths(tx, ty))
        best_score, best_owner = scores[-1]
        unique = len(scores) == 1 or best_score - scores[-2][0] > 1e-3
        for backend, path in paths.items():
            owner = path[b, :tx, :ty].argmax(0).tolist()
            assert path_score(values, owner) == pytest.approx(best_score, abs=1e-4), backend
            if unique:
                assert owner == best_owner, backend


@settings(deadline=None, max_examples=25)
@given(batches(max_text=40, max_mel=110, integer_values=False))
def test_backends_match_across_frame_tiles(batch) -> None:
    """Lengths beyond the numba kernel's 32-frame tiles, variable within the batch."""
    log_p, mask, t_x, t_y = batch
    expected = reference_path(log_p, mask)
    for backend in ("numba", "torch"):
        path = maximum_path(log_p, mask, backend=backend)
        assert torch.equal(path, expected), backend
    check_path(expected, t_x, t_y)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_prefer_staying_on_the_current_token(backend: str) -> None:
    # all paths score 0: walking back from the last cell, the path stays on the last token
    # until it is forced to step down, so earlier tokens get one frame each.
    t_x, t_y = [3, 5, 1], [9, 6, 4]
    mask = make_mask(t_x, t_y, 5, 9)
    path = maximum_path(torch.zeros(3, 5, 9), mask, backend=backend)
    for b, (tx, ty) in enumerate(zip(t_x, t_y, strict=True)):
        durations = path[b, :tx].sum(1).tolist()
        assert durations == [1.0] * (tx - 1) + [float(ty - tx + 1)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_realistic_batch_matches_reference(backend: str) -> None:
    g = torch.Generator().manual_seed(3)
    t_x, t_y = [57, 12, 80, 31], [300, 12, 233, 95]
    mask = make_mask(t_x, t_y, 80, 300)
    # peaked log-likelihoods like a trained prior: diagonal band plus noise
    diag = torch.arange(80)[:, None] / 80 - torch.arange(300)[None, :] / 300
    log_p = -50 * diag.abs()[None] + torch.randn(4, 80, 300, generator=g)
    path = maximum_path(log_p, mask, backend=backend)
    assert torch.equal(path, reference_path(log_p, mask))
    check_path(path, t_x, t_y)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dtype_layout_and_bool_mask(backend: str) -> None:
    g = torch.Generator().manual_seed(1)
    t_x, t_y = [7, 4], [20, 11]
    mask = make_mask(t_x, t_y, 7, 20)
    log_p = torch.randn(2, 7, 20, generator=g)
    expected = reference_path(log_p, mask)
    strided = log_p.transpose(1, 2).contiguous().transpose(1, 2)  # non-contiguous view
    for values, dtype in (
        (strided, torch.float32),
        (log_p.double(), torch.float64),
        (log_p.half(), torch.float16),
    ):
        path = maximum_path(values, mask.bool(), backend=backend)
        assert path.dtype == dtype and not path.requires_grad
        if dtype != torch.float16:  # half inputs are rounded, so their path may differ
            assert torch.equal(path.float(), expected)
        check_path(path.float(), t_x, t_y)


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_item_with_zero_lengths_gives_zeros(backend: str) -> None:
    mask = make_mask([3, 0], [5, 0], 3, 5)
    path = maximum_path(torch.randn(2, 3, 5), mask, backend=backend)
    assert path[1].abs().sum() == 0
    check_path(path[:1], [3], [5])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fewer_frames_than_tokens_is_an_error(backend: str) -> None:
    mask = make_mask([4, 6], [9, 5], 6, 9)
    with pytest.raises(ValueError, match=r"item 1 has 5 mel frames but 6 text tokens"):
        maximum_path(torch.randn(2, 6, 9), mask, backend=backend)
    # lengths come from the first column / row of the mask: here 0 tokens but 3 frames
    mask = torch.zeros(1, 2, 4)
    mask[0, 0, 1:] = 1
    with pytest.raises(ValueError, match=r"item 0 has 0 text tokens but 3 mel frames"):
        maximum_path(torch.randn(1, 2, 4), mask, backend=backend)


def test_bad_arguments_are_named() -> None:
    log_p = torch.randn(1, 3, 5)
    with pytest.raises(ValueError, match=r"mask shape \(1, 5, 3\) does not match log_p shape \(1, 3, 5\)"):
        maximum_path(log_p, torch.ones(1, 5, 3))
    with pytest.raises(ValueError, match=r"Unknown MAS backend 'fast'"):
        maximum_path(log_p, torch.ones(1, 3, 5), backend="fast")
    with pytest.raises(ValueError, match=r"\[B, T_text, T_mel\], got shape \(3, 5\)"):
        maximum_path(log_p[0], torch.ones(3, 5))


def test_cython_backend_names_the_package_when_missing(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "monotonic_align" else real(name, *a)
    )
    assert available_backends() == ("numba", "torch")
    with pytest.raises(ImportError, match="pip install monotonic-align"):
        maximum_path(torch.zeros(1, 2, 3), torch.ones(1, 2, 3), backend="cython")


def test_auto_backend_and_lazy_numba_import() -> None:
    assert available_backends() == BACKENDS
    code = (
        "import sys, vits_surgery.align, vits_surgery\n"
        "assert 'numba' not in sys.modules\n"
        "assert vits_surgery.maximum_path is vits_surgery.align.maximum_path\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    mask = make_mask([2], [4], 2, 4)
    log_p = torch.randn(1, 2, 4)
    assert torch.equal(vits_surgery.maximum_path(log_p, mask), maximum_path(log_p, mask, backend="numba"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_backend_on_cuda_matches_cpu() -> None:
    g = torch.Generator().manual_seed(2)
    t_x, t_y = [30, 11, 40], [150, 64, 90]
    mask = make_mask(t_x, t_y, 40, 150)
    log_p = torch.randn(3, 40, 150, generator=g)
    path = maximum_path(log_p.cuda(), mask.cuda())  # auto picks torch on CUDA
    assert path.device.type == "cuda"
    assert torch.equal(path.cpu(), reference_path(log_p, mask))


def test_numba_serial_and_parallel_kernels_match(monkeypatch) -> None:
    """One thread (or a small batch) runs the serial kernel, more threads the parallel one."""
    from vits_surgery.align import _numba_kernels, search

    g = torch.Generator().manual_seed(4)
    t_x, t_y = [57, 12, 80, 31, 80], [300, 12, 233, 95, 80]
    mask = make_mask(t_x, t_y, 80, 300)
    log_p = torch.randn(5, 80, 300, generator=g)
    expected = reference_path(log_p, mask)
    calls = []
    for name in ("maximum_path_serial", "maximum_path_parallel"):
        kernel = getattr(_numba_kernels, name)
        monkeypatch.setattr(_numba_kernels, name, lambda *a, _k=kernel, _n=name: calls.append(_n) or _k(*a))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(maximum_path(log_p, mask, backend="numba"), expected)
        torch.set_num_threads(2)
        assert torch.equal(maximum_path(log_p[:1], mask[:1], backend="numba"), expected[:1])  # batch of one
        monkeypatch.setattr(search, "SERIAL_BELOW_CELLS", 0)
        assert torch.equal(maximum_path(log_p, mask, backend="numba"), expected)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert calls == ["maximum_path_serial", "maximum_path_serial", "maximum_path_parallel"]


def test_numba_serial_path_starts_no_thread_pool() -> None:
    code = (
        "import torch\n"
        "from numba.np.ufunc import parallel\n"
        "from vits_surgery.align import maximum_path\n"
        "torch.set_num_threads(1)\n"
        "maximum_path(torch.randn(4, 20, 60), torch.ones(4, 20, 60), backend='numba')\n"
        "assert not parallel._is_initialized, 'the one-thread path started the thread pool'\n"
        "assert torch.get_num_threads() == 1\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_numba_output_buffers_are_never_shared_with_a_live_result() -> None:
    """Output memory is reused only once nothing (tensor, view, NumPy array) references it."""
    g = torch.Generator().manual_seed(5)
    t_x, t_y = [9, 14, 3], [40, 33, 3]
    mask = make_mask(t_x, t_y, 14, 40)
    inputs = [torch.randn(3, 14, 40, generator=g) for _ in range(4)]
    expected = [reference_path(x, mask) for x in inputs]

    def ptr(t: torch.Tensor) -> int:
        return t.untyped_storage().data_ptr()

    first = maximum_path(inputs[0], mask, backend="numba")
    second = maximum_path(inputs[1], mask, backend="numba")
    third = maximum_path(inputs[2], mask, backend="numba")
    assert len({ptr(first), ptr(second), ptr(third)}) == 3
    assert first._base is None  # a plain tensor, not a view of a pool buffer
    for path, want in zip((first, second, third), expected, strict=False):
        assert torch.equal(path, want)
    first.fill_(7.0)  # a caller may scribble on its result before dropping it
    kept_view, kept_array = second[1], third.numpy()
    old_first = ptr(first)
    del first, second, third
    fourth = maximum_path(inputs[3], mask, backend="numba")
    assert ptr(fourth) == old_first  # reused, and fully rewritten
    assert torch.equal(fourth, expected[3])
    assert torch.equal(kept_view, expected[1][1]) and np.array_equal(kept_array, expected[2].numpy())
    fifth = maximum_path(inputs[0], mask, backend="numba")
    assert ptr(fifth) not in (ptr(fourth), ptr(kept_view), kept_array.ctypes.data)
    assert torch.equal(fifth, expected[0]) and torch.equal(fourth, expected[3])


def test_numba_buffers_follow_changing_shapes() -> None:
    """Scratch and output buffers grow and shrink with the batch shape; results stay exact."""
    g = torch.Generator().manual_seed(6)
    for t_text, t_mel, n in ((5, 9, 1), (70, 260, 3), (17, 40, 2), (70, 261, 3), (1, 1, 4), (129, 300, 2)):
        t_x = [int(v) for v in torch.randint(1, t_text + 1, (n,), generator=g)]
        t_y = [int(torch.randint(tx, t_mel + 1, (1,), generator=g)) for tx in t_x]
        mask = make_mask(t_x, t_y, t_text, t_mel)
        log_p = torch.randn(n, t_text, t_mel, generator=g)
        path = maximum_path(log_p, mask, backend="numba")
        assert torch.equal(path, reference_path(log_p, mask)), (t_text, t_mel)
        check_path(path, t_x, t_y)


def test_compiled_lengths_equal_the_torch_sums() -> None:
    """The numba length reader gives the torch path's lengths (float32 and bool masks, and a
    float mask whose sums need rounding) and flags the same invalid items."""
    from vits_surgery.align.search import _lengths

    g = torch.Generator().manual_seed(3)
    t_x = torch.randint(0, 9, (6,), generator=g)
    t_y = t_x + torch.randint(0, 5, (6,), generator=g)
    t_y[t_x == 0] = 0
    mask = make_mask(t_x.tolist(), t_y.tolist(), 9, 14)
    soft = mask * 0.9 + 0.05 * torch.rand(mask.shape, generator=g)  # sums round to the same lengths
    bad = make_mask([3, 5], [4, 4], 5, 6)  # item 1: 4 frames for 5 tokens
    for m in (mask, mask.bool(), soft, bad, bad.bool()):
        fast_x, fast_y, fast_ok = _lengths(m, compiled=True)
        ref_x, ref_y, ref_ok = _lengths(m.double(), compiled=False)  # float64: the torch path
        assert torch.equal(fast_x, ref_x) and torch.equal(fast_y, ref_y) and fast_ok == ref_ok
    assert _lengths(bad, compiled=True)[2] is False and _lengths(mask, compiled=True)[2] is True

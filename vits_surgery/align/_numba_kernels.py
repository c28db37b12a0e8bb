"""Numba kernels for monotonic alignment search (imported lazily: this module imports numba).

Layout and algorithm: the input log-likelihood stays in the caller's ``[B, T_text, T_mel]``
layout. Each item is processed in tiles of ``FRAME_TILE`` mel frames: the tile is transposed
(8x8 blocks through vector registers) into a small frame-major buffer ``[FRAME_TILE, T_text]``
(L1-resident), then the DP runs one
frame at a time with the inner loop over tokens on contiguous memory, which the compiler
vectorizes. DP rows of even and odd frames go to two per-thread buffers (``[T_mel / 2,
T_text]`` each, cache-resident at training sizes): reading row ``j - 1`` and writing row ``j``
then touch different arrays, which is what lets the compiler vectorize. The backtrack reads
them; the path is written straight into the output as runs of zeros and ones per token.

Hot loops index with unsigned integers: numba then emits no negative-index wraparound code,
which would otherwise block vectorization.

The recurrence and the tie-breaking follow the VITS / Coqui convention (see ``search.py``).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

FRAME_TILE = 32
NEG = np.float32(-1e9)
ONE = np.uint64(1)


@njit(cache=True, nogil=True, inline="always")
def _dp_row(tile, k, prev, p, cur, c, j, t_x, t_y):  # pragma: no cover - compiled
    """DP of mel frame ``j >= 1``: ``cur[c]`` from ``prev[p]`` (frame ``j - 1``) and ``tile[k]``.

    Only the band of tokens a valid path can occupy at frame ``j`` is computed; cells outside
    it are never read.
    """
    lo = max(0, t_x - t_y + j)
    hi = min(t_x, j + 1)
    if lo == 0:  # token 0 can only stay on token 0
        v = prev[p, 0]
        cur[c, 0] = tile[k, 0] + (NEG if NEG > v else v)
        lo = 1
    if hi == j + 1:  # token j can only be reached diagonally
        v = prev[p, j - 1]
        cur[c, j] = tile[k, j] + (v if v > NEG else NEG)
        hi = j
    for i in range(np.uint64(lo), np.uint64(hi)):
        a = prev[p, i - ONE]
        b = prev[p, i]
        cur[c, i] = tile[k, i] + (a if a > b else b)


def _shuffle(builder, a, b, mask):
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), len(mask)), mask))


def _transpose_8x8(builder, rows):
    """Transpose eight ``<8 x float>`` rows with shuffles (unpack, shuffle, 128-bit lanes)."""
    pairs = []
    for r in range(0, 8, 2):
        pairs.append(_shuffle(builder, rows[r], rows[r + 1], [0, 8, 1, 9, 4, 12, 5, 13]))
        pairs.append(_shuffle(builder, rows[r], rows[r + 1], [2, 10, 3, 11, 6, 14, 7, 15]))
    quads = []  # quads[c] (c < 4): columns c | c + 4 of rows 0-3; quads[4 + c]: rows 4-7
    for base in (0, 4):
        for h in (0, 1):
            a, b = pairs[base + h], pairs[base + 2 + h]
            quads.append(_shuffle(builder, a, b, [0, 1, 8, 9, 4, 5, 12, 13]))
            quads.append(_shuffle(builder, a, b, [2, 3, 10, 11, 6, 7, 14, 15]))
    cols = [None] * 8
    for c in range(4):
        cols[c] = _shuffle(builder, quads[c], quads[4 + c], [0, 1, 2, 3, 8, 9, 10, 11])
        cols[c + 4] = _shuffle(builder, quads[c], quads[4 + c], [4, 5, 6, 7, 12, 13, 14, 15])
    return cols


@intrinsic
def _transpose_block(typingctx, src, src_start, src_stride, dst, dst_start, dst_stride):
    """dst.flat[dst_start + c * dst_stride + r] = src.flat[src_start + r * src_stride + c], r, c < 8.

    Both arrays float32 and C-contiguous; the caller keeps every index in bounds (no checks).
    LLVM lowers the shuffles to the best the target has (AVX, SSE or NEON).
    """
    for arr in (src, dst):
        if not (isinstance(arr, types.Array) and arr.dtype == types.float32 and arr.layout == "C"):
            return None
    sig = types.void(src, types.intp, types.intp, dst, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        vec = ir.VectorType(ir.FloatType(), 8)
        src_data = context.make_array(signature.args[0])(context, builder, args[0]).data
        dst_data = context.make_array(signature.args[3])(context, builder, args[3]).data
        rows = []
        for r in range(8):
            offset = builder.add(args[1], builder.mul(args[2], ir.Constant(args[2].type, r)))
            ptr = builder.bitcast(builder.gep(src_data, [offset]), vec.as_pointer())
            rows.append(builder.load(ptr, align=4))
        for c, col in enumerate(_transpose_8x8(builder, rows)):
            offset = builder.add(args[4], builder.mul(args[5], ir.Constant(args[5].type, c)))
            builder.store(col, builder.bitcast(builder.gep(dst_data, [offset]), vec.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True)
def _load_tile(log_p, b, tile, j0, kk, lo, hi):  # pragma: no cover - compiled
    """tile[k, i] = log_p[b, i, j0 + k] for tokens ``lo <= i < hi`` and ``k < kk``.

    8x8 blocks go through registers (``_transpose_block``); the ragged edges are scalar.
    """
    t_text = log_p.shape[1]
    t_mel = log_p.shape[2]
    width = tile.shape[1]
    k_full = kk - kk % 8
    i_full = lo + (hi - lo) - (hi - lo) % 8
    for k0 in range(0, k_full, 8):
        for i0 in range(lo, i_full, 8):
            _transpose_block(log_p, (b * t_text + i0) * t_mel + j0 + k0, t_mel, tile, k0 * width + i0, width)
    j0u = np.uint64(j0)
    for i in range(np.uint64(i_full), np.uint64(hi)):
        for k in range(np.uint64(kk)):
            tile[k, i] = log_p[b, i, j0u + k]
    for i in range(np.uint64(lo), np.uint64(i_full)):
        for k in range(np.uint64(k_full), np.uint64(kk)):
            tile[k, i] = log_p[b, i, j0u + k]


@njit(cache=True, nogil=True)
def _forward(log_p, b, t_x, t_y, tile, even, odd):  # pragma: no cover - compiled
    """Forward DP of item ``b``; frame ``j`` lands in ``even[j // 2]`` or ``odd[j // 2]``."""
    for j0 in range(0, t_y, FRAME_TILE):
        kk = min(FRAME_TILE, t_y - j0)
        _load_tile(log_p, b, tile, j0, kk, max(0, t_x - t_y + j0), min(t_x, j0 + kk))
        for k in range(kk):
            j = j0 + k
            r = j >> 1
            if j == 0:  # Q[0, 0] = log_p[0, 0] + max(0, -1e9)
                even[0, 0] = tile[k, 0] + np.float32(0.0)
            elif j & 1:
                _dp_row(tile, k, even, r, odd, r, j, t_x, t_y)
            else:
                _dp_row(tile, k, odd, r - 1, even, r, j, t_x, t_y)


@njit(cache=True, nogil=True)
def _backtrack(even, odd, t_x, t_y, starts):  # pragma: no cover - compiled
    """starts[i] = first frame of token i (``i < t_x``), starts[t_x] = t_y.

    At frame ``j`` on token ``idx`` step down when ``idx == j`` or ``Q[idx, j-1] < Q[idx-1, j-1]``.
    """
    idx = t_x - 1
    for j in range(t_y - 1, 0, -1):
        if idx == 0:
            break
        r = (j - 1) >> 1
        if (j - 1) & 1:
            move = idx == j or odd[r, idx] < odd[r, idx - 1]
        else:
            move = idx == j or even[r, idx] < even[r, idx - 1]
        if move:
            starts[idx] = j
            idx -= 1
    starts[0] = 0
    starts[t_x] = t_y


@njit(cache=True, nogil=True)
def _write_path(out, b, t_x, starts):  # pragma: no cover - compiled
    """out[b, i, starts[i]:starts[i+1]] = 1, every other cell of item b = 0."""
    t_text = out.shape[1]
    t_mel = np.uint64(out.shape[2])
    for i in range(t_text):
        s = np.uint64(0)
        e = np.uint64(0)
        if i < t_x:
            s = np.uint64(starts[i])
            e = np.uint64(starts[i + 1])
        for j in range(s):
            out[b, i, j] = 0.0
        for j in range(s, e):
            out[b, i, j] = 1.0
        for j in range(e, t_mel):
            out[b, i, j] = 0.0


@njit(cache=True, nogil=True)
def _item(log_p, b, t_x, t_y, tile, even, odd, starts, out):  # pragma: no cover - compiled
    if t_x > 0:
        _forward(log_p, b, t_x, t_y, tile, even, odd)
        _backtrack(even, odd, t_x, t_y, starts)
    _write_path(out, b, t_x, starts)


@njit(cache=True, nogil=True)
def _schedule(t_x, t_y, n_chunks):  # pragma: no cover - compiled
    """Longest-processing-time split of the batch into ``n_chunks`` balanced chunks.

    Returns ``(items, bounds)``: chunk ``c`` processes ``items[bounds[c]:bounds[c + 1]]``.
    """
    n = t_x.shape[0]
    cost = t_x.astype(np.float64) * t_y + t_y
    order = np.argsort(-cost)
    load = np.zeros(n_chunks)
    owner = np.empty(n, np.int64)
    counts = np.zeros(n_chunks + 1, np.int64)
    for r in range(n):
        b = order[r]
        c = np.argmin(load)
        owner[b] = c
        load[c] += cost[b]
        counts[c + 1] += 1
    bounds = np.cumsum(counts)
    fill = bounds[:-1].copy()
    items = np.empty(n, np.int64)
    for r in range(n):
        b = order[r]
        items[fill[owner[b]]] = b
        fill[owner[b]] += 1
    return items, bounds


@njit(cache=True, parallel=True, nogil=True)
def maximum_path_numba(log_p, t_x, t_y, out, n_threads):  # pragma: no cover - compiled
    """Batched MAS.

    Args:
        log_p: float32 C-contiguous ``[B, T_text, T_mel]``.
        t_x: int64 ``[B]`` text lengths (validated by the caller: ``t_x <= t_y``,
            ``t_x == 0`` only with ``t_y == 0``).
        t_y: int64 ``[B]`` mel lengths.
        out: float32 C-contiguous ``[B, T_text, T_mel]``, fully overwritten.
        n_threads: number of chunks the batch is split into (one per thread).
    """
    n = log_p.shape[0]
    width = max(log_p.shape[1], 1)
    n_chunks = max(1, min(n_threads, n))
    items, bounds = _schedule(t_x, t_y, n_chunks)
    for c in prange(n_chunks):
        rows = 1
        for r in range(bounds[c], bounds[c + 1]):
            rows = max(rows, t_y[items[r]])
        tile = np.empty((FRAME_TILE, width), np.float32)
        even = np.empty(((rows + 1) // 2, width), np.float32)
        odd = np.empty((rows // 2 + 1, width), np.float32)
        starts = np.zeros(width + 1, np.int64)
        for r in range(bounds[c], bounds[c + 1]):
            b = items[r]
            _item(log_p, b, t_x[b], t_y[b], tile, even, odd, starts, out)

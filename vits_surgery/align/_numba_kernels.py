"""Numba kernels for monotonic alignment search (imported lazily: this module imports numba).

Layout and algorithm: the input log-likelihood stays in the caller's ``[B, T_text, T_mel]``
layout. Each item is processed in tiles of ``FRAME_TILE`` mel frames: the tile is transposed
(8x8 blocks through vector registers) into a small frame-major buffer ``[FRAME_TILE, T_text]``
(L1-resident), then the DP runs one frame at a time over the tokens, eight per step in vector
registers (``_dp_frame_blocks``). Only two DP rows exist (``even`` / ``odd`` frames); what the
backtrack needs is one bit per cell, ``Q[i, j - 1] < Q[i - 1, j - 1]``, packed eight tokens to
a byte (``T_mel * T_text / 8`` bytes per item, L1 / L2-resident). The backtrack reads the bits
and the path is written straight into the output as runs of zeros and ones per token.

``maximum_path_serial`` runs on the calling thread in caller-provided scratch (no thread pool,
no allocation); ``maximum_path_parallel`` splits the batch over threads (``prange``).

The recurrence and the tie-breaking follow the VITS / Coqui convention (see ``search.py``).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

FRAME_TILE = 32
NEG = np.float32(-1e9)


@intrinsic
def _dp_frame_blocks(typingctx, tile, tile_start, prev, cur, bits, bits_start, lo, hi):
    """The token loop of ``_dp_frame`` in vector registers, eight tokens per step.

    For ``i = lo, lo + 8, ... < hi``: ``b = prev[i + 1 : i + 9]`` (``Q[i, j - 1]``), ``a`` the
    same shifted up by one token (``Q[i - 1, j - 1]``: ``prev[i]`` and ``b[:7]``, a register
    shuffle: loading ``prev[i : i + 8]`` would straddle two of the previous frame's stores,
    which the CPU cannot forward), ``cur[i + 1 : i + 9] = tile.flat[tile_start + i : +8] +
    (a if a > b else b)``, and the eight tests ``b < a`` (the same as ``a > b``) packed into
    the byte ``bits.flat[bits_start + i // 8]``, token ``i + r`` in bit ``r``.

    float32 / uint8 C-contiguous arrays; ``lo`` and ``hi`` multiples of 8, every index in
    bounds (no checks).
    """
    for arr, dtype in (
        (tile, types.float32),
        (prev, types.float32),
        (cur, types.float32),
        (bits, types.uint8),
    ):
        if not (isinstance(arr, types.Array) and arr.dtype == dtype and arr.layout == "C"):
            return None
    sig = types.void(tile, types.intp, prev, cur, bits, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        vec = ir.VectorType(ir.FloatType(), 8)
        _, tile_start, _, _, _, bits_start, lo, hi = args
        tile_data, prev_data, cur_data, bits_data = (
            context.make_array(signature.args[k])(context, builder, args[k]).data for k in (0, 2, 3, 4)
        )
        one = ir.Constant(lo.type, 1)
        carry = cgutils.alloca_once(builder, ir.FloatType())  # Q[i - 1, j - 1]
        builder.store(builder.load(builder.gep(prev_data, [lo])), carry)

        def vector_at(base, offset):
            return builder.bitcast(builder.gep(base, [offset]), vec.as_pointer())

        with cgutils.for_range_slice(builder, lo, hi, ir.Constant(lo.type, 8)) as (i, _):
            i_next = builder.add(i, one)
            b = builder.load(vector_at(prev_data, i_next), align=4)
            first = builder.insert_element(
                ir.Constant(vec, None), builder.load(carry), ir.Constant(ir.IntType(32), 0)
            )
            a = builder.shuffle_vector(
                first, b, ir.Constant(ir.VectorType(ir.IntType(32), 8), [0, 8, 9, 10, 11, 12, 13, 14])
            )
            builder.store(builder.extract_element(b, ir.Constant(ir.IntType(32), 7)), carry)
            t = builder.load(vector_at(tile_data, builder.add(tile_start, i)), align=4)
            greater = builder.fcmp_ordered(">", a, b)
            builder.store(
                builder.fadd(t, builder.select(greater, a, b)), vector_at(cur_data, i_next), align=4
            )
            byte_at = builder.gep(
                bits_data, [builder.add(bits_start, builder.ashr(i, ir.Constant(i.type, 3)))]
            )
            builder.store(builder.bitcast(greater, ir.IntType(8)), byte_at)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def _dp_frame(tile, k, prev, cur, bits, j, lo, hi):  # pragma: no cover - compiled
    """DP of mel frame ``j >= 1``: ``cur`` (frame ``j``) from ``prev`` (frame ``j - 1``) and ``tile[k]``.

    Rows are offset by one: ``row[i + 1] = Q[i, .]`` and ``row[0] = -1e9`` (token -1), so
    token 0 needs no special case. ``lo <= i < hi`` is the band of tokens a valid path can
    occupy at frame ``j``, widened to whole 8-token blocks (``lo`` and ``hi`` are multiples of
    8): the extra cells hold values no in-band cell reads (the band only moves up). The one
    exception, token ``j`` (reached only diagonally), reads ``Q[j, j - 1]``, which the caller
    sets to -1e9 after each frame. Bit ``i % 8`` of ``bits[j, i // 8]`` is the backtrack's test
    ``Q[i, j - 1] < Q[i - 1, j - 1]``.
    """
    _dp_frame_blocks(tile, k * tile.shape[1], prev, cur, bits, j * bits.shape[1], lo, hi)


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
def _forward(log_p, b, t_x, t_y, tile, even, odd, bits):  # pragma: no cover - compiled
    """Forward DP of item ``b``: the DP row of even frames lives in ``even``, of odd ones in
    ``odd`` (layout in ``_dp_frame``); the backtrack's tests go to ``bits``."""
    even[:] = NEG
    odd[:] = NEG
    for j0 in range(0, t_y, FRAME_TILE):
        kk = min(FRAME_TILE, t_y - j0)
        _load_tile(log_p, b, tile, j0, kk, max(0, t_x - t_y + j0), min(t_x, j0 + kk))
        for k in range(kk):
            j = j0 + k
            lo = max(0, t_x - t_y + j) & -8
            hi = min(t_x, j + 1)
            hi = lo + ((hi - lo + 7) & -8)
            if j == 0:  # Q[0, 0] = log_p[0, 0] + max(0, -1e9)
                even[1] = tile[k, 0] + np.float32(0.0)
            elif j & 1:
                _dp_frame(tile, k, even, odd, bits, j, lo, hi)
                if j + 1 < t_x:
                    odd[j + 2] = NEG  # Q[j + 1, j]: above the diagonal
            else:
                _dp_frame(tile, k, odd, even, bits, j, lo, hi)
                if j + 1 < t_x:
                    even[j + 2] = NEG


@njit(cache=True, nogil=True)
def _backtrack(bits, t_x, t_y, starts):  # pragma: no cover - compiled
    """starts[i] = first frame of token i (``i < t_x``), starts[t_x] = t_y.

    At frame ``j`` on token ``idx`` step down when ``idx == j`` or ``Q[idx, j-1] < Q[idx-1, j-1]``
    (bit ``idx % 8`` of ``bits[j, idx // 8]``, see ``_dp_frame``).
    """
    idx = t_x - 1
    for j in range(t_y - 1, 0, -1):
        if idx == 0:
            break
        if idx == j or (bits[j, idx >> 3] >> (idx & 7)) & 1:
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
def _item(log_p, b, t_x, t_y, tile, even, odd, bits, starts, out):  # pragma: no cover - compiled
    if t_x > 0:
        _forward(log_p, b, t_x, t_y, tile, even, odd, bits)
        _backtrack(bits, t_x, t_y, starts)
    _write_path(out, b, t_x, starts)


@njit(cache=True, nogil=True)
def mask_lengths(mask, t_x, t_y):  # pragma: no cover - compiled
    """t_x[b] = rint(sum_i mask[b, i, 0]), t_y[b] = rint(sum_j mask[b, 0, j]) (float64 sums);
    returns whether every item has a monotonic path (``t_x <= t_y``, ``t_x == 0`` only with
    ``t_y == 0``).

    ``mask`` C-contiguous ``[B, T_text, T_mel]`` with ``T_text, T_mel >= 1``. Reading the
    strided column here, in one compiled loop, costs a fifth of the torch copies it replaces
    on a cold cache (the column's cells lie one row apart, each on its own cache line).
    """
    valid = True
    for b in range(mask.shape[0]):
        sx = 0.0
        for i in range(mask.shape[1]):
            sx += mask[b, i, 0]
        sy = 0.0
        for j in range(mask.shape[2]):
            sy += mask[b, 0, j]
        t_x[b] = np.int64(np.rint(sx))
        t_y[b] = np.int64(np.rint(sy))
        if t_y[b] < t_x[b] or (t_x[b] == 0 and t_y[b] > 0):
            valid = False
    return valid


def scratch_shapes(t_text, t_mel):
    """Shapes (and dtypes) of the per-thread scratch buffers for a ``[*, t_text, t_mel]`` batch:
    ``tile``, the ``even`` / ``odd`` DP rows, ``bits``, ``starts``."""
    width = max(8, (t_text + 7) & -8)  # whole 8-token blocks
    return (
        ((FRAME_TILE, width), np.float32),
        ((width + 1,), np.float32),
        ((width + 1,), np.float32),
        ((max(t_mel, 1), width // 8), np.uint8),
        ((t_text + 1,), np.int64),
    )


@njit(cache=True, nogil=True)
def maximum_path_serial(log_p, t_x, t_y, out, tile, even, odd, bits, starts):  # pragma: no cover
    """Batched MAS on the calling thread, in caller-provided scratch (``scratch_shapes``).

    Args:
        log_p: float32 C-contiguous ``[B, T_text, T_mel]``.
        t_x: int64 ``[B]`` text lengths (validated by the caller: ``t_x <= t_y``,
            ``t_x == 0`` only with ``t_y == 0``).
        t_y: int64 ``[B]`` mel lengths.
        out: float32 C-contiguous ``[B, T_text, T_mel]``, fully overwritten.
        tile, even, odd, bits, starts: scratch, contents ignored and overwritten.
    """
    tile[:] = 0.0  # cells outside the loaded band are read (never used): keep them finite
    for b in range(log_p.shape[0]):
        _item(log_p, b, t_x[b], t_y[b], tile, even, odd, bits, starts, out)


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
def maximum_path_parallel(log_p, t_x, t_y, out, n_threads):  # pragma: no cover - compiled
    """Batched MAS split into ``n_threads`` chunks run in parallel (arguments as
    ``maximum_path_serial``; each chunk allocates its own scratch)."""
    n = log_p.shape[0]
    width = max(8, (log_p.shape[1] + 7) & -8)  # as in scratch_shapes
    n_chunks = max(1, min(n_threads, n))
    items, bounds = _schedule(t_x, t_y, n_chunks)
    for c in prange(n_chunks):
        rows = 1
        for r in range(bounds[c], bounds[c + 1]):
            rows = max(rows, t_y[items[r]])
        tile = np.zeros((FRAME_TILE, width), np.float32)
        even = np.empty(width + 1, np.float32)
        odd = np.empty(width + 1, np.float32)
        bits = np.empty((rows, width // 8), np.uint8)
        starts = np.zeros(log_p.shape[1] + 1, np.int64)
        for r in range(bounds[c], bounds[c + 1]):
            b = items[r]
            _item(log_p, b, t_x[b], t_y[b], tile, even, odd, bits, starts, out)

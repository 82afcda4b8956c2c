"""The scanner's CPU loops compiled with numba: the exact re-check of (query row, train row) pairs, and the lane
gathers of the tile filters.

numba comes with umap-learn (a fixed dependency). The kernel reads float16 rows as their uint16 bits, widens them
to float32 exactly and sums the exact float32 products in float64, as `exact.exact_dots` does with torch (see its
docstring: every partial sum is exact, so the summation order, which `reassoc` lets LLVM vectorise, cannot change
the result). It releases the GIL, so the scanner's worker threads re-check in parallel.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import overload

# float16 bits moved into a float32's fields read as 2^-112 times the value (normal and subnormal alike); the
# scale is a power of two, so the float32 multiplication that undoes it is exact.
_F16_SCALE = np.float32(2.0**112)


@numba.njit(nogil=True, cache=True)
def _widen(bits: np.ndarray, out_bits: np.ndarray, out: np.ndarray) -> None:
    """float16 values given as uint16 bits -> exact float32 values in `out` (out_bits is out's uint32 view)."""
    for t in range(bits.shape[0]):
        h = np.uint32(bits[t])
        e = h & np.uint32(0x7FFF)
        w = ((h & np.uint32(0x8000)) << np.uint32(16)) | (e << np.uint32(13))
        if e >= np.uint32(0x7C00):  # inf and NaN keep an all-ones exponent
            w |= np.uint32(0x7F800000)
        out_bits[t] = w
    for t in range(bits.shape[0]):
        out[t] = out[t] * _F16_SCALE


@numba.njit(nogil=True, cache=True, fastmath={"reassoc"})
def _pair_dots(q_bits: np.ndarray, qi: np.ndarray, x_bits: np.ndarray, xj: np.ndarray, out: np.ndarray) -> None:
    d = q_bits.shape[1]
    a_bits, b_bits = np.empty(d, np.uint32), np.empty(d, np.uint32)
    a, b = a_bits.view(np.float32), b_bits.view(np.float32)
    last = -1
    for n in range(qi.shape[0]):
        _widen(q_bits[qi[n]], a_bits, a)
        if xj[n] != last:  # pairs in column order share their train row: widen it once
            last = xj[n]
            _widen(x_bits[last], b_bits, b)
        acc = 0.0
        for t in range(d):
            acc += np.float64(a[t] * b[t])  # an exact float32 product, added exactly
        out[n] = np.float32(acc)


def pair_dots(q_bits: np.ndarray, qi: np.ndarray, x_bits: np.ndarray, xj: np.ndarray) -> np.ndarray:
    """float32(float64(q[qi[n]]) . float64(x[xj[n]])) for every n.

    Args:
        q_bits, x_bits: (n_q, d) and (n_x, d) float16 rows viewed as uint16.
        qi, xj: (n,) int64 row indices.

    Returns:
        (n,) float32.

    Raises:
        IndexError: an index out of range (the compiled loop does not check them).
    """
    out = np.empty(len(qi), np.float32)
    if len(qi) == 0:
        return out
    for name, idx, rows in (("qi", qi, len(q_bits)), ("xj", xj, len(x_bits))):
        if idx.min() < 0 or idx.max() >= rows:
            raise IndexError(f"{name} holds rows outside 0..{rows - 1} (min {idx.min()}, max {idx.max()})")
    _pair_dots(q_bits, qi, x_bits, xj, out)
    return out


def _value(t, i, j):
    """t[i, j] as float32: a float32 tile's entry, or a bfloat16 tile's (given as uint16 bits) widened exactly."""


@overload(_value, inline="always")
def _value_impl(t, i, j):
    if t.dtype == types.uint16:
        return lambda t, i, j: np.uint32(np.uint32(t[i, j]) << np.uint32(16)).view(np.float32)
    return lambda t, i, j: t[i, j]


@numba.njit(nogil=True, cache=True)
def _lane_hits(t, b, j, thr_pair, thr_row, bucket):
    n = t.shape[0]
    lane = np.empty(bucket, np.float32)
    at = np.empty(len(b) * bucket, np.int64)
    rows = np.empty(len(b) * bucket, np.int64)
    vals = np.empty(len(b) * bucket, np.float32)
    k = 0
    for p in range(len(b)):
        lo, col = b[p] * bucket, j[p]
        count = min(bucket, n - lo)
        for lane_i in range(count):  # independent loads first: the misses overlap
            lane[lane_i] = _value(t, lo + lane_i, col)
        for lane_i in range(count):  # then a counter, not a branch, keeps the lanes that pass
            at[k], rows[k], vals[k] = p, lo + lane_i, lane[lane_i]
            k += lane[lane_i] >= max(thr_pair[p], thr_row[lo + lane_i])
    return at[:k], rows[:k], vals[:k]


def lane_hits(t: np.ndarray, b: np.ndarray, j: np.ndarray, thr_pair: np.ndarray, thr_row: np.ndarray,
              bucket: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The entries t[b[p] * bucket + l, j[p]] (l < bucket, row < len(t)) at or above max(thr_pair[p], thr_row[row]).

    The filters of tiles.py gather the BUCKET lanes under (bucket, column) pairs of a tile (or of its bucket maxima)
    and keep those that pass: torch builds index tensors for that, this loop does it in one pass.

    Args:
        t: (n, m) float32, or bfloat16 as uint16 bits (C-contiguous).
        b, j: (p,) int64 bucket and column of each pair, in range.
        thr_pair: (p,) float32 threshold per pair (-inf where unused); thr_row: (n,) float32 per row.

    Returns:
        (pair index, row, value as float32): int64, int64, float32, in pair then lane order.
    """
    return _lane_hits(t, b, j, thr_pair, thr_row, bucket)

"""The CPU exact re-check compiled with numba: canonical similarities of (query row, train row) pairs.

numba comes with umap-learn (a fixed dependency). The kernel reads float16 rows as their uint16 bits, widens them
to float32 exactly and sums the exact float32 products in float64, as `exact.exact_dots` does with torch (see its
docstring: every partial sum is exact, so the summation order, which `reassoc` lets LLVM vectorise, cannot change
the result). It releases the GIL, so the scanner's worker threads re-check in parallel.
"""
from __future__ import annotations

import numba
import numpy as np

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


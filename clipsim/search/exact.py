"""Exact similarity kernels: a low-precision screen with a proven error bound, re-checked in float64.

The canonical similarity of two stored (float16) embeddings is their dot product computed in float64 and
rounded to float32: `c(q, x) = float32(float64(q) . float64(x))`. Every search result equals that value,
whatever precision screened it, so results match `float32(Q64 @ X64.T)` brute force exactly.
"""
from __future__ import annotations

import numpy as np
import torch

PRECISIONS = ("fp32", "bf16", "fp16")
DOT_KERNELS = ("auto", "compiled", "torch")  # see exact_dots
COMPILED_MIN_PAIRS = 1024  # 'auto' re-checks smaller CPU calls with torch: < 1 ms each, no numba import (dot_kernel)
COMPILED_MIN_TILE = 2**18  # 'auto' filters smaller CPU tiles with torch (a text search's few queries): filter_kernel
NORM_SLACK = 1.001  # safety factor on float32-computed norms (error <= (d + 2) 2^-24 relative)
PREPARE_ROWS = 512  # rows per step of Screen.prepare on a CPU: 1 MB of float32 at dim 512 (L2); 1024: 1.6x slower
PAIR_BATCH = 1024  # CPU re-check batch, one tile's pairs at dim 512: 0.45 / 0.39 / 0.33 us per pair at 128 / 256 / 1024


def default_precision(device: torch.device) -> str:
    """bf16 on CPUs with AVX-512 bf16 or AMX, fp16 (exact inputs) on CUDA, else fp32."""
    if device.type == "cuda":
        return "fp16"
    return "bf16" if torch.backends.mkldnn.is_available() and _cpu_has_bf16() else "fp32"


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto'/None -> cuda when available, else cpu."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Screen:
    """Low-precision matrix product S = Q X^T together with a bound on |S - c| for every entry.

    Args:
        precision: 'fp32', 'bf16' or 'fp16'.
        device: torch device for the products.
        dim: embedding dimension (enters the accumulation bound).
    """

    def __init__(self, precision: str, device: torch.device, dim: int):
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
        if precision == "fp16" and device.type != "cuda":
            raise ValueError("precision 'fp16' needs a CUDA device (CPU fp16 products are slow); use bf16 or fp32")
        self.precision, self.device, self.dim = precision, device, dim
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        # Tensor cores do not round like IEEE fp32 adders; 4x the unit roundoff covers their truncation.
        u_acc = 2.0**-24 if device.type == "cpu" else 2.0**-22
        self.gamma = dim * u_acc / (1 - dim * u_acc)
        # A bf16 output keeps 8 significant bits: rounding to nearest moves s by up to half an ulp, 2^-8 |s| at the
        # bottom of a binade (s = 1 + 2^-8 rounds to 1). (This was 2^-9, half the true unit roundoff, until issue 14.)
        self.out_u = 2.0**-8 if (precision == "bf16" and device.type == "cpu") else 0.0
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
            torch.backends.cuda.matmul.allow_tf32 = False

    def prepare(self, x16: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, float, float]:
        """Round float16 rows to the screen precision.

        Args:
            x16: (n, d) float16 rows.
            out: optional flat tensor of the screen dtype with >= n * d elements to hold x_lo: a reused buffer
                spares the page faults of a fresh 64 MB block (they cost 3x the rounding itself on a CPU).

        Returns:
            (x_lo, max_norm, max_residual): x_lo (n, d) in the screen dtype, an upper bound on the row norms of
            x16 and x_lo, and one on the norms of x16 - x_lo (0 for empty input or an exact screen).
        """
        exact = self.dtype in (torch.float32, torch.float16)  # float16 rows are exact in both
        if self.dtype == x16.dtype:
            x_lo = x16
        elif out is not None and out.numel() >= x16.numel():
            x_lo = out[: x16.numel()].view(x16.shape)
        else:
            x_lo = torch.empty(x16.shape, dtype=self.dtype, device=x16.device)
        if len(x16) == 0:
            return x_lo, 0.0, 0.0
        # Row chunks that stay in cache: one fused walk instead of four passes over the block (6x on a CPU).
        chunk = PREPARE_ROWS if x16.device.type == "cpu" else len(x16)
        norms, resids = [], []
        for lo in range(0, len(x16), chunk):
            x32 = x16[lo : lo + chunk].float()
            if x_lo is not x16:
                x_lo[lo : lo + chunk].copy_(x32)  # float16 -> float32 is exact: one rounding, as x16.to(dtype)
            norms.append(torch.linalg.vector_norm(x32, dim=1).max())
            if not exact:  # x - x_lo is exact in float32 (both are float16/bfloat16 values of similar magnitude)
                resids.append(torch.linalg.vector_norm(x32.sub_(x_lo[lo : lo + chunk].float()), dim=1).max())
        # float32 norms are within (d + 2) * 2^-24 of the true value (relative); NORM_SLACK covers d <= 16k.
        norm = float(torch.stack(norms).max()) * NORM_SLACK
        if exact:
            return x_lo, norm, 0.0
        resid = float(torch.stack(resids).max()) * NORM_SLACK
        return x_lo, norm + resid, resid  # |x_lo| <= |x| + |x - x_lo|: no third pass for the rounded rows' norms

    def product(self, q_lo: torch.Tensor, x_lo: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """S = q_lo @ x_lo.T, (n_q, n_x): float32, or bfloat16 on CPU (its output rounding is in the bound).

        Args:
            q_lo, x_lo: rows in the screen dtype (from `prepare`).
            out: optional contiguous (n_q, n_x) tensor of `tile_dtype` to write into (CPU): reusing one buffer
                spares a fresh 32-64 MB allocation per tile, whose page faults cost ~30% of a bf16 product.

        Consumers reduce and compare S as is (comparisons with float32 tensors promote on the fly), which
        avoids a float32 copy of every tile. float32 on a CPU also goes through torch (not numpy's OpenBLAS): its
        threads follow torch's per-thread setting, which the scanner's tile workers rely on (87 vs 94 GFLOP/s per
        core at 4000 x 4096 x 512 on an EPYC; 188 vs 131 on both cores).
        """
        if self.device.type == "cuda" and self.precision != "fp32":
            return torch.mm(q_lo, x_lo.T, out_dtype=torch.float32)
        return torch.mm(q_lo, x_lo.T) if out is None else torch.mm(q_lo, x_lo.T, out=out)

    @property
    def tile_dtype(self) -> torch.dtype:
        """dtype of the tiles `product` returns."""
        return torch.bfloat16 if (self.device.type == "cpu" and self.precision == "bf16") else torch.float32

    def bound(self, q: tuple[float, float], x: tuple[float, float]) -> float:
        """Proven bound on |S_ij - c_ij| for rows with (max_norm, max_residual) q and x, uniform over the tile:
        `input_bound` plus the bf16 output rounding at its largest, out_u |q||x|."""
        return self.input_bound(q, x) + self.out_u * q[0] * x[0] * (1 + self.gamma)

    def input_bound(self, q: tuple[float, float], x: tuple[float, float]) -> float:
        """b with |S_ij - c_ij| <= b + out_u |S_ij| for every entry: the per-entry bound the scanner uses.

        |q.x - q_lo.x_lo| <= r_q |x| + |q_lo| r_x (Cauchy-Schwarz); the float32 accumulation adds gamma_d |q_lo||x_lo|;
        rounding c to float32 adds 2^-24 |q||x|. A bf16 output (CPU) then moves S by at most half its ulp, which is
        <= 2^-8 |S| (S's own binade; a value rounded up to 2^e moved by half the ulp of the binade below).
        """
        (nq, rq), (nx, rx) = q, x
        return rq * nx + nq * rx + (self.gamma + 2.0**-24) * nq * nx * (1 + self.gamma) + 1e-12


def dot_kernel(kernel: str, device: torch.device, n_pairs: int | None = None) -> str:
    """The re-check kernel `exact_dots` runs for `kernel` on `device`: 'compiled' or 'torch'.

    'auto' takes the compiled one on a CPU for COMPILED_MIN_PAIRS pairs or more (or n_pairs None): below that torch
    needs under a millisecond, and a process that only makes small calls (a text search on a page) is spared
    numba's import and cache load (0.5-1.9 s here; 1.3-5 s to compile on first use).

    Raises:
        ValueError: an unknown kernel, or 'compiled' off a CPU.
    """
    if kernel not in DOT_KERNELS:
        raise ValueError(f"kernel {kernel!r} is not one of {DOT_KERNELS}")
    if kernel == "compiled" and device.type != "cpu":
        raise ValueError(f"kernel 'compiled' runs on a CPU, not on {device}: use 'torch' or 'auto'")
    if kernel == "auto":
        big = n_pairs is None or n_pairs >= COMPILED_MIN_PAIRS
        return "compiled" if (device.type == "cpu" and big) else "torch"
    return kernel


def filter_kernel(kernel: str, device: torch.device, tile_entries: int) -> str:
    """The kernel of the tile filters' lane gathers (tiles.lane_hits) for `kernel` on `device`: 'compiled' or
    'torch'; 'auto' compiles CPU tiles of COMPILED_MIN_TILE entries or more (see `dot_kernel` for the reason)."""
    chosen = dot_kernel(kernel, device)
    return "torch" if (kernel == "auto" and tile_entries < COMPILED_MIN_TILE) else chosen


def exact_dots(q16: torch.Tensor, qi: torch.Tensor, x16: torch.Tensor, xj: torch.Tensor,
               kernel: str = "auto") -> torch.Tensor:
    """Canonical similarities of pairs (q16[qi[n]], x16[xj[n]]): float32 (n_pairs,) on q16's device.

    float16 x float16 products are exact in float32 (22 significant bits), so only the sum needs float64; for
    rows of norm <= 4 every partial sum is a multiple of 2^-48 below 2^5, exact in float64 in any order, so this
    equals float32(float64(q) @ float64(x).T) bit for bit, whichever kernel sums it.

    Args:
        kernel: 'compiled' (numba, CPU only; at dim 512 on one EPYC core 0.14 us per pair with warm caches, 0.32
            inside a scan), 'torch' (batched gathers and a float64 sum: 0.55-0.9 us per pair on a CPU; the only one
            on CUDA) or 'auto' (compiled for CPU calls of COMPILED_MIN_PAIRS pairs or more); see `dot_kernel`.
    """
    on_cpu = q16.device.type == "cpu"
    if dot_kernel(kernel, q16.device, len(qi)) == "compiled":
        from clipsim.search.compiled import pair_dots  # numba's import and first compile only where it is used

        bits = [t.contiguous().numpy().view(np.uint16) for t in (q16, x16)]
        idx = [t.to(torch.int64).contiguous().numpy() for t in (qi, xj)]
        return torch.from_numpy(pair_dots(bits[0], idx[0], bits[1], idx[1]))
    out = torch.empty(len(qi), dtype=torch.float32, device=q16.device)
    batch = PAIR_BATCH if on_cpu else 65536
    for lo in range(0, len(qi), batch):  # index_select gathers rows 2x faster than indexing
        a = q16.index_select(0, qi[lo : lo + batch]).float()
        b = x16.index_select(0, xj[lo : lo + batch]).float()
        out[lo : lo + batch] = a.mul_(b).sum(dim=1, dtype=torch.float64)  # float64 accumulation, no float64 copy
    return out


def exact_margin(sims: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Canonical margin float32(float64(sim) - float64(offset)); its sign is exactly that of sim - offset."""
    return (sims.double() - offsets.double()).float()


def brute_force(q16: np.ndarray, x16: np.ndarray) -> np.ndarray:
    """Reference similarities float32(Q64 @ X64.T): (n_q, n_x) float32. For tests and small sets."""
    return (np.asarray(q16, np.float64) @ np.asarray(x16, np.float64).T).astype(np.float32)

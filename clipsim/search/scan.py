"""One pass over train blocks against in-memory queries: running top-k per query and per-row maxima.

Each block is screened once in low precision; both directions (test -> train top-k, train -> test max and
margin) come from the same product tile, and every reported value is re-checked exactly (see exact.py).
Ties are broken by the lower index, as a stable sort of the brute-force matrix would.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clipsim.search.exact import Screen, exact_dots, exact_margin

TILE_ELEMENTS = 2**24  # one float32 product tile (64 MB); bounds memory beside the block itself
SEGMENT = 256  # columns per segment in hits()
_NO_ID = torch.iinfo(torch.int64).max  # empty top-k slots sort after every real id


@dataclass
class Group:
    """A contiguous range of query rows scored as one test set, with optional per-query offsets.

    offsets maps a reference name to (n_group,) float32 s_ref(t); per train row the scanner then also
    reports max_t (c(x, t) - s_ref(t)) and its argmax.
    """

    name: str
    start: int
    stop: int
    offsets: dict[str, np.ndarray] | None = None


def at_least(threshold: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`threshold` (float32) as the largest `dtype` values not above it: for a tile of that dtype, s >= result
    exactly when s >= threshold, and the comparison needs no float32 copy of the tile."""
    if dtype == threshold.dtype:
        return threshold
    low = threshold.to(dtype)
    over = low.float() > threshold
    return torch.where(over, torch.nextafter(low, torch.full_like(low, -torch.inf)), low)


def hits(s: torch.Tensor, threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the entries with s[r, c] >= threshold[r], in row-major order, like torch.nonzero.

    A tile mostly holds no hit: maxima over SEGMENT-wide column segments (one pass) find the segments that hold
    any, and only those are compared entry by entry (4x faster than a full comparison plus nonzero on a CPU).
    """
    n, m = s.shape
    whole = m - m % SEGMENT
    if whole == 0:
        return torch.nonzero(s >= threshold[:, None], as_tuple=True)
    segs = s[:, :whole].reshape(n, whole // SEGMENT, SEGMENT)
    r, g = torch.nonzero(segs.amax(dim=2) >= threshold[:, None], as_tuple=True)
    rr, cc = torch.nonzero(segs[r, g] >= threshold[r][:, None], as_tuple=True)
    r, j = r[rr], g[rr] * SEGMENT + cc
    if whole < m:  # the ragged end of the block
        tr, tj = torch.nonzero(s[:, whole:] >= threshold[:, None], as_tuple=True)
        if len(tr):
            r, j = torch.cat([r, tr]), torch.cat([j, tj + whole])
            order = torch.argsort(r * m + j)
            r, j = r[order], j[order]
    return r, j


class _RowMax:
    """Per-train-row maximum of one statistic over a group's query chunks, re-checked exactly once per block.

    Chunks only add candidate pairs whose screened value lies within 2 * bound of the running screened
    maximum; pairs the final maximum rules out are dropped before the exact re-check.
    """

    def __init__(self, n_rows: int, bound: float, offsets: torch.Tensor | None, device: torch.device):
        self.bound, self.offsets = bound, offsets
        self.lo_max = torch.full((n_rows,), -torch.inf, device=device)
        self.qi, self.xj, self.s = [], [], []

    def add(self, s: torch.Tensor, q0: int) -> None:
        """s: (chunk, n_rows) screened statistic (float32 or bfloat16) for group rows q0 .. q0 + chunk."""
        self.lo_max = torch.maximum(self.lo_max, s.amax(dim=0).float())
        qi, xj = torch.nonzero(s >= at_least(self.lo_max - 2 * self.bound, s.dtype)[None, :], as_tuple=True)
        self.qi.append(qi + q0)
        self.xj.append(xj)
        self.s.append(s[qi, xj].float())

    def exact(self, q16, x16, g0: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(max (n_rows,) f32, first argmax (n_rows,) i64 within the group, pairs re-checked)."""
        qi, xj, s = torch.cat(self.qi), torch.cat(self.xj), torch.cat(self.s)
        keep = s >= self.lo_max[xj] - 2 * self.bound
        qi, xj = qi[keep], xj[keep]
        vals = exact_dots(q16, qi + g0, x16, xj)
        if self.offsets is not None:
            vals = exact_margin(vals, self.offsets[qi])
        n = len(self.lo_max)
        best = torch.full((n,), -torch.inf, device=vals.device).scatter_reduce(0, xj, vals, "amax")
        tie = vals == best[xj]
        arg = torch.full((n,), _NO_ID, dtype=torch.int64, device=vals.device).scatter_reduce(0, xj[tie], qi[tie], "amin")
        return best, arg, len(vals)


class ExactScanner:
    """Streams train blocks (global row order) against queries; exact top-k and per-row statistics.

    Args:
        queries: (n_q, d) float16, L2-normalised.
        groups: query ranges (test sets); per-row statistics are reported per group.
        k: neighbours kept per query.
        precision: screen precision ('fp32', 'bf16', 'fp16').
        device: torch device.
        row_stats: also compute per-train-row maxima (and margins); off for a pure top-k search.
    """

    def __init__(self, queries: np.ndarray, groups: list[Group], k: int, precision: str, device: torch.device,
                 row_stats: bool = True):
        self.k, self.groups, self.device, self.row_stats = k, groups, device, row_stats
        self.q16 = torch.as_tensor(np.ascontiguousarray(queries, dtype=np.float16), device=device)
        self.screen = Screen(precision, device, queries.shape[1])
        self.q_lo, nq, rq = self.screen.prepare(self.q16)
        self.q_stats = (nq, rq)
        self.top_s = torch.full((len(queries), k), -torch.inf, dtype=torch.float32, device=device)
        self.top_i = torch.full((len(queries), k), -1, dtype=torch.int64, device=device)
        self.offsets = {
            g.name: {r: torch.as_tensor(np.asarray(o, np.float32), device=device) for r, o in (g.offsets or {}).items()}
            for g in groups
        }
        self.rechecked = 0  # exact dot products computed, for benchmarks

    def state(self) -> dict[str, np.ndarray]:
        """Running top-k as numpy arrays, for checkpointing."""
        return {"top_s": self.top_s.cpu().numpy(), "top_i": self.top_i.cpu().numpy()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore a checkpoint made by `state()`."""
        self.top_s = torch.as_tensor(state["top_s"], device=self.device).clone()
        self.top_i = torch.as_tensor(state["top_i"], device=self.device).clone()

    def add_block(self, block: np.ndarray, base: int) -> dict[str, dict[str, np.ndarray]]:
        """Score one train block; update the top-k and return its per-row statistics.

        Args:
            block: (n_b, d) float16 rows with global ids base .. base + n_b - 1.
            base: global id of block[0].

        Returns:
            {group: {"max_sim": (n_b,) f32, "argmax": (n_b,) i32, "margin/<ref>": (n_b,) f32,
            "margin_argmax/<ref>": (n_b,) i32}} ({} per group without row_stats); argmax indexes the group.
        """
        block = np.ascontiguousarray(block, dtype=np.float16)
        x16 = torch.from_numpy(block if block.flags.writeable else block.copy()).to(self.device)
        x_lo, nx, rx = self.screen.prepare(x16)
        bound = self.screen.bound(self.q_stats, (nx, rx))
        chunk = max(1, TILE_ELEMENTS // max(1, len(block)))
        stats = {}
        for g in self.groups:
            maxima = {}
            if self.row_stats and g.stop > g.start:
                maxima[""] = _RowMax(len(block), bound, None, self.device)
                for ref, off in self.offsets[g.name].items():
                    maxima[ref] = _RowMax(len(block), bound + 2.0**-21, off, self.device)  # + rounding of s - off
            for lo in range(g.start, g.stop, chunk):
                hi = min(g.stop, lo + chunk)
                s = self.screen.product(self.q_lo[lo:hi], x_lo)
                self._update_topk(s, lo, x16, base, bound)
                for ref, acc in maxima.items():
                    # s - offsets promotes a bfloat16 tile to float32 inside the subtraction (no extra copy)
                    acc.add(s if ref == "" else s - acc.offsets[lo - g.start : hi - g.start, None], lo - g.start)
            stats[g.name] = self._finish_rows(maxima, x16, g)
        return stats

    def _finish_rows(self, maxima: dict[str, _RowMax], x16: torch.Tensor, g: Group) -> dict[str, np.ndarray]:
        out = {}
        for ref, acc in maxima.items():
            best, arg, n = acc.exact(self.q16, x16, g.start)
            self.rechecked += n
            names = ("max_sim", "argmax") if ref == "" else (f"margin/{ref}", f"margin_argmax/{ref}")
            out[names[0]] = best.cpu().numpy().astype(np.float32)
            out[names[1]] = arg.cpu().numpy().astype(np.int32)
        return out

    def _update_topk(self, s: torch.Tensor, q0: int, x16: torch.Tensor, base: int, bound: float) -> None:
        """Merge this tile's exact candidates into the running top-k of query rows q0 .. q0 + len(s).

        After the merge the k-th best is at least L = max(old k-th, v_k - bound), v_k being the tile's k-th
        largest screened value; so only entries screened at >= L - bound can enter, and all of them are
        re-checked. v_k (a top-k over the tile) is only computed while some row has fewer than k neighbours:
        afterwards the running k-th alone keeps the candidates few, and one comparison pass finds them.
        """
        rows = torch.arange(q0, q0 + len(s), device=s.device)
        kth = self.top_s[q0 : q0 + len(s), -1]
        floor = kth
        if s.shape[1] >= self.k and bool(torch.isinf(kth).any()):
            v_k = torch.topk(s, self.k, dim=1, sorted=False).values.amin(dim=1).float()
            floor = torch.maximum(kth, v_k - bound)
        r, j = hits(s, at_least(floor - bound, s.dtype))
        if len(r) == 0:
            return
        vals = exact_dots(self.q16, r + q0, x16, j)
        self.rechecked += len(vals)
        enter = vals > kth[r]  # equal to the old k-th cannot enter: block ids are larger than the running ones
        if enter.any():
            self._merge(rows, r[enter], vals[enter], j[enter] + base)

    def merge_topk(self, top_s: np.ndarray, top_i: np.ndarray) -> None:
        """Merge another scan's top-k over the same queries ((n_q, k) float32 sims, int64 ids, -1 = none) into the
        running top-k, with the same (-sim, id) order as scanning (used to merge the parts of a search)."""
        rows, cols = np.nonzero(top_i >= 0)
        if len(rows) == 0:
            return
        r = torch.as_tensor(rows, dtype=torch.int64)
        self._merge(torch.arange(len(top_s)), r, torch.as_tensor(top_s[rows, cols]),
                    torch.as_tensor(top_i[rows, cols], dtype=torch.int64))

    def _merge(self, rows: torch.Tensor, r: torch.Tensor, vals: torch.Tensor, ids: torch.Tensor) -> None:
        """Keep the k best of (running, new pairs) per row, ordered by (-sim, id); r indexes `rows`."""
        counts = torch.bincount(r, minlength=len(rows))
        used = torch.nonzero(counts, as_tuple=True)[0]
        order = torch.argsort(r, stable=True)
        r, vals, ids = r[order], vals[order], ids[order]
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.arange(len(r), device=r.device) - starts[r]
        width = int(counts.max())
        slot = torch.searchsorted(used, r)
        new_s = torch.full((len(used), width), -torch.inf, device=vals.device)
        new_i = torch.full((len(used), width), _NO_ID, dtype=torch.int64, device=vals.device)
        new_s[slot, pos], new_i[slot, pos] = vals, ids
        target = rows[used]
        all_s = torch.cat([self.top_s[target], new_s], dim=1)
        all_i = torch.cat([self.top_i[target].masked_fill(self.top_i[target] < 0, _NO_ID), new_i], dim=1)
        by_id = torch.sort(all_i, dim=1, stable=True).indices
        all_s, all_i = all_s.gather(1, by_id), all_i.gather(1, by_id)
        best = torch.sort(-all_s, dim=1, stable=True).indices[:, : self.k]
        all_i = all_i.gather(1, best)
        self.top_s[target] = all_s.gather(1, best)
        self.top_i[target] = all_i.masked_fill(all_i == _NO_ID, -1)

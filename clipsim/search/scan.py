"""One pass over train blocks against in-memory queries: running top-k per query and per-row maxima.

Each block is screened once in low precision, tile by tile; both directions (test -> train top-k, train -> test
max and margin) come from the same product tile and one read of it (tiles.py), and every reported value is
re-checked exactly (see exact.py). Ties are broken by the lower index, as a stable sort of the brute-force matrix
would.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from clipsim.search.exact import Screen, dot_kernel, exact_dots, exact_margin, filter_kernel
from clipsim.search.tiles import BUCKET, BucketTile, TrainRowMax, Uncertainty, at_least

# Elements of one product tile (32 MB in bf16, 64 MB in float32): bounds memory beside the block itself. A tile of
# 4000 queries x 4096 train rows runs the bf16 product at ~98% of its 4096^3 speed on 2 EPYC cores.
TILE_ELEMENTS = 2**24
# Fewest train rows per tile while the queries fit (a group with more queries is cut into query chunks): narrower
# products lose speed, and every column range restarts the per-row maxima.
MIN_COLS = 2048
# Tile workers by default at most: a 65536-row block holds 16-32 column ranges (tile_shape), so more workers would
# idle; a bigger machine gives each worker several torch threads instead.
MAX_WORKERS = 8
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


@dataclass
class _Block:
    """One train block being scanned: float16 rows, their screen copy, global id of row 0, the screen's error."""

    x16: torch.Tensor
    x_lo: torch.Tensor
    base: int
    err: Uncertainty


@dataclass
class _Range:
    """One column range's screened candidates, kept until the group's block ends: the per-row maxima's, and the
    top-k's (group rows in scanner order and range columns, int32; screened values)."""

    span: tuple[int, int]
    maxima: dict[str, TrainRowMax]
    rows: list[torch.Tensor] = field(default_factory=list)
    cols: list[torch.Tensor] = field(default_factory=list)
    vals: list[torch.Tensor] = field(default_factory=list)


class _RunningKth:
    """Per group row, the k largest known lower bounds on the similarities of distinct pairs: the exact values of
    the running top-k before the block, then low(s) of each of the block's top-k candidates as its tile is screened.

    Their least value lower-bounds the k-th best similarity once the block is merged (a pair's bound is at most
    its similarity), so the block's candidates are re-checked only once, at its end, and only those with
    high(s) >= it: entries that enter and leave the top-k within one block are never re-checked (at 4000 queries
    the first 65536-row block re-checked ~68 entries per query when each tile merged at once). The final bound
    does not depend on the order the workers raise it in: an entry left out by an earlier, lower bound has
    high(s) below it, so it cannot be among the k largest lower bounds either.

    Args:
        top: (n, k) float32 running top-k similarities of the group's rows (-inf where empty), in scanner order.
    """

    def __init__(self, top: torch.Tensor):
        self.lows = top.clone()

    def kth(self, lo: int, hi: int) -> torch.Tensor:
        """(hi - lo,) the current bound of group rows lo..hi."""
        return self.lows[lo:hi].amin(dim=1)

    def add(self, r: torch.Tensor, lows: torch.Tensor) -> None:
        """Take lower bounds `lows` of new distinct pairs of group rows r."""
        if len(r) == 0:
            return
        counts = torch.bincount(r)
        used = torch.nonzero(counts, as_tuple=True)[0]
        order = torch.argsort(r, stable=True)
        r, lows = r[order], lows[order]
        pos = torch.arange(len(r), device=r.device) - (torch.cumsum(counts, 0) - counts)[r]
        new = torch.full((len(used), int(counts.max())), -torch.inf, device=lows.device)
        new[torch.searchsorted(used, r), pos] = lows
        both = torch.cat([self.lows[used], new], dim=1)
        self.lows[used] = torch.topk(both, self.lows.shape[1], dim=1, sorted=False).values


class _Inline:
    """`map` in the calling thread, in order: the executor of a one-worker scan (and of a GPU's)."""

    def map(self, fn, *iterables):
        return map(fn, *iterables)


def tile_shape(n_rows: int, n_cols: int) -> tuple[int, int]:
    """(query rows, train columns) of the product tiles for n_rows queries against an n_cols block: all queries and
    TILE_ELEMENTS // n_rows columns (a multiple of 256) when that leaves MIN_COLS, else chunks of queries."""
    cols = max(1, min(n_cols, max(MIN_COLS, TILE_ELEMENTS // max(1, n_rows))))
    if cols >= 512:
        cols -= cols % 256  # whole SIMD panels and hits() segments
    return max(1, min(n_rows, TILE_ELEMENTS // cols)), cols  # >= 1 each: empty ranges still step


def offset_order(groups: list[Group], n_queries: int) -> np.ndarray:
    """Scanner row -> query row: each group's queries by increasing first offset (stable), so that the queries of
    a bucket hold close offsets and the margin bounds of tiles.TrainRowMax stay tight; other rows in place."""
    order = np.arange(n_queries)
    for g in groups:
        if g.offsets and g.stop > g.start:
            first = np.asarray(next(iter(g.offsets.values())), np.float32)
            order[g.start : g.stop] = g.start + np.argsort(first, kind="stable")
    return order


class ExactScanner:
    """Streams train blocks (global row order) against queries; exact top-k and per-row statistics.

    Internally each group's queries are scanned in `offset_order`; the top-k (`top_s`, `top_i`, `state`) and every
    reported index stay in the caller's query order.

    Args:
        queries: (n_q, d) float16, L2-normalised.
        groups: query ranges (test sets); per-row statistics are reported per group.
        k: neighbours kept per query.
        precision: screen precision (one of exact.PRECISIONS).
        device: torch device.
        row_stats: also compute per-train-row maxima (and margins); off for a pure top-k search.
        workers: CPU threads, each scanning whole column ranges of a block with its share of torch's threads
            (default: torch's thread count up to MAX_WORKERS; one thread each on small machines). Not one OpenMP
            barrier per small op: on 2 busy shared cores those cost 6x the work, and the small ops between products
            scale as the products do. Results do not depend on it.
        kernel: the kernel of the exact re-checks (exact.exact_dots) and of the tile filters' lane gathers
            (tiles.lane_hits): 'compiled' (numba, CPU only), 'torch' (the only one on CUDA) or 'auto' (compiled for
            large CPU calls and tiles). Results do not depend on it.
    """

    def __init__(self, queries: np.ndarray, groups: list[Group], k: int, precision: str, device: torch.device,
                 row_stats: bool = True, workers: int | None = None, kernel: str = "auto"):
        dot_kernel(kernel, device)  # before any work: a kernel the device cannot run is refused
        self.kernel = kernel
        self.k, self.groups, self.device, self.row_stats = k, groups, device, row_stats
        self.workers = max(1, workers or (min(MAX_WORKERS, torch.get_num_threads()) if device.type == "cpu" else 1))
        self._threads_each = max(1, torch.get_num_threads() // self.workers)
        self._lock = threading.Lock()  # the running top-k and the counter, shared by the workers
        self._spare: list[dict] = []  # tile buffers, one set per worker, kept across blocks
        self.q16 = torch.as_tensor(np.ascontiguousarray(queries, dtype=np.float16), device=device)
        self.order = torch.as_tensor(offset_order(groups, len(queries)), device=device)
        self.screen = Screen(precision, device, queries.shape[1])
        self.q_lo, nq, rq = self.screen.prepare(self.q16[self.order])
        self.q_stats = (nq, rq)
        self.top_s = torch.full((len(queries), k), -torch.inf, dtype=torch.float32, device=device)
        self.top_i = torch.full((len(queries), k), -1, dtype=torch.int64, device=device)
        self.offsets = {}  # per group and reference: offsets in scanner order
        for g in groups:
            local = self.order[g.start : g.stop] - g.start
            self.offsets[g.name] = {r: torch.as_tensor(np.asarray(o, np.float32), device=device)[local]
                                    for r, o in (g.offsets or {}).items()}
        self.rechecked = 0  # exact dot products computed, for benchmarks
        self._buffers: dict[str, torch.Tensor] = {}  # the block's screen copy

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
        pool = ThreadPoolExecutor(self.workers, initializer=torch.set_num_threads, initargs=(self._threads_each,)) \
            if self.workers > 1 and self.device.type == "cpu" else nullcontext(_Inline())
        with pool as run:
            x_lo, nx, rx = self._prepare(run, x16)
            err = Uncertainty(self.screen.input_bound(self.q_stats, (nx, rx)), self.screen.out_u)
            blk = _Block(x16, x_lo, base, err)
            return {g.name: self._scan_group(run, g, blk) for g in self.groups}

    def _prepare(self, run, x16: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        """Screen.prepare over row parts of the block, one per worker, into one reused buffer."""
        out = _flat_buffer(self._buffers, "x_lo", x16.numel(), self.screen.dtype, self.device)
        step = max(1, -(-len(x16) // self.workers))
        spans = [(lo, min(len(x16), lo + step)) for lo in range(0, max(1, len(x16)), step)]
        d = x16.shape[1]
        parts = list(run.map(lambda span: self.screen.prepare(
            x16[span[0] : span[1]], out=None if out is None else out[span[0] * d : span[1] * d]), spans))
        if len(parts) == 1:
            return parts[0]
        return out[: x16.numel()].view(x16.shape), max(p[1] for p in parts), max(p[2] for p in parts)

    def _scan_group(self, run, g: Group, blk: _Block) -> dict[str, np.ndarray]:
        """Tiles of one group over the block, column range by column range (one range per worker task), then the
        exact re-checks of each range against the group's final screened k-th (`_RunningKth`)."""
        n_b = len(blk.x16)
        stats, names = {}, {}
        if self.row_stats and g.stop > g.start:
            names = {"": ("max_sim", "argmax")}
            names |= {r: (f"margin/{r}", f"margin_argmax/{r}") for r in self.offsets[g.name]}
            stats = {n: torch.empty(n_b, dtype=torch.float32 if i == 0 else torch.int64, device=self.device)
                     for pair in names.values() for i, n in enumerate(pair)}
        rows, cols = tile_shape(g.stop - g.start, n_b)
        spans = [(c0, min(n_b, c0 + cols)) for c0 in range(0, n_b, cols)]
        kth = _RunningKth(self.top_s[self.order[g.start : g.stop]])
        # While a query has fewer than k neighbours, the first range runs alone: its k-th (from v_k, see _topk_floor)
        # then bounds the other ranges' candidates. A short range first would leave a weak k-th that skips v_k in the
        # long ones (300 queries x 10k rows, 2 workers: 186 re-checks per train row, not 0.5).
        first = int(bool(torch.isinf(kth.lows).any()))
        ranges = []
        for part in (spans[:first], spans[first:]):
            ranges += run.map(lambda span: self._scan_range(g, blk, span, rows, kth, names), part)
        floor = at_least(blk.err.reach(kth.lows.amin(dim=1)), self.screen.tile_dtype)
        list(run.map(lambda rng: self._finish_range(g, blk, rng, floor, (stats, names)), ranges))
        return {n: a.cpu().numpy().astype(np.float32 if a.dtype == torch.float32 else np.int32)
                for n, a in stats.items()}

    def _scan_range(self, g: Group, blk: _Block, span: tuple[int, int], rows: int, kth: _RunningKth,
                    names: dict) -> _Range:
        """Screen block columns span[0]..span[1] against the group's queries, `rows` at a time: the top-k's candidates
        (raising `kth` as they come) and the per-row maxima's, re-checked later by `_finish_range`."""
        c0, c1 = span
        with self._lock:
            bufs = self._spare.pop() if self._spare else {}
        try:
            out = _Range(span, {r: TrainRowMax(c1 - c0, blk.err, self.offsets[g.name].get(r), self.device)
                                for r in names})
            for lo in range(g.start, g.stop, rows):
                hi = min(g.stop, lo + rows)
                buf = self._tile_buffer(bufs, "s", (hi - lo, c1 - c0))
                s = self.screen.product(self.q_lo[lo:hi], blk.x_lo[c0:c1], out=buf)
                tile = BucketTile(s, self._tile_buffer(bufs, "r", (-(-(hi - lo) // BUCKET), c1 - c0)),
                                  compiled=filter_kernel(self.kernel, self.device, s.numel()) == "compiled")
                for acc in out.maxima.values():
                    acc.add(tile, lo - g.start)
                with self._lock:  # a row half written by another worker's add could read too high
                    floor = kth.kth(lo - g.start, hi - g.start)
                r, j, vals = tile.topk_hits(self._topk_floor(tile, floor, blk))
                r = r + (lo - g.start)
                with self._lock:
                    kth.add(r, blk.err.low(vals))
                out.rows.append(r.int())  # int32: a first block keeps ~90 per query (4000 x 65536 rows)
                out.cols.append(j.int())
                out.vals.append(vals)
            return out
        finally:
            with self._lock:
                self._spare.append(bufs)

    def _tile_buffer(self, bufs: dict, name: str, shape: tuple[int, int]) -> torch.Tensor | None:
        """A reused (rows, cols) tensor of the tile dtype from a worker's buffers on a CPU."""
        buf = _flat_buffer(bufs, name, shape[0] * shape[1], self.screen.tile_dtype, self.device)
        return None if buf is None else buf[: shape[0] * shape[1]].view(shape)

    def _topk_floor(self, tile: BucketTile, kth: torch.Tensor, blk: _Block) -> torch.Tensor:
        """Per tile row, in the tile's dtype, the least screened value of an entry that may enter the top-k.

        kth (float32, per tile row) lower-bounds the k-th best after this block merges (`_RunningKth`), so only
        entries with high(s) >= kth can enter. While some row has fewer than k known values, low(v_k) raises it,
        v_k being the tile's k-th largest screened value: the tile holds k distinct pairs with c >= low(v_k).
        """
        if tile.s.shape[1] >= self.k and bool(torch.isinf(kth).any()):
            kth = torch.maximum(kth, blk.err.low(torch.topk(tile.s, self.k, dim=1, sorted=False).values.amin(dim=1)))
        return at_least(blk.err.reach(kth), tile.s.dtype)

    def _finish_range(self, g: Group, blk: _Block, rng: _Range, floor: torch.Tensor, out: tuple[dict, dict]) -> None:
        """Re-check one range's candidates exactly: merge the top-k candidates still at or above `floor` (per group
        row, in the tile dtype, from the final k-th) and write the per-row maxima into out[0] (names in out[1]).

        Each distinct (query, train row) pair is re-checked once: the similarity, the margins and the top-k often
        keep the same pair, and exact_dots gives the same bits for the same pair. The pairs go in column order, so
        that the gathered train rows stay near each other in memory (0.8 -> 0.6 us per pair on a CPU).
        """
        (c0, c1), (stats, names) = rng.span, out
        width, n_g = c1 - c0, g.stop - g.start
        if n_g == 0:  # an empty group screens no tile and has no statistics
            return
        r, j = torch.cat(rng.rows).long(), torch.cat(rng.cols).long()
        keep = torch.nonzero(torch.cat(rng.vals) >= floor[r], as_tuple=True)[0]
        r, j = r[keep], j[keep]
        found = {ref: acc.candidates() for ref, acc in rng.maxima.items()}
        keys = torch.cat([j * n_g + r] + [cols * n_g + rows for rows, cols in found.values()])
        pairs, where = torch.unique(keys, return_inverse=True)
        sims = exact_dots(self.q16, self.order[g.start + pairs % n_g], blk.x16, pairs // n_g + c0,
                          kernel=self.kernel)[where]
        with self._lock:
            self.rechecked += len(pairs)
        self._merge_exact(self.order[g.start : g.stop], r, sims[: len(r)], j + c0 + blk.base)
        at = len(r)
        for ref, (rows, cols) in found.items():
            vals, at = sims[at : at + len(rows)], at + len(rows)
            if ref:
                vals = exact_margin(vals, rng.maxima[ref].offsets[rows])
            qi = self.order[g.start + rows] - g.start  # the caller's query order: first argmax by it
            best = torch.full((width,), -torch.inf, device=vals.device).scatter_reduce(0, cols, vals, "amax")
            tie = vals == best[cols]
            arg = torch.full((width,), _NO_ID, dtype=torch.int64, device=vals.device)
            stats[names[ref][0]][c0:c1] = best
            stats[names[ref][1]][c0:c1] = arg.scatter_reduce(0, cols[tie], qi[tie], "amin")

    def _merge_exact(self, rows: torch.Tensor, r: torch.Tensor, vals: torch.Tensor, ids: torch.Tensor) -> None:
        """Merge re-checked pairs (rows[r], ids) with exact similarities vals into the running top-k: those below
        a row's current k-th cannot enter and are dropped first (another range may raise it meanwhile, which
        `_merge`'s (-sim, id) order settles)."""
        if len(r) == 0:
            return
        with self._lock:
            enter = vals >= self.top_s[rows[r], -1]
            if enter.any():
                self._merge(rows, r[enter], vals[enter], ids[enter])

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


def _flat_buffer(bufs: dict, name: str, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """bufs[name], a flat tensor of >= n elements reused on a CPU (None elsewhere: CUDA's allocator caches)."""
    if device.type != "cpu":
        return None
    buf = bufs.get(name)
    if buf is None or buf.numel() < n or buf.dtype != dtype:
        buf = bufs[name] = torch.empty(n, dtype=dtype)
    return buf

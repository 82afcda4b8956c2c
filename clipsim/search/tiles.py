"""One pass over a product tile: bucket maxima, then the candidate entries of the top-k and per-row statistics.

The scanner's tile S (queries x train rows) is read in full once, to take R[b, j] = max of S[i, j] over the BUCKET
consecutive query rows i of bucket b, and R's own bucket maxima R2 (BUCKET^2 query rows per entry) are taken from R.
Every filter (top-k, per-train-row maximum, margins) first runs on R2, 1/256 of the tile, then on the BUCKET bucket
maxima of the R2 entries that pass, and then gathers the BUCKET entries of the few bucket-columns that pass; each level
keeps a superset of what the next keeps. See `BucketTile`.
"""
from __future__ import annotations

import numpy as np
import torch

# Query rows per bucket. R is 1/16 of the tile: taking it costs ~5% of a bf16 product; a candidate bucket-column
# gathers 16 entries. One EPYC core, bf16 tile of 4000 x 4096 x 512 (80 ms of product): R 3.7 ms, R2 0.2 ms, top-k
# bucket hits 1.1 ms from R2 (2.3 ms from segments of R), per-row filters 1.3 ms (similarity) and 2.2 ms (margins).
BUCKET = 16
# Float32 bound arithmetic (s -+ u|s| -+ b, minus an offset, for |values| < 4) rounds by <= 2^-23 per step; 2^-21
# on top of the screen's bound covers the four such steps any one bound takes (Uncertainty, TrainRowMax).
SLACK = 2.0**-21
SEGMENT = 256  # columns per segment in hits(): segment maxima of a 4096-column row fit in one cache line of flags


def at_least(threshold: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`threshold` (float32) as the smallest `dtype` values not below it: for a tile of that dtype, s >= result
    exactly when s >= threshold (every dtype value is a float32 value), and the comparison needs no float32 copy of
    the tile. The callers' float32 thresholds may round either way from the bound they stand for; that loses no entry,
    since rounding to float32 is monotone and the tile's values are float32 values. Rounding down instead would also
    keep the entries one ulp below: 7% more in a 4000 x 4096 bf16 tile's similarity filter (9119 against 8497)."""
    if dtype == threshold.dtype:
        return threshold
    near = threshold.to(dtype)
    under = near.float() < threshold
    return torch.where(under, torch.nextafter(near, torch.full_like(near, torch.inf)), near)


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
    if whole < m:  # the ragged end of the tile
        tr, tj = torch.nonzero(s[:, whole:] >= threshold[:, None], as_tuple=True)
        if len(tr):
            r, j = torch.cat([r, tr]), torch.cat([j, tj + whole])
            order = torch.argsort(r * m + j)
            r, j = r[order], j[order]
    return r, j


def per_bucket(values: torch.Tensor, reduce: str) -> torch.Tensor:
    """(n,) per-row values -> (ceil(n / BUCKET),) their min or max over each bucket of rows ('amin' / 'amax')."""
    n = len(values)
    full = n - n % BUCKET
    out = getattr(values[:full].view(-1, BUCKET), reduce)(dim=1)
    if full < n:
        out = torch.cat([out, getattr(values[full:], reduce)(dim=0, keepdim=True)])
    return out


def bucket_max(t: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """(n, m) -> (ceil(n / BUCKET), m): the maximum over each BUCKET consecutive rows, in one read of t (a
    middle-axis max runs along contiguous rows: 0.12 ns per entry on a CPU, ~4% of a bf16 product)."""
    n, m = t.shape
    full, n_b = n // BUCKET, -(-n // BUCKET)
    out = torch.empty((n_b, m), dtype=t.dtype, device=t.device) if out is None else out
    if full:
        torch.amax(t[: full * BUCKET].view(full, BUCKET, m), dim=1, out=out[:full])
    if full < n_b:
        torch.amax(t[full * BUCKET :], dim=0, keepdim=True, out=out[full:])
    return out


def lanes(t: torch.Tensor, b: torch.Tensor, j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The BUCKET entries of t under bucket-columns (b, j): rows (c, BUCKET) i64, values (c, BUCKET) and valid
    (c, BUCKET) bool, false past the end of a short last bucket (those slots repeat t's last row)."""
    n, m = t.shape
    rows = b[:, None] * BUCKET + torch.arange(BUCKET, device=t.device)
    valid = rows < n
    rows.clamp_(max=n - 1)
    flat = (rows * m + j[:, None]).view(-1)  # a flat index_select: ~3x faster than t[rows, j] on a CPU
    return rows, t.view(-1).index_select(0, flat).view(rows.shape), valid


def lane_hits(t: torch.Tensor, b: torch.Tensor, j: torch.Tensor, thr_pair: torch.Tensor | None = None,
              thr_row: torch.Tensor | None = None, compiled: bool = False):
    """The entries of t's lanes under bucket-columns (b, j) (see `lanes`; padded slots left out) that are >= their
    pair's threshold thr_pair[p] and their row's thr_row[row] (each in t's dtype, from `at_least`; None: no bound).

    Returns:
        (pair index into b and j, row, value in t's dtype), in pair then lane order. `compiled` runs it as one loop
        (search/compiled.py, CPU) without index tensors: the filters that use it took 1.25-1.45x less time in a
        4000-query scan (per 65536-row block: similarity 0.106 -> 0.085 s, margins 0.124 -> 0.088 s).
    """
    if compiled:
        from clipsim.search import compiled as loops  # numba is imported where the compiled path runs

        pair = np.full(len(b), -np.inf, np.float32) if thr_pair is None else thr_pair.float().contiguous().numpy()
        row = np.full(len(t), -np.inf, np.float32) if thr_row is None else thr_row.float().contiguous().numpy()
        at, rows, vals = loops.lane_hits(_numpy_view(t.contiguous()), b.contiguous().numpy(),
                                         j.contiguous().numpy(), pair, row, BUCKET)
        return torch.from_numpy(at), torch.from_numpy(rows), torch.from_numpy(vals).to(t.dtype)
    rows, vals, ok = lanes(t, b, j)
    if thr_pair is not None:
        ok &= vals >= thr_pair[:, None]
    if thr_row is not None:
        ok &= vals >= thr_row.index_select(0, rows.view(-1)).view(rows.shape)
    pick = torch.nonzero(ok.view(-1), as_tuple=True)[0]
    return pick // BUCKET, rows.view(-1)[pick], vals.view(-1)[pick]


def _numpy_view(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor as a numpy array without a copy; bfloat16 (which numpy lacks) as its uint16 bits."""
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


class BucketTile:
    """A product tile S (n, m), its bucket maxima R (ceil(n / BUCKET), m), made in one read of S, and R's own
    bucket maxima R2 (BUCKET^2 query rows each, 1/256 of S) for the per-column filters.

    Args:
        s: (n, m) screened products (bfloat16 or float32), rows = queries, columns = train rows.
        out: optional contiguous (ceil(n / BUCKET), m) tensor of S's dtype for R, reused across tiles.
        compiled: gather and compare lanes in the filters with the compiled loop (`lane_hits`; CPU only).
    """

    def __init__(self, s: torch.Tensor, out: torch.Tensor | None = None, compiled: bool = False):
        if compiled and s.device.type != "cpu":
            raise ValueError(f"compiled tile filters run on a CPU; this tile is on {s.device}")
        self.s, self.compiled = s, compiled
        self.r = bucket_max(s, out)
        self._r2: torch.Tensor | None = None

    @property
    def r2(self) -> torch.Tensor:
        """(ceil(n / BUCKET^2), m) maxima of R over BUCKET consecutive buckets, made on first use."""
        if self._r2 is None:
            self._r2 = bucket_max(self.r)
        return self._r2

    def topk_hits(self, row_floor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, cols, values) of the entries s[i, j] >= row_floor[i] (row_floor in S's dtype, from `at_least`): R2
        entries that pass their rows' least floor, then their buckets that pass their own least floor, then entries."""
        bucket_floor = per_bucket(row_floor, "amin")
        b2, j = torch.nonzero(self.r2 >= per_bucket(bucket_floor, "amin")[:, None], as_tuple=True)
        p, b, _ = lane_hits(self.r, b2, j, thr_row=bucket_floor, compiled=self.compiled)
        j = j[p]
        p, rows, vals = lane_hits(self.s, b, j, thr_row=row_floor, compiled=self.compiled)
        return rows, j[p], vals


class Uncertainty:
    """Where the canonical similarity c of a screened entry s lies: low(s) <= c <= high(s).

    |s - c| <= b + u |s| (Screen.input_bound b, output roundoff u), so c lies in s -+ (u |s| + b). Each method
    rounds at most three times in float32 (<= 2^-23 each for |values| < 4); SLACK inside b covers them, so the
    computed bounds hold as they are.
    """

    def __init__(self, input_bound: float, out_u: float):
        self.b, self.u = input_bound + SLACK, out_u

    def low(self, s: torch.Tensor) -> torch.Tensor:
        """float32 lower bound on c."""
        s = s.float()
        return s - self.u * s.abs() - self.b

    def high(self, s: torch.Tensor) -> torch.Tensor:
        """float32 upper bound on c."""
        s = s.float()
        return s + self.u * s.abs() + self.b

    def reach(self, y: torch.Tensor) -> torch.Tensor:
        """float32 r with high(s) < y for every s < r: entries screened below r cannot have c >= y."""
        y = y - self.b  # s + u|s| >= y - b, solved for s on each side of 0
        return torch.where(y >= 0, y / (1 + self.u), y / (1 - self.u))


class TrainRowMax:
    """Screened candidates for each train row's (column's) maximum over a group's queries of the similarity, or of
    the margin c - offset, gathered from the tiles of one column range, query chunk by query chunk.

    Why the candidates hold every exact argmax: L, a lower bound on the maximum, is the largest low(s) seen (for
    margins, low(s) - offset). An entry whose high(s) (high(s) - offset) falls below L cannot be the maximum, nor
    tie with it; every other entry is kept. The exact margin float32(c - offset) rounds once more (<= 2^-23 for
    |c - offset| < 4): margins keep entries down to L - SLACK. A chunk keeps its entries against its running L; the
    final L discards the rest before the exact re-check (`candidates`).

    Bucket filter: no entry of bucket B can pass unless its maximum R_B does (margins: unless high(R_B) - min(off
    over B) does), and no bucket of an R2 entry unless that entry does (with min(off) over its BUCKET^2 rows). L
    itself grows from low(R2) and low(R_B) (margins: minus max(off) over the same rows), which an entry attains or
    beats. Sorting each group's queries by offset keeps min and max(off) over a bucket close (scan.py).

    Args:
        n_cols: columns (train rows) of the range.
        err: the screen's Uncertainty for these queries and train rows.
        offsets: (n_group,) float32 offsets in the scanner's row order, or None for the plain similarity.
    """

    def __init__(self, n_cols: int, err: Uncertainty, offsets: torch.Tensor | None, device: torch.device):
        self.err, self.offsets = err, offsets
        self.best = torch.full((n_cols,), -torch.inf, device=device)
        self.rows, self.cols, self.vals = [], [], []

    def floor(self) -> torch.Tensor:
        """Per column, the least stored value (screened s, or high(s) - offset) an entry needs to stay."""
        return self.err.reach(self.best) if self.offsets is None else self.best - SLACK

    def add(self, tile: BucketTile, r0: int) -> None:
        """Take the candidates of one tile whose query rows are r0 .. r0 + n of the group.

        Both filters run on R2 first (1/256 of the tile), then on the buckets of the R2 entries that pass, then on
        the entries of the buckets that pass: each level keeps a superset of what the next keeps. Slots past a short
        last bucket repeat its last row, so a pair may be kept twice, which `candidates` allows (the exact re-check
        takes distinct pairs).
        """
        rows, j, stat = self._similarity(tile) if self.offsets is None else self._margins(tile, r0)
        self.rows.append(rows + r0)
        self.cols.append(j)
        self.vals.append(stat)

    def _similarity(self, tile: BucketTile) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tile rows, columns, screened s as float32) of the entries that may hold a column's maximum."""
        self.best = torch.maximum(self.best, self.err.low(tile.r2.amax(dim=0)))
        floor = at_least(self.floor(), tile.r.dtype)  # compares in the tile's dtype: no copy
        b2, j = torch.nonzero(tile.r2 >= floor, as_tuple=True)
        p, b, _ = lane_hits(tile.r, b2, j, thr_pair=floor[j], compiled=tile.compiled)
        j = j[p]
        p, rows, vals = lane_hits(tile.s, b, j, thr_pair=floor.index_select(0, j), compiled=tile.compiled)
        return rows, j[p], vals.float()

    def _margins(self, tile: BucketTile, r0: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tile rows, columns, high(s) - offset) of the entries that may hold a column's maximum margin.

        A bucket or entry with high(s) - min(offset) < floor can neither pass nor raise L (low - max offset is
        lower): each level compares in the tile's dtype first (`reach`, less SLACK for the float32 sum), and the
        float32 bounds run on the few that stay.
        """
        off = self.offsets[r0 : r0 + tile.s.shape[0]]
        lo_b, hi_b = per_bucket(off, "amin"), per_bucket(off, "amax")  # offsets over each bucket of rows
        lo_b2, hi_b2 = per_bucket(lo_b, "amin"), per_bucket(hi_b, "amax")  # ... and over each R2 row
        r2 = tile.r2.float()
        self.best = torch.maximum(self.best, (self.err.low(r2) - hi_b2[:, None]).amax(dim=0))
        floor = self.floor()
        b2, j = torch.nonzero(self.err.high(r2) - lo_b2[:, None] >= floor, as_tuple=True)
        near = at_least(self.err.reach(floor[j] + lo_b2[b2] - SLACK), tile.r.dtype)
        p, b, r = lane_hits(tile.r, b2, j, thr_pair=near, compiled=tile.compiled)
        j, r = j[p], r.float()
        self.best.scatter_reduce_(0, j, self.err.low(r) - hi_b[b], "amax")  # a tighter L from the buckets
        floor = self.floor()
        pick = torch.nonzero(self.err.high(r) - lo_b[b] >= floor[j], as_tuple=True)[0]
        b, j = b[pick], j[pick]
        near = at_least(self.err.reach(floor[j] + lo_b[b] - SLACK), tile.s.dtype)
        p, rows, vals = lane_hits(tile.s, b, j, thr_pair=near, compiled=tile.compiled)
        j = j[p]
        stat = self.err.high(vals) - off[rows]
        keep = torch.nonzero(stat >= floor[j], as_tuple=True)[0]
        return rows[keep], j[keep], stat[keep]

    def candidates(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(group rows, columns) of the pairs the final L still admits."""
        rows, cols, vals = torch.cat(self.rows), torch.cat(self.cols), torch.cat(self.vals)
        keep = vals >= self.floor()[cols]
        return rows[keep], cols[keep]

"""One statistic per web row, in memory or memory-mapped from disk (`Column`), and a rule's cut on it (`Cut`).

Both kinds of column answer the same questions with the same bits: how many values lie above v (a binary search on
the ascending copy), which cut keeps the `count` lowest or highest (ties by row), the values at some rows, the values
in row-order chunks (for a streamed mask). A disk column maps only its sorted copy and row order for good; row-order
values are read in chunks or gathered through a short-lived map, so a page's memory stays small at any n.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from clipsim import sorted_stats as sorted_store
from clipsim.sorted_stats import cumulative_hist, read_chunks, stem


class Column:
    """A statistic held in memory: values (n,) float32 in row order; the ascending copy is sorted on first use."""

    on_disk = False

    def __init__(self, values: np.ndarray, name: str = "max_sim", sorted_values: np.ndarray | None = None):
        self.name = name
        self.values = np.ascontiguousarray(values, dtype=np.float32)
        self.n = len(self.values)
        if sorted_values is not None:
            self.__dict__["sorted"] = sorted_values

    @cached_property
    def sorted(self) -> np.ndarray:
        """The values ascending (n,) float32."""
        return np.sort(self.values)

    @property
    def nbytes(self) -> int:
        """Bytes held in memory."""
        return self.values.nbytes + (self.__dict__["sorted"].nbytes if "sorted" in self.__dict__ else 0)

    def count_above(self, value: np.float32) -> int:
        """How many values are > value (value already a float32: see floor32)."""
        return self.n - int(np.searchsorted(self.sorted, value, side="right"))

    def tie_row(self, value: np.float32, first: int, need: int) -> int:
        """The row of the `need`-th (1-based) value equal to `value` in row order; `first` = values below it."""
        return int(np.flatnonzero(self.values == value)[need - 1])

    def at(self, rows: np.ndarray) -> np.ndarray:
        """Values at some rows (any shape of int indices)."""
        return self.values[rows]

    def chunks(self, chunk_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, values) in row order, chunk_rows (default clipsim.sorted_stats.CHUNK_ROWS) at a time."""
        chunk_rows = chunk_rows or sorted_store.CHUNK_ROWS
        for lo in range(0, self.n, chunk_rows):
            yield lo, self.values[lo : lo + chunk_rows]

    def rows_above(self, value: np.float32) -> np.ndarray | None:
        """Rows with values > value when a row order is stored (None in memory: callers scan instead)."""
        return None

    def hist(self) -> tuple[np.ndarray, np.ndarray]:
        """(edges, how many values are > each edge): the cumulative histogram of clipsim.sorted_stats."""
        return cumulative_hist(self.name, self.sorted)


ANSWERS_KEPT = 4  # DiskColumn.at keeps this many recent answers
SEARCH_WINDOW = 1024  # DiskColumn.count_above reads its last this-many candidates at once (4 KB)


def float32_offset(f, n: int) -> int:
    """Where the data of a stored (n,) float32 .npy begins; f is open at its start.

    Raises:
        ValueError: the file holds another dtype or shape (names the file and the fix).
    """
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(f)
    if dtype != np.dtype("<f4") or shape != (n,):
        raise ValueError(f"{f.name} holds {dtype} {shape}, not float32 ({n},); re-run the search")
    return f.tell()


class DiskColumn(Column):
    """A statistic of a committed statistics folder (clipsim.sorted_stats): maps its sorted copy and row order."""

    on_disk = True

    def __init__(self, folder: Path, name: str):  # not Column.__init__: that would read the values
        self.name, self.folder = name, Path(folder)
        self.base = self.folder / stem(name)
        self.__dict__["sorted"] = np.load(f"{self.base}.sorted.npy", mmap_mode="r")
        self.order = np.load(f"{self.base}.order.npy", mmap_mode="r")
        self.n = len(self.sorted)
        self._answers: dict[tuple, np.ndarray] = {}  # recent at() answers, oldest first

    @property
    def values(self) -> np.ndarray:
        """All values in row order, through a fresh read-only map (pages touched stay counted while it lives)."""
        return np.load(f"{self.base}.values.npy", mmap_mode="r")

    @property
    def nbytes(self) -> int:
        """Bytes held in memory: none (the arrays are mapped from disk)."""
        return 0

    def tie_row(self, value: np.float32, first: int, need: int) -> int:
        """See Column.tie_row: the stored order lists equal values by row, so it is one read."""
        return int(self.order[first + need - 1])

    def at(self, rows: np.ndarray) -> np.ndarray:
        """Values at some rows, read one by one (pread): a map would fault in the pages around each scattered row
        (20,000 rows of a 100M-row column touched ~400 MB, even advised MADV_RANDOM). The last few answers are kept
        (a page asks for the same stored neighbours' rows at every threshold change)."""
        rows = np.asarray(rows)
        key = (rows.shape, hashlib.blake2b(np.ascontiguousarray(rows, dtype=np.int64).tobytes(), digest_size=16).digest())
        if key not in self._answers:
            if len(self._answers) >= ANSWERS_KEPT:
                self._answers.pop(next(iter(self._answers)))
            self._answers[key] = self._gather(rows)
        return self._answers[key].copy()

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        unique, inverse = np.unique(rows.ravel().astype(np.int64), return_inverse=True)
        if len(unique) and (unique[0] < 0 or unique[-1] >= self.n):
            raise IndexError(f"rows {int(unique[0])}..{int(unique[-1])} are outside this column of {self.n} rows")
        with open(f"{self.base}.values.npy", "rb") as f:
            offset, fd = float32_offset(f, self.n), f.fileno()
            data = b"".join([os.pread(fd, 4, offset + 4 * r) for r in unique.tolist()])
        return np.frombuffer(data, dtype="<f4")[inverse].reshape(rows.shape).astype(np.float32)

    def count_above(self, value: np.float32) -> int:
        """See Column.count_above: a binary search by positioned reads of the stored ascending copy, the last
        SEARCH_WINDOW candidates in one read (through the map, the pages around every probe stayed counted in
        the process: tens of MB per threshold change at 100M rows)."""
        lo, hi = 0, self.n  # the first index whose value is > value lies in [lo, hi]
        with open(f"{self.base}.sorted.npy", "rb") as f:
            offset, fd = float32_offset(f, self.n), f.fileno()
            while hi - lo > SEARCH_WINDOW:
                mid = (lo + hi) // 2
                if np.frombuffer(os.pread(fd, 4, offset + 4 * mid), dtype="<f4")[0] > value:
                    hi = mid
                else:
                    lo = mid + 1
            window = np.frombuffer(os.pread(fd, 4 * (hi - lo), offset + 4 * lo), dtype="<f4")
        return self.n - (lo + int(np.searchsorted(window, value, side="right")))

    def chunks(self, chunk_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, values) in row order, read with plain reads."""
        return read_chunks(Path(f"{self.base}.values.npy"), chunk_rows)

    def rows_above(self, value: np.float32) -> np.ndarray:
        """Rows with values > value, from the stored order (a read of that many entries)."""
        return np.asarray(self.order[self.n - self.count_above(value) :])

    def hist(self) -> tuple[np.ndarray, np.ndarray]:
        """The stored cumulative histogram."""
        with np.load(f"{self.base}.hist.npz") as z:
            return z["edges"], z["above"]


def max_column(columns: list[Column], name: str) -> Column:
    """The elementwise maximum of several columns, in memory, from one chunked pass over each (exact: a maximum
    rounds nothing)."""
    out = np.empty(columns[0].n, np.float32)
    for parts in zip(*(c.chunks() for c in columns)):
        lo, first = parts[0]
        out[lo : lo + len(first)] = np.maximum.reduce([p for _, p in parts])
    return Column(out, name)


@dataclass(frozen=True)
class Cut:
    """Which web rows a rule removes, as a test on (value, row) of one column.

    above=True: removed iff v > value, or v == value and row > tie_row; above=False: removed iff v < value, or
    v == value and row > tie_row. tie_row None: no equal value is removed. Thresholds use above=True with no tie
    row; 'near' keeps the `count` lowest by (v, row) (above=True), 'far' the highest with ties by row (above=False).
    """

    kind: str
    value: np.float32
    above: bool = True
    tie_row: int | None = None

    def removed(self, values: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """The removed mask of values at rows (rows needed only with a tie_row)."""
        out = values > self.value if self.above else values < self.value
        if self.tie_row is not None:
            out |= (values == self.value) & (np.asarray(rows) > self.tie_row)
        return out


def keep_cut(column: Column, kind: str, count: int, lowest: bool) -> Cut:
    """The cut keeping `count` rows: the lowest by (v, row) (lowest=True, 'near'), else the highest with equal
    values kept by lower row ('far'); count already resolved to [0, n]."""
    if count == 0:  # remove everything
        return Cut(kind, np.float32(-np.inf if lowest else np.inf), lowest, -1)
    s = column.sorted
    value = s[count - 1] if lowest else s[column.n - count]
    first = int(np.searchsorted(s, value, side="left"))  # values below the cut
    strictly = first if lowest else column.n - int(np.searchsorted(s, value, side="right"))  # kept for sure
    need = count - strictly  # equal values kept, lowest rows first (>= 1: the cut value itself is kept)
    return Cut(kind, np.float32(value), lowest, column.tie_row(np.float32(value), first, need))


def cut_for_fraction(column: Column, fraction: float) -> float:
    """A value v whose removal count (values > v) is the achievable count closest to fraction * n.

    Ties between two achievable counts equally far from the target go to the smaller count (higher v). The answer is
    a stored float32 value (or one ulp below the minimum, which removes everything).

    Raises:
        ValueError: fraction outside [0, 1].
    """
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"fraction {fraction!r} is not in [0, 1]; pass the share of web samples to remove")
    a, n = column.sorted, column.n
    if n == 0:
        return 0.0
    target = round(float(fraction) * n)
    if target == 0:
        return float(a[-1])
    v = a[n - target]  # the smallest value that `target` removals would take
    j = int(np.searchsorted(a, v, side="left"))  # removing v's whole tie group removes n - j >= target
    above = a[j - 1] if j > 0 else np.nextafter(v, np.float32(-np.inf))  # tau = a[j-1] removes n - j
    fewer = n - int(np.searchsorted(a, v, side="right"))  # tau = v removes fewer than target
    return float(v) if target - fewer <= (n - j) - target else float(above)

"""Per-train-sample statistics sorted once and stored as memory-mappable arrays, so readers never load or sort them.

A statistics folder holds, per statistic ('max_sim', 'margin/<ref>'; file stem with '/' -> '__'):
  `<stem>.values.npy` (n,) float32 in row order; `<stem>.sorted.npy` (n,) float32 ascending;
  `<stem>.order.npy` (n,) uint32 (int64 from 2**32 rows) the rows in that order, equal values by row (a stable sort);
  `<stem>.hist.npz` edges (float32) and above (int64): how many values are > each edge (a cumulative histogram);
and `config.json` (what it was made from). It is built under a temporary name and renamed into place, so a reader
sees the old complete folder or the new one, never a mix. Two kinds exist: `search/<train>/<test>/sorted/`, written
by the search's commit before its config.json, and `search/<train>/_combined/<tests>/`, the elementwise maximum
over several test sets (clipsim.prune.combine).
"""
from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from clipsim import fileio
from clipsim.errors import WorkspaceError

SORTED = "sorted"
COMBINED = "_combined"
FORMAT = 1
CHUNK_ROWS = 1 << 22  # 4M rows = 16 MB of float32 per read or write: bounds a streamed pass's memory
HIST_BINS = 2000  # edges every 0.001 in [-1, 1] for similarities, every 0.002 in [-2, 2] for margins
_SIGN = np.uint32(0x80000000)
_LOW32 = np.uint64(0xFFFFFFFF)


def stem(name: str) -> str:
    """File stem of a statistic: 'margin/curated' -> 'margin__curated'."""
    return name.replace("/", "__")


def hist_range(name: str) -> tuple[float, float]:
    """The value range of a statistic's histogram: margins span [-2, 2], similarities [-1, 1]."""
    return (-2.0, 2.0) if name.startswith("margin") or name == "g" else (-1.0, 1.0)


def read_config(folder: Path) -> dict | None:
    """A statistics folder's config.json, or None when the folder is not (yet) committed."""
    path = Path(folder) / "config.json"
    return fileio.read_json(path) if path.is_file() else None


# ----- sorting ------------------------------------------------------------------------------------------
def _to_keys(values: np.ndarray) -> np.ndarray:
    """Order-preserving uint32 of float32 (-0.0 first made +0.0, so equal values get equal keys)."""
    bits = (np.asarray(values, np.float32) + np.float32(0.0)).view(np.uint32)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def _from_keys(keys: np.ndarray) -> np.ndarray:
    keys = keys.astype(np.uint32)
    return np.where(keys & _SIGN, keys & ~_SIGN, ~keys).view(np.float32)


def sort_with_order(values: np.ndarray, sorted_out: np.ndarray | None = None,
                    order_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ascending values and their rows, ties by row: exactly `np.sort(values)` and `np.argsort(values, kind='stable')`.

    One in-place sort of 64-bit keys (value bits << 32 | row), about 3x faster than a stable argsort; memory is the
    8n-byte keys plus the outputs (pass memory-mapped outputs to bound it).

    Args:
        values: (n,) float32 (an array or a memory map), no NaN.
        sorted_out, order_out: optional (n,) outputs (float32; uint32, or int64 from 2**32 rows).

    Returns:
        (sorted (n,) float32, order (n,) uint32 | int64).

    Raises:
        ValueError: a NaN value (a statistic is a cosine or a difference of cosines: never NaN).
    """
    n = len(values)
    sorted_out = np.empty(n, np.float32) if sorted_out is None else sorted_out
    if n >= 2**32:  # the row no longer fits beside the value in 64 bits
        order = np.argsort(values, kind="stable")
        order_out = order if order_out is None else order_out
        order_out[:] = order
        sorted_out[:] = np.asarray(values)[order]
        return sorted_out, order_out
    order_out = np.empty(n, np.uint32) if order_out is None else order_out
    keys = np.empty(n, np.uint64)
    for lo in range(0, n, CHUNK_ROWS):
        chunk = np.asarray(values[lo : lo + CHUNK_ROWS], np.float32)
        if np.isnan(chunk).any():
            raise ValueError(f"statistic holds NaN at row {lo + int(np.flatnonzero(np.isnan(chunk))[0])}; "
                             "re-run the search that wrote it")
        keys[lo : lo + len(chunk)] = (_to_keys(chunk).astype(np.uint64) << np.uint64(32)) | np.arange(
            lo, lo + len(chunk), dtype=np.uint64)
    keys.sort()
    for lo in range(0, n, CHUNK_ROWS):
        part = keys[lo : lo + CHUNK_ROWS]
        sorted_out[lo : lo + len(part)] = _from_keys(part >> np.uint64(32))
        order_out[lo : lo + len(part)] = part & _LOW32
    return sorted_out, order_out


def cumulative_hist(name: str, sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(edges (HIST_BINS + 1,) float32, above (HIST_BINS + 1,) int64): how many values are > each edge (exact)."""
    lo, hi = hist_range(name)
    edges = np.linspace(lo, hi, HIST_BINS + 1).astype(np.float32)
    return edges, len(sorted_values) - np.searchsorted(sorted_values, edges, side="right").astype(np.int64)


# ----- chunked .npy files -------------------------------------------------------------------------------
def _write_npy(path: Path, dtype, n: int, chunks: Iterable[np.ndarray]) -> int:
    """Write (n,) `dtype` .npy from row-order chunks without holding it; returns the rows written."""
    done = 0
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (n,)})
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, dtype=dtype)
            if done + len(chunk) > n:
                return done + len(chunk)  # more rows than announced: the caller refuses the file
            f.write(chunk.tobytes())
            done += len(chunk)
    return done


def read_chunks(path: Path, chunk_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, chunk) of a 1-D .npy, read with plain reads (memory bounded by one chunk, nothing stays mapped);
    chunk_rows defaults to CHUNK_ROWS."""
    chunk_rows = chunk_rows or CHUNK_ROWS
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        for lo in range(0, shape[0], chunk_rows):
            yield lo, np.fromfile(f, dtype=dtype, count=min(chunk_rows, shape[0] - lo))


# ----- writing a folder ---------------------------------------------------------------------------------
def _write_stat(folder: Path, name: str, chunks: Iterable[np.ndarray], n: int) -> None:
    base = folder / stem(name)
    got = _write_npy(Path(f"{base}.values.npy"), np.float32, n, chunks)
    if got != n:
        raise WorkspaceError(f"statistic {name!r} has {got} rows but {n} were expected; re-run the search")
    values = np.load(f"{base}.values.npy", mmap_mode="r")
    order_dtype = np.uint32 if n < 2**32 else np.int64
    sorted_out = np.lib.format.open_memmap(f"{base}.sorted.npy", "w+", np.float32, (n,)) if n else np.zeros(0, np.float32)
    order_out = np.lib.format.open_memmap(f"{base}.order.npy", "w+", order_dtype, (n,)) if n else np.zeros(0, order_dtype)
    sort_with_order(values, sorted_out, order_out)
    edges, above = cumulative_hist(name, sorted_out)
    if n:
        sorted_out.flush()
        order_out.flush()
    else:
        np.save(f"{base}.sorted.npy", sorted_out)
        np.save(f"{base}.order.npy", order_out)
    del values, sorted_out, order_out
    with open(f"{base}.hist.npz", "wb") as f:
        np.savez(f, edges=edges, above=above)


def write_folder(folder: Path, config: dict, sources: dict[str, Callable[[], Iterable[np.ndarray]]], n: int) -> None:
    """Build a statistics folder from row-order chunks of each statistic, then rename it into place (one step).

    Writers of one folder are serialised by a lock beside it; leftovers of a killed writer are removed first.

    Args:
        folder: the final folder.
        config: what the statistics were made from (fingerprints); n, stats, format and created are added.
        sources: {statistic name: callable returning an iterator of (rows,) float32 chunks in row order}.
        n: rows of every statistic.

    Raises:
        WorkspaceError: a source gave another number of rows. ValueError: a NaN value.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with fileio.locked(folder.parent / f".{folder.name}.lock"):  # so no writer clears another's folder in progress
        fileio.clear_leftovers(folder.parent, folder.name)
        tmp = fileio.make_temp_dir(folder.parent, f".{folder.name}.", ".tmp")
        try:
            for name, chunks in sources.items():
                _write_stat(tmp, name, chunks(), n)
            fileio.write_json(tmp / "config.json", {**config, "n": int(n), "stats": sorted(sources), "format": FORMAT,
                                                     "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
            fileio.swap_dir(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def write_search_sorted(folder: Path, fingerprint: str, shard_files: list[Path], names: list[str], n: int) -> None:
    """Write `<search folder>/sorted/` from the search's per-shard statistics (what its commit calls).

    Args:
        folder: the search folder `search/<train>/<test>`.
        fingerprint: the fingerprint its config.json will carry (readers trust the folder only under it).
        shard_files: its `stats/shard_<i>.npz`, in shard order.
        names: statistics to sort ('max_sim', 'margin/<ref>').
        n: train rows.
    """
    existing = read_config(Path(folder) / SORTED)
    if existing is not None and existing.get("search") == fingerprint and set(names) <= set(existing["stats"]):
        return  # written by an earlier run of this commit that was killed before its config.json

    def chunks(name: str) -> Callable[[], Iterator[np.ndarray]]:
        def read() -> Iterator[np.ndarray]:
            for path in shard_files:
                with np.load(path) as z:
                    if z.files:  # a shard with no rows stores no arrays
                        yield z[stem(name)]
        return read

    write_folder(Path(folder) / SORTED, {"search": fingerprint}, {name: chunks(name) for name in names}, n)

"""Embedding shards in the clip-retrieval layout: atomic writes, counts from validated npy headers, block
iteration and the commit state of a set.

Layout of one dataset folder: `img_emb/img_emb_<i>.npy` (float16, L2-normalised, rows x dim) and the
row-aligned `metadata/metadata_<i>.parquet` (string column `key`; `caption`, `label` where known). A set that
`clipsim embed` makes also holds `config.json` (written first) and `summary.json` (written last: the commit
point); a folder with the first and not the second is an unfinished run and is never read as a dataset.
"""
from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from clipsim import fileio
from clipsim.errors import DataError

EMB_DIR = "img_emb"
META_DIR = "metadata"
CONFIG = "config.json"
SUMMARY = "summary.json"
NORM_TOLERANCE = 1e-2  # float16 storage keeps norms within ~1e-3 of 1; 1e-2 flags unnormalised input
_SHARD_RE = re.compile(r"img_emb_(\d+)\.npy$")
SPARSE_SHARE = 0.01  # metadata_at reads fewer rows than this share of a shard from their row groups only
META_ROW_GROUP = 65_536  # metadata shards are written in row groups this size: a few rows read ~1/16 of a 1M shard
# instead of its pandas frame (~70 MB of Python strings): a page of neighbours spread over 12 LAION shards stays small


def emb_path(root: Path, index: int) -> Path:
    """Path of embedding shard `index` under a dataset folder."""
    return Path(root) / EMB_DIR / f"img_emb_{index}.npy"


def meta_path(root: Path, index: int) -> Path:
    """Path of metadata shard `index` under a dataset folder."""
    return Path(root) / META_DIR / f"metadata_{index}.parquet"


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Read shape and dtype of a .npy file from its header, and check that the file holds all the rows it declares.

    Raises:
        DataError: the file is not a readable .npy file, or is shorter (truncated) or longer than its header says.
    """
    try:
        with fileio.open_regular(path, 1 << 62, "embedding shard") as (f, size):
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
            shape, _, dtype = read(f)
            start = f.tell()
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{path} is not a readable .npy file ({err}); re-create it with `clipsim embed`") from err
    want = start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != want:
        rows = (size - start) // max(1, int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)
        state = f"is truncated: it holds {size:,} bytes" if size < want else f"has {size - want:,} bytes too many"
        raise DataError(
            f"{path} {state}, but its header declares {shape[0]:,} rows of {shape[1:]} {dtype} ({want:,} bytes; "
            f"about {max(rows, 0):,} whole rows are there); the copy or write was cut short: restore the file, or "
            "delete it and run `python -m clipsim embed` again (it redoes missing shards)"
        )
    return shape, dtype


def parquet_file(path: Path) -> pq.ParquetFile:
    """Open a metadata parquet file (footer only).

    Raises:
        DataError: the file is missing, not a regular file, or not valid parquet (names it and the fix).
    """
    with fileio.open_regular(path, 1 << 62, "metadata file"):
        pass  # devices and pipes are refused before pyarrow reads them
    try:
        return pq.ParquetFile(path)
    except (OSError, ValueError) as err:  # pyarrow.ArrowInvalid is a ValueError
        raise DataError(f"metadata file {path} is not valid parquet ({err}); restore it, or re-create the "
                        "dataset's embeddings (`python -m clipsim embed --force`)") from err


def check_rows(path: Path, emb: np.ndarray, first_row: int = 0) -> None:
    """Reject non-finite or unnormalised embedding rows, naming the file and the first bad row.

    Args:
        path: file the rows came from (for the message).
        emb: (n, d) float array.
        first_row: row number of emb[0] inside that file.
    """
    emb32 = np.asarray(emb, dtype=np.float32)
    bad = ~np.isfinite(emb32).all(axis=1)
    if bad.any():
        row = first_row + int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: row {row} holds NaN or infinite values ({int(bad.sum())} such rows in this block); "
            "re-embed the dataset or drop those rows together with their metadata rows"
        )
    norms = np.linalg.norm(emb32, axis=1)
    off = np.abs(norms - 1.0) > NORM_TOLERANCE
    if off.any():
        row = first_row + int(np.flatnonzero(off)[0])
        raise DataError(
            f"{path}: row {row} has L2 norm {norms[off][0]:.4f}, but clipsim needs L2-normalised embeddings; "
            "divide each row by its norm before storing (clip-retrieval does this by default)"
        )


def write_shard(root: Path, index: int, embeddings: np.ndarray, metadata: pd.DataFrame) -> None:
    """Write one embedding shard and its metadata atomically (npy first, parquet last marks it complete).

    Args:
        root: dataset folder (holds img_emb/ and metadata/).
        index: shard number.
        embeddings: (n, d) float array, L2-normalised; stored as float16.
        metadata: n rows with a string column `key`.

    Raises:
        DataError: rows disagree, keys are missing, or embeddings are non-finite or unnormalised.
    """
    if embeddings.ndim != 2 or len(embeddings) != len(metadata):
        raise DataError(
            f"shard {index} for {root}: {embeddings.shape} embeddings vs {len(metadata)} metadata rows; "
            "both must have one row per sample"
        )
    if "key" not in metadata.columns:
        raise DataError(f"shard {index} for {root}: metadata has no `key` column; add one string key per sample")
    emb16 = np.ascontiguousarray(embeddings, dtype=np.float16)
    check_rows(emb_path(root, index), emb16)
    metadata = metadata.reset_index(drop=True).copy()
    metadata["key"] = metadata["key"].astype(str)
    meta_path(root, index).unlink(missing_ok=True)  # an old parquet must not vouch for a new npy
    fileio.write_npy(emb_path(root, index), emb16)
    fileio.write_parquet(meta_path(root, index), metadata, row_group_size=META_ROW_GROUP)


@dataclass(frozen=True)
class Shard:
    """One complete shard: its number, files, row count and global row offset."""

    index: int
    emb: Path
    meta: Path
    rows: int
    start: int


# Sets whose validated shard list a process keeps (`EmbeddingSet`): a page or job opens the same sets many times, and
# validating 400 shards' headers took ~0.1 s per 40 shards on every open.
OPENED_SETS = 64
KNOWN_KEYS = 200_000  # keys of single rows an opened set keeps (`EmbeddingSet.keys_at`): ~25 MB
_OPENED: OrderedDict[tuple[str, bool], tuple[tuple, tuple[list[Shard], int, dict]]] = OrderedDict()
_OPENED_LOCK = threading.Lock()


def _folder_stamp(root: Path) -> tuple | None:
    """(name, size, mtime_ns, ctime_ns, inode) of every file in a set's shard folders, or None when they cannot be
    listed: a new, removed, rewritten, truncated or replaced file changes it, so a set opened again with the same stamp
    holds the shards validated last time."""
    stamp = []
    for sub in (EMB_DIR, META_DIR):
        try:
            with os.scandir(Path(root) / sub) as entries:
                for e in entries:
                    st = e.stat(follow_symlinks=True)
                    stamp.append((sub, e.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
        except OSError:
            return None
    return tuple(sorted(stamp))


class EmbeddingSet:
    """Read-only view of a clip-retrieval embedding folder, validated on open from headers only.

    Attributes:
        root: the dataset folder.
        shards: complete shards in index order.
        count: total rows.
        dim: embedding dimension.
    """

    def __init__(self, root: Path, allow_partial: bool = False):
        self.root = Path(root)
        key, stamp = (str(self.root.absolute()), allow_partial), _folder_stamp(self.root)
        with _OPENED_LOCK:
            known = _OPENED.get(key)
        if known is not None and known[0] == stamp:
            shards, self.dim, self._known_keys = known[1]
        else:
            shards = self._discover(allow_partial)
            self.dim = npy_header(shards[0].emb)[0][1] if shards else 0
            self._known_keys: dict[int, str] = {}
            if stamp is not None:
                with _OPENED_LOCK:
                    _OPENED[key] = (stamp, (shards, self.dim, self._known_keys))
                    _OPENED.move_to_end(key)
                    while len(_OPENED) > OPENED_SETS:
                        _OPENED.popitem(last=False)
        self.shards = list(shards)
        self.count = sum(s.rows for s in self.shards)
        self._starts = np.array([s.start for s in self.shards], dtype=np.int64)

    def _discover(self, allow_partial: bool) -> list[Shard]:
        emb_dir = self.root / EMB_DIR
        if not emb_dir.is_dir():
            raise DataError(
                f"no embeddings at {emb_dir}; run `python -m clipsim embed` for this dataset "
                "or point the dataset at a clip-retrieval folder holding img_emb/ and metadata/"
            )
        found = sorted((int(m.group(1)), p) for p in emb_dir.iterdir() if (m := _SHARD_RE.search(p.name)))
        shards, start, dim = [], 0, None
        for index, emb in found:
            meta = meta_path(self.root, index)
            if not meta.exists():
                if allow_partial:
                    continue
                raise DataError(
                    f"{emb} has no metadata file {meta}; the shard is incomplete: "
                    "re-run `clipsim embed` (it redoes unfinished shards) or delete the npy"
                )
            shape, dtype = npy_header(emb)
            if len(shape) != 2 or dtype not in (np.float16, np.float32):
                raise DataError(f"{emb} holds {dtype} of shape {shape}; expected a 2-D float16 array (rows x dim)")
            if dim is not None and shape[1] != dim:
                raise DataError(
                    f"{emb} has dimension {shape[1]} but earlier shards have {dim}; all shards of a dataset "
                    "must come from the same model: re-embed this shard or move it to its own dataset"
                )
            dim = shape[1]
            meta_rows = parquet_file(meta).metadata.num_rows
            if meta_rows != shape[0]:
                raise DataError(
                    f"{meta} has {meta_rows} rows but {emb} has {shape[0]}; metadata must be row-aligned "
                    "with its npy: re-run `clipsim embed` for this dataset or fix the pair"
                )
            shards.append(Shard(index, emb, meta, shape[0], start))
            start += shape[0]
        if not shards and not allow_partial:
            raise DataError(f"{emb_dir} holds no complete shard (img_emb_<i>.npy + metadata_<i>.parquet); run "
                            "`python -m clipsim embed` for this dataset, or point it at a folder that holds shards")
        return shards

    def fingerprint(self) -> str:
        """Fingerprint of all shard files (names, sizes, mtimes)."""
        return fileio.file_fingerprint([p for s in self.shards for p in (s.emb, s.meta)])

    def load(self, shard: Shard) -> np.ndarray:
        """Memory-map one shard: (rows, dim) float16/float32, read-only."""
        return np.load(shard.emb, mmap_mode="r")

    def iter_blocks(self, block_rows: int, shards: list[Shard] | None = None) -> Iterator[tuple[Shard, int, np.ndarray]]:
        """Yield (shard, global_start, block) with block (<= block_rows, dim) float16, validated.

        Args:
            block_rows: rows per block; memory is bounded by one block.
            shards: subset of shards to read (default all).
        """
        for shard in shards if shards is not None else self.shards:
            emb = self.load(shard)
            for lo in range(0, shard.rows, block_rows):
                block = np.array(emb[lo : lo + block_rows], dtype=np.float16)  # read into memory once
                check_rows(shard.emb, block, first_row=lo)
                yield shard, shard.start + lo, block

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Gather rows by global id: (len(ids), dim) float16."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), self.dim), dtype=np.float16)
        where = np.searchsorted(self._starts, ids, side="right") - 1
        for si in np.unique(where):
            sel = where == si
            shard = self.shards[si]
            out[sel] = self.load(shard)[ids[sel] - shard.start]
        return out

    def all(self) -> np.ndarray:
        """All rows (n, dim) float16, validated like `iter_blocks`; only for sets that fit in memory (test sets)."""
        if not self.shards:
            return np.zeros((0, self.dim), dtype=np.float16)
        parts = [np.asarray(self.load(s), dtype=np.float16) for s in self.shards]
        for shard, rows in zip(self.shards, parts):
            check_rows(shard.emb, rows)
        return np.concatenate(parts)

    def metadata(self, columns: list[str] | None = None, shards: list[Shard] | None = None) -> pd.DataFrame:
        """Concatenated metadata of the given shards (default all), row-aligned with `all()`."""
        parts = [_read_meta(s.meta, tuple(columns) if columns else None) for s in (shards or self.shards)]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"key": []})

    def columns(self) -> list[str]:
        """Metadata column names (from the first shard's schema)."""
        return list(parquet_file(self.shards[0].meta).schema_arrow.names) if self.shards else ["key"]

    def metadata_at(self, ids: np.ndarray, columns: list[str] | None = None) -> pd.DataFrame:
        """Metadata rows for global ids, in the order given."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return pd.DataFrame({c: [] for c in (columns or ["key"])})
        where = np.searchsorted(self._starts, ids, side="right") - 1
        parts, order = [], []
        for si in np.unique(where):
            sel = np.flatnonzero(where == si)
            shard = self.shards[si]
            cols = tuple(columns) if columns else None
            if len(sel) < SPARSE_SHARE * shard.rows:  # a few rows of a big shard: read from their row groups only
                parts.append(read_rows(shard.meta, ids[sel] - shard.start, cols))
            else:
                parts.append(_read_meta(shard.meta, cols).iloc[ids[sel] - shard.start])
            order.append(sel)
        frame = pd.concat(parts, ignore_index=True)
        return frame.iloc[np.argsort(np.concatenate(order), kind="stable")].reset_index(drop=True)

    def keys_at(self, ids: np.ndarray) -> np.ndarray:
        """Keys (str, object array) of global rows `ids`, in the order given. Read through `metadata_at`, and kept
        while the set's shard files are unchanged (up to KNOWN_KEYS per set): a labelling loop asks for the same few
        rows after every label, and each costs a metadata row-group read in a web shard."""
        ids = np.asarray(ids, dtype=np.int64).tolist()
        memo = self._known_keys
        found = {i: memo[i] for i in set(ids) if i in memo}
        missing = np.array(sorted(set(ids) - found.keys()), dtype=np.int64)
        if len(missing):
            read = dict(zip(missing.tolist(), self.metadata_at(missing, ["key"])["key"].astype(str).tolist()))
            found.update(read)
            if len(read) <= KNOWN_KEYS:
                if len(memo) + len(read) > KNOWN_KEYS:
                    memo.clear()
                memo.update(read)
        return np.array([found[i] for i in ids], dtype=object)

    def keys(self) -> np.ndarray:
        """All keys as an object array (n,), row-aligned."""
        return self.metadata(["key"])["key"].to_numpy()


@dataclass(frozen=True)
class SetState:
    """Where an embedding folder stands.

    Attributes:
        state: 'complete' (committed by summary.json, or written by another tool without config.json),
            'incomplete' (an embed run started: config.json without summary.json) or 'not embedded'.
        shards_done: shards with both files.
        shards_total: shards the run will write (None when unknown).
        lost: images the committed run could not embed, and stretches of a damaged tar it could not index
            (skipped.parquet lists them).
    """

    state: str
    shards_done: int
    shards_total: int | None
    lost: int = 0

    @property
    def label(self) -> str:
        """'complete', 'complete with 3 losses (see skipped.parquet)', 'incomplete (1 of 4 shards)', ..."""
        if self.state == "incomplete":
            total = "?" if self.shards_total is None else self.shards_total
            return f"incomplete ({self.shards_done} of {total} shards)"
        if self.state == "complete" and self.lost:
            return f"complete with {self.lost:,} losses (see skipped.parquet)"
        return self.state


def done_shards(root: Path) -> list[int]:
    """Indices of the shards of a folder that have both their npy and their metadata file (existence only)."""
    emb_dir = Path(root) / EMB_DIR
    found = [int(m.group(1)) for p in emb_dir.iterdir() if (m := _SHARD_RE.search(p.name))] if emb_dir.is_dir() else []
    return sorted(i for i in found if meta_path(root, i).exists())


def set_state(root: Path) -> SetState:
    """The commit state of an embedding folder, from config.json, summary.json and which shard files exist."""
    root = Path(root)
    if (root / SUMMARY).exists():
        summary = fileio.read_json(root / SUMMARY)
        return SetState("complete", int(summary.get("shards", 0)), int(summary.get("shards", 0)),
                        int(summary.get("skipped", 0)))
    done = len(done_shards(root))
    if (root / CONFIG).exists():
        total = fileio.read_json(root / CONFIG).get("shards")
        return SetState("incomplete", done, int(total) if total is not None else None)
    return SetState("complete", done, done) if done else SetState("not embedded", 0, None)


def check_commit(emb: EmbeddingSet) -> None:
    """Check that a committed set still holds exactly the shards its summary.json recorded.

    Raises:
        DataError: a shard was added, removed or rewritten with other rows after the set was committed.
    """
    path = emb.root / SUMMARY
    if not path.exists():
        return
    summary = fileio.read_json(path)
    have = {str(s.index): s.rows for s in emb.shards}
    want = summary.get("shard_rows")
    same = have == want if want is not None else (emb.count, len(emb.shards)) == (summary["rows"], summary["shards"])
    if not same:
        raise DataError(
            f"{emb.root} changed after its embedding run committed it: {path} records {summary['rows']:,} rows in "
            f"{summary['shards']} shards, the folder holds {emb.count:,} rows in {len(emb.shards)}; a shard was "
            "added, removed or replaced by hand: restore it, or run `python -m clipsim embed` for this dataset again (it "
            "redoes missing shards; --force re-embeds all)"
        )


@lru_cache(maxsize=16)  # a LAION metadata shard with captions is ~100 MB
def _read_meta_cached(path: str, mtime_ns: int, columns: tuple[str, ...] | None) -> pd.DataFrame:
    try:
        return pd.read_parquet(path, columns=list(columns) if columns else None)
    except (OSError, ValueError, KeyError) as err:  # pyarrow: ArrowInvalid (a ValueError), ArrowIOError, ...
        raise DataError(f"metadata file {path} cannot be read ({err}); restore it, or re-create the dataset's "
                        "embeddings (`python -m clipsim embed --force`)") from err


def read_rows(path: Path, rows: np.ndarray, columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Some rows of a metadata file, in the order given, reading only the row groups that hold them (nothing cached:
    a page showing a few pairs of a 400M-row web set touches many shards).

    Args:
        path: the parquet file.
        rows: row numbers inside the file, int array.
        columns: columns to read (None: all).

    Raises:
        DataError: the file cannot be read as parquet.
    """
    pf = parquet_file(path)
    sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
    bounds = np.cumsum([0, *sizes])
    rows = np.asarray(rows, dtype=np.int64)
    group = np.searchsorted(bounds, rows, side="right") - 1
    used = np.unique(group)
    first = np.cumsum([0, *(bounds[used + 1] - bounds[used])])[:-1]  # where each used group starts when read
    try:
        table = pf.read_row_groups(used.tolist(), columns=list(columns) if columns else None)
    except (OSError, ValueError) as err:
        raise DataError(f"metadata file {path} cannot be read ({err}); restore it, or re-create the dataset's "
                        "embeddings (`python -m clipsim embed --force`)") from err
    return table.take(first[np.searchsorted(used, group)] + rows - bounds[group]).to_pandas()


def _read_meta(path: Path, columns: tuple[str, ...] | None) -> pd.DataFrame:
    return _read_meta_cached(str(path), Path(path).stat().st_mtime_ns, columns)

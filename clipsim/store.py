"""Embedding shards in the clip-retrieval layout: atomic writes, counts from npy headers, block iteration.

Layout of one dataset folder: `img_emb/img_emb_<i>.npy` (float16, L2-normalised, rows x dim) and the
row-aligned `metadata/metadata_<i>.parquet` (string column `key`; `caption`, `label` where known).
"""
from __future__ import annotations

import re
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
NORM_TOLERANCE = 1e-2  # float16 storage keeps norms within ~1e-3 of 1; 1e-2 flags unnormalised input
_SHARD_RE = re.compile(r"img_emb_(\d+)\.npy$")


def emb_path(root: Path, index: int) -> Path:
    """Path of embedding shard `index` under a dataset folder."""
    return Path(root) / EMB_DIR / f"img_emb_{index}.npy"


def meta_path(root: Path, index: int) -> Path:
    """Path of metadata shard `index` under a dataset folder."""
    return Path(root) / META_DIR / f"metadata_{index}.parquet"


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Read shape and dtype of a .npy file from its header only.

    Raises:
        DataError: the file is not a readable .npy file.
    """
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
            shape, _, dtype = read(f)
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{path} is not a readable .npy file ({err}); re-create it with `clipsim embed`") from err
    return shape, dtype


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
    fileio.write_parquet(meta_path(root, index), metadata)


@dataclass(frozen=True)
class Shard:
    """One complete shard: its number, files, row count and global row offset."""

    index: int
    emb: Path
    meta: Path
    rows: int
    start: int


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
        self.shards = self._discover(allow_partial)
        self.count = sum(s.rows for s in self.shards)
        self.dim = npy_header(self.shards[0].emb)[0][1] if self.shards else 0
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
            meta_rows = pq.ParquetFile(meta).metadata.num_rows
            if meta_rows != shape[0]:
                raise DataError(
                    f"{meta} has {meta_rows} rows but {emb} has {shape[0]}; metadata must be row-aligned "
                    "with its npy: re-run `clipsim embed` for this dataset or fix the pair"
                )
            shards.append(Shard(index, emb, meta, shape[0], start))
            start += shape[0]
        if not shards and not allow_partial:
            raise DataError(f"{emb_dir} holds no complete shard (img_emb_<i>.npy + metadata_<i>.parquet)")
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
        return list(pq.ParquetFile(self.shards[0].meta).schema_arrow.names) if self.shards else ["key"]

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
            meta = _read_meta(shard.meta, tuple(columns) if columns else None)
            parts.append(meta.iloc[ids[sel] - shard.start])
            order.append(sel)
        frame = pd.concat(parts, ignore_index=True)
        return frame.iloc[np.argsort(np.concatenate(order), kind="stable")].reset_index(drop=True)

    def keys(self) -> np.ndarray:
        """All keys as an object array (n,), row-aligned."""
        return self.metadata(["key"])["key"].to_numpy()


@lru_cache(maxsize=16)  # a LAION metadata shard with captions is ~100 MB
def _read_meta_cached(path: str, mtime_ns: int, columns: tuple[str, ...] | None) -> pd.DataFrame:
    return pd.read_parquet(path, columns=list(columns) if columns else None)


def _read_meta(path: Path, columns: tuple[str, ...] | None) -> pd.DataFrame:
    return _read_meta_cached(str(path), Path(path).stat().st_mtime_ns, columns)

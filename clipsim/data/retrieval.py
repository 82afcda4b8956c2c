"""Imported clip-retrieval embedding folders whose metadata names columns its own way, seen with clipsim's names.

clip-retrieval writes `image_path` (a file path, or the webdataset key), `caption` and `url`, and not always a
`key`; LAION's parquet files say `TEXT` and `URL`. `detect_columns` maps clipsim's names (key, caption, url,
path) to the columns a folder has (key from the row number when nothing fits); `MappedEmbeddingSet` applies it.
"""
from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from clipsim.data.keys import check_unique_keys
from clipsim.store import EMB_DIR, META_DIR, EmbeddingSet, parquet_file

log = logging.getLogger(__name__)
ROW = "#row"  # mapping value: the key is the global row number
KEY_CANDIDATES = ("image_path", "id", "uid", "sample_id", "filepath", "file_name", "filename")
ALIASES = {"caption": ("TEXT", "text", "txt", "Caption"), "url": ("URL", "image_url", "Url")}
PATH_PROBE = 5  # rows whose `image_path` is checked for being an existing file


def _first_meta(folder: Path) -> Path | None:
    metas = sorted((folder / META_DIR).glob("metadata_*.parquet"), key=lambda p: (len(p.name), p.name))
    return metas[0] if metas and (folder / EMB_DIR).is_dir() else None


@lru_cache(maxsize=64)
def _detect(meta: str, mtime_ns: int) -> tuple[tuple[str, str], ...]:
    file = parquet_file(Path(meta))
    names = list(file.schema_arrow.names)
    mapping: dict[str, str] = {}
    if "key" not in names:
        mapping["key"] = ROW
        for column in (c for c in KEY_CANDIDATES if c in names):
            values = file.read(columns=[column])[column]
            if values.null_count == 0 and len(pd.unique(values.to_numpy(zero_copy_only=False))) == len(values):
                mapping["key"] = column
                break
    for logical, aliases in ALIASES.items():
        alias = next((a for a in aliases if a in names), None)
        if logical not in names and alias:
            mapping[logical] = alias
    if "path" not in names and "image_path" in names:
        probe = next(file.iter_batches(batch_size=PATH_PROBE, columns=["image_path"]), None)
        values = [] if probe is None else [v for v in probe.column(0).to_pylist() if isinstance(v, str)]
        if values and all(os.path.isfile(v) for v in values):
            mapping["path"] = "image_path"
    return tuple(sorted(mapping.items()))


def detect_columns(folder: str | Path) -> dict[str, str]:
    """How clipsim's metadata names map onto an embedding folder's columns (from its first metadata shard).

    Args:
        folder: a clip-retrieval folder (img_emb/ + metadata/).

    Returns:
        {clipsim name: column} for the names the folder lacks: `key` (a unique column of KEY_CANDIDATES, else
        ROW: the global row number), `caption`, `url` (their aliases) and `path` (`image_path` holding existing
        files); {} when the folder uses clipsim's names or holds no metadata yet.
    """
    meta = _first_meta(Path(folder))
    if meta is None:
        return {}
    return dict(_detect(str(meta), meta.stat().st_mtime_ns))


def describe(folder: str | Path, mapping: dict[str, str]) -> str:
    """One message saying where keys, captions, urls and image paths come from ('' when nothing is renamed)."""
    parts = []
    for logical, column in mapping.items():
        if logical == "key" and column == ROW:
            parts.append(f"no unique key column ({', '.join(('key',) + KEY_CANDIDATES)}), so keys are the row "
                         "numbers '0'..'n-1' (add a `key` column to the metadata files to name samples)")
        else:
            parts.append(f"`{logical}` is read from column `{column}`")
    return f"metadata of {folder}: " + "; ".join(parts) if parts else ""


class MappedEmbeddingSet(EmbeddingSet):
    """An EmbeddingSet whose metadata columns are renamed (and keys possibly numbered) by a detect_columns map."""

    def __init__(self, root: Path, mapping: dict[str, str], allow_partial: bool = False):
        super().__init__(root, allow_partial)
        self.mapping = dict(mapping)

    def columns(self) -> list[str]:
        """The folder's own columns plus the clipsim names mapped onto them."""
        return list(dict.fromkeys([*self.mapping, *super().columns()]))

    def _physical(self, columns: list[str] | None) -> list[str] | None:
        if columns is None:
            return None
        sources = (self.mapping.get(c, c) for c in columns)
        return list(dict.fromkeys(s for s in sources if s != ROW))

    def _logical(self, frame: pd.DataFrame, columns: list[str] | None, row_ids: np.ndarray) -> pd.DataFrame:
        out = {}
        for column in columns if columns is not None else self.columns():
            source = self.mapping.get(column, column)
            values = pd.Series(row_ids.astype(str)) if source == ROW else frame[source].reset_index(drop=True)
            out[column] = values.astype(str) if column == "key" else values
        return pd.DataFrame(out, index=pd.RangeIndex(len(row_ids)))

    def metadata(self, columns: list[str] | None = None, shards=None) -> pd.DataFrame:
        """Concatenated metadata with clipsim's column names, row-aligned with `all()`."""
        physical, parts = self._physical(columns), []
        for shard in shards or self.shards:
            frame = super().metadata(physical, [shard]) if physical != [] else pd.DataFrame(index=range(shard.rows))
            parts.append(self._logical(frame, columns, np.arange(shard.start, shard.start + shard.rows)))
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({c: [] for c in columns or ["key"]})

    def metadata_at(self, ids: np.ndarray, columns: list[str] | None = None) -> pd.DataFrame:
        """Metadata rows for global ids, in the order given, with clipsim's column names."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return pd.DataFrame({c: [] for c in (columns or ["key"])})
        physical = self._physical(columns)
        frame = super().metadata_at(ids, physical) if physical != [] else pd.DataFrame(index=range(len(ids)))
        return self._logical(frame, columns, ids)


def open_imported(folder: str | Path, mapping: dict[str, str] | None, allow_partial: bool = False) -> EmbeddingSet:
    """An imported folder's EmbeddingSet, renamed by `mapping` (None: detected now).

    Raises:
        DataError: the folder is not a valid embedding folder (see EmbeddingSet).
    """
    mapping = detect_columns(folder) if mapping is None else mapping
    if not mapping:
        return EmbeddingSet(Path(folder), allow_partial=allow_partial)
    return MappedEmbeddingSet(Path(folder), mapping, allow_partial=allow_partial)


def check_imported(folder: str | Path, mapping: dict[str, str] | None, name: str) -> EmbeddingSet:
    """Open an imported folder (headers, row alignment, dimensions) and refuse it when keys repeat.

    Args:
        folder: the clip-retrieval folder.
        mapping: its column mapping (None: detected now).
        name: the dataset name, for the message.

    Returns:
        The folder's EmbeddingSet.

    Raises:
        DataError: the folder is malformed, or a key occurs twice (the first repeated keys are named).
    """
    emb = open_imported(folder, mapping)
    check_unique_keys(emb, f"imported embeddings {name!r} ({folder})")
    return emb

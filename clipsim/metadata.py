"""Captions, URLs and image locations of a dataset's samples, queried from its metadata parquet files with DuckDB.

Nothing here loads a metadata file whole: lookups by key or global row id and caption searches are SQL over
`read_parquet([...], filename=true, file_row_number=true)`, reading only the columns asked for. Global row ids
are the embedding row numbers (shard start + row in shard), as in search results.
"""
from __future__ import annotations

import os

import duckdb
import numpy as np
import pandas as pd

from clipsim.data.retrieval import ROW, MappedEmbeddingSet
from clipsim.errors import DataError

DEFAULT_COLUMNS = ("key", "caption", "url")
LOCATOR_COLUMNS = ("key", "path", "offset", "size", "url")


class _Query:
    """One dataset's metadata shards read by DuckDB with clipsim's column names and a global row `id`."""

    def __init__(self, ws, dataset: str):
        self.dataset = dataset
        self.emb = ws.embeddings(dataset)
        self.mapping = self.emb.mapping if isinstance(self.emb, MappedEmbeddingSet) else {}
        self.available = set(self.emb.columns())
        self.files = [str(s.meta) for s in self.emb.shards]
        self.starts = {str(s.meta): s.start for s in self.emb.shards}
        self.con = duckdb.connect()

    def column(self, name: str, files: list[str] | None = None) -> str:
        """SQL expression of a clipsim column over rows `m` of `files` (NULL when the dataset lacks it)."""
        physical = self.mapping.get(name, name)
        if physical == ROW:
            return f"CAST({self.row_id(files)} AS VARCHAR)"
        if physical not in self.available and name not in self.available:
            return "NULL"
        quoted = '"' + physical.replace('"', '""') + '"'
        return f"CAST(m.{quoted} AS VARCHAR)" if name == "key" else f"m.{quoted}"

    def row_id(self, files: list[str] | None = None) -> str:
        """SQL expression of the global row id: the file's start (a constant per file, no join) + its row number."""
        files = files or self.files
        if len(files) == 1:
            return f"({self.starts[files[0]]} + m.file_row_number)"
        cases = " ".join(f"WHEN {_literal(f)} THEN {self.starts[f]}" for f in files)
        return f"(CASE m.filename {cases} END + m.file_row_number)"

    def select(self, columns, files: list[str] | None = None, where: str = "", tail: str = "") -> str:
        """A SELECT of clipsim `columns` and `id` over `files` (default all) with an optional WHERE and tail."""
        files = files or self.files
        exprs = [f'{self.column(c, files)} AS "{c}"' for c in columns] + [f"{self.row_id(files)} AS id"]
        listed = ", ".join(_literal(f) for f in files)
        source = f"read_parquet([{listed}], filename=true, file_row_number=true, union_by_name=true) AS m"
        return f"SELECT {', '.join(exprs)} FROM {source}" + (f" WHERE {where}" if where else "") + tail

    def run(self, sql: str, params: list | None = None) -> pd.DataFrame:
        frame = self.con.execute(sql, params or []).df()
        if "id" in frame:
            frame["id"] = frame["id"].astype(np.int64)
        return frame


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _check_columns(columns) -> tuple[str, ...]:
    columns = tuple(columns)
    bad = [c for c in columns if not isinstance(c, str) or not c or c == "id"]
    if bad:
        raise DataError(f"metadata columns {bad!r} are not column names; ask for e.g. {list(DEFAULT_COLUMNS)}")
    return columns


def lookup(ws, dataset: str, keys=None, ids=None, columns=DEFAULT_COLUMNS) -> pd.DataFrame:
    """Metadata rows of some samples, found by key or by global row id.

    Args:
        ws: the Workspace.
        dataset: dataset name (embedded or imported).
        keys: sample keys (str); unknown keys are left out. Give keys or ids, not both.
        ids: global row ids (int), e.g. search result ids.
        columns: clipsim column names; one the dataset lacks comes back as None.

    Returns:
        DataFrame with `columns` and `id` (int64), one row per found sample, in the order the keys/ids were given.

    Raises:
        DataError: both or neither of keys/ids given, an id out of range, bad column names, no embeddings.
    """
    if (keys is None) == (ids is None):
        raise DataError("lookup needs keys= or ids= (exactly one of them)")
    columns = _check_columns(columns)
    query = _Query(ws, dataset)
    if keys is not None:
        keys = [str(k) for k in keys]
        if query.mapping.get("key") == ROW:  # keys are row numbers
            ids = [int(k) for k in keys if k.isdigit() and int(k) < query.emb.count]
            return _by_ids(query, np.asarray(ids, dtype=np.int64), columns)
        return _by_keys(query, keys, columns)
    return _by_ids(query, np.asarray(ids, dtype=np.int64).reshape(-1), columns)


def _by_keys(query: _Query, keys: list[str], columns: tuple[str, ...]) -> pd.DataFrame:
    """Two passes: find the rows of the keys reading the key column only, then read the wanted columns there."""
    if not keys:
        return pd.DataFrame({c: [] for c in (*columns, "id")})
    query.con.register("wanted", pd.DataFrame({"key": keys}))
    sql = query.select(["key"], where=f"{query.column('key')} IN (SELECT key FROM wanted)")
    found = query.run(sql).drop_duplicates("key")  # a key stored twice: its first row
    ids = pd.Series(found["id"].to_numpy(), index=found["key"].to_numpy()).reindex(keys).dropna()
    return _by_ids(query, ids.to_numpy(dtype=np.int64), columns)


def _by_ids(query: _Query, ids: np.ndarray, columns: tuple[str, ...]) -> pd.DataFrame:
    if len(ids) and (ids.min() < 0 or ids.max() >= query.emb.count):
        bad = int(ids[(ids < 0) | (ids >= query.emb.count)][0])
        raise DataError(f"row id {bad} is out of range for dataset {query.dataset!r} ({query.emb.count} rows); "
                        "ids are embedding row numbers 0..n-1")
    if not len(ids):
        return pd.DataFrame({c: [] for c in (*columns, "id")})
    starts = np.array([s.start for s in query.emb.shards], dtype=np.int64)
    where = np.searchsorted(starts, ids, side="right") - 1
    parts = []
    for si in np.unique(where):  # one scan per shard touched, filtered on the row number inside that file
        rows = ", ".join(str(int(r)) for r in np.unique(ids[where == si] - starts[si]))
        sql = query.select(columns, [query.files[si]], where=f"m.file_row_number IN ({rows})")
        parts.append(query.run(sql))
    found = pd.concat(parts, ignore_index=True).set_index("id", drop=False)
    return found.loc[ids].reset_index(drop=True)


def _caption_filter(query: _Query, text: str) -> tuple[str, list]:
    if query.column("caption") == "NULL":
        raise DataError(f"dataset {query.dataset!r} has no captions (metadata columns: {sorted(query.available)})")
    escaped = str(text).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{query.column('caption')} ILIKE ? ESCAPE '\\'", [f"%{escaped}%"]


def search_captions(ws, dataset: str, text: str, limit: int = 50, columns=DEFAULT_COLUMNS) -> pd.DataFrame:
    """Samples whose caption contains `text` (case-insensitive, literal: % and _ match themselves).

    Args:
        ws: the Workspace.
        dataset: dataset name.
        text: the substring to find.
        limit: at most this many rows (the first matches in row order).
        columns: clipsim column names to return.

    Returns:
        DataFrame with `columns` and `id`, sorted by id.

    Raises:
        DataError: the dataset has no caption column, or limit < 1.
    """
    if int(limit) < 1:
        raise DataError(f"limit {limit!r} must be at least 1")
    query = _Query(ws, dataset)
    condition, params = _caption_filter(query, text)
    sql = query.select(_check_columns(columns), where=condition, tail=f" LIMIT {int(limit)}")
    return query.run(sql, params).sort_values("id", ignore_index=True)


def count(ws, dataset: str, caption_contains: str | None = None) -> int:
    """Number of samples, or of samples whose caption contains `caption_contains` (as in search_captions).

    Raises:
        DataError: no embeddings, or a caption filter on a dataset without captions.
    """
    query = _Query(ws, dataset)
    if caption_contains is None:
        return int(query.emb.count)
    condition, params = _caption_filter(query, caption_contains)
    return int(query.con.execute(f"SELECT count(*) FROM ({query.select([], where=condition)})", params).fetchone()[0])


def image_source(ws, dataset: str, key_or_id) -> dict:
    """Where the gallery can get one sample's image.

    Args:
        ws: the Workspace.
        dataset: dataset name.
        key_or_id: a key (str) or a global row id (int).

    Returns:
        {'kind': 'local' | 'url' | 'none', 'key', 'id', 'path', 'offset', 'size', 'url', 'crop_border', 'reason'}:
        'local' = read it with clipsim.data.sources.read_image((path, offset, size) or path, crop_border);
        'url' = not stored here, the browser may fetch `url` on demand; 'none' = show a placeholder, `reason` says
        why. offset/size are -1 for plain files.

    Raises:
        DataError: the key or id is not in the dataset.
    """
    if isinstance(key_or_id, (int, np.integer)):
        found = lookup(ws, dataset, ids=[int(key_or_id)], columns=LOCATOR_COLUMNS)
    else:
        found = lookup(ws, dataset, keys=[str(key_or_id)], columns=LOCATOR_COLUMNS)
    if found.empty:
        raise DataError(f"key {key_or_id!r} is not in dataset {dataset!r}; check its spelling")
    row = found.iloc[0]
    path = row["path"] if isinstance(row["path"], str) and row["path"] else None
    url = row["url"] if isinstance(row["url"], str) and row["url"].startswith(("http://", "https://")) else None
    offset = -1 if pd.isna(row["offset"]) else int(row["offset"])
    size = -1 if pd.isna(row["size"]) else int(row["size"])
    out = {"kind": "none", "key": str(row["key"]), "id": int(row["id"]), "path": path, "offset": offset,
           "size": size, "url": url,
           "crop_border": int(ws.dataset(dataset).extra.get("crop_border", 0) or 0), "reason": None}
    if path is not None and "://" not in path and os.path.isfile(path):
        return {**out, "kind": "local"}
    reason = f"image file {path} is missing" if path else "no image stored with this dataset"
    if url is not None:
        return {**out, "kind": "url", "reason": reason}
    return {**out, "kind": "none", "reason": reason + " and no http(s) url"}

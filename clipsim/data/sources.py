"""Dataset sources (image folders, csv/parquet tables, webdataset tars) listed as shards of image records.

A record is one image: `key`, its locator (`path`, `offset`, `size`; offset/size -1 for a plain file, else the
byte range of the image inside a tar), `caption` (missing: NaN) and `label` (-1 unknown). One source shard
becomes one embedding shard. `read_image(locator)` fetches any image again by seek + read. Per-dataset options
(`label_map`: class folder -> label; `crop_border`: pixels cut from every side when an image is loaded) come
from the dataset record's `extra`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clipsim import fileio
from clipsim.data.folders import IMAGE_SUFFIXES, RECORD_COLUMNS, list_folder
from clipsim.data.imageio import Locator, read_image, read_image_bytes, row_locator, split_locator
from clipsim.data.keys import check_listing
from clipsim.data.tars import LOSS_COLUMNS, LOSS_DTYPES, expand_tars, scan_tar
from clipsim.errors import DataError

log = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
DEFAULT_SHARD_SIZE = 100_000  # 128 MB of float16 at dim 640: one shard stays a cheap unit to redo
LISTED = 5  # rows or keys named in one message
_PATH_HINTS = ("filepath", "image_path", "image", "file", "filename", "img")  # columns users name `path`

__all__ = ["DEFAULT_SHARD_SIZE", "IMAGE_SUFFIXES", "RECORD_COLUMNS", "ListedSource", "Locator", "Source", "SourceShard",
           "TarSource", "list_folder", "no_losses", "open_source", "read_image", "read_image_bytes", "read_table",
           "row_locator", "split_locator"]  # the image reader lives in clipsim.data.imageio


@dataclass(frozen=True)
class SourceShard:
    """One chunk of a source: its index, a description (tar path or record range) and its row count if known."""

    index: int
    description: str
    rows: int | None


class Source:
    """Interface of a dataset source: `shards`, `records(shard)`, `fingerprint()`, `classes` (or None), and
    `crop_border` (pixels to cut from every side of each image when it is loaded; 0 = none)."""

    kind: str
    classes: list[str] | None = None
    shards: list[SourceShard]
    crop_border: int = 0
    options: dict | None = None  # the label_map / crop_border options in force (part of the fingerprint)
    notes: tuple[str, ...] = ()  # what the listing left out and why (folders reached twice through links, ...)

    def records(self, shard: SourceShard) -> pd.DataFrame:
        """The shard's records: RECORD_COLUMNS (tars add `url`), in a fixed order."""
        return self.read(shard)[0]

    def read(self, shard: SourceShard) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(the shard's records, its losses): samples the source holds but cannot give, one row each (LOSS_COLUMNS:
        key, path, offset, size, error), e.g. the samples of a cut tar. Listed sources lose nothing here."""
        return self.records(shard), no_losses()

    def fingerprint(self) -> str:
        """Changes when the listing changes (records added, removed or moved) or the options change."""
        raise NotImplementedError

    def _salted(self, base: str) -> str:
        if not self.options:  # no options: the fingerprint of earlier versions, so old embeddings stay current
            return base
        return hashlib.sha256((base + json.dumps(self.options, sort_keys=True)).encode()).hexdigest()[:16]


class ListedSource(Source):
    """A source listed whole in memory (folder or table), cut into chunks of `shard_size` records."""

    def __init__(self, kind: str, listing: pd.DataFrame, shard_size: int, classes: list[str] | None = None):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.kind, self.listing, self.classes = kind, listing.reset_index(drop=True), classes
        n = len(self.listing)
        self.shards = [
            SourceShard(i, f"records {lo}-{min(lo + shard_size, n) - 1}", min(shard_size, n - lo))
            for i, lo in enumerate(range(0, n, shard_size))
        ]
        self._shard_size = shard_size

    def records(self, shard: SourceShard) -> pd.DataFrame:
        lo = shard.index * self._shard_size
        return self.listing.iloc[lo : lo + self._shard_size].reset_index(drop=True)

    def fingerprint(self) -> str:
        hashed = pd.util.hash_pandas_object(self.listing[["key", "path", "offset", "size"]], index=False)
        return self._salted(hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()[:16])


class TarSource(Source):
    """Webdataset tars: one tar = one shard, indexed from its headers when its records are asked for."""

    kind = "wds"

    def __init__(self, tars: list[Path]):
        self.tars = tars
        self.shards = [SourceShard(i, str(t), None) for i, t in enumerate(tars)]

    def read(self, shard: SourceShard) -> tuple[pd.DataFrame, pd.DataFrame]:
        return scan_tar(self.tars[shard.index])

    def fingerprint(self) -> str:
        return self._salted(fileio.file_fingerprint(self.tars))


def no_losses() -> pd.DataFrame:
    """An empty losses frame (LOSS_COLUMNS)."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in LOSS_DTYPES.items()})[LOSS_COLUMNS]


def open_source(kind: str, source: str | Path, shard_size: int = DEFAULT_SHARD_SIZE,
                options: dict | None = None) -> Source:
    """Open a dataset source of kind 'folder', 'table' or 'wds'.

    Args:
        kind: dataset kind as registered in the workspace.
        source: image folder, table file, or tar folder/glob/brace pattern.
        shard_size: records per shard for folders and tables (a tar is always one shard).
        options: the dataset record's `extra`; `label_map` (folders: class folder -> label, see list_folder) and
            `crop_border` (pixels cut from every side when an image is loaded) are used, other keys ignored.

    Raises:
        DataError: the source is missing, empty or malformed (see list_folder, read_table, expand_tars).
    """
    options = options or {}
    used = {k: options[k] for k in ("label_map", "crop_border") if options.get(k)}
    notes: list[str] = []
    if kind == "folder":
        listing, classes = list_folder(source, label_map=used.get("label_map"), notes=notes)
        opened: Source = ListedSource(kind, listing, shard_size, classes)
    elif kind == "table":
        opened = ListedSource(kind, read_table(source), shard_size)
    elif kind == "wds":
        opened = TarSource(expand_tars(source))
    else:
        raise DataError(f"dataset kind {kind!r} has no image source to embed; use 'folder', 'table' or 'wds'")
    opened.crop_border, opened.options, opened.notes = int(used.get("crop_border", 0)), used, tuple(notes)
    return opened


def read_table(table: str | Path) -> pd.DataFrame:
    """Read a csv/tsv/parquet table of images: column `path` (absolute or relative to the table's folder),
    optional `key` (default: path without extension), `caption`, `label`, and `offset`/`size` for tar members.

    Returns:
        records with RECORD_COLUMNS, in table order.

    Raises:
        DataError: missing or unreadable file, no `path` column, bad labels, duplicate keys, no path found.
    """
    table = Path(table)
    if not table.exists():
        raise DataError(f"table {table} does not exist; fix the dataset source (a .csv or .parquet file)")
    if not table.is_file():
        raise DataError(f"table {table} is not a regular file (a folder, device or pipe); point to a .csv or "
                        ".parquet file")
    frame = _read_frame(table)
    if "path" not in frame.columns:
        hint = next((c for c in frame.columns if str(c).lower() in _PATH_HINTS), None)
        fix = f"rename column {hint!r} to 'path'" if hint else "add a column 'path' with one image file per row"
        raise DataError(f"table {table} has no `path` column (columns: {list(frame.columns)}); {fix}")
    if frame.empty:
        raise DataError(f"table {table} has no rows; add one row per image")
    _check_filled(frame, "path", table)
    if "key" in frame:
        _check_filled(frame, "key", table)
    raw = frame["path"].astype(str)
    records = pd.DataFrame({
        "key": frame["key"].astype(str) if "key" in frame else raw.map(lambda p: os.path.splitext(p)[0]),
        "path": raw.map(lambda p: p if os.path.isabs(p) else str(table.parent.absolute() / p)),
        "offset": _int_column(frame, "offset", table),
        "size": _int_column(frame, "size", table),
        "caption": (frame["caption"] if "caption" in frame else pd.Series([None] * len(frame))).astype("str"),
        "label": _int_column(frame, "label", table),
    })
    records = records[RECORD_COLUMNS]
    check_listing(records, str(table))
    probe = records["path"].head(100)  # stat a few, not millions: a wrong base folder shows at once
    if not any(os.path.exists(p) for p in probe):
        raise DataError(
            f"table {table}: none of the first {len(probe)} paths exists (first: {probe.iloc[0]}); relative paths "
            f"are resolved against the table's folder {table.parent.absolute()}: fix the paths or move the table"
        )
    return records


def _read_frame(table: Path) -> pd.DataFrame:
    suffix = table.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"table {table} has suffix {suffix!r}; use one of {TABLE_SUFFIXES}")
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(table)
        return pd.read_csv(table, sep="\t" if suffix == ".tsv" else ",", keep_default_na=False, na_values=[""])
    except Exception as err:  # pandas/pyarrow raise many types for a malformed file
        raise DataError(f"cannot read table {table} ({err}); check that it is a valid {suffix[1:]} file") from err


def _check_filled(frame: pd.DataFrame, column: str, table: Path) -> None:
    """Refuse empty cells in a string column that names samples (`path`, `key`): `str(NaN)` would become 'nan'."""
    blank = frame[column].isna() | (frame[column].astype(str).str.strip() == "")
    if blank.any():
        rows = np.flatnonzero(blank.to_numpy())
        raise DataError(f"table {table}: column `{column}` is empty in {len(rows)} rows (first rows, counting from 0: "
                        f"{', '.join(map(str, rows[:LISTED]))}); fill them in or remove those rows")


def _int_column(frame: pd.DataFrame, column: str, table: Path) -> np.ndarray:
    """An optional integer column, missing values -> -1."""
    if column not in frame:
        return np.full(len(frame), -1, dtype=np.int64)
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & frame[column].notna()
    if bad.any() or (values.dropna() % 1 != 0).any():
        first = frame[column][bad].iloc[0] if bad.any() else values[values % 1 != 0].iloc[0]
        raise DataError(f"table {table}: column `{column}` holds {first!r}; it must hold integers (empty = unknown)")
    return values.fillna(-1).to_numpy(dtype=np.int64)

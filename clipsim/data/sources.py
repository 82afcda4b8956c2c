"""Dataset sources (image folders, csv/parquet tables, webdataset tars) listed as shards of image records.

A record is one image: `key`, its locator (`path`, `offset`, `size`; offset/size -1 for a plain file, else the
byte range of the image inside a tar), `caption` (missing: NaN) and `label` (-1 unknown). One source shard
becomes one embedding shard. `read_image(locator)` fetches any image again by seek + read. Per-dataset options
(`label_map`: class folder -> label; `crop_border`: pixels cut from every side when an image is loaded) come
from the dataset record's `extra`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from clipsim import fileio
from clipsim.data.tars import expand_tars, index_tar
from clipsim.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
RECORD_COLUMNS = ["key", "caption", "label", "path", "offset", "size"]
DEFAULT_SHARD_SIZE = 100_000  # 128 MB of float16 at dim 640: one shard stays a cheap unit to redo
_PATH_HINTS = ("filepath", "image_path", "image", "file", "filename", "img")  # columns users name `path`

Locator = str | os.PathLike | tuple[str, int, int]


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

    def records(self, shard: SourceShard) -> pd.DataFrame:
        """The shard's records: RECORD_COLUMNS (tars add `url`), in a fixed order."""
        raise NotImplementedError

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

    def records(self, shard: SourceShard) -> pd.DataFrame:
        return index_tar(self.tars[shard.index])

    def fingerprint(self) -> str:
        return self._salted(fileio.file_fingerprint(self.tars))


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
    if kind == "folder":
        listing, classes = list_folder(source, label_map=used.get("label_map"))
        opened: Source = ListedSource(kind, listing, shard_size, classes)
    elif kind == "table":
        opened = ListedSource(kind, read_table(source), shard_size)
    elif kind == "wds":
        opened = TarSource(expand_tars(source))
    else:
        raise DataError(f"dataset kind {kind!r} has no image source to embed; use 'folder', 'table' or 'wds'")
    opened.crop_border, opened.options = int(used.get("crop_border", 0)), used
    return opened


def list_folder(root: str | Path, label_map: dict[str, int] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """List an image folder: `root/<class>/.../<image>` (label = index of the sorted class folder) or flat.

    Images directly in `root` get label -1. Keys are paths relative to root, without extension. With a
    `label_map`, only the class folders it names are listed, each with its mapped label (benchmarks whose
    labels are ImageNet class indices); other folders and images directly in root are left out.

    Returns:
        (records with RECORD_COLUMNS sorted by key, class folder names: in label order, or sorted with a label_map).

    Raises:
        DataError: the folder is missing, holds no images, or two images share a key (`a.jpg` and `a.png`).
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; fix the dataset source (expected root/<class>/<image>)")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if label_map is not None:
        classes = [c for c in classes if c in label_map]
        labels = {c: int(label_map[c]) for c in classes}
        rels = []
    else:
        labels = {c: i for i, c in enumerate(classes)}
        rels = [(rel, -1) for rel in _images_under(root, recursive=False)]
    for name in classes:
        rels.extend((f"{name}/{rel}", labels[name]) for rel in _images_under(root / name, recursive=True))
    if not rels:
        raise DataError(
            f"image folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)}, any case); expected "
            "root/<class>/<image> or images directly in root: check the path"
            + (f" (only the {len(label_map)} class folders of the label map are read)" if label_map else "")
        )
    rel_paths = [r for r, _ in rels]
    listing = pd.DataFrame({
        "key": [os.path.splitext(r)[0] for r in rel_paths],
        "path": [str(root / r) for r in rel_paths],
        "offset": np.full(len(rels), -1, dtype=np.int64),
        "size": np.full(len(rels), -1, dtype=np.int64),
        "caption": pd.Series([None] * len(rels), dtype="str"),
        "label": np.array([lab for _, lab in rels], dtype=np.int64),
    })
    _check_unique(listing, str(root))
    return listing.sort_values("key", kind="stable", ignore_index=True)[RECORD_COLUMNS], classes


def _images_under(folder: Path, recursive: bool) -> list[str]:
    """Image files under a folder as sorted posix paths relative to it; hidden files and folders skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        rel_dir = Path(dirpath).relative_to(folder).as_posix()
        prefix = "" if rel_dir == "." else f"{rel_dir}/"
        found.extend(
            prefix + f for f in filenames if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES
        )
    return sorted(found)


def read_table(table: str | Path) -> pd.DataFrame:
    """Read a csv/tsv/parquet table of images: column `path` (absolute or relative to the table's folder),
    optional `key` (default: path without extension), `caption`, `label`, and `offset`/`size` for tar members.

    Returns:
        records with RECORD_COLUMNS, in table order.

    Raises:
        DataError: missing or unreadable file, no `path` column, bad labels, duplicate keys, no path found.
    """
    table = Path(table)
    if not table.is_file():
        raise DataError(f"table {table} does not exist; fix the dataset source (a .csv or .parquet file)")
    frame = _read_frame(table)
    if "path" not in frame.columns:
        hint = next((c for c in frame.columns if str(c).lower() in _PATH_HINTS), None)
        fix = f"rename column {hint!r} to 'path'" if hint else "add a column 'path' with one image file per row"
        raise DataError(f"table {table} has no `path` column (columns: {list(frame.columns)}); {fix}")
    if frame.empty:
        raise DataError(f"table {table} has no rows; add one row per image")
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
    _check_unique(records, str(table))
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


def _check_unique(records: pd.DataFrame, where: str) -> None:
    dup = records["key"].duplicated(keep=False)
    if dup.any():
        key = records.loc[dup, "key"].iloc[0]
        paths = records.loc[records["key"] == key, "path"].tolist()
        raise DataError(
            f"{where}: key {key!r} occurs {len(paths)} times ({', '.join(paths[:3])}); {int(dup.sum())} rows share "
            "keys. Keys must be unique within a dataset: rename or remove the duplicates (or add a unique `key` column)"
        )


def split_locator(locator: Locator) -> tuple[str, int, int]:
    """(path, offset, size) of a locator; a plain path gives offset = size = -1."""
    if isinstance(locator, (str, os.PathLike)):
        return os.fspath(locator), -1, -1
    path, offset, size = locator
    return os.fspath(path), int(offset), int(size)


def row_locator(row) -> Locator:
    """The locator of a metadata row (a mapping or Series with `path`, `offset`, `size`)."""
    offset = int(row["offset"]) if "offset" in row else -1
    return (str(row["path"]), offset, int(row["size"])) if offset >= 0 else str(row["path"])


def read_image_bytes(locator: Locator) -> bytes:
    """The encoded bytes of one image: a whole file, or `size` bytes at `offset` inside a tar.

    Raises:
        DataError: the file is missing or unreadable, or the tar is shorter than the locator says.
    """
    path, offset, size = split_locator(locator)
    try:
        with open(path, "rb") as f:
            if offset < 0:
                return f.read()
            f.seek(offset)
            data = f.read(size)
    except OSError as err:
        raise DataError(f"cannot read image {path} ({err}); check that the file exists and is readable") from err
    if len(data) != size:
        raise DataError(
            f"{path}: only {len(data)} of {size} bytes at offset {offset}; the tar changed or is truncated since it "
            "was indexed: re-create it and re-embed the dataset with force"
        )
    return data


def read_image(locator: Locator, crop_border: int = 0) -> Image.Image:
    """Decode one image as RGB, optionally cutting `crop_border` pixels from every side (ObjectNet's frame).

    Raises:
        DataError: unreadable file or bytes that do not decode as an image (names the path and offset), or an
            image too small for the crop.
    """
    data = read_image_bytes(locator)
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB")
    except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
        path, offset, _ = split_locator(locator)
        where = f"{path} at offset {offset}" if offset >= 0 else path
        raise DataError(f"image {where} does not decode ({type(err).__name__}: {err}); the file is corrupt") from err
    if crop_border <= 0:
        return rgb
    width, height = rgb.size
    if min(width, height) <= 2 * crop_border:
        raise DataError(f"image {split_locator(locator)[0]} is {width}x{height} px, too small to cut a "
                        f"{crop_border} px border from; remove it or register the dataset without crop_border")
    return rgb.crop((crop_border, crop_border, width - crop_border, height - crop_border))

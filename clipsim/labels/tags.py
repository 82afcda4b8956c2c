"""Image tags: mark images of any dataset (picked in a gallery or on the map) with a tag, filter by it, and export the
tagged keys as CSV or parquet, or as a manifest that removes the tagged web samples from training.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from clipsim import fileio
from clipsim.errors import WorkspaceError
from clipsim.labels.store import connect, where_equal

TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TAG_COLUMNS = ["dataset", "key", "tag", "created"]
FORMATS = ("csv", "parquet")


def check_tag(tag: str) -> str:
    """The tag itself when it is 1-64 letters, digits, '_', '.', '-' (it names files and manifests).

    Raises:
        WorkspaceError: any other value.
    """
    if not isinstance(tag, str) or not TAG_RE.match(tag):
        raise WorkspaceError(f"tag {tag!r} must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or "
                             "digit; e.g. 'near-dup'")
    return tag


def add_tags(ws, dataset: str, keys, tag: str) -> int:
    """Tag images of `dataset` (already tagged ones are left as they are).

    Args:
        ws: the workspace.
        dataset: a registered dataset.
        keys: image keys of that dataset.
        tag: tag name (check_tag).

    Returns:
        How many keys were given.

    Raises:
        WorkspaceError: unknown dataset or bad tag. ReadOnlyError: the workspace is served read-only.
    """
    ws.dataset(dataset)
    check_tag(tag)
    keys = [str(k) for k in keys]
    now = time.time()
    with connect(ws, write=True) as con:
        con.executemany("INSERT OR IGNORE INTO tags (dataset, key, tag, created) VALUES (?, ?, ?, ?)",
                        [(dataset, k, tag, now) for k in keys])
    return len(keys)


def remove_tags(ws, dataset: str, keys, tag: str) -> int:
    """Untag images; returns how many tags were removed."""
    with connect(ws, write=True) as con:
        return sum(con.execute("DELETE FROM tags WHERE dataset = ? AND key = ? AND tag = ?",
                               (dataset, str(k), tag)).rowcount for k in keys)


def read_tags(ws, tag: str | None = None, dataset: str | None = None) -> pd.DataFrame:
    """Tagged images (TAG_COLUMNS), optionally of one tag and dataset, in tagging order."""
    where, args = where_equal({"tag": tag, "dataset": dataset})
    with connect(ws) as con:
        return pd.read_sql_query(f"SELECT dataset, key, tag, created FROM tags{where} ORDER BY created, dataset, key",
                                 con, params=args)


def tag_names(ws) -> list[str]:
    """Every tag in use, sorted."""
    with connect(ws) as con:
        return [r[0] for r in con.execute("SELECT DISTINCT tag FROM tags ORDER BY tag")]


def tagged_keys(ws, tag: str, dataset: str) -> set[str]:
    """The keys of `dataset` that carry `tag`."""
    return set(read_tags(ws, tag, dataset)["key"])


def keep_tagged(keys: np.ndarray, rows: np.ndarray, tagged: set[str]) -> np.ndarray:
    """The rows (indices into keys) whose key is tagged, in their order."""
    rows = np.asarray(rows, np.int64)
    return rows[np.isin(np.asarray(keys).astype(str)[rows], list(tagged))] if len(rows) else rows


def export_tags(ws, tag: str, path: str | Path, fmt: str | None = None) -> int:
    """Write a tag's images (dataset, key, tag, created) as CSV or parquet, atomically.

    Args:
        ws: the workspace; tag: the tag.
        path: output file.
        fmt: 'csv' or 'parquet' (default: from the file's suffix).

    Returns:
        Rows written.

    Raises:
        WorkspaceError: unknown format, or no image carries the tag.
    """
    fmt = fmt or Path(path).suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise WorkspaceError(f"export format {fmt!r} of {path} must be one of {FORMATS}; name the file .csv/.parquet")
    frame = read_tags(ws, check_tag(tag))
    if frame.empty:
        raise WorkspaceError(f"no image is tagged {tag!r} in {ws.root}; known tags: {tag_names(ws) or 'none'}")
    if fmt == "csv":
        fileio.atomic_write(Path(path), lambda tmp: frame.to_csv(tmp, index=False))
    else:
        fileio.write_parquet(Path(path), frame)
    return len(frame)


def tag_manifest(ws, tag: str, web: str = "web", name: str | None = None, overwrite: bool = False):
    """Save a manifest removing the `web` samples tagged `tag` ("remove these"); training accepts it by name.

    Returns:
        The saved clipsim.prune.manifest.Manifest (default name 'tag-<tag>').

    Raises:
        WorkspaceError: no `web` image carries the tag, or the name exists.
    """
    from clipsim.prune.manifest import save_keys_manifest

    keys = read_tags(ws, check_tag(tag), web)["key"]
    if keys.empty:
        others = read_tags(ws, tag)["dataset"].unique().tolist()
        raise WorkspaceError(f"no image of train set {web!r} is tagged {tag!r}"
                             + (f" (it tags images of {others})" if others else "")
                             + "; a manifest removes web samples: tag images of the web set")
    return save_keys_manifest(ws, name or f"tag-{tag}", web, keys, "tagged", {"tag": tag}, overwrite)

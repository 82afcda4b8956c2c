"""Webdataset tar shards: expand a source spec into tar files and index members from tar headers only.

The index gives every sample's image member, the byte offset and size of its data and its caption, so an
image is read later with one seek + read (`open(tar).seek(offset); read(size)`), without re-indexing.
"""
from __future__ import annotations

import glob
import json
import re
import tarfile
from collections.abc import Callable
from pathlib import Path

import braceexpand
import numpy as np
import pandas as pd

from clipsim.errors import DataError

# The image is the member whose whole extension is one of these (img2dataset writes jpg); `x.mask.png` is another
# field of sample x, not its image.
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
INDEX_COLUMNS = ["key", "caption", "label", "path", "offset", "size", "url"]
_KEY_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext: key = up to the first dot
_SMALL_MEMBER = 1 << 20  # captions and json are tiny; a bigger one is not metadata, so it is not read


def split_member(name: str) -> tuple[str | None, str | None]:
    """Split a tar member name into (webdataset __key__, extension), as webdataset does; (None, None) if no dot."""
    match = _KEY_RE.match(name)
    return (match.group(1), match.group(2)) if match else (None, None)


def expand_tars(source: str | Path) -> list[Path]:
    """Tar files of a webdataset source, sorted by path.

    Args:
        source: a folder holding `*.tar`, a glob (`shards/*.tar`) or a brace pattern (`shards/{00000..00009}.tar`).

    Raises:
        DataError: nothing matches, or a file named by a brace pattern is missing.
    """
    text = str(source)
    if Path(text).is_dir():
        tars = sorted(Path(text).glob("*.tar"))
        if not tars:
            raise DataError(
                f"webdataset folder {text} holds no *.tar files; point the dataset at the folder img2dataset "
                "wrote (output_format=webdataset) or give a glob/brace pattern such as 'shards/{00000..00009}.tar'"
            )
        return tars
    names = list(braceexpand.braceexpand(text)) if "{" in text else [text]
    tars: list[Path] = []
    for name in names:
        if glob.has_magic(name):
            tars.extend(Path(p) for p in glob.glob(name))
        elif Path(name).is_file():
            tars.append(Path(name))
        else:
            raise DataError(
                f"tar shard {name} (from source {text!r}) does not exist; fix the pattern or the range so it "
                "names only existing shards"
            )
    if not tars:
        raise DataError(f"no tar files match {text!r}; check the folder, glob or brace pattern")
    return sorted(set(tars))


def index_tar(path: Path) -> pd.DataFrame:
    """Index one uncompressed tar from its headers: one row per sample that has an image.

    Captions (`.txt`), labels (`.cls`) and the url in `.json` are read (small members); images are not.

    Returns:
        DataFrame with columns key (str), path (the tar), offset/size (int64, image data bytes),
        caption (str, NaN if none), label (int64, -1 unknown), url (str, NaN if none); in tar order.

    Raises:
        DataError: the tar is unreadable or compressed, or a key holds two images / appears twice.
    """
    samples: dict[str, dict] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:  # "r:" = uncompressed only: offsets must be file offsets
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = split_member(info.name)
                if key is None:  # no extension (or a dot-file such as ._x.jpg): not a sample member
                    continue
                sample = samples.setdefault(key, {"key": key})
                _add_member(sample, ext.lower(), info, tar, path)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(
            f"cannot read tar shard {path} ({err}); it may be truncated (an interrupted download or "
            "img2dataset run) or compressed: re-create it, or remove it from the dataset source"
        ) from err
    rows = [s for s in samples.values() if "offset" in s]
    return pd.DataFrame(
        {
            "key": [s["key"] for s in rows],
            "path": str(path),
            "offset": np.array([s["offset"] for s in rows], dtype=np.int64),
            "size": np.array([s["size"] for s in rows], dtype=np.int64),
            "caption": pd.Series([s.get("caption") for s in rows], dtype="str"),
            "label": np.array([s.get("label", -1) for s in rows], dtype=np.int64),
            "url": pd.Series([s.get("url") for s in rows], dtype="str"),
        },
        columns=INDEX_COLUMNS,
    )


def _add_member(sample: dict, ext: str, info: tarfile.TarInfo, tar: tarfile.TarFile, path: Path) -> None:
    """Record one member of a sample: image location, caption, label or url."""
    if ext in IMAGE_EXTS:
        if "offset" in sample:
            raise DataError(
                f"tar shard {path}: key {sample['key']!r} has two images ({sample['member']} and {info.name}); "
                "every sample needs a unique key: re-shard the data or drop one of them"
            )
        sample.update(offset=info.offset_data, size=info.size, member=info.name)
    elif ext in ("txt", "cls", "json") and info.size <= _SMALL_MEMBER:
        text = tar.extractfile(info).read().decode("utf-8", errors="replace")
        if ext == "txt":
            sample["caption"] = text
        elif ext == "cls" and text.strip().lstrip("-").isdigit():
            sample["label"] = int(text.strip())
        elif ext == "json":
            sample["url"] = _json_url(text)


def _json_url(text: str) -> str | None:
    """The `url` field of an img2dataset json member (None when absent or not JSON)."""
    try:
        meta = json.loads(text)
    except json.JSONDecodeError:
        return None
    url = meta.get("url") if isinstance(meta, dict) else None
    return str(url) if url is not None else None


def key_hashes(keys: pd.Series | np.ndarray) -> np.ndarray:
    """64-bit hashes of keys (uint64), for finding keys repeated across shards in 8 bytes per key."""
    return pd.util.hash_array(np.asarray(keys, dtype=object))


def first_repeated_key(
    hashes: dict[int, np.ndarray], keys_of: Callable[[int], pd.Series]
) -> tuple[str, int, int] | None:
    """Find a key that occurs in two shards, from per-shard hashes; candidates are confirmed on the keys.

    Args:
        hashes: shard index -> key_hashes of that shard's keys.
        keys_of: shard index -> its keys (read only for shards holding a colliding hash).

    Returns:
        (key, first shard, second shard), or None when all keys are unique.
    """
    if not hashes:
        return None
    values = np.concatenate(list(hashes.values()))
    owners = np.concatenate([np.full(len(h), s, dtype=np.int64) for s, h in hashes.items()])
    order = np.argsort(values, kind="stable")
    values, owners = values[order], owners[order]
    same = np.flatnonzero(values[1:] == values[:-1])
    for pos in same:  # a 64-bit collision of two different keys is possible (~1e-3 at 2e8 keys): confirm
        a, b = sorted((int(owners[pos]), int(owners[pos + 1])))
        common = sorted(set(keys_of(a)) & set(keys_of(b))) if a != b else []
        if common:
            return common[0], a, b
    return None

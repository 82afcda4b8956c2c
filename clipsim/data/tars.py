"""Webdataset tar shards: expand a source spec into tar files and index members from tar headers only, listing
every sample a cut or damaged tar loses.

The index gives every sample's image member, the byte offset and size of its data and its caption, so an
image is read later with one seek + read (`open(tar).seek(offset); read(size)`), without re-indexing.
"""
from __future__ import annotations

import glob
import json
import re
import tarfile
from pathlib import Path

import braceexpand
import numpy as np
import pandas as pd

from clipsim.data.keys import first_repeated_key, key_hashes  # noqa: F401  (their home before clipsim.data.keys)
from clipsim.errors import DataError

# The image is the member whose whole extension is one of these (img2dataset writes jpg); `x.mask.png` is another
# field of sample x, not its image.
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
INDEX_COLUMNS = ["key", "caption", "label", "path", "offset", "size", "url"]
LOSS_COLUMNS = ["key", "path", "offset", "size", "error"]
LOSS_DTYPES = {"key": "str", "path": "str", "offset": "int64", "size": "int64", "error": "str"}
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
    """Index one uncompressed tar from its headers, refusing a tar that lost samples (see scan_tar).

    Returns:
        The records of scan_tar.

    Raises:
        DataError: the tar is unreadable, compressed, truncated or damaged, or a key holds two images.
    """
    records, losses = scan_tar(path)
    if len(losses):
        raise DataError(f"tar shard {path} lost samples: {losses['error'].iloc[0]}"
                        + (f" (and {len(losses) - 1} more)" if len(losses) > 1 else ""))
    return records


def scan_tar(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Index one uncompressed tar from its headers: one row per sample that has an image, and one row per loss.

    Captions (`.txt`), labels (`.cls`) and the url in `.json` are read (small members); images are not. A tar cut
    short (an interrupted download or img2dataset run) or damaged after its first header keeps the samples before
    the damage; every sample or stretch of bytes that is lost is listed, never dropped silently.

    Returns:
        (records, losses). records: key (str), path (the tar), offset/size (int64, image data bytes), caption (str,
        NaN if none), label (int64, -1 unknown), url (str, NaN if none); in tar order. losses: LOSS_COLUMNS, one row
        per truncated member, blank key, or unreadable end of the archive (`error` says which, with the byte).

    Raises:
        DataError: the tar cannot be opened at all (missing, compressed, not a tar), or a key holds two images.
    """
    samples: dict[str, dict] = {}
    losses: list[dict] = []
    size = Path(path).stat().st_size
    try:
        with tarfile.open(path, mode="r:") as tar:  # "r:" = uncompressed only: offsets must be file offsets
            try:
                for info in tar:
                    _add_info(samples, losses, info, tar, path, size)
            except (tarfile.TarError, EOFError) as err:  # a later member's data or header is cut or damaged
                if not any(s.get("lost") for s in samples.values()):  # a member cut at the end says it already
                        losses.append(_loss(path, "", tar.offset, -1, f"the tar cannot be read past byte {tar.offset:,} "
                                        f"({err}): the samples stored after that point are lost"))
            else:
                losses.extend(_end_problem(path, tar.offset, size))
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(
            f"cannot read tar shard {path} ({err}); it may be truncated (an interrupted download or "
            "img2dataset run) or compressed: re-create it, or remove it from the dataset source"
        ) from err
    rows = [s for s in samples.values() if "offset" in s and not s.get("lost")]
    losses.extend(_loss(path, s["key"], s.get("offset", -1), s.get("size", -1), s["lost"])
                  for s in samples.values() if s.get("lost"))
    return _records(path, rows), pd.DataFrame(losses, columns=LOSS_COLUMNS).astype(LOSS_DTYPES)


def _records(path: Path, rows: list[dict]) -> pd.DataFrame:
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


def _loss(path: Path, key: str, offset: int, size: int, error: str) -> dict:
    return {"key": key, "path": str(path), "offset": int(offset), "size": int(size), "error": error}


def _end_problem(path: Path, offset: int, size: int) -> list[dict]:
    """A loss row when the archive does not end with a zero block where its last member ends (cut or damaged)."""
    if size >= offset + tarfile.BLOCKSIZE:
        with open(path, "rb") as f:
            f.seek(offset)
            if f.read(tarfile.BLOCKSIZE).count(0) == tarfile.BLOCKSIZE:
                return []
        why = f"the header at byte {offset:,} is damaged"
    else:
        why = f"the tar ends at byte {size:,}, inside or before the header at byte {offset:,} (it was cut short)"
    return [_loss(path, "", offset, -1, f"{why}: the samples stored after that point are lost")]


def _add_info(samples: dict, losses: list, info: tarfile.TarInfo, tar: tarfile.TarFile, path: Path, size: int) -> None:
    """Add one tar member to its sample, or record why it is lost (blank key, data cut off)."""
    if not info.isfile():
        return
    key, ext = split_member(info.name)
    if key is None:  # no extension, or a dot-file (._x.jpg): no sample member
        base = info.name.rsplit("/", 1)[-1]
        if base.startswith(".") and base[1:].lower() in IMAGE_EXTS:  # `.jpg`: an image whose key is empty
            losses.append(_loss(path, "", info.offset_data, info.size, f"member {info.name!r} has a blank key"))
        return
    if not key.rsplit("/", 1)[-1].strip():
        losses.append(_loss(path, key, info.offset_data, info.size, f"member {info.name!r} has a blank key"))
        return
    sample = samples.setdefault(key, {"key": key})
    if info.offset_data + info.size > size:
        sample["lost"] = (f"member {info.name!r} is truncated: its data ends at byte {info.offset_data + info.size:,} "
                          f"but the tar ends at byte {size:,}")
        return
    _add_member(sample, ext.lower(), info, tar, path)


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

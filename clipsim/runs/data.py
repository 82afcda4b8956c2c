"""Materialise a manifest's kept samples in a format `open_clip_train` reads, cached per manifest.

Webdataset sources (and any source whose images sit inside tars) become new tar shards holding only the kept
samples: one output tar per embedding shard, image bytes copied by their stored offset/size plus the caption as
`.txt`, written atomically and skipped when already there (resumable), with `sizes.json` for the trainer.
Image-file sources become a CSV (`filepath`, `title`). The cache `train_data/<manifest>/` carries a
`config.json` with the fingerprints of the web embeddings and the kept keys; a mismatch rebuilds it.
"""
from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from clipsim import fileio
from clipsim.data.tars import key_hashes
from clipsim.errors import DataError, WorkspaceError

FULL = "full"  # the manifest name meaning "every web sample"
COLUMNS = ["key", "caption", "label", "path", "offset", "size"]
_MAGIC = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG", "png"), (b"RIFF", "webp"), (b"BM", "bmp"))
Progress = Callable[[int, int, str], None]


@dataclass
class TrainData:
    """Materialised training data: what to pass as --train-data / --dataset-type, and how many samples."""

    folder: Path
    train_data: str  # brace pattern of tars, or the CSV path
    dataset_type: str  # 'webdataset' or 'csv'
    samples: int
    skipped: int  # kept samples left out (no caption and no class name)
    config: dict


def kept_hashes(ws, manifest: str, web: str) -> np.ndarray | None:
    """Sorted 64-bit hashes of the keys a run trains on (None for 'full': every sample of `web`).

    Kept keys are read from the manifest's kept.parquet in batches and hashed (8 bytes per key), so a
    200M-sample manifest needs 1.6 GB, not a Python set of strings.

    Raises:
        WorkspaceError: unknown manifest, or a manifest cut from another web set.
    """
    if manifest == FULL:
        return None
    from clipsim.prune import load_manifest

    found = load_manifest(ws, manifest)
    if found.summary.get("web", web) != web:
        raise WorkspaceError(f"manifest {manifest!r} prunes web set {found.summary['web']!r}, not {web!r}; "
                             f"train with web={found.summary['web']!r} or pick a manifest of {web!r}")
    batches = pq.ParquetFile(found.folder / "kept.parquet").iter_batches(batch_size=1 << 20, columns=["key"])
    parts = [key_hashes(batch.column(0).to_numpy(zero_copy_only=False)) for batch in batches]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)


def keys_fingerprint(hashes: np.ndarray | None) -> str:
    """Fingerprint of a kept-key set from its sorted hashes ('all' for the full web set)."""
    return "all" if hashes is None else hashlib.sha256(hashes.tobytes()).hexdigest()[:16]


def _is_kept(keys: pd.Series, hashes: np.ndarray | None) -> np.ndarray:
    """(n,) bool: which keys are in the sorted hash set (a 64-bit hash collision is ~1e-3 likely at 2e8 keys)."""
    if hashes is None:
        return np.ones(len(keys), dtype=bool)
    h = key_hashes(keys)
    pos = np.minimum(np.searchsorted(hashes, h), max(len(hashes) - 1, 0))
    return hashes[pos] == h if len(hashes) else np.zeros(len(keys), dtype=bool)


def image_extension(data: bytes) -> str:
    """The file extension of encoded image bytes from their magic number ('jpg' when unknown)."""
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    return "jpg"


def sample_caption(caption, label: int, classes: list[str] | None) -> str | None:
    """The caption to train on: the sample's own, else 'a photo of a <class>' for labelled samples, else None."""
    if isinstance(caption, str) and caption.strip() and caption != "nan":
        return caption
    if classes and 0 <= int(label) < len(classes):
        return f"a photo of a {classes[int(label)]}"
    return None


def materialise(ws, manifest: str, web: str = "web", progress: Progress | None = None,
                force: bool = False) -> TrainData:
    """Write (or reuse) the training data of `manifest` under `train_data/<manifest>/`.

    Args:
        ws: the workspace.
        manifest: a manifest name, or 'full' for the whole web set.
        web: the train set the manifest prunes.
        progress: progress(done_shards, total_shards, message) or None.
        force: rebuild even if a matching cache exists.

    Returns:
        The TrainData to hand to the trainer.

    Raises:
        WorkspaceError: unknown manifest or web set, or nothing left to train on.
        DataError: an image cannot be read from its source.
    """
    emb = ws.embeddings(web)
    hashes = kept_hashes(ws, manifest, web)
    folder = ws.path("train_data", manifest)
    fmt = "webdataset" if _has_tar_images(emb) else "csv"
    config = {"manifest": manifest, "web": web, "format": fmt, "web_embeddings": emb.fingerprint(),
              "kept_keys": keys_fingerprint(hashes), "kept": int(emb.count if hashes is None else len(hashes))}
    with fileio.locked(folder.with_name(f".{folder.name}.lock")):  # two runs of one manifest share the cache: one writes, the other then reuses it
        _prepare(folder, config, force)
        classes = ws.dataset(web).classes
        if fmt == "webdataset":
            counts, skipped = _write_tars(emb, hashes, classes, folder, progress)
            data = _tar_pattern(folder, counts)
        else:
            counts, skipped = _write_csv(emb, hashes, classes, folder / "train.csv")
            data = str(folder / "train.csv")
    samples = int(sum(counts.values()))
    if samples == 0:
        raise WorkspaceError(f"manifest {manifest!r} leaves no trainable sample of {web!r} (kept {config['kept']}, "
                             f"{skipped} without caption); pick a manifest that keeps more")
    done = {**config, "samples": samples, "skipped": skipped, "shards": counts,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    fileio.write_json(folder / "summary.json", done)
    return TrainData(folder, data, fmt, samples, skipped, done)


def _has_tar_images(emb) -> bool:
    meta = pd.read_parquet(emb.shards[0].meta, columns=["offset"]) if emb.shards else None
    return bool(meta is not None and len(meta) and (meta["offset"] >= 0).any())


def _prepare(folder: Path, config: dict, force: bool) -> None:
    """Keep a cache made from the same inputs; wipe one made from others (or when forced)."""
    old = folder / "config.json"
    if folder.exists() and (force or not old.exists() or fileio.read_json(old) != config):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").unlink(missing_ok=True)
    fileio.write_json(old, config)


def _shard_rows(emb, shard, hashes: np.ndarray | None, classes) -> tuple[pd.DataFrame, int]:
    """Kept rows of one embedding shard with their training captions; (rows, skipped without caption)."""
    meta = pd.read_parquet(shard.meta, columns=[c for c in COLUMNS if c in emb.columns()])
    meta = meta[_is_kept(meta["key"], hashes)]
    label = meta["label"] if "label" in meta else pd.Series(-1, index=meta.index)
    caption = meta["caption"] if "caption" in meta else pd.Series(None, index=meta.index, dtype="str")
    meta = meta.assign(title=[sample_caption(c, lab, classes) for c, lab in zip(caption, label)])
    missing = meta["title"].isna()
    return meta[~missing], int(missing.sum())


def _write_tars(emb, hashes: np.ndarray | None, classes, folder: Path, progress: Progress | None) -> tuple[dict, int]:
    """One tar per embedding shard with its kept samples; finished tars (and their counts) are reused."""
    counts_file = folder / "counts.json"
    counts = fileio.read_json(counts_file) if counts_file.exists() else {}
    skipped, total = 0, len(emb.shards)
    for done, shard in enumerate(emb.shards):
        name = f"{shard.index:05d}.tar"
        if name in counts and (folder / name).exists():
            skipped += counts.get(f"skipped/{name}", 0)
        else:
            rows, missing = _shard_rows(emb, shard, hashes, classes)
            if len(rows):
                fileio.atomic_write(folder / name, lambda tmp, r=rows: _write_tar(tmp, r))
            counts[name], counts[f"skipped/{name}"] = len(rows), missing
            skipped += missing
            fileio.write_json(counts_file, counts)
        if progress is not None:
            progress(done + 1, total, f"materialise training data: shard {done + 1}/{total}")
    sizes = {k: v for k, v in counts.items() if not k.startswith("skipped/") and v > 0}
    fileio.write_json(folder / "sizes.json", sizes)  # open_clip_train reads the sample count from here
    return sizes, skipped


def _write_tar(path: Path, rows: pd.DataFrame) -> None:
    """Write rows as webdataset samples `<key>.<ext>` + `<key>.txt`; each source file is opened once and read in
    offset order (one pass over a source tar)."""
    ordered = rows.sort_values(["path", "offset"], kind="stable")
    with tarfile.open(path, "w") as out:
        for source, group in ordered.groupby("path", sort=False):
            try:
                with open(source, "rb") as f:
                    for row in group.itertuples(index=False):
                        data = _read_member(f, source, int(row.offset), int(row.size))
                        _add_member(out, f"{row.key}.{image_extension(data)}", data)
                        _add_member(out, f"{row.key}.txt", row.title.encode("utf-8"))
            except OSError as err:
                raise DataError(f"cannot read training images from {source} ({err}); check that the web set's "
                                "files are still there, or re-embed it") from err


def _read_member(f, source: str, offset: int, size: int) -> bytes:
    """`size` bytes at `offset` (a tar member), or the whole file for offset -1."""
    if offset < 0:
        f.seek(0)
        return f.read()
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise DataError(f"{source}: only {len(data)} of {size} bytes at offset {offset}; the tar changed since it "
                        "was embedded: re-embed the web set with force")
    return data


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def _tar_pattern(folder: Path, counts: dict) -> str:
    """A brace pattern naming exactly the written tars (shards with no kept sample are left out)."""
    names = sorted(counts)
    if len(names) == 1:
        return str(folder / names[0])
    return str(folder / ("{" + ",".join(n[:-4] for n in names) + "}.tar"))


def _write_csv(emb, hashes: np.ndarray | None, classes, path: Path) -> tuple[dict, int]:
    """A CSV `filepath,title` of the kept image files (open_clip_train --dataset-type csv)."""
    parts, skipped = [], 0
    for shard in emb.shards:
        rows, missing = _shard_rows(emb, shard, hashes, classes)
        skipped += missing
        parts.append(rows[["path", "title"]].rename(columns={"path": "filepath"}))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["filepath", "title"])
    missing_files = [p for p in frame["filepath"].head(100) if not Path(p).is_file()]
    if missing_files:
        raise DataError(f"training image {missing_files[0]} does not exist; the dataset's files moved since it "
                        "was embedded: re-embed it or restore the files")
    fileio.atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
    return {path.name: len(frame)}, skipped

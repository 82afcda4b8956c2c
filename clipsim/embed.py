"""Batched image embedding: a registered dataset's source shards -> clip-retrieval embedding shards, resumable.

`embeddings/<name>/` holds `config.json` (model, weights and source fingerprints; written first),
`img_emb/` + `metadata/` shards, `skipped.parquet` (images that failed to decode) and `summary.json`
(written last: its presence marks a complete run). Runs over a shard range (one cluster task each) keep their
skipped lists per shard in `skipped_parts/` and write no summary; `finalize_embeddings` completes them.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from clipsim import fileio, store
from clipsim.data.sources import DEFAULT_SHARD_SIZE, Source, SourceShard, open_source, read_image
from clipsim.data.tars import first_repeated_key, key_hashes
from clipsim.errors import DataError
from clipsim.models import DEFAULT_MODEL, DEFAULT_PRETRAINED, load_model
from clipsim.search.exact import resolve_device
from clipsim.shard_ranges import check_range, index_runs

__all__ = ["DEFAULT_MODEL", "DEFAULT_PRETRAINED", "embed_dataset", "embed_images", "encode_texts", "finalize_embeddings",
           "load_model"]

log = logging.getLogger(__name__)
Progress = Callable[[int, int, str], None]
# Changing any of these makes finished shards incompatible with new ones.
IDENTITY = ("model", "model_config_fingerprint", "pretrained", "checkpoint_fingerprint", "shard_size",
            "source_fingerprint")
SKIPPED_COLUMNS = ["key", "path", "offset", "size", "error", "shard"]
SKIPPED_PARTS = "skipped_parts"  # per-shard skipped lists of shard-range runs: concurrent tasks never share a file
SYSTEMATIC_FAILURE_ROWS = 10  # that many images of one shard all failing is a wrong path or mount, not bad files


def _autocast(device: torch.device, precision: str):
    """fp16 autocast on CUDA for 'amp' (and 'auto'); plain fp32 otherwise."""
    if precision not in ("auto", "amp", "fp32"):
        raise ValueError(f"precision {precision!r} must be 'auto', 'amp' or 'fp32'")
    amp = device.type == "cuda" and precision in ("auto", "amp")
    return torch.autocast(device.type, dtype=torch.float16, enabled=amp)


def _encode_pixels(model: torch.nn.Module, pixels: torch.Tensor, device: torch.device, precision: str) -> np.ndarray:
    """encode_image on a preprocessed batch, L2-normalised in float32: (n, d) float32."""
    with torch.inference_mode(), _autocast(device, precision):
        feats = model.encode_image(pixels.to(device, non_blocking=True))
    return F.normalize(feats.float(), dim=-1).cpu().numpy()


def embed_images(model: torch.nn.Module, preprocess: Callable, images: list, device: str | torch.device = "cpu",
                 batch_size: int = 256, precision: str = "auto") -> np.ndarray:
    """Embed PIL images with the image tower.

    Args:
        model: open_clip model in eval mode, on `device`.
        preprocess: its eval transform (PIL image -> (3, H, W) tensor).
        images: PIL images.
        batch_size: images per forward pass.
        precision: 'auto' (fp16 autocast on CUDA, fp32 on CPU), 'amp' or 'fp32'.

    Returns:
        (len(images), d) float32, rows L2-normalised.
    """
    device = resolve_device(device)
    parts = [
        _encode_pixels(model, torch.stack([preprocess(im) for im in images[lo : lo + batch_size]]), device, precision)
        for lo in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, getattr(model.visual, "output_dim", 0)), np.float32)


def encode_texts(model: torch.nn.Module, tokenizer: Callable, texts: list[str], device: str | torch.device = "cpu",
                 batch_size: int = 1024) -> np.ndarray:
    """Embed texts with the text tower (for zero-shot classifiers).

    Returns:
        (len(texts), d) float32, rows L2-normalised.
    """
    device = resolve_device(device)
    parts = []
    with torch.inference_mode():
        for lo in range(0, len(texts), batch_size):
            feats = model.encode_text(tokenizer(list(texts[lo : lo + batch_size])).to(device))
            parts.append(F.normalize(feats.float(), dim=-1).cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


class _ShardImages(torch.utils.data.Dataset):
    """Map-style dataset over one shard's records: decode + preprocess in the loader workers."""

    def __init__(self, records: pd.DataFrame, preprocess: Callable, crop_border: int = 0):
        self.crop_border = crop_border  # the dataset's per-image crop (ObjectNet: its 1 px frame)
        self.paths = records["path"].to_numpy(dtype=object)
        self.offsets = records["offset"].to_numpy(dtype=np.int64)
        self.sizes = records["size"].to_numpy(dtype=np.int64)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        offset = int(self.offsets[i])
        locator = (self.paths[i], offset, int(self.sizes[i])) if offset >= 0 else self.paths[i]
        try:
            return i, self.preprocess(read_image(locator, self.crop_border)), None
        except Exception as err:  # noqa: BLE001  (any failure of one image skips that image; the run goes on)
            return i, None, f"{type(err).__name__}: {err}"


def _collate(batch: list) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """(row ids that decoded, their stacked pixels or None, [(row id, error)] of those that did not)."""
    good = [(i, x) for i, x, err in batch if err is None]
    failed = [(i, err) for i, _, err in batch if err is not None]
    return [i for i, _ in good], torch.stack([x for _, x in good]) if good else None, failed


def _embed_shard(model, preprocess, records: pd.DataFrame, device: torch.device, opts: dict,
                 on_batch: Callable[[int], None]) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Embed one shard's records.

    Returns:
        (embeddings (n_ok, d) float32 normalised, row ids (n_ok,) int64 into records, [(row id, error)]).
    """
    loader = torch.utils.data.DataLoader(
        _ShardImages(records, preprocess, opts["crop_border"]), batch_size=opts["batch_size"],
        num_workers=opts["workers"], collate_fn=_collate, pin_memory=device.type == "cuda", shuffle=False,
        worker_init_fn=_yield_to_forward if device.type == "cpu" else None,
    )
    parts, rows, failed = [], [], []
    for ids, pixels, errors in loader:
        if pixels is not None:
            parts.append(_encode_pixels(model, pixels, device, opts["precision"]))
            rows.extend(ids)
        failed.extend(errors)
        on_batch(len(ids) + len(errors))
    dim = opts["dim"]
    emb = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
    return emb, np.asarray(rows, dtype=np.int64), failed


def _prepare_folder(root: Path, config: dict, force: bool) -> None:
    """Wipe (force) or check an existing embedding folder against this run's config; write config.json."""
    if force and root.exists():
        shutil.rmtree(root)
    old_path = root / "config.json"
    if old_path.exists():
        old = fileio.read_json(old_path)
        diff = [f"{k}: {old.get(k)!r} -> {config[k]!r}" for k in IDENTITY if old.get(k) != config[k]]
        if diff:
            raise DataError(
                f"{root} holds embeddings made differently ({'; '.join(diff)}); delete that folder or re-run with "
                "--force (force=True) to re-embed from scratch, or keep the old model/pretrained/shard size"
            )
    elif (root / store.EMB_DIR).is_dir() and any((root / store.EMB_DIR).iterdir()):
        raise DataError(f"{root} holds embedding shards but no config.json (unknown model); delete the folder or "
                        "re-run with --force")
    (root / "summary.json").unlink(missing_ok=True)  # written again only when this run completes
    fileio.write_json(old_path, config)


def _shard_done(root: Path, index: int) -> bool:
    return store.emb_path(root, index).exists() and store.meta_path(root, index).exists()


def _skipped_frame(records: pd.DataFrame, failed: list[tuple[int, str]], shard: int) -> pd.DataFrame:
    ids = [i for i, _ in failed]
    frame = records.iloc[ids][["key", "path", "offset", "size"]].reset_index(drop=True)
    frame["error"] = pd.Series([e for _, e in failed], dtype="str")
    frame["shard"] = np.int64(shard)
    for i, err in failed:
        log.warning("skipped image %s (%s): %s", records["key"].iat[i], records["path"].iat[i], err)
    return frame


def _no_skipped() -> pd.DataFrame:
    dtypes = {"key": "str", "path": "str", "offset": "int64", "size": "int64", "error": "str", "shard": "int64"}
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in dtypes.items()})


class _Run:
    """Counters, skipped list and progress of one embed_dataset call."""

    def __init__(self, root: Path, source: Source, progress: Progress | None, label: str,
                 shards: list[SourceShard] | None = None):
        self.root, self.source, self.progress, self.label = root, source, progress, label
        self.partial = shards is not None  # a shard range: per-shard skipped lists, no summary
        self.shards = source.shards if shards is None else shards
        self.done, self.embedded, self.started = 0, 0, time.perf_counter()
        self.hashes: dict[int, np.ndarray] = {}
        self._counted = {s.index: s.rows for s in self.shards if s.rows is not None}
        self._counted_sum = sum(self._counted.values())
        self.skipped = _load_skipped(root)

    def count_shard(self, index: int, rows: int) -> None:
        """Record a shard's record count once known (tars: after indexing)."""
        if index not in self._counted:
            self._counted[index] = rows
            self._counted_sum += rows

    def total(self) -> int:
        """Records in the run's shards; tars not yet indexed are estimated at the mean of those indexed so far."""
        n = len(self._counted)
        unknown = len(self.shards) - n
        return self._counted_sum + (round(self._counted_sum / n * unknown) if n else 0)

    def tick(self, count: int, shard: SourceShard) -> None:
        self.done += count
        if self.progress is not None:
            self.progress(self.done, max(self.total(), self.done),
                          f"{self.label}: shard {shard.index + 1}/{len(self.source.shards)}")

    def finish_shard(self, shard: SourceShard, records: pd.DataFrame, rows: np.ndarray, failed: list) -> None:
        kept = self.skipped[self.skipped["shard"] != shard.index]
        parts = [f for f in (kept, _skipped_frame(records, failed, shard.index)) if len(f)]
        self.skipped = pd.concat(parts, ignore_index=True) if parts else kept
        if self.partial:
            mine = self.skipped[self.skipped["shard"] == shard.index]
            fileio.write_parquet(self.root / SKIPPED_PARTS / f"shard_{shard.index}.parquet", mine[SKIPPED_COLUMNS])
        else:
            fileio.write_parquet(self.root / "skipped.parquet", self.skipped[SKIPPED_COLUMNS])
        self.embedded += len(rows)


def _load_skipped(root: Path) -> pd.DataFrame:
    """skipped.parquet with the per-shard lists of shard-range runs in place of those shards' rows."""
    frames = [pd.read_parquet(root / "skipped.parquet")] if (root / "skipped.parquet").exists() else []
    parts = sorted((root / SKIPPED_PARTS).glob("shard_*.parquet"))
    if parts:
        redone = [int(p.stem.split("_")[1]) for p in parts]
        frames = [f[~f["shard"].isin(redone)] for f in frames] + [pd.read_parquet(p) for p in parts]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else _no_skipped()


def embed_dataset(
    ws, name: str, model: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED, batch_size: int = 256,
    workers: int = 2, device: str = "auto", shard_size: int = DEFAULT_SHARD_SIZE, progress: Progress | None = None,
    force: bool = False, cache_dir: str | None = None, precision: str = "auto", shards: tuple[int, int] | None = None,
) -> store.EmbeddingSet:
    """Embed a registered dataset into `embeddings/<name>/` (clip-retrieval layout), resuming finished shards.

    Args:
        ws: the Workspace; `ws.dataset(name)` gives kind and source.
        name: dataset name; kind 'embeddings' is only validated, not embedded.
        model, pretrained: see models.load_model (default: the paper's ViT-B-16-plus-240 / laion400m_e32).
        batch_size: images per forward pass.
        workers: DataLoader processes decoding and preprocessing images (0 = in this process; on CPU they run at
            the lowest priority, so the forward keeps every core).
        device: 'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...
        shard_size: records per output shard for folders and tables (one tar = one shard).
        progress: progress(done_images, total_images, description) or None; totals for tars are estimates.
        force: delete existing embeddings of this dataset first.
        cache_dir: model cache folder (see models.load_model).
        precision: 'auto' (fp16 autocast on CUDA, fp32 on CPU), 'amp' or 'fp32'.
        shards: (lo, hi): embed only source shards lo <= i < hi (one task of a cluster array; no summary is
            written: `finalize_embeddings` completes the set once every range is done). None: all shards.

    Returns:
        The dataset's EmbeddingSet (for a range: the shards complete so far).

    Raises:
        DataError: bad source, existing embeddings from another model/source (without force), a key repeated
            across tars, a shard whose images all fail, or force together with a shard range.
        ModelError: the model or its weights cannot be loaded offline.
    """
    ds = ws.dataset(name)
    if ds.kind == "embeddings":
        return ws.embeddings(name)
    source = open_source(ds.kind, ds.source, shard_size, options=ds.extra)
    root = ws.path("embeddings", name)
    chosen = _chosen_shards(source, shards, force, root)
    dev = resolve_device(device)
    net, preprocess, _, info = load_model(model, pretrained, dev, cache_dir)
    config = {**info, "kind": ds.kind, "source": ds.source, "shard_size": shard_size, "precision": precision,
              "source_fingerprint": source.fingerprint(), "shards": len(source.shards),
              "crop_border": source.crop_border,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _prepare_folder(root, config, force)
    run = _Run(root, source, progress, name, None if shards is None else chosen)
    opts = {"batch_size": batch_size, "workers": workers, "precision": precision, "dim": info["dim"],
            "crop_border": source.crop_border}
    for shard in chosen:
        if _shard_done(root, shard.index):
            _resume_shard(run, shard)
            continue
        records = source.records(shard)
        run.count_shard(shard.index, len(records))
        emb, rows, failed = _embed_shard(net, preprocess, records, dev, opts, lambda n, shard=shard: run.tick(n, shard))
        if len(records) >= SYSTEMATIC_FAILURE_ROWS and not len(rows):
            raise DataError(f"all {len(records)} images of shard {shard.index} ({shard.description}) failed, e.g. "
                            f"{records['path'].iat[0]}: {failed[0][1]}; check the source path and that it is mounted")
        store.write_shard(root, shard.index, emb, records.iloc[rows])
        run.finish_shard(shard, records, rows, failed)
        if source.kind == "wds":
            run.hashes[shard.index] = key_hashes(records["key"].iloc[rows])
    if shards is not None:
        (root / store.EMB_DIR).mkdir(parents=True, exist_ok=True)
        return store.EmbeddingSet(root, allow_partial=True)
    _check_keys_across_shards(run)
    _write_summary(run)
    return ws.embeddings(name)


def _chosen_shards(source: Source, shards: tuple[int, int] | None, force: bool, root: Path) -> list[SourceShard]:
    """The source shards a run embeds: all, or those in the range (never with force: it would wipe other ranges)."""
    if shards is None:
        return list(source.shards)
    if force:
        raise DataError(f"force=True (--force) with a shard range would delete the shards of other ranges in {root}; "
                        "delete that folder once before launching the ranges, or re-embed without a range")
    lo, hi = check_range(shards)
    return [s for s in source.shards if lo <= s.index < hi]


def finalize_embeddings(ws, name: str) -> store.EmbeddingSet:
    """Complete a dataset embedded by shard ranges: check that every source shard is embedded (with one config,
    from the current source), check keys across tars, write `skipped.parquet` and `summary.json`. Embeds nothing.

    Args:
        ws: the workspace.
        name: dataset name (kind 'embeddings' is returned as is).

    Returns:
        The dataset's complete EmbeddingSet.

    Raises:
        DataError: nothing embedded yet, the source changed since, or shards missing (the message names the
            ranges and the command that embeds them).
    """
    ds = ws.dataset(name)
    if ds.kind == "embeddings":
        return ws.embeddings(name)
    root = ws.path("embeddings", name)
    again = f"python -m clipsim embed --workspace {ws.root} --datasets {name}"
    if not (root / "config.json").exists():
        raise DataError(f"{root} has no config.json: no shard of {name!r} was embedded; run `{again} --shards LO:HI` "
                        "for each range (or `--array N`) first")
    config = fileio.read_json(root / "config.json")
    source = open_source(ds.kind, ds.source, config["shard_size"], options=ds.extra)
    if source.fingerprint() != config["source_fingerprint"]:
        raise DataError(f"the source of {name!r} ({ds.source}) changed since its shards in {root} were embedded; "
                        f"re-embed with `{again} --force`")
    missing = index_runs([s.index for s in source.shards if not _shard_done(root, s.index)])
    if missing:
        raise DataError(f"shards {', '.join(f'{a}:{b}' for a, b in missing)} of {name!r} are not embedded yet; run "
                        + " and ".join(f"`{again} --shards {a}:{b}`" for a, b in missing) + ", then finalize again")
    run = _Run(root, source, None, name)
    for shard in source.shards:
        _resume_shard(run, shard)
    _check_keys_across_shards(run)
    _write_summary(run)
    return ws.embeddings(name)


def _yield_to_forward(worker_id: int) -> None:
    """Loader worker start on CPU: lowest priority, so decoding takes only the cycles the forward leaves.

    The forward keeps every core. Measured on 2 cores (benchmarks/embed_throughput.py): ViT-B-32 ran 2x faster
    than with one core reserved per worker (the previous budget), and the decode-bound demo model no slower.
    """
    if hasattr(os, "nice"):
        os.nice(19)


def _resume_shard(run: _Run, shard: SourceShard) -> None:
    """Count a finished shard and remember its keys (tars) without recomputing it."""
    rows = store.npy_header(store.emb_path(run.root, shard.index))[0][0]
    skipped = int((run.skipped["shard"] == shard.index).sum()) if len(run.skipped) else 0
    run.count_shard(shard.index, rows + skipped)
    if run.source.kind == "wds":
        run.hashes[shard.index] = key_hashes(_shard_keys(run.root, shard.index))
    run.tick(rows + skipped, shard)


def _shard_keys(root: Path, index: int) -> pd.Series:
    return pd.read_parquet(store.meta_path(root, index), columns=["key"])["key"]


def _check_keys_across_shards(run: _Run) -> None:
    """Tars are indexed one at a time, so a key repeated in two tars is found here, after embedding."""
    hit = first_repeated_key(run.hashes, lambda s: _shard_keys(run.root, s))
    if hit:
        key, a, b = hit
        raise DataError(
            f"key {key!r} occurs in tar {run.source.shards[a].description} and in {run.source.shards[b].description}; "
            "keys must be unique within a dataset (is a tar listed twice or copied?): fix the source, then re-run "
            "with --force"
        )


def _write_summary(run: _Run) -> None:
    """Consolidate the skipped lists (sorted by shard), then write summary.json: the run is complete."""
    fileio.write_parquet(run.root / "skipped.parquet",
                         run.skipped.sort_values("shard", kind="stable").reset_index(drop=True)[SKIPPED_COLUMNS])
    shutil.rmtree(run.root / SKIPPED_PARTS, ignore_errors=True)
    seconds = time.perf_counter() - run.started
    emb = store.EmbeddingSet(run.root)
    summary = {
        "rows": emb.count, "skipped": len(run.skipped), "shards": len(emb.shards), "dim": emb.dim,
        "embedded_this_run": run.embedded, "seconds": round(seconds, 3),
        "images_per_second": round(run.embedded / seconds, 2) if seconds > 0 else None,
        "complete": True, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    fileio.write_json(run.root / "summary.json", summary)
    log.info("embedded %d images (%d skipped) into %s in %.1f s", run.embedded, len(run.skipped), run.root, seconds)

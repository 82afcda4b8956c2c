"""Batched image embedding: a registered dataset's source shards -> clip-retrieval embedding shards, resumable.

`embeddings/<name>/` holds `config.json` (model, weights and source fingerprints; written first),
`img_emb/` + `metadata/` shards, per-shard skipped lists, then `skipped.parquet` (what could not be embedded)
and `summary.json` (written last: the commit point; see clipsim.embed_summary). Until it exists the set is
`incomplete (k of n shards)` and no command reads it. `--force` builds the new set in `embeddings/.<name>.force/`
and swaps it in whole. Runs over a shard range (one cluster task each) write no summary; `finalize_embeddings`
commits them. Every argument is checked before the first write.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from clipsim import fileio, store
from clipsim.checks import check_choice, check_embed_args
from clipsim.data.keys import check_unique_keys, describe, key_hashes, repeated_keys
from clipsim.data.sources import DEFAULT_SHARD_SIZE, Source, SourceShard, open_source, read_image
from clipsim.embed_summary import load_skipped, no_skipped, shard_skipped, write_shard_skipped, write_summary
from clipsim.errors import DataError
from clipsim.models import DEFAULT_MODEL, DEFAULT_PRETRAINED, embed_images, encode_pixels, encode_texts, load_model
from clipsim.names import check_writable
from clipsim.search.exact import resolve_device
from clipsim.shard_ranges import check_range, index_runs

__all__ = ["DEFAULT_MODEL", "DEFAULT_PRETRAINED", "embed_dataset", "embed_images", "encode_texts", "finalize_embeddings",
           "load_model"]

log = logging.getLogger(__name__)
Progress = Callable[[int, int, str], None]
# Changing any of these makes finished shards incompatible with new ones.
IDENTITY = ("model", "model_config_fingerprint", "pretrained", "checkpoint_fingerprint", "shard_size",
            "source_fingerprint")
PRECISIONS = ("auto", "amp", "fp32")
SYSTEMATIC_FAILURE_ROWS = 10  # that many images of one shard all failing is a wrong path or mount, not bad files


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
            parts.append(encode_pixels(model, pixels, device, opts["precision"]))
            rows.extend(ids)
        failed.extend(errors)
        on_batch(len(ids) + len(errors))
    dim = opts["dim"]
    emb = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
    return emb, np.asarray(rows, dtype=np.int64), failed


def _check_folder(root: Path, config: dict, restart: bool) -> bool:
    """Check an existing embedding folder against this run's config; True when it must be wiped first (`restart`:
    a forced rebuild made differently). Nothing is written here.

    Raises:
        DataError: the folder holds shards made differently, or shards without a config (unless `restart`).
    """
    old_path = root / store.CONFIG
    old = fileio.read_json(old_path) if old_path.exists() else None
    diff = [f"{k}: {old.get(k)!r} -> {config[k]!r}" for k in IDENTITY if old.get(k) != config[k]] if old else []
    unknown = old is None and (root / store.EMB_DIR).is_dir() and any((root / store.EMB_DIR).iterdir())
    if restart:
        return bool(diff or unknown or (root / store.SUMMARY).exists())  # a summary: an old set swapped out
    if diff:
        raise DataError(
            f"{root} holds embeddings made differently ({'; '.join(diff)}); delete that folder or re-run with "
            "--force (force=True) to re-embed from scratch, or keep the old model/pretrained/shard size"
        )
    if unknown:
        raise DataError(f"{root} holds embedding shards but no config.json (unknown model); delete the folder or "
                        "re-run with --force")
    return False


def _shard_done(root: Path, index: int) -> bool:
    return store.emb_path(root, index).exists() and store.meta_path(root, index).exists()


def _build_folder(root: Path, config: dict, force: bool, shards: tuple[int, int] | None) -> tuple[Path | None, bool]:
    """(the folder this run writes, whether to wipe it first): `root` itself (resuming it), or with `force` a hidden
    sibling that replaces `root` only when complete (a forced run killed earlier resumes there). (None, False) when
    `root` is a committed set made by this config that still holds every shard: nothing to do."""
    if not force:
        old = fileio.read_json(root / store.CONFIG) if (root / store.CONFIG).exists() else {}
        same = all(old.get(k) == config[k] for k in IDENTITY)
        whole = store.done_shards(root) == list(range(config["shards"]))
        if shards is None and same and whole and store.set_state(root).state == "complete":
            return None, False
        return root, _check_folder(root, config, restart=False)
    build = root.parent / f".{root.name}.force"
    return build, _check_folder(build, config, restart=True)


class _Run:
    """Counters, skipped list and progress of one embed_dataset call."""

    def __init__(self, root: Path, source: Source, progress: Progress | None, label: str,
                 shards: list[SourceShard] | None = None, config: dict | None = None, wipe: bool = False):
        self.root, self.source, self.progress, self.label = root, source, progress, label
        self.config, self.wipe = config, wipe  # written by open(), at the first write: a failure before it leaves no trace
        self.shards = source.shards if shards is None else shards
        self.done, self.embedded, self.started = 0, 0, time.perf_counter()
        self.hashes: dict[int, np.ndarray] = {}
        self._counted = {s.index: s.rows for s in self.shards if s.rows is not None}
        self._counted_sum = sum(self._counted.values())
        self.skipped = load_skipped(root)

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

    def has_shard(self, index: int) -> bool:
        """True when shard `index` is on disk from an earlier run (never in a folder about to be wiped)."""
        return not self.wipe and _shard_done(self.root, index)

    def open(self) -> None:
        """Before the run's first write: wipe the folder if asked, reopen a committed set, write config.json."""
        if self.config is None:
            return
        if self.wipe:
            fileio.remove_tree(self.root)
            self.skipped, self.wipe = no_skipped(), False
        if (self.root / store.SUMMARY).exists():
            fileio.remove_tree(self.root / store.SUMMARY)  # the set is open again until this run commits it
        fileio.write_json(self.root / store.CONFIG, self.config)
        self.config = None

    def finish_shard(self, shard: SourceShard, records: pd.DataFrame, rows: np.ndarray, failed: list,
                     losses: pd.DataFrame) -> None:
        """Store the shard's skipped list (before the shard: see clipsim.embed_summary) and count it."""
        mine = shard_skipped(records, failed, losses, shard.index)
        write_shard_skipped(self.root, shard.index, mine)
        parts = [f for f in (self.skipped[self.skipped["shard"] != shard.index], mine) if len(f)]
        self.skipped = pd.concat(parts, ignore_index=True) if parts else no_skipped()
        self.embedded += len(rows)


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
        force: re-embed from scratch into a hidden sibling folder that replaces the existing embeddings only once
            complete (a killed forced run leaves the old set untouched; running it again resumes it).
        cache_dir: model cache folder (see models.load_model).
        precision: 'auto' (fp16 autocast on CUDA, fp32 on CPU), 'amp' or 'fp32'.
        shards: (lo, hi): embed only source shards lo <= i < hi (one task of a cluster array; no summary is
            written: `finalize_embeddings` completes the set once every range is done). None: all shards.

    Returns:
        The dataset's EmbeddingSet (for a range: the shards complete so far).

    Raises:
        DataError: bad source, existing embeddings from another model/source (without force), a key repeated
            across tars or in an imported folder, a shard whose images all fail, or force together with a shard
            range.
        ModelError: the model or its weights cannot be loaded offline.
        ArgumentError, ReadOnlyError: a bad argument, or a read-only workspace (nothing is touched).
    """
    check_embed_args(batch_size, workers, device, shard_size)
    check_choice(precision, "precision", PRECISIONS)
    ds = ws.dataset(name)
    if ds.kind == "embeddings":
        return validate_imported(ws, name)
    check_writable(f"embed {name}")
    source = open_source(ds.kind, ds.source, shard_size, options=ds.extra)
    root = ws.path("embeddings", name)
    chosen = _chosen_shards(source, shards, force, root)
    dev = resolve_device(device)
    net, preprocess, _, info = load_model(model, pretrained, dev, cache_dir)
    config = {**info, "kind": ds.kind, "source": ds.source, "shard_size": shard_size, "precision": precision,
              "source_fingerprint": source.fingerprint(), "shards": len(source.shards),
              "crop_border": source.crop_border,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    build, wipe = _build_folder(root, config, force, shards)
    if build is None:
        log.info("embeddings of %s are complete and current; nothing to do", name)
        return ws.embeddings(name)
    run = _Run(build, source, progress, name, None if shards is None else chosen, config, wipe)
    opts = {"batch_size": batch_size, "workers": workers, "precision": precision, "dim": info["dim"],
            "crop_border": source.crop_border}
    for shard in chosen:
        if run.has_shard(shard.index):
            _resume_shard(run, shard)
        else:
            _embed_one(run, shard, (net, preprocess, dev), opts)
    run.open()
    if shards is not None:
        (build / store.EMB_DIR).mkdir(parents=True, exist_ok=True)
        return store.EmbeddingSet(build, allow_partial=True)
    _commit(run)
    if build != root:
        fileio.swap_dir(build, root)
    return ws.embeddings(name)


def _embed_one(run: _Run, shard: SourceShard, model: tuple, opts: dict) -> None:
    """Embed one source shard: its skipped list first, then its npy and metadata (the shard's own commit)."""
    net, preprocess, dev = model
    records, losses = run.source.read(shard)
    run.count_shard(shard.index, len(records))
    emb, rows, failed = _embed_shard(net, preprocess, records, dev, opts, lambda n: run.tick(n, shard))
    if len(records) >= SYSTEMATIC_FAILURE_ROWS and not len(rows):
        raise DataError(f"all {len(records)} images of shard {shard.index} ({shard.description}) failed, e.g. "
                        f"{records['path'].iat[0]}: {failed[0][1]}; check the source path and that it is mounted")
    run.open()
    run.finish_shard(shard, records, rows, failed, losses)
    store.write_shard(run.root, shard.index, emb, records.iloc[rows])
    if run.source.kind == "wds":
        run.hashes[shard.index] = key_hashes(records["key"].iloc[rows])


def validate_imported(ws, name: str) -> store.EmbeddingSet:
    """An imported clip-retrieval folder, checked (headers, row alignment, unique keys) as it is now.

    Raises:
        DataError: the folder is malformed, or keys repeat (the first ones are named).
    """
    emb = ws.embeddings(name)
    check_unique_keys(emb, f"dataset {name!r} ({emb.root})")
    return emb


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
        ReadOnlyError: the workspace is read-only (nothing is written).
    """
    ds = ws.dataset(name)
    if ds.kind == "embeddings":
        return ws.embeddings(name)
    check_writable(f"finalize the embeddings of {name}")
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
    _commit(run)
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
    """Tars are indexed one at a time, so a key repeated in two tars is found here, before the set is committed."""
    hits = repeated_keys(run.hashes, lambda s: _shard_keys(run.root, s))
    if hits:
        where = describe(hits, lambda i: f"tar {run.source.shards[i].description}")
        raise DataError(
            f"{where}; keys must be unique within a dataset (is a tar listed twice or "
            "copied?): fix the source, then re-run with --force"
        )


def _commit(run: _Run) -> None:
    """Refuse repeated keys, then consolidate the skipped lists and write summary.json (the commit point)."""
    _check_keys_across_shards(run)
    seconds = time.perf_counter() - run.started
    stats = {"embedded_this_run": run.embedded, "seconds": round(seconds, 3),
             "images_per_second": round(run.embedded / seconds, 2) if seconds > 0 else None}
    write_summary(run.root, run.skipped, stats, run.source.notes)
    log.info("embedded %d images (%d skipped) into %s in %.1f s", run.embedded, len(run.skipped), run.root, seconds)

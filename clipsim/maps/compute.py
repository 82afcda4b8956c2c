"""2-D UMAP maps of test and train embeddings: fit a stratified sample, place the rest with `transform`, store it.

A map lives in `maps/<name>/`: `coords.parquet` (dataset, key, row, x, y, fitted; one row per placed embedding,
datasets in order, rows increasing) and `config.json` (datasets, sample sizes, seed, UMAP parameters, input
fingerprints). Readers never refit: they read the stored map, which is stale once an input's embeddings changed.
"""
from __future__ import annotations

import logging
import shutil
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from clipsim import fileio
from clipsim.errors import ClipsimError, ReadOnlyError, WorkspaceError
from clipsim.maps.store import DEFAULT_NAME, MAPS, MapInfo, list_maps, load_map, swap_into_place
from clipsim.names import check_name, read_only

if TYPE_CHECKING:
    from clipsim.jobs.worker import JobContext

DEFAULT_SAMPLE = 100_000  # UMAP fits ~100k points in minutes on a CPU; more adds little to a 2-D overview
TRANSFORM_BATCH = 16_384  # points placed per transform call: bounded memory, a progress step every few seconds
UMAP_DEFAULTS = {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine"}  # cosine: embeddings are L2-normalised
COLUMNS = ["dataset", "key", "row", "x", "y", "fitted"]
__all__ = [
    "COLUMNS",
    "DEFAULT_NAME",
    "DEFAULT_SAMPLE",
    "MAPS",
    "UMAP_DEFAULTS",
    "MapInfo",
    "allocate_sample",
    "compute_map",
    "embedded_datasets",
    "list_maps",
    "load_map",
    "map_config",
    "require_umap",
    "sample_rows",
    "umap_available",
    "umap_job",
]
log = logging.getLogger(__name__)
Progress = Callable[[int, int, str], None]


def require_umap():
    """The `umap` module (umap-learn), imported on use.

    Raises:
        ClipsimError: umap-learn is not installed (the message says how to install it).
    """
    try:
        import umap
    except ImportError as err:
        raise ClipsimError(UMAP_MISSING) from err
    return umap


def umap_available() -> bool:
    """Whether umap-learn can be imported (checked without importing it: that takes seconds)."""
    import importlib.util

    try:
        return importlib.util.find_spec("umap") is not None
    except (ImportError, ValueError):
        return False


UMAP_MISSING = ("the Map needs umap-learn, which is not installed in this environment; install it with "
                "`pip install umap-learn` and compute the map again")


def allocate_sample(counts: dict[str, int], total: int) -> dict[str, int]:
    """Stratified sample sizes: an equal share of `total` per dataset, a small set's unused share going to the rest.

    Every dataset with at most total / len(counts) points is taken whole (a 50k benchmark is not drowned out by a
    200M web set); sizes add up to min(total, sum(counts)).

    Args:
        counts: {dataset: number of points}.
        total: points to sample in all (>= 0).

    Returns:
        {dataset: sample size}, in the order of `counts`.

    Raises:
        ValueError: a negative total or count.
    """
    if total < 0 or any(c < 0 for c in counts.values()):
        raise ValueError(f"sample size {total} and dataset counts {counts} must be >= 0")
    left, out = int(total), {}
    order = sorted(counts, key=lambda n: (counts[n], n))  # smallest first; names break ties deterministically
    for i, name in enumerate(order):
        out[name] = min(int(counts[name]), left // (len(order) - i))
        left -= out[name]
    return {name: out[name] for name in counts}


def sample_rows(count: int, size: int, seed: int, dataset: str) -> np.ndarray:
    """`size` distinct rows of `count`, increasing, drawn with a generator seeded by (seed, dataset name).

    Returns:
        (size,) int64.
    """
    if size >= count:
        return np.arange(count, dtype=np.int64)
    rng = np.random.default_rng([int(seed), zlib.crc32(dataset.encode())])
    return np.sort(rng.choice(count, size, replace=False)).astype(np.int64)


def embedded_datasets(ws) -> list[str]:
    """Datasets with embeddings (committed and non-empty, or incomplete: a map then refuses them), test sets first,
    each role in workspace order."""
    names = [n for role in ("test", "train") for n in ws.dataset_names(role)]
    return [n for n in names if ws.embedding_state(n).state == "incomplete"
            or ((emb := ws.embeddings(n, required=False)) is not None and emb.count)]


def map_config(ws, datasets: list[str] | None = None, sample: int = DEFAULT_SAMPLE, seed: int = 0,
               umap_params: dict | None = None, place: bool = True, sizes: dict[str, int] | None = None) -> dict:
    """The config a map with these settings records (without its creation time).

    Args:
        ws: the workspace.
        datasets: datasets to map (default: every embedded one, test sets first).
        sample: points the UMAP is fitted on, stratified by dataset (see allocate_sample).
        seed: seed of the sample and of UMAP.
        umap_params: UMAP keyword arguments over UMAP_DEFAULTS.
        place: place the points outside the sample with `transform` (False: the map holds the sample only).
        sizes: explicit {dataset: sample size}, overriding the stratified allocation for those sets.

    Raises:
        WorkspaceError: no dataset is embedded, or one of `datasets` is not.
    """
    names = list(datasets) if datasets else embedded_datasets(ws)
    if not names:
        raise WorkspaceError(f"no dataset in {ws.root} is embedded yet, so there is nothing to map; run "
                             f"`python -m clipsim embed --workspace {ws.root}` first")
    counts = {}
    for name in names:
        if ws.embedding_state(name).state == "incomplete":
            ws.embeddings(name)  # raises, naming the command that finishes the set
        emb = ws.embeddings(name, required=False)
        if emb is None or not emb.count:
            raise WorkspaceError(f"dataset {name!r} has no embeddings to map; run "
                                 f"`python -m clipsim embed --workspace {ws.root} --datasets {name}`")
        counts[name] = emb.count
    alloc = allocate_sample(counts, int(sample))
    alloc.update({n: min(int(v), counts[n]) for n, v in (sizes or {}).items() if n in counts})
    return {"datasets": names, "counts": counts, "sample": int(sample), "sample_sizes": alloc, "seed": int(seed),
            "place": bool(place), "umap": {**UMAP_DEFAULTS, **(umap_params or {})},
            "inputs": {n: ws.embeddings(n).fingerprint() for n in names}}


def compute_map(ws, name: str = DEFAULT_NAME, force: bool = False, progress: Progress | None = None,
                check: Callable[[], None] | None = None, **settings) -> MapInfo:
    """Fit UMAP on a stratified sample, place every other point with `transform`, and store the map.

    An identical fresh map (same settings and inputs) is returned as stored unless `force`.

    Args:
        ws: the workspace.
        name: map name (maps/<name>/).
        force: recompute even when an identical fresh map exists.
        progress: optional callable(done, total, message) over the points placed.
        check: optional callable run between batches (a job's cancellation check).
        **settings: map_config arguments (datasets, sample, seed, umap_params, place, sizes).

    Returns:
        The stored map.

    Raises:
        ReadOnlyError: the workspace is served read-only.
        ClipsimError: umap-learn is missing; WorkspaceError: nothing is embedded; DataError: a dataset's
            embeddings are incomplete (an interrupted embed run).
    """
    if read_only():
        raise ReadOnlyError(f"this workspace is served read-only (CLIPSIM_READ_ONLY=1); map {name!r} was not computed")
    check_name(name, "map")
    config = map_config(ws, **settings)
    if not force and name in list_maps(ws):
        old = load_map(ws, name)
        if {k: old.config.get(k) for k in config} == config and not old.stale:
            log.info("map %s is up to date; reusing it", name)
            return old
    umap = require_umap()
    ids = {n: sample_rows(config["counts"][n], config["sample_sizes"][n], config["seed"], n)
           for n in config["datasets"]}
    fitted = _fit(ws, umap, config, ids, progress)
    total = sum(config["counts"].values()) if config["place"] else sum(len(v) for v in ids.values())
    t0 = time.time()
    folder = _write(ws, name, config, ids, fitted, total, progress, check)
    log.info("map %s: %d points placed in %.1f s", name, total, time.time() - t0)
    return MapInfo(ws, name, folder, fileio.read_json(folder / "config.json"))


def _fit(ws, umap, config: dict, ids: dict[str, np.ndarray], progress: Progress | None):
    """Fit UMAP on the sampled rows of every dataset (float32, in dataset order)."""
    dims = {n: ws.embeddings(n).dim for n in config["datasets"]}
    if len(set(dims.values())) > 1:
        raise WorkspaceError(f"datasets have embeddings of different dimensions {dims}; a map needs one model's "
                             "embeddings: map datasets embedded with the same model (--datasets)")
    x = np.concatenate([ws.embeddings(n).rows(ids[n]).astype(np.float32) for n in config["datasets"]])
    params = dict(config["umap"])
    params["n_neighbors"] = max(2, min(int(params.get("n_neighbors", 15)), len(x) - 1))
    if len(x) < 4:
        raise WorkspaceError(f"a map needs at least 4 sampled points, got {len(x)}; raise --sample")
    if progress:
        progress(0, 1, f"fitting UMAP on {len(x):,} points (the first fit compiles for 10-25 s)")
    log.info("fitting UMAP %s on %d points", params, len(x))
    params.setdefault("n_jobs", 1)  # a seeded UMAP runs single-threaded anyway; saying so silences its warning
    model = umap.UMAP(n_components=2, random_state=config["seed"], **params)
    model.fit(x)
    return model


def _write(ws, name: str, config: dict, ids: dict[str, np.ndarray], model, total: int, progress: Progress | None,
           check: Callable[[], None] | None) -> Path:
    """Write coords.parquet and config.json into a temporary sibling folder and rename it into place."""
    root = ws.path(MAPS)
    root.mkdir(parents=True, exist_ok=True)
    fileio.clear_leftovers(root, name)  # folders of a run killed before its swap
    tmp = fileio.make_temp_dir(root, f".{name}.", ".tmp")
    try:
        schema = pa.schema([("dataset", pa.string()), ("key", pa.string()), ("row", pa.int64()), ("x", pa.float32()),
                            ("y", pa.float32()), ("fitted", pa.bool_())])
        with pq.ParquetWriter(tmp / "coords.parquet", schema) as writer:
            start, done = 0, 0
            for dataset in config["datasets"]:
                sample_xy = model.embedding_[start : start + len(ids[dataset])]
                start += len(ids[dataset])
                for part in _place(ws, dataset, ids[dataset], sample_xy, model, config["place"]):
                    writer.write_table(pa.Table.from_pandas(part, schema=schema, preserve_index=False))
                    done += len(part)
                    if progress:
                        progress(done, total, f"placing {dataset}")
                    if check:
                        check()
        stored = {**config, "points": done, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        fileio.write_json(tmp / "config.json", stored)
        swap_into_place(root, name, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root / name


def _place(ws, dataset: str, sampled: np.ndarray, sample_xy: np.ndarray, model, place: bool):
    """Coordinates of one dataset, shard by shard: sampled rows from the fit, the others by transform in batches."""
    emb = ws.embeddings(dataset)
    for shard in emb.shards:
        keys = emb.metadata(["key"], shards=[shard])["key"].astype(str).to_numpy()
        rows = np.arange(shard.start, shard.start + shard.rows, dtype=np.int64)
        hit = np.isin(rows, sampled)
        where = np.searchsorted(sampled, rows)  # position in the sample where hit
        for lo in range(0, shard.rows, TRANSFORM_BATCH):
            sl = slice(lo, min(lo + TRANSFORM_BATCH, shard.rows))
            fit_here = hit[sl]
            keep = np.ones(len(fit_here), bool) if place else fit_here
            if not keep.any():
                continue
            xy = np.zeros((len(fit_here), 2), np.float32)
            xy[fit_here] = sample_xy[where[sl][fit_here]]
            todo = ~fit_here & keep
            if todo.any():
                block = np.asarray(emb.load(shard)[sl][todo], dtype=np.float32)
                xy[todo] = model.transform(block)
            yield pd.DataFrame({"dataset": dataset, "key": keys[sl][keep], "row": rows[sl][keep],
                                "x": xy[keep, 0], "y": xy[keep, 1], "fitted": fit_here[keep]})


def umap_job(ws, params: dict, ctx: JobContext) -> dict:
    """The "umap" job kind. params: name ('default'), datasets, sample (100000), seed (0), umap ({...}),
    place (true), sizes ({dataset: n}), force (false).

    Returns:
        {"map", "points", "fitted", "datasets", "folder"}.
    """
    info = compute_map(ws, name=params.get("name", DEFAULT_NAME), force=bool(params.get("force", False)),
                       progress=ctx.progress, check=ctx.check_cancelled, datasets=params.get("datasets"),
                       sample=int(params.get("sample", DEFAULT_SAMPLE)), seed=int(params.get("seed", 0)),
                       umap_params=params.get("umap"), place=bool(params.get("place", True)),
                       sizes=params.get("sizes"))
    fitted = sum(info.config["sample_sizes"].values())
    ctx.log.info("map %s: %d points (%d fitted) at %s", info.name, info.config["points"], fitted, info.folder)
    return {"map": info.name, "points": info.config["points"], "fitted": fitted, "datasets": info.datasets,
            "folder": str(info.folder)}

"""Assign every embedding to its nearest centroid, exactly, in streamed blocks; resumable per shard, runnable as
shard-range tasks, committed once every shard is assigned.

The nearest centroid is the argmax of the canonical similarity float32(float64 x . c) over the float16 centroids,
ties to the lower centroid id: the block scanner's per-row maximum (clipsim.search.scan) with the centroids as
its queries, so the answer is the same on a CPU and a GPU, in any precision, whatever the block size.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from clipsim import fileio
from clipsim.dedup.clusters import Clustering, clustering_fingerprint, clusters_dir
from clipsim.errors import WorkspaceError
from clipsim.search.passes import DEFAULT_BLOCK_ROWS, resolve_precision, write_npz
from clipsim.search.result import digest
from clipsim.search.scan import ExactScanner, Group
from clipsim.shard_ranges import check_range, index_runs

log = logging.getLogger(__name__)


def centroid_scanner(centroids: np.ndarray, precision: str = "auto", device: str = "auto") -> ExactScanner:
    """A scanner whose queries are the centroids: its per-row maximum over a block is the nearest centroid.

    Args:
        centroids: (k, d) float16 unit rows.
        precision, device: as for search ('auto' resolves per device).
    """
    prec, dev = resolve_precision(precision, device)
    return ExactScanner(centroids, [Group("centroids", 0, len(centroids))], 1, prec, dev, row_stats=True)


def nearest_centroid(scanner: ExactScanner, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cluster (n,) int32, canonical similarity to it (n,) float32) of the float16 rows `block` (n, d)."""
    stats = scanner.add_block(block, 0)["centroids"]
    return stats["argmax"].astype(np.int32), stats["max_sim"].astype(np.float32)


def _centroid_info(ws, web: str, clusters: int) -> dict:
    path = clusters_dir(ws, web, clusters) / "centroids.json"
    if not path.exists():
        raise WorkspaceError(f"no centroids of {web!r} for {clusters} clusters at {path}; train them first "
                             f"(`python -m clipsim dedup --workspace {ws.root} --dataset {web} --clusters {clusters} "
                             "--name NAME`, or the array's first job)")
    info = fileio.read_json(path)
    if info["web_fingerprint"] != ws.embeddings(web).fingerprint():
        raise WorkspaceError(f"the centroids at {path} were trained before the embeddings of {web!r} changed; "
                             "re-run dedup to train them again")
    return info


def shard_signature(info: dict, shard) -> str:
    """What a shard's assignment depends on: the centroids and the shard's embedding file."""
    return digest(info["fingerprint"], fileio.file_fingerprint([shard.emb]))


def _is_done(path, signature: str) -> bool:
    if not path.exists():
        return False
    with np.load(path) as z:
        return "signature" in z.files and str(z["signature"]) == signature


def assign_shards(ws, web: str, clusters: int, shards: tuple[int, int] | None = None, precision: str = "auto",
                  device: str = "auto", block_rows: int = DEFAULT_BLOCK_ROWS, progress=None) -> dict:
    """Assign the rows of `web`'s shards (all, or lo <= i < hi) to their nearest centroid; shards already assigned
    from the same centroids and files are skipped, so a killed run resumes.

    Args:
        ws: the workspace.
        web: train set name (its centroids must be trained).
        clusters: k.
        shards: (lo, hi) shard range of one array task, or None for all.
        precision, device: the scanner's screen precision and device.
        block_rows: rows per streamed block.
        progress: optional callable(done_rows, total_rows, description).

    Returns:
        {"range", "shards" (indices in range), "assigned" (written now), "rows", "seconds"}.

    Raises:
        WorkspaceError: no (or stale) centroids.
    """
    info = _centroid_info(ws, web, clusters)
    emb = ws.embeddings(web)
    lo, hi = check_range(shards) if shards is not None else (0, max([s.index for s in emb.shards], default=-1) + 1)
    chosen = [s for s in emb.shards if lo <= s.index < hi]
    folder = clusters_dir(ws, web, clusters) / "assign"
    scanner, done_rows, assigned, t0 = None, 0, [], time.time()
    total = sum(s.rows for s in chosen)
    if progress:
        progress(0, total, f"assign {web} to {clusters} clusters")
    for shard in chosen:
        path, signature = folder / f"shard_{shard.index}.npz", shard_signature(info, shard)
        if not _is_done(path, signature):
            scanner = scanner or centroid_scanner(np.load(clusters_dir(ws, web, clusters) / "centroids.npy"),
                                                  precision, device)
            parts = [nearest_centroid(scanner, block) for _, _, block in emb.iter_blocks(block_rows, [shard])]
            cluster = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int32)
            sim = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.float32)
            write_npz(path, {"cluster": cluster, "sim": sim, "signature": np.array(signature)})
            assigned.append(shard.index)
        done_rows += shard.rows
        if progress:
            progress(done_rows, total, f"assign {web} to {clusters} clusters")
    return {"range": [lo, hi], "shards": [s.index for s in chosen], "assigned": assigned, "rows": total,
            "seconds": round(time.time() - t0, 3)}


def commit_clustering(ws, web: str, clusters: int) -> Clustering:
    """Check that every shard of `web` is assigned from the current centroids and files, then write
    `clustering.json` (the commit point) and drop assignments of shards that no longer exist.

    Raises:
        WorkspaceError: stale centroids, or shards not assigned (the message gives the ranges and the command).
    """
    info = _centroid_info(ws, web, clusters)
    emb = ws.embeddings(web)
    folder = clusters_dir(ws, web, clusters)
    missing = [s.index for s in emb.shards
               if not _is_done(folder / "assign" / f"shard_{s.index}.npz", shard_signature(info, s))]
    if missing:
        runs = ", ".join(f"{a}:{b}" for a, b in index_runs(missing))
        raise WorkspaceError(f"shards {runs} of {web!r} are not assigned to the {clusters} centroids yet; run the "
                             f"dedup array's tasks for them (`python -m clipsim dedup --workspace {ws.root} --dataset "
                             f"{web} --clusters {clusters} --name NAME` assigns every shard)")
    keep = {f"shard_{s.index}.npz" for s in emb.shards}
    for path in (folder / "assign").glob("shard_*.npz"):
        if path.name not in keep:
            path.unlink()
    shards = [s.index for s in emb.shards]
    fingerprint = clustering_fingerprint(info["fingerprint"], info["web_fingerprint"], shards)
    config = {"web": web, "clusters": int(clusters), "shards": shards, "rows": emb.count,
              "web_fingerprint": info["web_fingerprint"], "centroids": info["fingerprint"],
              "train": {k: info[k] for k in ("config", "sample", "device", "seconds", "objective")},
              "fingerprint": fingerprint, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    fileio.write_json(folder / "clustering.json", config)
    log.info("clustering of %s into %d clusters committed (%d rows)", web, clusters, emb.count)
    return Clustering.load(ws, web, clusters)

"""Exact within-cluster duplicates in SemDeDup's order: per sample, its maximum similarity to the EARLIER members of
its cluster (kept or not; SemDeDup's M) and to any other member, and which sample attains each.

Order (SemDeDup `clustering/sort_clusters.py` with spherical k-means, then `semdedup.py`): a cluster's members sorted
by cosine distance to the centroid, farthest first ('hard', the default), reversed ('easy'), or shuffled ('random');
equal distances keep row order. A member is removed at eps when its similarity to some earlier member exceeds
1 - eps, so the first member of every group of duplicates survives. Our 'random' order is a seeded permutation per
cluster (seed, cluster id), the same whatever the split of the work; SemDeDup's depends on its job layout.

Clusters are processed in parts of consecutive clusters (about ROWS_PER_PART rows, or one larger cluster), each
gathered with one read per shard and saved as `within-<keep>/parts/<c0>-<c1>.npz`, so a killed run resumes;
`stats.npz` (row order) and `config.json`, written last, commit the result.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clipsim import fileio
from clipsim.dedup.clusters import DEFAULT_SEED, Clustering
from clipsim.dedup.kernel import cluster_maxima
from clipsim.errors import ClipsimError, WorkspaceError
from clipsim.search.exact import Screen
from clipsim.search.passes import resolve_precision, write_npz
from clipsim.search.result import digest

log = logging.getLogger(__name__)
KEEPS = ("hard", "easy", "random")  # SemDeDup's which_to_keep
ROWS_PER_PART = 1 << 20  # rows gathered per part: 1.3 GB of float16 at dim 640; bounds memory beside the largest cluster
ARRAYS = ("earlier_sim", "earlier_id", "any_sim", "any_id")


def check_keep(keep: str) -> str:
    """The keep option, validated.

    Raises:
        ClipsimError: not one of KEEPS.
    """
    if keep not in KEEPS:
        raise ClipsimError(f"keep {keep!r} is not one of {', '.join(KEEPS)} (SemDeDup's which_to_keep)")
    return keep


def cluster_order(cluster: np.ndarray, sim: np.ndarray, keep: str = "hard", seed: int = DEFAULT_SEED,
                  clusters: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows grouped by cluster, each cluster in keep order.

    Args:
        cluster: (n,) int cluster of every row.
        sim: (n,) float32 similarity of every row to its centroid.
        keep: 'hard' (lowest similarity to the centroid first; ties by row), 'easy' (that order reversed) or
            'random' (that order permuted by numpy's default_rng([seed, cluster])).
        seed: seed of 'random'.
        clusters: k (default: max cluster + 1).

    Returns:
        (order (n,) int64 rows, starts (k + 1,) int64: cluster c is order[starts[c]:starts[c + 1]]).
    """
    check_keep(keep)
    k = int(clusters if clusters is not None else (cluster.max() + 1 if len(cluster) else 0))
    rows = np.arange(len(cluster), dtype=np.int64)
    order = np.lexsort((rows, sim, cluster)).astype(np.int64)  # primary key last: cluster, then sim, then row
    starts = np.concatenate([[0], np.cumsum(np.bincount(cluster, minlength=k))]).astype(np.int64)
    if keep != "hard":
        for c in np.flatnonzero(np.diff(starts) > 1):
            seg = order[starts[c] : starts[c + 1]]
            order[starts[c] : starts[c + 1]] = (seg[::-1] if keep == "easy" else
                                                np.random.default_rng([seed, int(c)]).permutation(seg))
    return order, starts


def part_ranges(starts: np.ndarray, rows_per_part: int | None = None) -> list[tuple[int, int]]:
    """Consecutive cluster ranges [c0, c1) holding about rows_per_part rows (default ROWS_PER_PART) each; a larger
    cluster alone."""
    rows_per_part = int(rows_per_part or ROWS_PER_PART)
    parts, c0 = [], 0
    k = len(starts) - 1
    while c0 < k:
        c1 = int(np.searchsorted(starts, starts[c0] + rows_per_part, side="right")) - 1
        c1 = min(k, max(c1, c0 + 1))
        parts.append((c0, c1))
        c0 = c1
    return parts


def gather_sorted(emb, rows: np.ndarray) -> np.ndarray:
    """Rows of an EmbeddingSet by increasing global id: (len(rows), dim) float16, one read per shard touched."""
    out = np.empty((len(rows), emb.dim), np.float16)
    starts = np.array([s.start for s in emb.shards] + [emb.count], np.int64)
    cuts = np.searchsorted(rows, starts)
    for i, shard in enumerate(emb.shards):
        if cuts[i + 1] > cuts[i]:
            out[cuts[i] : cuts[i + 1]] = emb.load(shard)[rows[cuts[i] : cuts[i + 1]] - shard.start]
    return out


def within_name(keep: str, seed: int) -> str:
    """Folder name of a within-cluster result: 'within-hard', 'within-easy', 'within-random-s1234'."""
    return f"within-{check_keep(keep)}" + (f"-s{seed}" if keep == "random" else "")


@dataclass
class WithinResult:
    """Committed within-cluster maxima of a clustering (arrays in row order, see `arrays`)."""

    clustering: Clustering
    folder: Path
    config: dict

    @classmethod
    def load(cls, clustering: Clustering, keep: str = "hard", seed: int = DEFAULT_SEED) -> WithinResult:
        """The committed result for this keep option.

        Raises:
            WorkspaceError: not computed yet (the message names the command).
        """
        folder = clustering.folder / within_name(keep, seed)
        if not (folder / "config.json").exists():
            raise WorkspaceError(f"no within-cluster statistics ({keep}) of {clustering.web!r} with {clustering.clusters}"
                                 f" clusters in {folder}; run `python -m clipsim dedup --workspace {clustering.ws.root} "
                                 f"--dataset {clustering.web} --clusters {clustering.clusters} --name NAME`")
        return cls(clustering, folder, fileio.read_json(folder / "config.json"))

    @property
    def fingerprint(self) -> str:
        """Identity of the result (clustering, keep, seed)."""
        return self.config["fingerprint"]

    def stale_reasons(self) -> list[str]:
        """Why the result no longer matches its clustering or embeddings (empty when fresh)."""
        reasons = self.clustering.stale_reasons()
        if self.config["clustering"] != self.clustering.fingerprint:
            reasons.append("the clustering was recomputed since")
        return reasons

    def arrays(self) -> dict[str, np.ndarray]:
        """{"earlier_sim", "any_sim": (n,) float32 (-inf: no such member), "earlier_id", "any_id": (n,) int64 rows
        (-1: none)}, in row order."""
        with np.load(self.folder / "stats.npz") as z:
            return {k: z[k] for k in ARRAYS}


def within_cluster(clustering: Clustering, keep: str = "hard", seed: int = DEFAULT_SEED, precision: str = "auto",
                   device: str = "auto", progress=None) -> WithinResult:
    """Compute (or reuse) the exact within-cluster maxima of a committed clustering; resumable per part.

    Args:
        clustering: a fresh committed clustering.
        keep: 'hard', 'easy' or 'random' (see cluster_order).
        seed: seed of 'random'.
        precision, device: screen precision and torch device ('auto': cuda when available).
        progress: optional callable(done_rows, total_rows, description).

    Returns:
        The committed WithinResult.

    Raises:
        WorkspaceError: the clustering is stale.
    """
    if clustering.stale:
        raise WorkspaceError(f"the clustering in {clustering.folder} is stale ({'; '.join(clustering.stale_reasons())})"
                             "; run dedup again to recompute it")
    folder = clustering.folder / within_name(keep, seed)
    signature = digest(clustering.fingerprint, keep, seed if keep == "random" else None)
    if (folder / "config.json").exists() and fileio.read_json(folder / "config.json").get("fingerprint") == signature:
        return WithinResult.load(clustering, keep, seed)
    (folder / "config.json").unlink(missing_ok=True)  # an old result must not vouch for the new stats.npz
    prec, dev = resolve_precision(precision, device)
    cluster, sim = clustering.arrays()
    order, starts = cluster_order(cluster, sim, keep, seed, clustering.clusters)
    emb, t0, done = clustering.ws.embeddings(clustering.web), time.time(), 0
    if progress:
        progress(0, len(order), f"within-cluster duplicates of {clustering.web} ({keep})")
    for c0, c1 in part_ranges(starts):
        path = folder / "parts" / f"{c0}-{c1}.npz"
        if not _part_done(path, signature):
            _compute_part(emb, order, starts, (c0, c1), Screen(prec, dev, emb.dim), path, signature)
        done += int(starts[c1] - starts[c0])
        if progress:
            progress(done, len(order), f"within-cluster duplicates of {clustering.web} ({keep})")
    _commit(folder, len(order), starts, signature,
            {"clustering": clustering.fingerprint, "keep": keep, "seed": seed if keep == "random" else None,
             "precision": prec, "device": str(dev), "seconds": round(time.time() - t0, 3)})
    return WithinResult.load(clustering, keep, seed)


def _part_done(path: Path, signature: str) -> bool:
    if not path.exists():
        return False
    with np.load(path) as z:
        return str(z["signature"]) == signature


def _compute_part(emb, order, starts, clusters: tuple[int, int], screen: Screen, path: Path, signature: str) -> None:
    """Maxima of the clusters c0 <= c < c1, saved as one part file (rows, and the four arrays in that order)."""
    c0, c1 = clusters
    members = order[starts[c0] : starts[c1]]
    sorted_rows = np.sort(members)
    x_all = gather_sorted(emb, sorted_rows)
    out = {k: [] for k in ARRAYS}
    for c in range(c0, c1):
        rows = order[starts[c] : starts[c + 1]]
        if len(rows) == 0:
            continue
        x16 = torch.from_numpy(x_all[np.searchsorted(sorted_rows, rows)]).to(screen.device)
        got = {k: v.cpu().numpy() for k, v in cluster_maxima(x16, screen).items()}
        for name in ("earlier", "any"):
            pos = got[f"{name}_pos"]
            out[f"{name}_sim"].append(got[f"{name}_sim"].astype(np.float32))
            out[f"{name}_id"].append(np.where(pos >= 0, rows[np.maximum(pos, 0)], -1).astype(np.int64))
    arrays = {k: np.concatenate(v) if v else np.zeros(0, np.float32 if k.endswith("sim") else np.int64)
              for k, v in out.items()}
    write_npz(path, {"rows": members, **arrays, "signature": np.array(signature)})


def _commit(folder: Path, n: int, starts: np.ndarray, signature: str, info: dict) -> None:
    """Assemble the parts into row order, write stats.npz, then config.json (the commit point); drop the parts."""
    full = {k: np.full(n, -np.inf if k.endswith("sim") else -1, np.float32 if k.endswith("sim") else np.int64)
            for k in ARRAYS}
    for c0, c1 in part_ranges(starts):
        with np.load(folder / "parts" / f"{c0}-{c1}.npz") as z:
            for k in ARRAYS:
                full[k][z["rows"]] = z[k]
    write_npz(folder / "stats.npz", full)
    sizes = np.diff(starts)
    fileio.write_json(folder / "config.json", {
        **info, "rows": n, "fingerprint": signature, "largest_cluster": int(sizes.max()) if len(sizes) else 0,
        "singletons": int((sizes == 1).sum()), "empty_clusters": int((sizes == 0).sum()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    shutil.rmtree(folder / "parts", ignore_errors=True)
    log.info("within-cluster maxima committed in %s", folder)

"""Dedup statistics sorted once (counts at any eps in O(log n), the pairs either side of the cut, cluster sizes)
and dedup manifests in the layout of pruning manifests.

A sample is removed at eps when its similarity to an earlier member of its cluster (SemDeDup's M) exceeds 1 - eps,
compared as real numbers: `M > floor32(1 - eps)` for float32 M (clipsim.prune.stats.floor32).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from clipsim.prune.stats import floor32

HIST_BINS = 200  # histogram bars over [lowest maximum, 1]; fine enough to see the duplicate bump near 1


def eps_cut(eps: float) -> np.float32:
    """The float32 cut of eps: M > eps_cut(eps) exactly when M > 1 - eps (1 - eps computed in float64).

    Raises:
        ValueError: eps not a number in [-1, 2] (cosines lie in [-1, 1]; float16 rows can exceed 1 by ~1e-3, so a
            slightly negative eps keeps exact copies).
    """
    try:
        value = float(eps)
    except (TypeError, ValueError) as err:
        raise ValueError(f"eps {eps!r} is not a number; pass e.g. 0.05") from err
    if not -1.0 <= value <= 2.0:
        raise ValueError(f"eps {eps!r} is outside [-1, 2]; SemDeDup cuts at cosine 1 - eps (the study used 0.124)")
    return floor32(1.0 - value)


@dataclass
class DedupStats:
    """Within-cluster maxima of a web set, sorted once.

    Attributes:
        web: web set name; clusters: k; keep: the keep option the order followed.
        earlier_sim: (n,) float32 max similarity to an earlier member (-inf: first in its cluster).
        earlier_id: (n,) int64 that member's row (-1: none).
        any_sim: (n,) float32 max similarity to any other member (-inf: alone in its cluster).
        sizes: (k,) int64 cluster sizes.
        fingerprints: {"web_embeddings", "clustering", "within"} of the inputs.
        ws: the workspace (None when built from arrays); keys: web keys, read on first use.
    """

    web: str
    clusters: int
    keep: str
    earlier_sim: np.ndarray
    earlier_id: np.ndarray
    any_sim: np.ndarray
    sizes: np.ndarray
    fingerprints: dict = field(default_factory=dict)
    ws: object = None
    seed: int | None = None
    cluster_config: dict = field(default_factory=dict)  # the k-means ClusterConfig (clusters, seed, niter, sample)

    @classmethod
    def load(cls, ws, web: str, clusters: int, keep: str = "hard", seed: int | None = None) -> DedupStats:
        """Statistics of the committed within-cluster result of `web` (sorted here once).

        Raises:
            WorkspaceError: no committed clustering or within-cluster result (the message names the command).
        """
        from clipsim.dedup.clusters import DEFAULT_SEED, Clustering
        from clipsim.dedup.within import WithinResult

        clustering = Clustering.load(ws, web, clusters)
        within = WithinResult.load(clustering, keep, seed if seed is not None else DEFAULT_SEED)
        a = within.arrays()
        return cls(web, clusters, keep, a["earlier_sim"], a["earlier_id"], a["any_sim"], clustering.sizes(),
                   {"web_embeddings": clustering.config["web_fingerprint"], "clustering": clustering.fingerprint,
                    "within": within.fingerprint}, ws, within.config.get("seed"), clustering.config["train"]["config"])

    def stale_reasons(self) -> list[str]:
        """Why these statistics no longer match the workspace (the web embeddings changed); [] when fresh."""
        if self.ws is None:
            return []
        emb = self.ws.embeddings(self.web, required=False)
        now = emb.fingerprint() if emb is not None and emb.count else None
        return [] if now == self.fingerprints.get("web_embeddings") else [f"web set {self.web!r} embeddings changed"]

    @property
    def n(self) -> int:
        """Web set size."""
        return len(self.earlier_sim)

    @cached_property
    def order(self) -> np.ndarray:
        """Rows by increasing earlier_sim (ties by row): (n,) int64."""
        return np.argsort(self.earlier_sim, kind="stable").astype(np.int64)

    @cached_property
    def sorted_earlier(self) -> np.ndarray:
        """earlier_sim in increasing order: (n,) float32."""
        return self.earlier_sim[self.order]

    @cached_property
    def keys(self) -> np.ndarray:
        """Web keys (n,) in row order."""
        return self.ws.keys(self.web)

    def count_removed(self, eps: float) -> int:
        """Samples removed at eps (earlier_sim > 1 - eps), by binary search."""
        return self.n - int(np.searchsorted(self.sorted_earlier, eps_cut(eps), side="right"))

    def removed(self, eps: float) -> np.ndarray:
        """(n,) bool: the samples SemDeDup removes at eps."""
        return self.earlier_sim > eps_cut(eps)

    def eps_for_fraction(self, fraction: float) -> float:
        """An eps whose removal count is the achievable count closest to fraction * n (ties: fewer removed).

        First members of their clusters (earlier_sim = -inf) are never removed, so the share is capped by theirs.
        """
        if not 0.0 <= float(fraction) <= 1.0:
            raise ValueError(f"fraction {fraction!r} is not in [0, 1]; pass the share of samples to remove")
        a, n = self.sorted_earlier, self.n
        finite = np.isfinite(a)
        target = min(round(float(fraction) * n), int(finite.sum()))
        if target == 0:
            cut = a[-1] if n and finite[-1] else np.float32(1.0)
        else:
            v = a[n - target]  # finite: -inf values sort first
            j = int(np.searchsorted(a, v, side="left"))  # cutting just below v removes n - j >= target
            fewer = n - int(np.searchsorted(a, v, side="right"))  # cutting at v removes fewer than target
            below = a[j - 1] if j > 0 and finite[j - 1] else np.nextafter(v, np.float32(-np.inf))
            cut = v if target - fewer <= (n - j) - target else below
        return float(1.0 - np.float64(cut))

    def pairs_at_cut(self, eps: float, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows just above the cut (removed, lowest first) and just at/below it (kept, highest first).

        Returns:
            (above rows, below rows), each (<= count,) int64; a row's partner is earlier_id[row].
        """
        cut = int(np.searchsorted(self.sorted_earlier, eps_cut(eps), side="right"))
        above = self.order[cut : cut + count]
        lo = cut - count
        below = self.order[max(0, lo) : cut][::-1]
        return above, below[np.isfinite(self.earlier_sim[below])]

    @cached_property
    def histogram(self) -> dict[str, np.ndarray]:
        """Counts of earlier_sim and any_sim over HIST_BINS equal bins: {"edges" (bins + 1,), "earlier", "any"}."""
        finite = [a[np.isfinite(a)] for a in (self.earlier_sim, self.any_sim)]
        lo = min((float(f.min()) for f in finite if len(f)), default=0.0)
        edges = np.linspace(min(lo, 0.999), 1.0, HIST_BINS + 1)
        return {"edges": edges, "earlier": np.histogram(finite[0], edges)[0], "any": np.histogram(finite[1], edges)[0]}

    @cached_property
    def clusters_summary(self) -> dict:
        """What does not depend on eps: {"clusters" (non-empty), "largest", "singletons", "first_in_cluster"}."""
        return {"clusters": int((self.sizes > 0).sum()), "largest": int(self.sizes.max()) if len(self.sizes) else 0,
                "singletons": int((self.sizes == 1).sum()),
                "first_in_cluster": int(np.searchsorted(self.sorted_earlier, -np.inf, side="right"))}

    def summary(self, eps: float) -> dict:
        """Counts at eps (a binary search): {"removed", "kept", "share"} and clusters_summary."""
        removed = self.count_removed(eps)
        return {"removed": removed, "kept": self.n - removed, "share": removed / self.n if self.n else 0.0,
                **self.clusters_summary}


def default_manifest_name(eps: float, clusters: int, keep: str = "hard") -> str:
    """'dedup_e0.05_k48' (plus '_easy' / '_random' for the other keep options)."""
    return f"dedup_e{float(eps):g}_k{int(clusters)}" + ("" if keep == "hard" else f"_{keep}")


def save_dedup_manifest(ws, name: str, stats: DedupStats, eps: float, overwrite: bool = False,
                        extra: dict | None = None):
    """Save the samples SemDeDup keeps at eps as manifest `name` (removed.parquet, kept.parquet, summary.json).

    Args:
        ws: the workspace.
        name: manifest name.
        stats: the (fresh) dedup statistics.
        eps: SemDeDup's eps.
        overwrite: replace an existing manifest of that name.
        extra: more summary fields (e.g. the exact-global recall).

    Returns:
        The saved clipsim.prune.manifest.Manifest (rule 'semdedup').

    Raises:
        WorkspaceError: the statistics are stale, or the name exists (without overwrite).
        ReadOnlyError: the workspace is served read-only.
    """
    from clipsim.errors import WorkspaceError
    from clipsim.prune.manifest import check_partition, write_manifest

    if stats.stale_reasons():
        raise WorkspaceError(f"the embeddings of {stats.web!r} changed since these dedup statistics were computed; "
                             f"run `python -m clipsim dedup --workspace {ws.root} --dataset {stats.web}` again")
    removed = stats.removed(eps)
    params = {"eps": float(eps), "clusters": stats.clusters, "keep": stats.keep,
              **({"seed": stats.seed} if stats.keep == "random" else {})}
    summary = {"rule": "semdedup", "params": params, "web": stats.web, "reference": None, "tests": [], "n": stats.n,
               "inputs": {"search": {}, "web_embeddings": stats.fingerprints["web_embeddings"],
                          "dedup": {k: v for k, v in stats.fingerprints.items() if k != "web_embeddings"}},
               "counts": {}, "combined": {"removed": int(removed.sum()), "kept": int((~removed).sum()),
                                          "share": float(removed.mean()) if stats.n else 0.0},
               "dedup": {**stats.summary(eps), "cut": float(eps_cut(eps))}, **(extra or {}),
               "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    keys = np.asarray(stats.keys)
    check_partition(keys, removed, stats.web)
    return write_manifest(ws, name, keys[removed], keys[~removed], summary, overwrite)

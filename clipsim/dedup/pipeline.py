"""The dedup pipeline the CLI, the jobs and the Dedup page share: centroids -> assignment -> within-cluster maxima
-> (exact global pairs) -> manifest, each step reused when its stored result is fresh; and the job kinds.

Job kinds: 'dedup' (the whole pipeline, or only the centroids with params["stop_after"] = "centroids"),
'dedup-array' (its 'dedup-part' tasks assign shard ranges; the array job commits the clustering).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

from clipsim.dedup.clusters import DEFAULT_NITER, DEFAULT_SEED, ClusterConfig, Clustering, default_clusters
from clipsim.errors import ClipsimError, WorkspaceError

if TYPE_CHECKING:
    from clipsim.jobs.worker import JobContext

log = logging.getLogger(__name__)
STUDY_EPS = 0.124  # the study's SemDeDup eps (cosine 0.876), used when the workspace sets none


def default_eps(ws) -> float:
    """The workspace's dedup eps (settings['dedup']['eps'], which the demo sets), else the study's 0.124."""
    return float((ws.settings.get("dedup") or {}).get("eps", STUDY_EPS))


@dataclass
class DedupOptions:
    """What one dedup run does.

    Attributes:
        web: the set to deduplicate.
        clusters: k (None: default_clusters(n)); eps: SemDeDup's eps (None: default_eps(ws)).
        keep: 'hard', 'easy' or 'random'; seed: k-means seed and 'random' order seed.
        niter, sample: k-means iterations and training rows (None: 256 per cluster).
        exact_global: also find the exact global eps-pairs and the clustering's recall at eps.
        name: manifest to save (None: statistics only); overwrite: replace it.
        precision, device: screen precision and device ('auto').
    """

    web: str
    clusters: int | None = None
    eps: float | None = None
    keep: str = "hard"
    seed: int = DEFAULT_SEED
    niter: int = DEFAULT_NITER
    sample: int | None = None
    exact_global: bool = False
    name: str | None = None
    overwrite: bool = False
    precision: str = "auto"
    device: str = "auto"

    @classmethod
    def from_params(cls, params: dict) -> DedupOptions:
        """Options from job params (unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})

    def resolved(self, ws) -> DedupOptions:
        """These options with clusters and eps filled in for the workspace.

        Raises:
            ClipsimError: an unknown keep option, or clusters outside 1..n.
            ValueError: eps outside [-1, 2].
        """
        from clipsim.dedup.stats import eps_cut
        from clipsim.dedup.within import check_keep

        check_keep(self.keep)
        n = ws.embeddings(self.web).count
        clusters = int(self.clusters if self.clusters is not None else default_clusters(n))
        if not 1 <= clusters <= n:
            raise ClipsimError(f"--clusters {clusters} for {self.web!r} ({n} rows): give 1 <= clusters <= {n}, e.g. "
                               f"{default_clusters(n)}")
        eps = float(self.eps if self.eps is not None else default_eps(ws))
        eps_cut(eps)  # validates eps before any work
        return DedupOptions(**{**asdict(self), "clusters": clusters, "eps": eps})

    def params(self) -> dict:
        """JSON-able job params."""
        return {k: v for k, v in asdict(self).items() if v is not None}


JOB_KEYS = {"stop_after", "tasks", "task", "array_job", "shards"}  # besides DedupOptions: the job and array steps


def check_dedup_params(ws, params: dict) -> DedupOptions:
    """Validate the params of a dedup job (the fields of DedupOptions, plus stop_after and the array keys) before
    anything runs: the set exists and is embedded, keep/clusters/eps are in range, a manifest name is free.

    Returns:
        The resolved options.

    Raises:
        ArgumentError: an unknown parameter or a value out of range (the message names it and the fix).
    """
    from clipsim.errors import ArgumentError
    from clipsim.names import check_name

    unknown = sorted(set(params) - {f.name for f in fields(DedupOptions)} - JOB_KEYS)
    if unknown or "web" not in params:
        raise ArgumentError(f"dedup job: unknown parameter(s) {', '.join(unknown) or 'none'} or no params['web']; "
                            f"known: {', '.join(sorted({f.name for f in fields(DedupOptions)} | JOB_KEYS))}")
    try:
        opts = DedupOptions.from_params(params).resolved(ws)
    except (ValueError, TypeError) as err:
        raise ArgumentError(f"dedup job: {err}") from err
    if opts.name is not None:
        check_name(opts.name, "manifest")
        if not opts.overwrite and ws.path("manifests", opts.name, "summary.json").exists():
            raise ArgumentError(f"manifest {opts.name!r} already exists in {ws.path('manifests')}; pick another name "
                                "or set overwrite")
    return opts


def clustering(ws, opts: DedupOptions, progress=None) -> Clustering:
    """Train (or reuse) the centroids, assign every shard not yet assigned, and commit; a fresh committed
    clustering made from the same centroids is returned as is."""
    from clipsim.dedup.assign import assign_shards, commit_clustering
    from clipsim.dedup.clusters import train_centroids

    config = ClusterConfig(opts.clusters, opts.seed, opts.niter, opts.sample)
    info = train_centroids(ws, opts.web, config, opts.device, progress)
    try:
        found = Clustering.load(ws, opts.web, opts.clusters)
        if not found.stale and found.config["centroids"] == info["fingerprint"]:
            return found
    except WorkspaceError:  # not committed yet: assign below
        pass
    assign_shards(ws, opts.web, opts.clusters, precision=opts.precision, device=opts.device, progress=progress)
    return commit_clustering(ws, opts.web, opts.clusters)


def run_dedup(ws, opts: DedupOptions, progress=None) -> dict:
    """Deduplicate `opts.web` with SemDeDup; every step resumes or reuses what is stored and fresh.

    Args:
        ws: the workspace.
        opts: the options (clusters and eps default per workspace).
        progress: optional callable(done, total, description).

    Returns:
        {"web", "clusters", "eps", "keep", "removed", "kept", "share", "largest_cluster", "singletons",
        "manifest" (or None), "global" ({"pairs", "same_cluster", "split", "recall"}, with exact_global)}.

    Raises:
        ClipsimError: bad options, missing embeddings, or a manifest name that exists (without overwrite).
    """
    from clipsim.dedup.stats import DedupStats, save_dedup_manifest
    from clipsim.dedup.within import within_cluster

    opts = opts.resolved(ws)
    found = clustering(ws, opts, progress)
    within_cluster(found, opts.keep, opts.seed, opts.precision, opts.device, progress)
    stats = DedupStats.load(ws, opts.web, opts.clusters, opts.keep, opts.seed)
    summary = stats.summary(opts.eps)
    out = {"web": opts.web, "clusters": opts.clusters, "eps": opts.eps, "keep": opts.keep,
           "removed": summary["removed"], "kept": summary["kept"], "share": summary["share"],
           "largest_cluster": summary["largest"], "singletons": summary["singletons"], "manifest": opts.name}
    if opts.exact_global:
        from clipsim.dedup.pairs import cluster_recall, global_pairs

        pairs = global_pairs(ws, opts.web, opts.eps, opts.precision, opts.device, progress=progress)
        out["global"] = cluster_recall(pairs.arrays(), found.arrays()[0])
    if opts.name:
        extra = {"global": out["global"]} if "global" in out else None
        save_dedup_manifest(ws, opts.name, stats, opts.eps, opts.overwrite, extra)
    log.info("dedup of %s: %s", opts.web, out)
    return out


# ----- job kinds ------------------------------------------------------------------------------------------
def dedup_job(ws, params: dict, ctx: JobContext) -> dict:
    """The dedup pipeline as a job (params: DedupOptions fields), or only its centroids (stop_after='centroids').

    Returns:
        run_dedup's result, or {"web", "clusters", "centroids"} after the centroids alone.
    """
    opts = DedupOptions.from_params(params).resolved(ws)
    if params.get("stop_after") == "centroids":
        from clipsim.dedup.clusters import train_centroids

        info = train_centroids(ws, opts.web, ClusterConfig(opts.clusters, opts.seed, opts.niter, opts.sample),
                               opts.device, ctx.progress)
        return {"web": opts.web, "clusters": opts.clusters, "centroids": info["fingerprint"]}
    return run_dedup(ws, opts, ctx.progress)


def dedup_part_job(ws, params: dict, ctx: JobContext) -> dict:
    """One task of a dedup array: assign this task's shard range to the trained centroids.

    Returns:
        assign_shards' result.
    """
    from clipsim.dedup.assign import assign_shards
    from clipsim.jobs.arrays import task_range

    opts = DedupOptions.from_params(params).resolved(ws)
    lo, hi = task_range(params, [s.index for s in ws.embeddings(opts.web).shards])
    ctx.log.info("assigning shards %d:%d of %s to %d clusters", lo, hi, opts.web, opts.clusters)
    return assign_shards(ws, opts.web, opts.clusters, (lo, hi), opts.precision, opts.device, progress=ctx.progress)


def dedup_array_job(ws, params: dict, ctx: JobContext) -> dict:
    """The last step of a dedup array: commit the clustering once every shard range is assigned.

    Returns:
        {"web", "clusters", "rows", "tasks"}.
    """
    from clipsim.dedup.assign import commit_clustering

    opts = DedupOptions.from_params(params).resolved(ws)
    found = commit_clustering(ws, opts.web, opts.clusters)
    return {"web": opts.web, "clusters": opts.clusters, "rows": found.config["rows"], "tasks": int(params["tasks"])}


def launch_dedup(ws, opts: DedupOptions, array: int | None = None, backend: str | None = None) -> list:
    """Queue dedup as jobs: one 'dedup' job, or with `array` N: centroids -> N assignment tasks (a SLURM array on
    the slurm backend) -> the rest of the pipeline, each waiting for the one before.

    Returns:
        The queued jobs in order; the last one's result is run_dedup's.
    """
    from clipsim import jobs

    opts = opts.resolved(ws)
    if not array:
        return [jobs.launch(ws, "dedup", opts.params(), backend=backend)]
    first = jobs.launch(ws, "dedup", {**opts.params(), "stop_after": "centroids"}, backend=backend)
    assign = jobs.launch(ws, "dedup-array", {**opts.params(), "tasks": int(array)}, backend=backend, depends_on=first.id)
    return [first, assign, jobs.launch(ws, "dedup", opts.params(), backend=backend, depends_on=assign.id)]

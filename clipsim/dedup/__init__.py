"""SemDeDup deduplication of a web set: spherical k-means with faiss (`clusters`), exact assignment of every
embedding in streamed, resumable shard ranges (`assign`), exact within-cluster maxima in SemDeDup's order
(`within`), the exact global eps-duplicate pairs and the clustering's recall (`pairs`), statistics sorted once
and dedup manifests (`stats`), and the pipeline the CLI, the jobs and the page share (`pipeline`).

Imports are lazy: pages that only count from stored statistics need neither faiss nor torch.
"""

_LAZY = {
    "ClusterConfig": "clipsim.dedup.clusters", "Clustering": "clipsim.dedup.clusters",
    "default_clusters": "clipsim.dedup.clusters", "train_centroids": "clipsim.dedup.clusters",
    "assign_shards": "clipsim.dedup.assign", "commit_clustering": "clipsim.dedup.assign",
    "within_cluster": "clipsim.dedup.within", "WithinResult": "clipsim.dedup.within", "KEEPS": "clipsim.dedup.within",
    "global_pairs": "clipsim.dedup.pairs", "GlobalPairs": "clipsim.dedup.pairs", "cluster_recall": "clipsim.dedup.pairs",
    "DedupStats": "clipsim.dedup.stats", "save_dedup_manifest": "clipsim.dedup.stats",
    "DedupOptions": "clipsim.dedup.pipeline", "run_dedup": "clipsim.dedup.pipeline",
    "default_eps": "clipsim.dedup.pipeline",
}
__all__ = ["KEEPS", "ClusterConfig", "Clustering", "DedupOptions", "DedupStats", "GlobalPairs", "WithinResult",
           "assign_shards", "cluster_recall", "commit_clustering", "default_clusters", "default_eps", "global_pairs",
           "run_dedup", "save_dedup_manifest", "train_centroids", "within_cluster"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clipsim.dedup' has no attribute {name!r}")

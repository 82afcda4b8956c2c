"""Spherical k-means centroids of a web set with faiss, and the stored clustering they define.

`train_centroids` trains `faiss.Kmeans(spherical=True)` (seeded; on the GPU when faiss sees one) on a seeded
sample of the embeddings and stores the centroids as float16 unit rows, like the embeddings themselves, so
that assignment (clipsim.dedup.assign) uses the canonical similarity of search. Layout under
`dedup/<web>/k<clusters>/`: `centroids.npy` + `centroids.json` (written last: config, web fingerprint),
`assign/shard_<i>.npz` (per-shard nearest centroid and its similarity) and `clustering.json`, written last,
which marks the assignment of every shard complete.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from clipsim import fileio
from clipsim.errors import ClipsimError, WorkspaceError
from clipsim.search.result import digest

log = logging.getLogger(__name__)
DEFAULT_SEED = 1234  # SemDeDup's clustering config (clustering/configs/openclip/clustering_configs.yaml)
DEFAULT_NITER = 20  # faiss's default is 25, SemDeDup's config 100; spherical k-means on CLIP features settles sooner
POINTS_PER_CLUSTER = 256  # training sample per centroid: faiss's own max_points_per_centroid
STUDY_CLUSTERS = 50_000  # the study's (and SemDeDup's) cluster count for LAION-400M
MEAN_CLUSTER = 500  # smaller sets: at least this many members per cluster on average, so clusters hold duplicates


def default_clusters(n: int) -> int:
    """The study's 50,000 clusters, or fewer for small sets: n // 500 (at least 1)."""
    return int(max(1, min(STUDY_CLUSTERS, n // MEAN_CLUSTER)))


@dataclass(frozen=True)
class ClusterConfig:
    """How the centroids are trained.

    Attributes:
        clusters: k, the number of centroids.
        seed: seeds the training sample and faiss.
        niter: k-means iterations.
        sample: training rows (None: min(n, 256 k), faiss's own cap).
    """

    clusters: int
    seed: int = DEFAULT_SEED
    niter: int = DEFAULT_NITER
    sample: int | None = None

    def sample_size(self, n: int) -> int:
        """Rows the centroids are trained on, for a set of n rows."""
        return int(min(n, self.sample if self.sample is not None else POINTS_PER_CLUSTER * self.clusters))


def clusters_dir(ws, web: str, clusters: int) -> Path:
    """The folder of the clustering of `web` into `clusters` centroids."""
    return ws.path("dedup", web, f"k{int(clusters)}")


def faiss_gpus(device: str) -> int:
    """GPUs faiss should use: all it sees for 'auto'/'cuda...' (0 when it sees none), 0 for 'cpu'.

    Raises:
        ClipsimError: a CUDA device was asked for but faiss sees no GPU.
    """
    import faiss

    if str(device) == "cpu":
        return 0
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpus == 0 and str(device).startswith("cuda"):
        raise ClipsimError(f"device {device!r} asked for a GPU but faiss sees none; install faiss-gpu on a GPU "
                           "machine or pass --device cpu")
    return gpus


def train_centroids(ws, web: str, config: ClusterConfig, device: str = "auto", progress=None) -> dict:
    """Train (or reuse) the centroids of `web`; a retrained clustering drops its old assignments.

    Args:
        ws: the workspace.
        web: train set name.
        config: k, seed, iterations and sample size.
        device: 'auto' (faiss GPU when available), 'cpu' or 'cuda'.
        progress: optional callable(done, total, description).

    Returns:
        The stored `centroids.json`: config, device, sample, seconds, objective, web fingerprint, fingerprint.

    Raises:
        ClipsimError: k < 1, or k larger than the set or the training sample.
    """
    emb = ws.embeddings(web)
    folder = clusters_dir(ws, web, config.clusters)
    wanted = {"config": asdict(config), "web": web, "web_fingerprint": emb.fingerprint(), "rows": emb.count}
    info_path = folder / "centroids.json"
    if info_path.exists() and (folder / "centroids.npy").exists():
        info = fileio.read_json(info_path)
        if all(info.get(k) == v for k, v in wanted.items()):
            return info
        log.info("centroids in %s were made from other inputs or settings; training again", folder)
    sample = config.sample_size(emb.count)
    if not 1 <= config.clusters <= sample:
        raise ClipsimError(f"--clusters {config.clusters} for {web!r} ({emb.count} rows, training sample {sample}): "
                           "give 1 <= clusters <= the training sample (e.g. --clusters "
                           f"{default_clusters(emb.count)})")
    shutil.rmtree(folder, ignore_errors=True)  # the old assignments belong to the old centroids
    if progress:
        progress(0, 1, f"k-means {web} (k={config.clusters}, {sample} rows)")
    rows = np.sort(np.random.default_rng(config.seed).choice(emb.count, size=sample, replace=False))
    x = emb.rows(rows).astype(np.float32)
    gpus = faiss_gpus(device)
    t0 = time.time()
    centroids, objective = kmeans(x, config, gpus)
    seconds = time.time() - t0
    fileio.write_npy(folder / "centroids.npy", centroids)
    info = {**wanted, "sample": sample, "device": f"faiss-gpu x{gpus}" if gpus else "faiss-cpu",
            "seconds": round(seconds, 3), "objective": objective, "fingerprint": fileio.array_fingerprint(centroids),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    fileio.write_json(info_path, info)  # written last: the centroids are complete
    log.info("k-means of %s: %d centroids from %d rows in %.1f s on %s", web, config.clusters, sample, seconds,
             info["device"])
    if progress:
        progress(1, 1, f"k-means {web} (k={config.clusters}, {sample} rows)")
    return info


def kmeans(x: np.ndarray, config: ClusterConfig, gpus: int = 0) -> tuple[np.ndarray, float]:
    """faiss spherical k-means on the rows x.

    Args:
        x: (n, d) float32 training rows, L2-normalised.
        config: k, seed, iterations.
        gpus: GPUs for faiss (0: CPU).

    Returns:
        (centroids (k, d) float16, each row L2-normalised in float64 before rounding; final objective).
    """
    import faiss

    # max_points_per_centroid: train on the whole sample we chose (faiss would otherwise subsample it again)
    km = faiss.Kmeans(x.shape[1], config.clusters, niter=config.niter, seed=config.seed, spherical=True,
                      gpu=gpus if gpus else False, max_points_per_centroid=max(1, -(-len(x) // config.clusters)),
                      verbose=False)
    km.train(np.ascontiguousarray(x))
    c = km.centroids.astype(np.float64)
    c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-30)
    return c.astype(np.float16), float(km.obj[-1]) if len(km.obj) else 0.0


@dataclass
class Clustering:
    """A committed clustering: every row of `web` assigned to its nearest centroid (canonical similarity).

    Attributes:
        ws: the workspace.
        web: train set name.
        clusters: k.
        folder: `dedup/<web>/k<clusters>/`.
        config: the parsed `clustering.json`.
    """

    ws: object
    web: str
    clusters: int
    folder: Path
    config: dict

    @classmethod
    def load(cls, ws, web: str, clusters: int) -> Clustering:
        """The committed clustering of `web` into `clusters` centroids.

        Raises:
            WorkspaceError: none committed (the message names the command).
        """
        folder = clusters_dir(ws, web, clusters)
        if not (folder / "clustering.json").exists():
            raise WorkspaceError(f"no complete clustering of {web!r} into {clusters} clusters in {folder}; run "
                                 f"`python -m clipsim dedup --workspace {ws.root} --dataset {web} --clusters {clusters}"
                                 " --name NAME`")
        return cls(ws, web, int(clusters), folder, fileio.read_json(folder / "clustering.json"))

    @property
    def fingerprint(self) -> str:
        """Identity of the clustering (centroids and the embeddings assigned)."""
        return self.config["fingerprint"]

    def stale_reasons(self) -> list[str]:
        """Why the clustering no longer matches its inputs (empty when fresh)."""
        emb = self.ws.embeddings(self.web, required=False)
        now = emb.fingerprint() if emb is not None and emb.count else None
        reasons = [] if now == self.config["web_fingerprint"] else [f"web set {self.web!r} embeddings changed"]
        info = self.folder / "centroids.json"
        if not info.exists() or fileio.read_json(info).get("fingerprint") != self.config["centroids"]:
            reasons.append(f"the centroids in {self.folder} changed")
        return reasons

    @property
    def stale(self) -> bool:
        """True when the embeddings or centroids changed since the assignment."""
        return bool(self.stale_reasons())

    def centroids(self) -> np.ndarray:
        """(k, d) float16 unit rows."""
        return np.load(self.folder / "centroids.npy")

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(cluster (n,) int32, similarity to that centroid (n,) float32), in row order."""
        clusters, sims = [], []
        for index in self.config["shards"]:
            with np.load(self.folder / "assign" / f"shard_{index}.npz") as z:
                clusters.append(z["cluster"])
                sims.append(z["sim"])
        if not clusters:
            return np.zeros(0, np.int32), np.zeros(0, np.float32)
        return np.concatenate(clusters), np.concatenate(sims)

    def sizes(self) -> np.ndarray:
        """Members per cluster: (k,) int64."""
        return np.bincount(self.arrays()[0], minlength=self.clusters).astype(np.int64)


def clustering_fingerprint(centroids_fp: str, web_fp: str, shards: list[int]) -> str:
    """Identity of a committed clustering from its centroids, embeddings and shards."""
    return digest(centroids_fp, web_fp, shards)

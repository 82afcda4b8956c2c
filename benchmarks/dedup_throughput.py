"""SemDeDup dedup on this CPU: k-means training and nearest-centroid assignment against faiss's own calls, the
exact within-cluster step, the whole pipeline on an n x dim workspace, and a PROJECTION (no GPU used) of LAION-400M
on one H200 from the rates measured here. Prints one JSON object.

    python benchmarks/dedup_throughput.py [--n 1000000 --dim 512 --clusters 2000 --niter 20 --threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from clipsim import store
from clipsim.dedup.assign import centroid_scanner, nearest_centroid
from clipsim.dedup.clusters import POINTS_PER_CLUSTER, ClusterConfig, kmeans
from clipsim.dedup.pipeline import DedupOptions, run_dedup
from clipsim.search.exact import brute_force
from clipsim.workspace import Workspace

SHARD_ROWS = 100_000  # rows per embedding shard of the benchmark workspace


def make_set(n: int, dim: int, seed: int) -> np.ndarray:
    """(n, dim) float16 unit rows: points around n // 200 centres, 2% of them copies or near copies of others."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 200), dim)).astype(np.float32)
    x = np.empty((n, dim), np.float32)
    for lo in range(0, n, 65536):
        hi = min(n, lo + 65536)
        x[lo:hi] = centres[rng.integers(0, len(centres), hi - lo)] + 0.9 * rng.standard_normal((hi - lo, dim))
    dup = rng.choice(n, size=n // 50, replace=False)
    x[dup] = x[rng.integers(0, n, len(dup))] + 0.02 * rng.standard_normal((len(dup), dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16)


def bench_kmeans(x16: np.ndarray, clusters: int, niter: int, seed: int, rows: int | None) -> dict:
    """clipsim's kmeans (faiss spherical, sample as given) vs a bare faiss.Kmeans.train on the same rows."""
    import faiss

    rows = min(len(x16), rows or POINTS_PER_CLUSTER * clusters)
    sample = x16[np.sort(np.random.default_rng(seed).choice(len(x16), rows, replace=False))].astype(np.float32)
    faiss.Kmeans(sample.shape[1], 4, niter=2, verbose=False).train(sample[:1000])  # warm-up: neither run pays it
    t0 = time.perf_counter()
    centroids, _ = kmeans(sample, ClusterConfig(clusters, seed, niter))
    ours = time.perf_counter() - t0
    km = faiss.Kmeans(sample.shape[1], clusters, niter=niter, seed=seed, spherical=True, verbose=False,
                      max_points_per_centroid=-(-len(sample) // clusters))
    t0 = time.perf_counter()
    km.train(sample)
    bare = time.perf_counter() - t0
    rate = len(sample) * niter * clusters * sample.shape[1] * 2 / 1e9
    return {"sample": len(sample), "clusters": clusters, "niter": niter, "clipsim_seconds": round(ours, 3),
            "faiss_seconds": round(bare, 3), "ratio_clipsim_over_faiss": round(ours / bare, 3),
            "clipsim_gflops": round(rate / ours, 2), "faiss_gflops": round(rate / bare, 2)}, centroids


def bench_assign(x16: np.ndarray, centroids: np.ndarray, precision: str, block_rows: int) -> dict:
    """clipsim's exact nearest centroid vs faiss IndexFlatIP.search(x, 1) on the same float16 centroids."""
    import faiss

    scanner = centroid_scanner(centroids, precision, "cpu")
    t0 = time.perf_counter()
    ours = [nearest_centroid(scanner, x16[lo : lo + block_rows]) for lo in range(0, len(x16), block_rows)]
    ours_s = time.perf_counter() - t0
    cluster = np.concatenate([o[0] for o in ours])
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids.astype(np.float32))
    t0 = time.perf_counter()
    _, ids = index.search(x16.astype(np.float32), 1)
    faiss_s = time.perf_counter() - t0  # (the float32 copy of x is not timed)
    check = np.random.default_rng(0).choice(len(x16), min(len(x16), 20000), replace=False)
    canonical = brute_force(x16[check], centroids).argmax(axis=1)
    flops = 2 * len(x16) * len(centroids) * x16.shape[1] / 1e9
    return {"rows": len(x16), "precision": precision, "clipsim_seconds": round(ours_s, 3),
            "faiss_seconds": round(faiss_s, 3), "ratio_clipsim_over_faiss": round(ours_s / faiss_s, 3),
            "clipsim_rows_per_s": round(len(x16) / ours_s), "faiss_rows_per_s": round(len(x16) / faiss_s),
            "clipsim_effective_gflops": round(flops / ours_s, 2),
            "faiss_argmax_differs_from_canonical_of_20k": int((ids[check, 0] != canonical).sum()),
            "clipsim_argmax_differs_from_canonical_of_20k": int((cluster[check] != canonical).sum())}


def bench_pipeline(x16: np.ndarray, clusters: int, niter: int, seed: int, sample: int | None) -> dict:
    """run_dedup end to end on a workspace holding x16 (writing the shards is not timed)."""
    with tempfile.TemporaryDirectory(prefix="clipsim-dedup-bench-") as tmp:
        ws = Workspace.create(Path(tmp) / "ws")
        for i, lo in enumerate(range(0, len(x16), SHARD_ROWS)):
            rows = x16[lo : lo + SHARD_ROWS]
            store.write_shard(ws.path("src", "web"), i, rows, pd.DataFrame({"key": [f"{lo + j}" for j in range(len(rows))]}))
        ws.register_dataset("web", "train", ws.path("src", "web"), "embeddings")
        steps: dict[str, float] = {}
        last = [time.perf_counter(), None]

        def progress(done, total, desc):
            step = desc.split(" ")[0]
            if step != last[1]:
                now = time.perf_counter()
                if last[1] is not None:
                    steps[last[1]] = steps.get(last[1], 0.0) + now - last[0]
                last[:] = [now, step]

        t0 = time.perf_counter()
        opts = DedupOptions("web", clusters, eps=0.05, seed=seed, niter=niter, sample=sample, device="cpu")
        out = run_dedup(ws, opts, progress)
        total = time.perf_counter() - t0
        steps[last[1]] = steps.get(last[1], 0.0) + time.perf_counter() - last[0]
        sizes = np.bincount(np.concatenate([np.load(p)["cluster"] for p in
                                            sorted(ws.path("dedup", "web", f"k{clusters}", "assign").glob("*.npz"))]))
    return {"seconds": round(total, 2), "steps_seconds": {k: round(v, 2) for k, v in steps.items()},
            "removed": out["removed"], "largest_cluster": out["largest_cluster"],
            "sum_cluster_size_squared": int((sizes.astype(np.int64) ** 2).sum()),
            "rows_per_s": round(len(x16) / total)}


def project_h200(measured: dict, args: argparse.Namespace) -> dict:
    """PROJECTION of LAION-400M on one H200 (no GPU used here): flops of each step at the H200's peak times the
    efficiency measured on this CPU, plus reading the embeddings; every assumption is printed."""
    n, d, k = args.project_rows, args.project_dim, args.project_clusters
    sample = POINTS_PER_CLUSTER * k  # the default sample at 400M (the measured run may have used a smaller one)
    cfg, cpu_peak, steps_cpu = measured["config"], measured["cpu_peak_gflops"], measured["pipeline"]["steps_seconds"]
    # faiss k-means runs at about BLAS peak on the CPU (noisy on a busy machine); cuBLAS sgemm reaches ~80% of fp32 peak
    eff_kmeans = min(0.8, measured["kmeans"]["clipsim_gflops"] / cpu_peak["fp32"])
    eff_assign = min(1.0, measured["assign"]["clipsim_effective_gflops"] / cpu_peak[measured["assign"]["precision"]])
    sumsq = measured["pipeline"]["sum_cluster_size_squared"]
    # the within-cluster step as measured (small clusters on the CPU: per-cluster overhead included, so pessimistic)
    eff_within = min(1.0, 2 * sumsq * cfg["dim"] / steps_cpu["within-cluster"] / 1e9 / cpu_peak[cfg["precision"]])
    spread = sumsq / cfg["n"] / (cfg["n"] / cfg["clusters"])  # E[m^2] / E[m]^2 of the measured clustering
    pairs = n * (n / k) * spread
    read_s = n * d * 2 / (args.read_gbps * 1e9)
    steps = {
        "kmeans_train_s": 2 * sample * k * d * args.niter / (args.fp32_tflops * 1e12 * eff_kmeans),
        "assign_s": 2 * n * k * d / (args.fp16_tflops * 1e12 * eff_assign) + read_s,
        "within_s": 2 * pairs * d / (args.fp16_tflops * 1e12 * eff_within) + read_s + k * args.per_cluster_ms / 1e3,
        "exact_global_s": n * n * d / (args.fp16_tflops * 1e12 * eff_assign),
    }
    return {"PROJECTION": "no GPU was used; H200 peak x the efficiency measured on this CPU",
            "assumptions": {"rows": n, "dim": d, "clusters": k, "kmeans_sample": sample, "niter": args.niter,
                            "fp32_tflops": args.fp32_tflops, "fp16_tflops": args.fp16_tflops,
                            "kmeans_efficiency": round(eff_kmeans, 3), "screen_efficiency": round(eff_assign, 3),
                            "within_efficiency": round(eff_within, 3),
                            "cluster_size_spread_E[m2]/E[m]2": round(spread, 3), "read_gbps": args.read_gbps,
                            "per_cluster_overhead_ms": args.per_cluster_ms},
            **{key: round(v, 1) for key, v in steps.items()},
            "dedup_total_hours": round((steps["kmeans_train_s"] + steps["assign_s"] + steps["within_s"]) / 3600, 2),
            "exact_global_days": round(steps["exact_global_s"] / 86400, 1)}


def cpu_peak(dim: int = 2048) -> dict:
    """Best-of-3 GFLOP/s of a dim^3 matmul: numpy float32 and torch bfloat16."""
    import torch

    a = np.random.default_rng(0).standard_normal((dim, dim)).astype(np.float32)
    b = torch.from_numpy(a).bfloat16()
    out = {}
    for name, fn in (("fp32", lambda: a @ a), ("bf16", lambda: b @ b)):
        best = min(_timed(fn) for _ in range(3))
        out[name] = round(2 * dim**3 / best / 1e9, 2)
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=2000, help="default: n // 500, the default for sets this size")
    p.add_argument("--niter", type=int, default=20)
    p.add_argument("--sample", type=int, help="k-means training rows (default: 256 per cluster, faiss's cap)")
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--block-rows", type=int, default=65536)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, help="torch and BLAS threads (default: all)")
    p.add_argument("--project-rows", type=int, default=400_000_000)
    p.add_argument("--project-dim", type=int, default=640)
    p.add_argument("--project-clusters", type=int, default=50_000)
    p.add_argument("--fp32-tflops", type=float, default=67.0, help="H200 fp32 (faiss k-means) peak")
    p.add_argument("--fp16-tflops", type=float, default=790.0, help="H200 dense fp16 tensor-core peak (the screen)")
    p.add_argument("--read-gbps", type=float, default=5.0, help="embedding read rate into the node")
    p.add_argument("--per-cluster-ms", type=float, default=2.0, help="fixed cost per cluster on a GPU (launches)")
    p.add_argument("--measured", help="JSON of an earlier run: print it with the projection redone (nothing measured)")
    args = p.parse_args(argv)
    if args.measured:
        report = json.loads(Path(args.measured).read_text())
        report["projection_h200_laion400m"] = project_h200(report, args)
        return report
    if args.threads:  # the same thread count for torch, faiss (OpenMP) and BLAS: ratios compare like with like
        import faiss
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
        threadpool_limits(limits=args.threads)
    report = {"config": vars(args), "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                                                "load_average_at_start": list(os.getloadavg())}}
    x16 = make_set(args.n, args.dim, args.seed)
    report["cpu_peak_gflops"] = cpu_peak()
    report["kmeans"], centroids = bench_kmeans(x16, args.clusters, args.niter, args.seed, args.sample)
    report["assign"] = bench_assign(x16, centroids, args.precision, args.block_rows)
    report["pipeline"] = bench_pipeline(x16, args.clusters, args.niter, args.seed, args.sample)
    report["projection_h200_laion400m"] = project_h200(report, args)
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    return report


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))

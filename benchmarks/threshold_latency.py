"""Threshold-change latency of PruneStats at web scale: build (sort) once, then answer each new tau / delta from
the sorted arrays. Random float32 statistics stand in for stored searches. Prints one JSON object.

    python benchmarks/threshold_latency.py [--n 10000000 --tests 6 --changes 200 --seed 0]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from clipsim.prune import PruneStats, rule_similarity_gap, rule_threshold

TARGET_MS = 50.0  # a slider answers within one frame budget of the UI's rerun


def make_stats(n: int, n_tests: int, seed: int) -> tuple[dict, dict]:
    """{test: m (n,) float32} and {test: g (n,) float32}: m like cosine maxima (mostly 0.2-0.6, a tail to 1),
    g = m - s_R with s_R around 0.55, so a few percent of samples have g > 0 as in the paper."""
    rng = np.random.default_rng(seed)
    max_sim, margins = {}, {}
    for i in range(n_tests):
        m = rng.beta(4, 6, n).astype(np.float32)
        max_sim[f"test{i}"] = m
        margins[f"test{i}"] = m - rng.normal(0.55, 0.08, n).astype(np.float32)
    return max_sim, margins


def time_changes(stats: PruneStats, changes: int, seed: int) -> dict:
    """Per threshold change: counts per test set + combined for tau and delta, then both summaries."""
    rng = np.random.default_rng(seed + 1)
    counts_ms, summary_ms, total_ms = [], [], []
    for tau, delta in zip(rng.uniform(0.2, 0.95, changes), rng.uniform(-0.3, 0.2, changes)):
        t0 = time.perf_counter()
        for test in [*stats.tests, None]:
            stats.count_threshold(tau, test)
            stats.count_gap(delta, test)
        t1 = time.perf_counter()
        stats.summary("threshold", tau=tau)
        stats.summary("similarity-gap", delta=delta)
        t2 = time.perf_counter()
        counts_ms.append((t1 - t0) * 1e3)
        summary_ms.append((t2 - t1) * 1e3)
        total_ms.append((t2 - t0) * 1e3)
    return {"counts_ms": _quantiles(counts_ms), "summaries_ms": _quantiles(summary_ms),
            "threshold_change_ms": _quantiles(total_ms)}


def _quantiles(values: list[float]) -> dict:
    a = np.asarray(values)
    return {"median": round(float(np.median(a)), 4), "p99": round(float(np.quantile(a, 0.99)), 4),
            "max": round(float(a.max()), 4)}


def time_masks(stats: PruneStats, repeats: int = 3) -> dict:
    """For scale: building a full removed mask (what saving a manifest does) vs. only counting."""
    out = {}
    for name, fn in (("rule_threshold_combined", lambda: rule_threshold(stats, 0.6)),
                     ("rule_similarity_gap_combined", lambda: rule_similarity_gap(stats, 0.0)),
                     ("tau_for_fraction_combined", lambda: stats.tau_for_fraction(0.1))):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        out[name + "_ms"] = round(min(times), 3)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000_000, help="web samples")
    p.add_argument("--tests", type=int, default=6, help="test sets")
    p.add_argument("--changes", type=int, default=200, help="random thresholds to time")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    report = {"config": vars(args), "machine": {
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
        "load_average_at_start": list(os.getloadavg())}}
    max_sim, margins = make_stats(args.n, args.tests, args.seed)
    rss_inputs = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    stats = PruneStats.from_arrays(max_sim, margins, reference="reference").prepare()
    report["build_seconds"] = round(time.perf_counter() - t0, 3)
    report["stats_bytes"] = stats.nbytes
    report.update(time_changes(stats, args.changes, args.seed))
    report["masks"] = time_masks(stats)
    report["peak_rss_mb"] = {"after_inputs": round(rss_inputs, 1),
                             "total": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    report["meets_target"] = report["threshold_change_ms"]["p99"] < TARGET_MS
    report["target_ms"] = TARGET_MS
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    return report


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))

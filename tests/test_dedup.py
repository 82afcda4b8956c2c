"""SemDeDup dedup against brute force on small synthetic sets: exact assignment, within-cluster maxima in every keep
order (across tiles and parts), kept/removed at eps, the exact global pairs and the clustering's recall, resuming,
array-style assignment, the CLI, and counting at any eps from the sorted statistics."""
from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from clipsim import jobs, store
from clipsim.cli import main as cli_main
from clipsim.dedup import assign, kernel, within
from clipsim.dedup.clusters import ClusterConfig, Clustering, train_centroids
from clipsim.dedup.pairs import cluster_recall, exact_pairs, global_pairs
from clipsim.dedup.pipeline import DedupOptions, run_dedup
from clipsim.dedup.stats import DedupStats, eps_cut
from clipsim.prune import load_manifest
from clipsim.search.exact import Screen, brute_force
from clipsim.workspace import Workspace
from tests.helpers import load_benchmark, unit16

DIM, K, SEED = 24, 4, 1234
SHARDS = (0, 180, 181, 330, 420)  # uneven shards, one of a single row


def _set(rng: np.random.Generator) -> np.ndarray:
    """420 rows around 6 centres, with exact copies, near copies and a group split by a later member."""
    centres = rng.standard_normal((6, DIM))
    x = centres[rng.integers(0, 6, SHARDS[-1])] + 0.7 * rng.standard_normal((SHARDS[-1], DIM))
    x[50:56] = x[3] + 0.01 * rng.standard_normal((6, DIM))  # a tight group
    x[[200, 300, 400]] = x[7]  # exact copies across shards
    return unit16(x)


@pytest.fixture
def ws(tmp_path, monkeypatch, one_thread) -> Workspace:
    monkeypatch.delenv("CLIPSIM_READ_ONLY", raising=False)
    workspace = Workspace.create(tmp_path / "ws")
    x = _set(np.random.default_rng(3))
    for i, (a, b) in enumerate(itertools.pairwise(SHARDS)):
        store.write_shard(workspace.path("src", "web"), i, x[a:b], pd.DataFrame({"key": [f"w{j:04d}" for j in range(a, b)]}))
    workspace.register_dataset("web", "train", workspace.path("src", "web"), "embeddings")
    return workspace


def brute_within(x16: np.ndarray, cluster: np.ndarray, sim: np.ndarray, keep: str, seed: int = SEED) -> dict:
    """Per row: max similarity (float32(X64 X64^T)) to an earlier member in keep order and to any other member."""
    n = len(x16)
    out = {"earlier_sim": np.full(n, -np.inf, np.float32), "earlier_id": np.full(n, -1),
           "any_sim": np.full(n, -np.inf, np.float32), "any_id": np.full(n, -1)}
    c_all = brute_force(x16, x16)
    for c in np.unique(cluster):
        rows = np.flatnonzero(cluster == c)
        rows = rows[np.lexsort((rows, sim[rows]))]  # farthest from the centroid first, ties by row
        if keep == "easy":
            rows = rows[::-1]
        elif keep == "random":
            rows = np.random.default_rng([seed, int(c)]).permutation(rows)
        s = c_all[np.ix_(rows, rows)].astype(np.float64)
        np.fill_diagonal(s, -np.inf)
        for p, r in enumerate(rows):
            if len(rows) > 1:
                q = int(np.argmax(s[p]))
                out["any_sim"][r], out["any_id"][r] = s[p, q], rows[q]
            if p > 0:
                q = int(np.argmax(s[p, :p]))
                out["earlier_sim"][r], out["earlier_id"][r] = s[p, q], rows[q]
    return out


@pytest.mark.parametrize(("precision", "block"), [("fp32", 4096), ("bf16", 4096), ("bf16", 7), ("fp32", 16)])
def test_cluster_maxima_equal_brute_force(precision, block, one_thread):
    x = _set(np.random.default_rng(1))[:90]
    got = {k: v.numpy() for k, v in kernel.cluster_maxima(torch.from_numpy(x), Screen(precision, torch.device("cpu"), DIM),
                                                            block).items()}
    want = brute_within(x, np.zeros(len(x), int), np.zeros(len(x), np.float32), "hard")  # equal sims: row order
    for name in ("earlier", "any"):
        assert np.array_equal(got[f"{name}_sim"], want[f"{name}_sim"])
        assert np.array_equal(got[f"{name}_pos"], want[f"{name}_id"])  # one cluster in row order: position = row


@pytest.mark.parametrize("keep", ["hard", "easy", "random"])
def test_within_cluster_and_removal_equal_brute_force(ws, keep, monkeypatch):
    monkeypatch.setattr(within, "ROWS_PER_PART", 100)  # several parts
    monkeypatch.setattr(kernel, "BLOCK", 32)  # several tiles per cluster
    out = run_dedup(ws, DedupOptions("web", clusters=K, eps=0.05, keep=keep, name=f"d-{keep}"))
    clustering = Clustering.load(ws, "web", K)
    cluster, sim = clustering.arrays()
    x = ws.embeddings("web").all()
    got = within.WithinResult.load(clustering, keep).arrays()
    want = brute_within(x, cluster, sim, keep)
    for name in ("earlier_sim", "earlier_id", "any_sim", "any_id"):
        assert np.array_equal(got[name], want[name]), name
    removed = want["earlier_sim"].astype(np.float64) > 1 - 0.05  # brute force: M > 1 - eps as real numbers
    manifest = load_manifest(ws, f"d-{keep}")
    keys = ws.keys("web")
    assert set(manifest.removed_keys()) == set(keys[removed]) and set(manifest.kept_keys()) == set(keys[~removed])
    assert out["removed"] == manifest.removed_count == int(removed.sum()) > 0
    assert manifest.rule == "semdedup" and manifest.summary["params"]["keep"] == keep and not manifest.stale


def test_assignment_is_exact_resumes_and_splits_into_ranges(ws):
    train_centroids(ws, "web", ClusterConfig(K))
    first = assign.assign_shards(ws, "web", K, (0, 2))
    second = assign.assign_shards(ws, "web", K, (2, 5))  # another array task
    clustering = assign.commit_clustering(ws, "web", K)
    cluster, sim = clustering.arrays()
    c = brute_force(ws.embeddings("web").all(), clustering.centroids())
    assert np.array_equal(cluster, c.argmax(axis=1)) and np.array_equal(sim, c.max(axis=1))
    assert first["assigned"] == [0, 1] and second["assigned"] == [2, 3]
    shard = clustering.folder / "assign" / "shard_2.npz"
    before = shard.read_bytes()
    shard.unlink()  # a task killed before it wrote shard 2
    with pytest.raises(Exception, match="shards 2:3 of 'web' are not assigned"):
        assign.commit_clustering(ws, "web", K)
    again = assign.assign_shards(ws, "web", K)
    assert again["assigned"] == [2] and shard.read_bytes() == before


def test_global_pairs_and_recall_equal_brute_force(ws):
    run_dedup(ws, DedupOptions("web", clusters=K, eps=0.3))
    pairs = global_pairs(ws, "web", 0.3, query_rows=64)  # several query blocks
    i, j, s = pairs.arrays()
    assert all(np.array_equal(a, b) for a, b in zip(exact_pairs(ws.embeddings("web"), 0.3, query_rows=100), (i, j, s)))
    c = brute_force(*(2 * [ws.embeddings("web").all()])).astype(np.float64)
    want_i, want_j = np.nonzero(np.triu(c > 1 - 0.3, k=1))
    assert np.array_equal(i, want_i) and np.array_equal(j, want_j) and np.array_equal(s, c[want_i, want_j].astype(np.float32))
    cluster = Clustering.load(ws, "web", K).arrays()[0]
    got = cluster_recall((i, j, s), cluster)
    assert got["same_cluster"] == int((cluster[want_i] == cluster[want_j]).sum()) and got["pairs"] == len(want_i) > 100
    assert got["split"] > 0 and got["recall"] == got["same_cluster"] / got["pairs"]  # eps 0.3 is wide: some split


def test_counts_at_any_eps_come_from_the_sorted_statistics(ws):
    run_dedup(ws, DedupOptions("web", clusters=K))
    stats = DedupStats.load(ws, "web", K)
    for eps in (0.0, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0, float(1 - stats.earlier_sim[np.isfinite(stats.earlier_sim)][5])):
        assert stats.count_removed(eps) == int(stats.removed(eps).sum()) == int((stats.earlier_sim > eps_cut(eps)).sum())
        above, below = stats.pairs_at_cut(eps, 4)
        assert (stats.earlier_sim[above] > eps_cut(eps)).all() and (stats.earlier_sim[below] <= eps_cut(eps)).all()
    for fraction in (0.0, 0.05, 0.3, 0.99):
        removable = np.isfinite(stats.earlier_sim).sum()
        target = min(round(fraction * stats.n), removable)
        finite = np.unique(stats.earlier_sim[np.isfinite(stats.earlier_sim)])
        achievable = {stats.count_removed(1 - float(v)) for v in finite}
        got = stats.count_removed(stats.eps_for_fraction(fraction))
        assert abs(got - target) == min(abs(a - target) for a in achievable | {0, int(removable)})


def test_stale_inputs_are_recomputed(ws):
    out = run_dedup(ws, DedupOptions("web", clusters=K, eps=0.05))
    clustering = Clustering.load(ws, "web", K)
    x = ws.embeddings("web").all()[:180].copy()
    x[[0, 1]] = x[[1, 0]]
    store.write_shard(ws.path("src", "web"), 0, x, pd.DataFrame({"key": [f"w{j:04d}" for j in range(180)]}))
    assert clustering.stale and "embeddings changed" in clustering.stale_reasons()[0]
    again = run_dedup(ws, DedupOptions("web", clusters=K, eps=0.05))
    assert not Clustering.load(ws, "web", K).stale and again["removed"] == out["removed"]


def test_cli_dedup_json_and_bad_arguments(ws, capsys):
    root = str(ws.root)
    assert cli_main(["dedup", "--workspace", root, "--dataset", "web", "--clusters", str(K), "--eps", "0.05",
                     "--exact-global", "--name", "dd", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    manifest = load_manifest(ws, "dd")
    assert out["removed"] == manifest.removed_count and out["kept"] == manifest.kept_count == 420 - out["removed"]
    assert out["global"] == manifest.summary["global"] and 0 < out["global"]["recall"] <= 1
    for bad in (["--clusters", "0"], ["--clusters", "999"], ["--eps", "5"], ["--dataset", "nope"]):
        assert cli_main(["dedup", "--workspace", root, "--name", "x", *bad]) == 2
        assert "error:" in capsys.readouterr().err
    assert cli_main(["dedup", "--workspace", root, "--clusters", str(K), "--eps", "0.05", "--name", "dd"]) == 2
    assert "exists" in capsys.readouterr().err


def test_array_jobs_give_what_one_process_gives(ws, tmp_path, capsys):
    """--array 2 on the local backend: a centroids job, two assignment tasks over shard ranges, then the rest."""
    ws.update_settings(jobs={"slots": 2})
    other = Workspace.open(shutil.copytree(ws.root, tmp_path / "other"))
    args = ["dedup", "--clusters", str(K), "--eps", "0.05", "--name", "dd", "--json"]
    assert cli_main([*args, "--workspace", str(ws.root), "--array", "2", "--backend", "local", "--wait"]) == 0
    arrayed = json.loads(capsys.readouterr().out)
    assert cli_main([*args, "--workspace", str(other.root)]) == 0
    assert json.loads(capsys.readouterr().out) == arrayed
    assert np.array_equal(load_manifest(ws, "dd").kept_keys(), load_manifest(other, "dd").kept_keys())
    parts = [j for j in jobs.list_jobs(ws) if j.kind == "dedup-part"]
    assert sorted(j.result["range"] for j in parts) == [[0, 2], [2, 4]] and all(j.state == "done" for j in parts)


def test_dedup_benchmarks_run_small(one_thread):
    latency = load_benchmark("dedup_latency").main(["--n", "20000", "--clusters", "50", "--changes", "5"])
    assert set(latency["counts_and_pairs_ms"]) == {"median", "p99"} and latency["build_seconds"] >= 0
    report = load_benchmark("dedup_throughput").main(["--n", "3000", "--dim", "16", "--clusters", "6", "--niter", "2"])
    assert report["assign"]["clipsim_argmax_differs_from_canonical_of_20k"] == 0
    assert report["pipeline"]["removed"] > 0 and set(report["pipeline"]["steps_seconds"]) == {
        "k-means", "assign", "within-cluster"}
    assert report["projection_h200_laion400m"]["PROJECTION"].startswith("no GPU was used")


def test_a_killed_within_cluster_run_resumes_to_the_same_bits(ws, monkeypatch):
    run_dedup(ws, DedupOptions("web", clusters=K, eps=0.05, keep="easy"))
    clustering = Clustering.load(ws, "web", K)
    want = within.WithinResult.load(clustering, "easy").arrays()
    shutil.rmtree(clustering.folder / "within-easy")
    monkeypatch.setattr(within, "ROWS_PER_PART", 1)  # one part per cluster: K parts
    real, done = within._compute_part, []

    def dies_after_two(*args):
        if len(done) == 2:
            raise KeyboardInterrupt("killed")
        done.append(args[3])
        real(*args)

    monkeypatch.setattr(within, "_compute_part", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        within.within_cluster(clustering, "easy")
    assert not (clustering.folder / "within-easy" / "config.json").exists()  # nothing half-written looks whole
    monkeypatch.setattr(within, "_compute_part", lambda *args: (done.append(args[3]), real(*args)))
    within.within_cluster(clustering, "easy")
    assert len(done) == len(set(done)) == K  # the two finished parts were not computed again
    got = within.WithinResult.load(clustering, "easy").arrays()
    assert all(np.array_equal(got[k], want[k]) for k in want)

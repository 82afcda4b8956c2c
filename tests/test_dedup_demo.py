"""Dedup on the small demo: the planted web duplicate groups and their recall at the demo's eps, text search for the
sketch prompts, and manifests that compose (prune and train from a dedup manifest, the Runs chain's base)."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from clipsim import jobs, prune
from clipsim.cli import main as cli_main
from clipsim.data.demo import world
from clipsim.data.demo.build import DEDUP_EPS, duplicate_group_recall
from clipsim.data.demo.draw import CLASSES
from clipsim.dedup.clusters import default_clusters
from clipsim.dedup.pipeline import default_eps
from clipsim.dedup.stats import DedupStats, save_dedup_manifest
from clipsim.prune.rules import RuleSpec
from clipsim.runs.pipeline import queue_pipeline, train_manifest
from clipsim.runs.train import random_control
from clipsim.search.exact import brute_force
from clipsim.search.text import text_search
from clipsim.workspace import Workspace


@pytest.fixture(scope="module")
def dedup_stats(demo_ws) -> DedupStats:
    """The statistics the demo build computed (default clusters, keep hard)."""
    return DedupStats.load(demo_ws, "web", default_clusters(demo_ws.embeddings("web").count))


@pytest.fixture
def ws_copy(demo_ws, tmp_path, monkeypatch) -> Workspace:
    """A private copy of the small demo (mtimes kept, so fingerprints match) with a dedup manifest 'dd'."""
    monkeypatch.delenv("CLIPSIM_READ_ONLY", raising=False)
    root = tmp_path / "ws"
    shutil.copytree(demo_ws.root, root, ignore=shutil.ignore_patterns("manifests", "runs", "train_data", "jobs.sqlite*"))
    ws = Workspace.open(root)
    stats = DedupStats.load(ws, "web", default_clusters(ws.embeddings("web").count))
    save_dedup_manifest(ws, "dd", stats, DEDUP_EPS)
    return ws


def test_demo_plants_web_duplicate_groups(demo_ws):
    truth = pd.read_parquet(demo_ws.path("demo", "web_duplicates.parquet"))
    size = world.PRESETS["small"]
    assert list(truth.columns) == ["key", "group", "kind"] and truth["group"].nunique() == size.dup_groups
    per_group = truth.groupby("group")["kind"]
    assert (per_group.apply(lambda k: (k == "original").sum()) == 1).all()
    assert per_group.size().between(min(world.GROUP_SIZES), max(world.GROUP_SIZES)).all()
    assert set(truth["kind"]) == {"original", *world.COPY_KINDS}
    keys = demo_ws.keys("web")
    assert set(truth["key"]) <= set(keys) and demo_ws.embeddings("web").count == size.web + (truth["kind"] != "original").sum()
    rows = pd.Index(keys).get_indexer(truth["key"])
    x = demo_ws.embeddings("web").rows(rows)
    originals = truth.groupby("group")["key"].transform("first")
    sims = (x.astype(np.float64) * demo_ws.embeddings("web").rows(pd.Index(keys).get_indexer(originals))).sum(1)
    assert sims[(truth["kind"] == "exact").to_numpy()].min() > 0.999  # the same bytes, decoded and embedded again


def test_dedup_at_the_demo_eps_leaves_one_member_of_each_planted_group(demo_ws, dedup_stats):
    assert default_eps(demo_ws) == DEDUP_EPS
    removed = dedup_stats.removed(DEDUP_EPS)
    recall = duplicate_group_recall(demo_ws, demo_ws.keys("web")[removed])
    assert recall["recall"] >= 0.95, recall
    assert dedup_stats.count_removed(DEDUP_EPS) < 0.2 * dedup_stats.n  # it is not removing everything


def test_sketch_prompts_find_sketches(demo_ws):
    truth = pd.read_parquet(demo_ws.path("demo", "web_truth.parquet")).set_index("key")
    prompts = [f"a sketch of a {c}." for c in CLASSES]
    hits = text_search(demo_ws, "web", prompts, k=50)
    domain = truth.loc[hits["key"], "domain"].to_numpy()
    assert len(hits) == 50 * len(prompts) and (domain == "sketch").mean() >= 0.8


def test_prune_from_a_dedup_manifest_prunes_only_what_it_keeps(ws_copy, capsys):
    root = str(ws_copy.root)
    assert cli_main(["prune", "--workspace", root, "--rule", "similarity-gap", "--base", "dd", "--name", "gap-dd"]) == 0
    base, gap = prune.load_manifest(ws_copy, "dd"), prune.load_manifest(ws_copy, "gap-dd")
    keys, kept_base = ws_copy.keys("web"), set(base.kept_keys())
    rows = np.flatnonzero(np.isin(keys, list(kept_base)))
    x = ws_copy.embeddings("web").all()
    margin = np.full(len(keys), -np.inf, np.float32)
    for test in ws_copy.dataset_names("test"):  # brute force: max_t float32(c(x, t) - s_ref(t))
        q = ws_copy.embeddings(test).all()
        s_ref = brute_force(q, ws_copy.embeddings("curated").all()).max(axis=1)
        c = brute_force(q, x)
        margin = np.maximum(margin, (c.astype(np.float64) - s_ref[:, None]).astype(np.float32).max(axis=0))
    removed = rows[margin[rows] > 0]
    assert set(gap.removed_keys()) == set(keys[removed]) and set(gap.kept_keys()) == kept_base - set(keys[removed])
    assert gap.summary["n"] == len(rows) == base.kept_count and gap.summary["base"]["name"] == "dd" and not gap.stale
    assert train_manifest(ws_copy, "full", "dd") == "dd" and train_manifest(ws_copy, "gap-dd", "dd") == "gap-dd"
    control = prune.load_manifest(ws_copy, random_control(ws_copy, "gap-dd"))
    assert set(control.kept_keys()) <= kept_base and control.kept_count == gap.kept_count
    save_dedup_manifest(ws_copy, "dd", DedupStats.load(ws_copy, "web", base.summary["params"]["clusters"]), 0.1,
                        overwrite=True)  # the base changes under the pruned manifest
    assert any("base manifest 'dd'" in r for r in prune.load_manifest(ws_copy, "gap-dd").stale_reasons())
    assert cli_main(["train", "--workspace", root, "--manifest", "gap-dd", "--base", "nope"]) == 2
    assert "no manifest 'nope'" in capsys.readouterr().err


def test_runs_chain_starts_from_the_base(ws_copy):
    ws_copy.update_settings(jobs={"slots": 1})
    blocker = jobs.launch(ws_copy, "sleep", {"seconds": 120, "steps": 120})  # holds the slot: the chain stays queued
    try:
        queued = queue_pipeline(ws_copy, spec=RuleSpec("similarity-gap"), base="dd", random_control=True,
                                include_full=True)
        params = [(j.kind, j.params) for j in queued]
        assert params[0][0] == "prune" and params[0][1]["base"] == "dd" and params[0][1]["name"].endswith("_on-dd")
        trains = [p for kind, p in params if kind == "train"]
        assert [t["manifest"] for t in trains] == ["dd", params[0][1]["name"], params[0][1]["name"]]
        assert trains[2].get("control") == "random"
    finally:
        for job in jobs.list_jobs(ws_copy):
            if job.is_active:
                jobs.cancel(ws_copy, job.id)
        jobs.wait(ws_copy, blocker.id, timeout=60)

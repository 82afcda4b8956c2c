"""AppTest of the Dedup page on the small demo (counts equal DedupStats at every eps, the pairs straddle the cut, saving
launches a job that writes what the CLI writes, read-only and empty states) and of text search on Neighbours."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from clipsim import jobs, prune
from clipsim.cli import main as cli_main
from clipsim.dedup.clusters import default_clusters
from clipsim.dedup.stats import DedupStats, eps_cut
from clipsim.search.text import text_search
from clipsim.workspace import Workspace
from tests.helpers import PAGE_TIMEOUT, html, metric, run_page, writable_copy

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def writable(demo_ws, tmp_path, monkeypatch):
    return writable_copy(demo_ws.root, tmp_path / "ws", monkeypatch, ("manifests", "runs", "jobs.sqlite*"))


def stats_of(ws) -> DedupStats:
    return DedupStats.load(ws, "web", default_clusters(ws.embeddings("web").count))


def test_app_navigates_to_the_dedup_page(served):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=PAGE_TIMEOUT).run()
    at.switch_page("pages/dedup.py").run()
    assert not at.exception and at.title[0].value == "Dedup"


def test_dedup_counts_follow_eps_and_pairs_straddle_the_cut(served):
    stats = stats_of(served)
    at = run_page("dedup", eps="0.05")
    assert not at.exception
    assert metric(at, "Samples removed") == f"{stats.count_removed(0.05):,}"
    at.number_input(key="eps").set_value(0.02).run()
    assert metric(at, "Samples removed") == f"{stats.count_removed(0.02):,}" != f"{stats.count_removed(0.05):,}"
    page = html(at)
    sims = {side: [float(s) for s in re.findall(r'data-testid="cs-sim">([0-9.]+)<', part)]
            for side, part in zip(("above", "below"), page.split('data-testid="cs-pairs-below"'))}
    cut = float(eps_cut(0.02))
    assert sims["above"] and min(sims["above"]) >= round(cut, 4) and max(sims["below"]) <= round(cut, 4)
    assert len(at.get("plotly_chart")) == 2


def test_saving_launches_a_job_that_writes_what_the_cli_writes(writable):
    centroids = next(writable.path("dedup", "web").glob("k*/centroids.json"))
    before = centroids.stat().st_mtime_ns
    at = run_page("dedup", eps="0.04")
    at.text_input[0].set_value("dd-page").run()
    next(b for b in at.button if b.label.startswith("Save manifest")).click().run()
    assert not at.exception
    job = jobs.list_jobs(writable, kind="dedup")[0]
    assert jobs.wait(writable, job.id, timeout=120).state == "done"
    assert centroids.stat().st_mtime_ns == before  # the job reused the stored clustering
    assert cli_main(["dedup", "--workspace", str(writable.root), "--eps", "0.04", "--name", "dd-cli"]) == 0
    page, cli = prune.load_manifest(writable, "dd-page"), prune.load_manifest(writable, "dd-cli")
    assert np.array_equal(page.kept_keys(), cli.kept_keys()) and page.summary["params"] == cli.summary["params"]
    removed = stats_of(writable).removed(0.04)
    assert set(page.removed_keys()) == set(writable.keys("web")[removed])


def test_read_only_hides_saving_and_empty_workspace_says_what_to_run(served, writable, monkeypatch):
    monkeypatch.setenv("CLIPSIM_WORKSPACE", str(served.root))
    monkeypatch.setenv("CLIPSIM_READ_ONLY", "1")
    at = run_page("dedup")
    assert not at.exception and not at.text_input and any("Read-only" in i.value for i in at.info)
    monkeypatch.delenv("CLIPSIM_READ_ONLY")
    monkeypatch.setenv("CLIPSIM_WORKSPACE", str(writable.root))
    shutil.rmtree(writable.path("dedup"))
    at = run_page("dedup")
    assert not at.exception and any("No dedup statistics" in i.value for i in at.info)
    assert any("clipsim dedup" in c.value for c in at.code)
    assert any(b.label == "Compute dedup statistics" for b in at.button)
    empty = Workspace.create(writable.root.parent / "empty")
    monkeypatch.setenv("CLIPSIM_WORKSPACE", str(empty.root))
    assert any("clipsim register" in c.value for c in run_page("dedup").code)
    empty.register_dataset("web", "train", empty.root, "folder")
    assert any("clipsim embed" in c.value for c in run_page("dedup").code)


def test_neighbours_text_box_shows_the_text_search(served):
    at = run_page("neighbours", q="a sketch of a star", q_in="web", q_k="6")
    assert not at.exception
    want = text_search(served, "web", "a sketch of a star", k=6)
    strip = html(at).split('data-testid="cs-text-hits"')[1].split('data-testid="cs-gallery"')[0]
    shown = re.findall(r'title="[^"]*\n([^"\n]+)"', strip)
    assert shown == list(want["key"])


def test_stale_statistics_are_flagged(writable):
    stats = stats_of(writable)
    assert stats.cluster_config["seed"] == 1234 and not stats.stale_reasons()
    shard = writable.embeddings("web").shards[0].emb
    stamp = shard.stat().st_mtime_ns
    os.utime(shard, ns=(stamp + 10**9, stamp + 10**9))  # rewritten embeddings: the fingerprint changes
    at = run_page("dedup")
    assert not at.exception and any("Stale dedup statistics" in w.value for w in at.warning)

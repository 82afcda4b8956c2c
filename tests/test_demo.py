"""The demo world: deterministic drawing, planted near-duplicates found by the exact search, results equal
to a numpy brute force over the stored embeddings, and the paper's qualitative findings."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from clipsim.data.demo import world
from clipsim.data.demo.build import build_demo, planted_recall
from clipsim.data.demo.draw import CLASSES, DOMAINS, jitter_scene, perturb, render, sample_scene
from clipsim.search.exact import brute_force


def test_rendering_is_deterministic_and_near_duplicates_are_close():
    rng = np.random.default_rng(3)
    for domain in DOMAINS:
        scene = sample_scene(rng, 5, domain)
        a, b = np.asarray(render(scene), np.float32), np.asarray(render(scene), np.float32)
        assert a.shape == (64, 64, 3) and (a == b).all()
        dup = np.asarray(perturb(render(jitter_scene(scene, rng)), rng), np.float32)
        other = np.asarray(render(sample_scene(rng, 5, domain)), np.float32)
        assert np.abs(dup - a).mean() < np.abs(other - a).mean()


def test_plan_is_deterministic_and_plants_the_share():
    size = world.PRESETS["small"]
    a, b = world.plan(7, size), world.plan(7, size)
    assert [(i.dataset, i.key, i.caption) for i in a] == [(i.dataset, i.key, i.caption) for i in b]
    truth = world.planted_table(a)
    per_set = truth.groupby("test_dataset").size()
    assert set(per_set.index) == set(world.TEST_SETS)
    assert (per_set == round(size.planted_share * size.test)).all()
    copies = [i for i in a if i.copy_of is not None]  # the planted web duplicates come after the plain web samples
    assert sum(i.dataset == "web" for i in a) == size.web + len(copies) and a[-len(copies):] == copies
    assert len({i.copy_of for i in copies}) == size.dup_groups and size.web < size.web + len(copies) <= size.web_total
    without = world.plan(7, dataclasses.replace(size, dup_groups=0))  # planting them changes no other sample
    assert [(i.dataset, i.key, i.caption, i.scene) for i in without] == \
        [(i.dataset, i.key, i.caption, i.scene) for i in a[: -len(copies)]]
    assert {i.scene.cls for i in a if i.dataset == "val"} == set(range(len(CLASSES)))


def test_small_demo_workspace(demo_ws):
    ds = demo_ws.datasets().set_index("name")
    assert list(ds.index) == ["web", "curated", "val", "v2", "sketch", "rendition", "hard"]
    size = world.PRESETS["small"]
    copies = int((pd.read_parquet(demo_ws.path("demo", "web_duplicates.parquet"))["kind"] != "original").sum())
    assert ds.loc["web", "count"] == size.web + copies and ds.loc["curated", "count"] == size.curated
    assert (ds.loc[list(world.TEST_SETS), "count"] == size.test).all()
    assert (ds["dim"] == 128).all()
    truth = pd.read_parquet(demo_ws.path("demo", "planted.parquet"))
    assert list(truth.columns) == ["test_dataset", "test_key", "train_dataset", "train_key"]
    assert set(truth["test_key"]) <= set(np.concatenate([demo_ws.keys(t) for t in world.TEST_SETS]))
    assert set(truth["train_key"]) <= set(demo_ws.keys("web"))
    web_meta = demo_ws.embeddings("web").metadata()
    assert web_meta["caption"].notna().all() and (web_meta["label"] >= 0).all()


@pytest.mark.parametrize("test", ["sketch", "val"])
def test_demo_neighbours_equal_numpy_brute_force(demo_ws, test):
    q = demo_ws.embeddings(test).all()
    x = demo_ws.embeddings("web").all()
    c = brute_force(q, x)
    order = np.argsort(-c, axis=1, kind="stable")[:, :10]
    got = demo_ws.neighbours(test, "web", k=10)
    assert (got["train_id"].to_numpy().reshape(-1, 10) == order).all()
    assert (got["similarity"].to_numpy().reshape(-1, 10) == np.take_along_axis(c, order, 1)).all()
    assert (got["train_key"].to_numpy().reshape(-1, 10) == demo_ws.keys("web")[order]).all()
    s = demo_ws.nn_similarity(test, "curated")
    assert (s.to_numpy() == brute_force(q, demo_ws.embeddings("curated").all()).max(axis=1)).all()
    train_max = demo_ws.train_max_similarity("web", test)
    assert (train_max["max_similarity"].to_numpy() == c.max(axis=0)).all()


def test_small_demo_finds_most_planted_duplicates(demo_ws):
    recall = planted_recall(demo_ws)
    assert set(recall["test"]) == set(world.TEST_SETS)
    assert recall["rank1"].sum() / recall["planted"].sum() >= 0.8  # small model, 60 steps; the full demo: >= 0.95


def test_demo_rebuild_is_a_no_op_and_other_seed_is_refused(demo_ws):
    from clipsim.errors import WorkspaceError

    before = (demo_ws.path("demo", "demo.json")).stat().st_mtime_ns
    build_demo(demo_ws.root, seed=0, size="small")
    assert demo_ws.path("demo", "demo.json").stat().st_mtime_ns == before
    with pytest.raises(WorkspaceError, match="seed 0"):
        build_demo(demo_ws.root, seed=1, size="small")


def test_demo_quality_benchmark_measures_the_built_demo(demo_ws, capsys):
    """The full demo's README numbers come from benchmarks/demo_quality.py (outside the suite's CPU budget); here it
    reads the session's small demo (already built: no rebuild) and must report what the library computes."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_quality.py"
    spec = importlib.util.spec_from_file_location("demo_quality", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--workspace", str(demo_ws.root), "--size", "small"])
    recall = planted_recall(demo_ws)
    assert report["recall"] == round(recall["rank1"].sum() / recall["planted"].sum(), 4)
    margins = demo_ws.search_result("sketch", "web").train_stat("margin/curated")
    assert report["gap_removed"]["sketch"] == int((margins > 0).sum())
    assert report["gap_removed"]["sketch"] > report["gap_removed"]["val"]  # the paper's ordering, on the small demo
    assert report["dedup"]["planted_groups"]["recall"] >= 0.95 and 0 < report["dedup"]["exact_global"]["recall"] <= 1
    assert report["text_search"]["sketch_domain_at_50"] >= 0.8
    assert '"targets_met"' in capsys.readouterr().out

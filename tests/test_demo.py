"""The demo world: deterministic drawing, planted near-duplicates found by the exact search, results equal
to a numpy brute force over the stored embeddings, and the paper's qualitative findings."""
from __future__ import annotations

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
    assert sum(i.dataset == "web" for i in a) == size.web
    assert {i.scene.cls for i in a if i.dataset == "val"} == set(range(len(CLASSES)))


def test_small_demo_workspace(demo_ws):
    ds = demo_ws.datasets().set_index("name")
    assert list(ds.index) == ["web", "curated", "val", "v2", "sketch", "rendition", "hard"]
    size = world.PRESETS["small"]
    assert ds.loc["web", "count"] == size.web and ds.loc["curated", "count"] == size.curated
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


@pytest.mark.slow
def test_full_demo_meets_the_targets(tmp_path):
    """The README's demo: >= 95% of planted test images have their duplicate as rank-1 web neighbour, and
    similarity-gap pruning against `curated` removes more web samples for sketch and rendition than for val."""
    ws = build_demo(tmp_path / "ws", seed=0, size="full")
    recall = planted_recall(ws)
    assert recall["rank1"].sum() / recall["planted"].sum() >= 0.95
    removed = {t: int((ws.search_result(t, "web").train_stat("margin/curated") > 0).sum()) for t in world.TEST_SETS}
    assert removed["sketch"] > removed["val"] and removed["rendition"] > removed["val"]
    s_web = {t: float(ws.nn_similarity(t, "web").median()) for t in world.TEST_SETS}
    s_cur = {t: float(ws.nn_similarity(t, "curated").median()) for t in world.TEST_SETS}
    assert s_web["sketch"] > s_cur["sketch"] and s_web["rendition"] > s_cur["rendition"]

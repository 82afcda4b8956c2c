"""Map: stratified sampling and transform placement against planted clusters, the umap job (through the CLI and a
worker) on the demo workspace, and the Map page drawing the stored map without refitting; empty states.

The first UMAP fit in a process compiles for 10-25 s (numba): this module fits once in-process and once in a worker.
"""
from __future__ import annotations

import base64
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from clipsim import fileio, jobs, prune
from clipsim.errors import ClipsimError
from clipsim.maps import compute as mapping
from clipsim.maps import view as map_view
from clipsim.store import write_shard
from clipsim.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 90
SMALL = {"n_neighbors": 10}  # few neighbours: a few hundred fitted points stay meaningful


# ----- sampling ------------------------------------------------------------------------------------------
def test_allocate_sample_gives_small_sets_all_their_points():
    counts = {"web": 10_000, "curated": 900, "val": 50, "sketch": 120}
    sizes = mapping.allocate_sample(counts, 1000)
    assert sizes == {"web": 415, "curated": 415, "val": 50, "sketch": 120} and sum(sizes.values()) == 1000
    assert mapping.allocate_sample(counts, 10**9) == counts  # everything fits: everything is fitted
    assert mapping.allocate_sample({"a": 5, "b": 5}, 3) == {"a": 1, "b": 2}  # exact total, names break ties
    rows = mapping.sample_rows(10_000, 415, 0, "web")
    assert len(np.unique(rows)) == 415 and np.all(np.diff(rows) > 0) and rows.max() < 10_000
    assert np.array_equal(rows, mapping.sample_rows(10_000, 415, 0, "web"))
    assert not np.array_equal(rows, mapping.sample_rows(10_000, 415, 1, "web"))
    with pytest.raises(ValueError):
        mapping.allocate_sample(counts, -1)


def _clustered(ws: Workspace, name: str, role: str, n: int, centres: np.ndarray, seed: int) -> np.ndarray:
    """n unit vectors around the centres (cluster i = row % len(centres)); returns the cluster of each row."""
    rng = np.random.default_rng(seed)
    cluster = np.arange(n) % len(centres)
    emb = centres[cluster] + 0.15 * rng.standard_normal((n, centres.shape[1]))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    half = n // 2  # two shards: placement must follow global rows across shards
    for i, part in enumerate((slice(0, half), slice(half, n))):
        write_shard(ws.path("embeddings", name), i, emb[part],
                    pd.DataFrame({"key": [f"{name}{j}" for j in range(n)[part]]}))
    ws.register_dataset(name, role, ws.root, "folder")
    return cluster


def test_compute_map_fits_the_sample_and_places_every_other_point(tmp_path):
    ws = Workspace.create(tmp_path / "ws")
    centres = np.eye(16)[:3] * 3.0  # three well separated clusters
    truth = {name: _clustered(ws, name, role, n, centres, seed)
             for name, role, n, seed in (("a", "test", 40, 1), ("b", "test", 30, 2), ("big", "train", 600, 3))}
    info = mapping.compute_map(ws, sample=120, seed=0, umap_params=SMALL)
    assert info.config["sample_sizes"] == {"a": 40, "b": 30, "big": 50}
    coords = info.coords()
    assert list(coords.columns) == mapping.COLUMNS and len(coords) == 670 == info.config["points"]
    for name, cluster in truth.items():  # every point placed once, in row order, the sample as allocated
        part = coords[coords["dataset"] == name]
        assert part["row"].tolist() == list(range(len(cluster)))
        assert part["key"].tolist() == [f"{name}{j}" for j in range(len(cluster))]
        assert int(part["fitted"].sum()) == info.config["sample_sizes"][name]
    fitted = coords[coords["fitted"]]
    labels = np.concatenate([truth[d][r] for d, r in [(d, coords.loc[coords["dataset"] == d, "row"].to_numpy())
                                                       for d in truth]])
    centroid = np.stack([fitted[["x", "y"]].to_numpy()[labels[coords["fitted"].to_numpy()] == c].mean(0)
                         for c in range(3)])
    placed = coords[~coords["fitted"]]
    nearest = np.argmin(((placed[["x", "y"]].to_numpy()[:, None] - centroid[None]) ** 2).sum(-1), axis=1)
    assert np.mean(nearest == labels[~coords["fitted"].to_numpy()]) > 0.98  # transform lands in the right cluster
    again = mapping.compute_map(ws, sample=120, seed=0, umap_params=SMALL)  # identical and fresh: reused
    assert again.config["created"] == info.config["created"]
    assert (info.folder / "coords.parquet").stat().st_mtime_ns == (again.folder / "coords.parquet").stat().st_mtime_ns
    _clustered(ws, "b", "test", 30, centres, 9)  # re-embedding an input makes the map stale
    assert mapping.load_map(ws).stale_reasons() == ["embeddings of 'b' changed"]


def test_missing_umap_learn_says_what_to_install(tmp_path, monkeypatch):
    ws = Workspace.create(tmp_path / "ws")
    _clustered(ws, "a", "test", 10, np.eye(8)[:2], 0)
    monkeypatch.setitem(sys.modules, "umap", None)
    with pytest.raises(ClipsimError, match="pip install umap-learn"):
        mapping.compute_map(ws, sample=10)
    assert mapping.list_maps(ws) == []


def test_nothing_to_map_names_the_command(tmp_path):
    ws = Workspace.create(tmp_path / "ws")
    with pytest.raises(ClipsimError, match="clipsim embed"):
        mapping.compute_map(ws)
    with pytest.raises(ClipsimError, match="clipsim map"):
        mapping.load_map(ws, "default")


# ----- the job on the demo workspace -----------------------------------------------------------------------
def test_umap_job_writes_coordinates_and_config(mapped_ws):
    ws = mapped_ws
    [job] = jobs.list_jobs(ws, kind="umap")
    assert job.state == "done" and job.result["map"] == "default"
    info = mapping.load_map(ws)
    counts = {n: ws.embeddings(n).count for n in mapping.embedded_datasets(ws)}
    cfg = info.config
    assert cfg["datasets"] == list(counts) and cfg["counts"] == counts and cfg["seed"] == 0
    assert cfg["sample_sizes"] == mapping.allocate_sample(counts, 350) and cfg["umap"]["n_neighbors"] == 10
    assert cfg["inputs"] == {n: ws.embeddings(n).fingerprint() for n in counts} and not info.stale
    coords = info.coords()
    assert len(coords) == sum(counts.values()) == job.result["points"]
    assert coords.groupby("dataset", sort=False)["fitted"].sum().to_dict() == cfg["sample_sizes"]
    assert np.isfinite(coords[["x", "y"]].to_numpy()).all()
    assert jobs.read_progress(job)["done"] == len(coords)


def _spec(at: AppTest) -> dict:
    return json.loads(at.get("plotly_chart")[0].proto.spec)


def _length(values) -> int:
    if isinstance(values, dict):  # plotly's typed-array encoding
        return len(base64.b64decode(values["bdata"])) // np.dtype(values["dtype"]).itemsize
    return len(values)


def _page(ws: Workspace, monkeypatch, **params) -> AppTest:
    monkeypatch.setenv("CLIPSIM_WORKSPACE", str(ws.root))
    monkeypatch.delenv("CLIPSIM_READ_ONLY", raising=False)
    at = AppTest.from_file(str(ROOT / "pages" / "map.py"), default_timeout=TIMEOUT)
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()


def test_map_page_draws_the_stored_map_without_refitting(mapped_ws, monkeypatch):
    ws = mapped_ws
    info = mapping.load_map(ws)
    stamps = [(info.folder / f).stat().st_mtime_ns for f in ("coords.parquet", "config.json")]
    monkeypatch.setitem(sys.modules, "umap", None)  # a refit would fail loudly
    at = _page(ws, monkeypatch)
    assert not at.exception
    spec = _spec(at)
    total = info.config["points"]
    assert sum(_length(t["x"]) for t in spec["data"]) == total
    assert {t["type"] for t in spec["data"]} == {"scattergl"}
    names = [t["name"] for t in spec["data"]]  # colour by dataset: one trace each, train sets drawn first
    assert names == [n for n in info.datasets if ws.dataset(n).role == "train"] + \
        [n for n in info.datasets if ws.dataset(n).role == "test"]
    assert any(f"Showing all {total:,} points" in c.value for c in at.caption)

    at.button_group(key="colour").set_value("class").run()
    names = {t["name"] for t in _spec(at)["data"]}
    assert set(ws.dataset("val").classes) <= names
    at.button_group(key="colour").set_value("domain").run()
    assert {t["name"] for t in _spec(at)["data"]} == {"photo", "sketch", "rendition", "hard"}
    at.button_group(key="colour").set_value("similarity").run()
    spec = _spec(at)
    assert {t["name"] for t in spec["data"]} == {"train: max_t cos(x, t)", "test: s_web(t)"}
    assert "coloraxis" in spec["layout"]
    assert [(info.folder / f).stat().st_mtime_ns for f in ("coords.parquet", "config.json")] == stamps


def test_map_colours_points_removed_by_a_manifest(mapped_ws, monkeypatch):
    ws = mapped_ws
    stats = prune.PruneStats.load(ws, "web", ws.dataset_names("test"))
    removed = prune.rule_threshold(stats, 0.9)
    prune.save_manifest(ws, "t09", "threshold", {"tau": 0.9}, stats, removed)
    at = _page(ws, monkeypatch, colour="Manifest", manifest="t09")
    assert not at.exception
    counts: dict[str, int] = {}
    for trace in _spec(at)["data"]:  # a category is a train trace and a test trace
        counts[trace["name"]] = counts.get(trace["name"], 0) + _length(trace["x"])
    others = sum(ws.embeddings(n).count for n in mapping.embedded_datasets(ws) if n != "web")
    assert counts == {"not pruned": others, "removed": int(removed.sum()), "kept": int((~removed).sum())}


def test_map_selection_in_the_link_shows_its_gallery(mapped_ws, monkeypatch):
    ws = mapped_ws
    coords = mapping.load_map(ws).coords()
    val = coords[coords["dataset"] == "val"]
    x0, x1 = np.percentile(val["x"], [20, 60])
    y0, y1 = float(coords["y"].min()) - 1, float(coords["y"].max()) + 1
    inside = coords[(coords["x"] >= round(x0, 4)) & (coords["x"] <= round(x1, 4)) & (coords["y"] >= y0)]
    at = _page(ws, monkeypatch, sel=f"box:{x0:.4f},{x1:.4f},{y0:.4f},{y1:.4f}")
    assert not at.exception
    assert any(f"**{len(inside):,}** points selected" in m.value for m in at.markdown)
    page = "".join(h.proto.body for h in at.html)
    keys = set(inside.loc[inside["dataset"] == "val", "key"])
    shown = set(pd.Series(page.split('data-testid="cs-row" data-key="')[1:]).str.split('"').str[0])
    assert shown & keys and 'data-train="web"' in page  # test rows beside their web neighbours
    at = _page(ws, monkeypatch, sel="box:1,2,nope")  # an invalid selection is dropped
    assert not at.exception and "sel" not in at.query_params


def test_map_page_without_a_map_offers_the_job(demo_ws, tmp_path, monkeypatch):
    root = tmp_path / "ws"
    shutil.copytree(demo_ws.root, root, ignore=shutil.ignore_patterns("maps", "jobs.sqlite*", "runs"))
    ws = Workspace.open(root)
    at = _page(ws, monkeypatch)
    assert not at.exception and any("No map yet" in i.value for i in at.info)
    assert at.button(key="map_compute_go").label == "Compute map"
    monkeypatch.setitem(sys.modules, "umap", None)  # umap-learn missing: say what to install, offer no button
    at = AppTest.from_file(str(ROOT / "pages" / "map.py"), default_timeout=TIMEOUT).run()
    assert any("pip install umap-learn" in w.value for w in at.warning)
    assert not [b for b in at.button if b.key == "map_compute_go"]
    monkeypatch.setenv("CLIPSIM_READ_ONLY", "1")
    at = AppTest.from_file(str(ROOT / "pages" / "map.py"), default_timeout=TIMEOUT).run()
    assert not at.exception and not [b for b in at.button if b.key == "map_compute_go"]
    assert any("clipsim map" in c.value for c in at.code)


def test_map_page_without_embeddings_says_embed(tmp_path, monkeypatch):
    ws = Workspace.create(tmp_path / "ws")
    ws.register_dataset("val", "test", tmp_path, "folder")
    at = _page(ws, monkeypatch)
    assert not at.exception and at.info and any("clipsim embed" in c.value for c in at.code)


def test_stale_map_is_marked(mapped_ws, tmp_path, monkeypatch):
    root = tmp_path / "ws"
    shutil.copytree(mapped_ws.root, root)
    ws = Workspace.open(root)
    config = fileio.read_json(ws.path("maps", "default", "config.json"))
    config["inputs"]["val"] = "0" * 16  # as if val was re-embedded since
    fileio.write_json(ws.path("maps", "default", "config.json"), config)
    at = _page(ws, monkeypatch)
    assert not at.exception and any("stale" in w.value and "'val'" in w.value for w in at.warning)
    coords = mapping.load_map(ws).coords()
    subset = coords.iloc[map_view.draw_subset(coords, 100)]  # more points than drawn: a stratified subset
    counts = coords["dataset"].value_counts(sort=False).to_dict()
    assert subset["dataset"].value_counts(sort=False).to_dict() == mapping.allocate_sample(counts, 100)

"""Labels and calibration: the sampler's inclusion probabilities, calibration intervals covering a known truth,
labels simulated from the demo's planted pairs, the SQLite store and CSV exchange, tags and their manifest."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from clipsim import store
from clipsim.cli import main as cli_main
from clipsim.errors import DataError, ReadOnlyError, WorkspaceError
from clipsim.labels import (
    calibrate,
    exchange,
    keyed_pairs,
    label_pair,
    load_population,
    next_pairs,
    read_labels,
    sampler,
    tags,
)
from clipsim.labels.calibration import calibration_table, tau_grid, weighted_proportion
from clipsim.prune.manifest import load_manifest
from clipsim.runs.data import kept_hashes
from clipsim.workspace import Workspace


def world(seed: int, n: int = 600) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(similarity, is-duplicate, permanent random numbers) of a test set: most pairs unrelated, ~12% close, the
    chance of a real duplicate rising steeply around s = 0.86."""
    rng = np.random.default_rng(seed)
    s = np.where(rng.random(n) < 0.12, rng.uniform(0.8, 0.99, n), rng.beta(8, 4, n) * 0.9)
    duplicate = rng.random(n) < 1 / (1 + np.exp(-(s - 0.86) / 0.025))
    return s, duplicate, sampler.permanent_random(f"t{seed}", [f"k{i}" for i in range(n)])


def label_with(s, u, taus: list[float], n: int) -> tuple[np.ndarray, list]:
    """Label n pairs, split over designs centred on `taus`, in the sampler's order: (pi, designs)."""
    labelled, designs = np.zeros(len(s), bool), []
    for tau in taus:
        designs.append(sampler.make_design("t", "web", tau, s))
        labelled[sampler.next_rows(designs[-1], s, u, labelled, n // len(taus))] = True
    return sampler.inclusion_probabilities(designs, s, u, labelled), designs


@pytest.mark.parametrize("taus", [[0.86], [0.8, 0.92]])
def test_calibration_intervals_cover_the_true_precision(taus):
    for seed in range(6):
        s, duplicate, u = world(seed)
        pi, _ = label_with(s, u, taus, 150)
        grid = tau_grid(s)
        table = calibration_table(s, duplicate, pi, grid)
        truth = np.array([duplicate[s > t].mean() for t in grid])
        covered = (table["precision_low"] <= truth + 1e-12) & (truth <= table["precision_high"] + 1e-12)
        assert covered.mean() >= 0.95, (seed, table[~covered])
        recall = np.array([(s[duplicate] > t).mean() for t in grid])
        assert ((table["recall_low"] <= recall + 1e-12) & (recall <= table["recall_high"] + 1e-12)).mean() >= 0.9
        n_above = np.array([(s > t).sum() for t in grid])
        assert (table["n_above"] == n_above).all()
        assert np.allclose(table["estimated_duplicates"], table["precision"] * n_above, equal_nan=True)


def test_priority_sampling_weights_are_unbiased():
    """E[1{i sampled} / pi_i] = 1 for every pair (Duffield, Lund & Thorup), over fresh random numbers."""
    s, _, _ = world(0, n=300)
    design = sampler.make_design("t", "web", 0.86, s)
    rng = np.random.default_rng(1)
    total = np.zeros(len(s))
    reps = 3000
    for _ in range(reps):
        u = rng.random(len(s))
        labelled = np.zeros(len(s), bool)
        labelled[sampler.next_rows(design, s, u, labelled, 60)] = True
        pi = sampler.inclusion_probabilities([design], s, u, labelled)
        total += np.where(pi > 0, 1 / np.where(pi > 0, pi, 1), 0)
    assert abs(total.sum() / reps - len(s)) < 0.02 * len(s)  # the estimated population size
    near = np.abs(s - 0.86) < 0.02
    assert total[near].mean() / reps == pytest.approx(1.0, abs=0.1)


def test_weighted_proportion_edge_cases():
    exact = weighted_proportion(np.array([True, False, True]), np.array([1.0, 1.0, 1.0]), domain_size=3)
    assert (exact.estimate, exact.low, exact.high) == (2 / 3, 2 / 3, 2 / 3)
    all_dup = weighted_proportion(np.ones(5, bool), np.full(5, 0.2), domain_size=25)
    assert all_dup.estimate == 1.0 and 0.4 < all_dup.low < 1.0 and all_dup.high == 1.0  # not a point at p = 1
    unknown = weighted_proportion(np.ones(3, bool), np.ones(3), domain_size=5)
    assert (unknown.low, unknown.high) == (0.6, 1.0)  # two unlabelled pairs could be anything
    assert np.isnan(weighted_proportion(np.zeros(0, bool), np.zeros(0)).estimate)


@pytest.fixture
def ws(demo_ws, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(demo_ws.root, root, ignore=shutil.ignore_patterns("runs", "results", "labels", "jobs.sqlite*",
                                                                      "manifests", "train_data"))
    return Workspace.open(root)


def test_simulated_labels_calibrate_against_the_planted_truth(ws, capsys):
    args = ["--workspace", str(ws.root), "--test", "sketch", "--train", "web"]
    assert cli_main(["label", *args, "--simulate-from-planted", "--n", "40"]) == 0
    assert "SIMULATED 40 labels" in capsys.readouterr().out
    stored = read_labels(ws, "sketch", "web")
    assert len(stored) == 40 and stored["simulated"].all() and (stored["inclusion"] > 0).all()
    assert cli_main(["calibrate", *args, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert set(rows[0]) >= {"tau", "precision", "precision_low", "precision_high", "recall", "recall_low",
                            "recall_high", "n_labelled", "estimated_duplicates"}
    pairs = keyed_pairs(ws, load_population(ws, "sketch", "web"))
    truth = exchange.planted_labels(ws, "sketch", pairs).isin(["duplicate", "near-duplicate"]).to_numpy()
    s = pairs["similarity"].to_numpy()
    covered = [r["precision_low"] - 1e-12 <= truth[s > r["tau"]].mean() <= r["precision_high"] + 1e-12
               for r in rows if r["n_labelled"]]
    assert len(covered) > 10 and np.mean(covered) >= 0.95
    assert cli_main(["label", *args, "--simulate-from-planted", "--n", "0"]) == 2  # bad input: exit 2, no traceback


def test_population_reads_train_keys_only_for_proposed_pairs_and_once(ws, monkeypatch):
    """At web scale a train key costs a metadata row-group read: the population holds none, a proposal reads its own,
    and a key read once is not read again while the web set is unchanged (before, every test image's neighbour was
    read at every population load, i.e. after every label)."""
    nearest = ws.neighbours("val", "web", k=1).query("rank == 1")
    asked = []
    metadata_at = store.EmbeddingSet.metadata_at
    monkeypatch.setattr(store.EmbeddingSet, "metadata_at",
                        lambda self, ids, columns=None: asked.append(len(ids)) or metadata_at(self, ids, columns))
    population = load_population(ws, "val", "web")
    n = len(ws.keys("val"))
    assert "train_key" not in population.pairs and asked == [] and len(population.pairs) == n
    first = next_pairs(ws, "val", "web", 0.9, 2, population=population)
    assert asked == [2]
    for row in first.itertuples():
        label_pair(ws, "val", "web", row.test_key, row.train_key, "duplicate", "ann", row.tau)
    label_pair(ws, "val", "web", first["test_key"].iloc[0], "not-its-neighbour", "different", "ann")  # replaces nothing
    after = load_population(ws, "val", "web")
    assert after.other == 1 and after.pairs["label"].notna().sum() == 2 and asked == [2]
    keyed = keyed_pairs(ws, after)
    assert keyed["test_key"].tolist() == nearest["test_key"].tolist()
    unread = len(set(after.pairs["train_row"]) - set(first["train_row"]))  # distinct rows: neighbours repeat
    assert keyed["train_key"].tolist() == nearest["train_key"].tolist() and asked == [2, unread]


def test_labelling_flow_store_and_csv_round_trip(ws, tmp_path):
    tau = 0.9
    first = next_pairs(ws, "val", "web", tau, 3)
    assert len(first) == 3
    for row, label in zip(first.itertuples(), ["duplicate", "different", "same concept"]):
        label_pair(ws, "val", "web", row.test_key, row.train_key, label, "ann", row.tau)
    assert next_pairs(ws, "val", "web", tau, 1)["test_key"].iloc[0] not in set(first["test_key"])
    result = calibrate(ws, "val", "web")
    assert (result.labels, result.used, result.outside) == (3, 3, 0)
    assert result.table["n_labelled"].max() == 3
    pair = keyed_pairs(ws, load_population(ws, "val", "web"), [0]).iloc[0]  # a hand-picked pair outside the sampler's order
    label_pair(ws, "val", "web", pair["test_key"], pair["train_key"], "different", "ann")
    later = calibrate(ws, "val", "web")
    assert later.labels == 4 and later.used + later.outside == 4
    with pytest.raises(WorkspaceError, match="not one of"):
        label_pair(ws, "val", "web", pair["test_key"], pair["train_key"], "maybe", "ann")

    out = tmp_path / "labels.csv"
    assert exchange.export_labels_csv(ws, out) == 4
    other = Workspace.open(shutil.copytree(ws.root, tmp_path / "other", ignore=shutil.ignore_patterns("labels")))
    assert exchange.import_labels_csv(other, out) == 4
    mine, theirs = (read_labels(w).sort_values("test_key", ignore_index=True) for w in (ws, other))
    columns = ["test", "test_key", "train", "train_key", "label", "labeller", "model"]
    assert mine[columns].equals(theirs[columns]) and np.allclose(mine["created"], theirs["created"], atol=1)
    bad = pd.read_csv(out).assign(label=["duplicate", "dup", "different", "different"])
    bad.to_csv(tmp_path / "bad.csv", index=False)
    fresh = Workspace.open(shutil.copytree(ws.root, tmp_path / "fresh", ignore=shutil.ignore_patterns("labels")))
    with pytest.raises(DataError, match="row 3"):
        exchange.import_labels_csv(fresh, tmp_path / "bad.csv")
    assert read_labels(fresh).empty  # nothing written


def test_tags_filter_export_and_manifest(ws, tmp_path, monkeypatch):
    web_keys = ws.keys("web").astype(str)[:25]
    tags.add_tags(ws, "web", web_keys, "near-dup")
    tags.add_tags(ws, "sketch", ws.keys("sketch").astype(str)[:3], "near-dup")
    assert tags.tag_names(ws) == ["near-dup"]
    keys = ws.keys("sketch")
    assert list(tags.keep_tagged(keys, np.arange(10)[::-1], tags.tagged_keys(ws, "near-dup", "sketch"))) == [2, 1, 0]
    assert tags.export_tags(ws, "near-dup", tmp_path / "t.parquet") == 28
    assert len(pd.read_parquet(tmp_path / "t.parquet")) == 28
    assert tags.export_tags(ws, "near-dup", tmp_path / "t.csv") == 28
    assert cli_main(["tags", "export", "--workspace", str(ws.root), "--tag", "near-dup", "--format", "manifest"]) == 0
    manifest = load_manifest(ws, "tag-near-dup")
    assert manifest.removed_count == 25 and manifest.kept_count == len(ws.keys("web")) - 25
    assert set(manifest.removed_keys()) == set(web_keys) and not manifest.stale
    assert len(kept_hashes(ws, "tag-near-dup", "web")) == manifest.kept_count  # training reads it like any manifest
    with pytest.raises(WorkspaceError, match="tag"):
        tags.add_tags(ws, "web", web_keys, "bad tag!")
    monkeypatch.setenv("CLIPSIM_READ_ONLY", "1")
    with pytest.raises(ReadOnlyError):
        tags.add_tags(ws, "web", web_keys, "x")


def test_similarity_page_labels_the_proposed_pair_and_redraws_precision(ws, monkeypatch):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CLIPSIM_WORKSPACE", str(ws.root))
    monkeypatch.delenv("CLIPSIM_READ_ONLY", raising=False)
    page = str(Path(__file__).resolve().parents[1] / "pages" / "similarity.py")
    at = AppTest.from_file(page, default_timeout=120)
    at.query_params.update(tau="0.95", label_test="sketch")
    at.run()
    assert not at.exception and read_labels(ws).empty  # looking labels nothing and writes nothing
    proposed = next_pairs(ws, "sketch", "web", 0.95, 2)
    at.button(key="sim_lab_duplicate").click().run()
    at.button(key="sim_lab_different").click().run()
    stored = read_labels(ws, "sketch", "web")
    assert list(stored["test_key"]) == list(proposed["test_key"]) and list(stored["label"]) == ["duplicate", "different"]
    assert next(m.value for m in at.metric if m.label == "Labelled pairs used") == "2"

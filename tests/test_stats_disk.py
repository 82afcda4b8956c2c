"""Sorted statistics on disk (clipsim.sorted_stats, clipsim.prune.stored) against the in-memory path: bit-identical
counts, cuts and masks on random data with ties at every cut, on a searched workspace and on the demo; the
combination of test sets stored by a job, with exact fallbacks and bounds before it; folders trusted only when
committed and current; the app_scale benchmark at a tiny size."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from clipsim import Workspace, fileio, sorted_stats
from clipsim.cli import main
from clipsim.prune import PruneStats, RuleSpec, apply_rule, rule_far, rule_near, rule_similarity_gap, rule_threshold
from clipsim.prune import columns as columns_module
from clipsim.prune import stats as stats_module
from clipsim.prune.columns import Column, DiskColumn, cut_for_fraction, keep_cut
from clipsim.prune.stats import CombinedPending, floor32
from clipsim.prune.stored import combined_folder, ensure_search_stats, open_combined, open_search_stats
from tests.helpers import load_benchmark, searched_workspace, unit16

TESTS = ["ta", "tb", "tc"]


def tied(rng: np.random.Generator, n: int) -> np.ndarray:
    """float32 values in few tie groups (both zeros among them) and some distinct ones."""
    levels = np.array([-0.5, -0.0, 0.0, 0.25, 0.25000003, 0.7, 0.9], dtype=np.float32)
    out = levels[rng.integers(0, len(levels), n)]
    loose = rng.random(n) < 0.3
    out[loose] = rng.uniform(-1, 1, loose.sum()).astype(np.float32)
    return out


def stable_keep(v: np.ndarray, keep: int, lowest: bool) -> np.ndarray:
    """Brute force near/far: keep the first `keep` by (v, row) or (-v, row); returns `removed`."""
    order = np.lexsort((np.arange(len(v)), v if lowest else -v))
    removed = np.ones(len(v), dtype=bool)
    removed[order[:keep]] = False
    return removed


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 7 rows, so every streamed pass crosses chunk boundaries."""
    monkeypatch.setattr(sorted_stats, "CHUNK_ROWS", 7)


def test_sort_with_order_is_a_stable_sort(small_chunks):
    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 50, 1001):
        v = tied(rng, n)
        s, order = sorted_stats.sort_with_order(v)
        assert order.dtype == np.uint32 and np.array_equal(order, np.argsort(v, kind="stable"))
        assert np.array_equal(s, np.sort(v)) and np.array_equal(s, v[order])
    with pytest.raises(ValueError, match="NaN at row 3"):
        sorted_stats.sort_with_order(np.array([0.1, 0.2, 0.3, np.nan], dtype=np.float32))


def test_disk_column_answers_like_memory_at_every_cut(tmp_path, small_chunks):
    rng = np.random.default_rng(1)
    n = 301
    v = tied(rng, n)
    sorted_stats.write_folder(tmp_path / "s", {"made": "here"}, {"max_sim": lambda: iter(np.array_split(v, 5))}, n)
    disk, mem = DiskColumn(tmp_path / "s", "max_sim"), Column(v)
    assert disk.on_disk and disk.n == n and np.array_equal(disk.values, v) and np.array_equal(disk.sorted, mem.sorted)
    values = np.unique(v)
    probes = np.concatenate([values, np.nextafter(values, np.float32(2)), np.nextafter(values, np.float32(-2)),
                             np.array([-np.inf, np.inf], np.float32)])
    for window in (columns_module.SEARCH_WINDOW, 1, 4):  # the binary search by reads, down to single values
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(columns_module, "SEARCH_WINDOW", window)
            for value in probes:  # every stored value: the cut falls on a tie group
                assert disk.count_above(value) == mem.count_above(value) == int((v > value).sum())
    rows = np.arange(n)
    for count in range(n + 1):
        for lowest in (True, False):
            cut = keep_cut(disk, "m", count, lowest)
            assert cut == keep_cut(mem, "m", count, lowest)
            assert np.array_equal(cut.removed(v, rows), stable_keep(v, count, lowest))
    for fraction in np.linspace(0, 1, 41):
        assert cut_for_fraction(disk, fraction) == cut_for_fraction(mem, fraction)
    picks = rng.integers(0, n, (13, 5))
    assert np.array_equal(disk.at(picks), v[picks])
    answer = disk.at(picks)
    answer[:] = -1  # a kept answer is handed out as a copy
    assert np.array_equal(disk.at(picks), v[picks]) and np.array_equal(disk.at(picks[:3]), v[picks[:3]])
    with pytest.raises(IndexError):
        disk.at(np.array([0, n]))
    assert [(lo, c.tolist()) for lo, c in disk.chunks()] == [(lo, c.tolist()) for lo, c in mem.chunks()]
    edges, above = disk.hist()
    assert np.array_equal(above, [(v > e).sum() for e in edges]) and np.array_equal(above, mem.hist()[1])
    above_rows = np.flatnonzero(v > np.float32(0.25))  # rows ascending; then by value, stably
    assert np.array_equal(disk.rows_above(np.float32(0.25)), above_rows[np.argsort(v[above_rows], kind="stable")])


def _sets(rng: np.random.Generator, dim: int = 16) -> dict[str, np.ndarray]:
    """Three test sets, a reference with near-copies, a web set with copies of test and reference rows and 150 rows
    stored twice (equal statistics: ties at any cut)."""
    sets = {t: unit16(rng.standard_normal((40, dim))) for t in TESTS}
    tests = np.concatenate(list(sets.values()))
    ref = unit16(np.concatenate([tests[:50] + 0.3 * rng.standard_normal((50, dim)), rng.standard_normal((50, dim))]))
    web = np.concatenate([unit16(rng.standard_normal((400, dim))), ref[:30], tests[::3],
                          unit16(tests[rng.choice(len(tests), 60)] + 0.4 * rng.standard_normal((60, dim)))])
    web = np.concatenate([web, web[rng.choice(len(web), 150, replace=False)]])
    return {**sets, "curated": ref, "web": web[rng.permutation(len(web))]}


@pytest.fixture(scope="module")
def disk_ws(tmp_path_factory) -> Workspace:
    """A searched workspace (web in 3 shards): its searches stored their sorted statistics and the combination."""
    return searched_workspace(tmp_path_factory.mktemp("disk") / "ws", _sets(np.random.default_rng(3)), TESTS, 250, 100)


@pytest.fixture
def ws_copy(disk_ws, tmp_path) -> Workspace:
    shutil.copytree(disk_ws.root, tmp_path / "ws")  # modification times kept: every fingerprint still matches
    return Workspace.open(tmp_path / "ws")


def in_memory(ws: Workspace, tests: list[str], reference: str) -> PruneStats:
    """Today's path: the searches' per-shard statistics, read and sorted in memory."""
    res = {t: ws.search_result(t, "web") for t in tests}
    return PruneStats.from_arrays({t: r.train_stat("max_sim") for t, r in res.items()},
                                  {t: r.train_stat(f"margin/{reference}") for t, r in res.items()}, reference=reference)


def tie_keeps(stats: PruneStats, tests) -> list[int]:
    """Keep counts whose near and far cuts fall inside a tie group of the selection's combined maximum."""
    m = stats.select(tests).column("m").sorted
    starts = np.flatnonzero(np.diff(m) == 0)
    n = len(m)
    return sorted({0, 1, n // 2, n} | {int(i) + 1 for i in starts[:: max(1, len(starts) // 4)]}
                  | {n - int(i) - 1 for i in starts[:: max(1, len(starts) // 4)]})


@pytest.mark.parametrize("which", ["searched", "demo"])
def test_stored_statistics_equal_in_memory_bit_for_bit(which, request, small_chunks):
    ws = request.getfixturevalue("disk_ws" if which == "searched" else "demo_ws")
    tests, ref = ws.dataset_names("test"), "curated"
    disk, mem = PruneStats.load(ws, "web", tests, ref), in_memory(ws, tests, ref)
    assert all(disk.column(k, t).on_disk for k in "mg" for t in tests) and disk.column("m").on_disk  # all stored
    assert disk.nbytes == 0 and not any(mem.column(k, t).on_disk for k in "mg" for t in tests)
    for sel in (None, tests[:1], tests[1:3]):
        m = mem.select(sel).column("m").sorted
        for tau in (*m[:: max(1, len(m) // 7)], float(m[-1]), 0.5 + 1e-9, -1.0):  # stored values: ties at the cut
            assert np.array_equal(rule_threshold(disk, tau, sel), rule_threshold(mem, tau, sel))
            assert disk.select(sel).combined_count("m", tau)[0] == mem.select(sel).column("m").count_above(floor32(tau))
        g = mem.select(sel).column("g").sorted
        for delta in (0.0, float(g[len(g) // 2]), float(g[-3]), -0.05):
            assert np.array_equal(rule_similarity_gap(disk, delta, sel), rule_similarity_gap(mem, delta, sel))
        for keep in [*tie_keeps(mem, sel), 0.5]:
            assert np.array_equal(rule_near(disk, keep, sel), rule_near(mem, keep, sel))
            assert np.array_equal(rule_far(disk, keep, sel), rule_far(mem, keep, sel))
    specs = [RuleSpec("threshold", remove_fraction=0.1), RuleSpec("similarity-gap", tests=tuple(tests[1:3])),
             RuleSpec("near", keep=tie_keeps(mem, None)[1]), RuleSpec("far", keep=0.25, tests=tuple(tests[:1])),
             RuleSpec("threshold", tau=0.8), RuleSpec("similarity-gap", remove_fraction=0.05)]
    rows = np.random.default_rng(0).integers(0, disk.n, (50, 4))
    for spec in specs:
        a, b = apply_rule(disk, spec), apply_rule(mem, spec)
        assert a.params == b.params and a.cut == b.cut
        pd.testing.assert_frame_equal(a.counts(), b.counts())
        assert np.array_equal(a.removed, b.removed) and np.array_equal(a.removed_at(rows), b.removed[rows])


def test_combination_is_pending_on_pages_then_stored_by_a_job(ws_copy, monkeypatch):
    from clipsim import jobs

    ws = ws_copy
    shutil.rmtree(ws.path("search", "web", sorted_stats.COMBINED))
    page, mem = PruneStats.load(ws, "web", TESTS, "curated", combined="stored"), in_memory(ws, TESTS, "curated")
    assert not page.combined_ready("m") and not page.combined_ready("g")
    with pytest.raises(CombinedPending, match=r"python -m clipsim sort-stats .* --tests ta,tb,tc"):
        page.count_threshold(0.5)
    tau = float(np.quantile(mem.column("m").sorted, 0.8))
    truth = mem.count_threshold(tau)
    assert page.combined_count("m", tau) == (truth, truth)  # exact from the stored row orders (few rows above)
    monkeypatch.setattr(stats_module, "UNION_ROWS", 0)  # as if too many rows lay above: bounds only
    low, high = page.combined_count("m", tau)
    assert low <= truth <= high and low < high
    table = apply_rule(page, RuleSpec("threshold", tau=tau)).counts()
    assert pd.isna(table["removed"].iloc[-1]) and table.attrs["bounds"] == (low, high)
    assert table["removed"].iloc[:-1].tolist() == [mem.count_threshold(tau, t) for t in TESTS]
    gap = apply_rule(page, RuleSpec("similarity-gap"))
    rows = np.arange(page.n).reshape(-1, 5)
    assert np.array_equal(gap.removed_at(rows), rule_similarity_gap(mem, 0.0)[rows])  # per test set: no combination
    near = apply_rule(page, RuleSpec("near", keep=100))
    assert near.counts()["removed"].iloc[-1] == page.n - 100
    with pytest.raises(CombinedPending):
        near.removed  # noqa: B018  (its cut needs the combination's sorted order)
    job = jobs.wait(ws, jobs.launch(ws, "sort-stats", {"web": "web", "tests": TESTS, "reference": "curated"}).id, 60)
    assert job.state == "done" and job.result["combined_written"] and job.result["written"] == []
    assert jobs.lane_of(ws, job) == "light"
    assert page.combined_ready("m") and page.column("m").on_disk and page.column("g").on_disk
    assert page.count_threshold(tau) == truth and np.array_equal(near.removed, rule_near(mem, 100))
    assert main(["sort-stats", "--workspace", str(ws.root), "--tests", "tc,ta"]) == 0
    assert combined_folder(ws, "web", ["ta", "tc"]).name == "ta+tc"
    sub = page.subset(["tc", "ta"])
    assert sub.combined_ready("g") and sub.count_gap(0.0) == mem.subset(["ta", "tc"]).count_gap(0.0)


def test_readers_trust_only_committed_current_folders(ws_copy):
    ws = ws_copy
    res = ws.search_result("ta", "web")
    folder = res.folder / sorted_stats.SORTED
    before = {p.name: p.read_bytes() for p in folder.glob("*.npy")}
    config = fileio.read_json(folder / "config.json")
    fileio.write_json(folder / "config.json", {**config, "search": "another search"})
    leftover = res.folder / ".sorted.killed.tmp"  # what a writer killed mid-way leaves
    leftover.mkdir()
    assert open_search_stats(res, ["max_sim"]) is None
    loaded = PruneStats.load(ws, "web", ["ta"], "curated")
    assert not loaded.column("m", "ta").on_disk  # read from the search's shards instead: the same numbers
    assert loaded.count_threshold(0.3) == in_memory(ws, ["ta"], "curated").count_threshold(0.3)
    assert ensure_search_stats(ws, "web", "ta", ["max_sim", "margin/curated"]) and not leftover.exists()
    assert {p.name: p.read_bytes() for p in folder.glob("*.npy")} == before  # a re-run writes the same bits
    assert not ensure_search_stats(ws, "web", "ta", ["max_sim", "margin/curated"])  # current: kept
    fps = {t: ws.search_result(t, "web").fingerprint for t in TESTS}
    assert open_combined(ws, "web", fps, "max_sim") is not None
    assert open_combined(ws, "web", {**fps, "tb": "changed"}, "max_sim") is None
    assert open_combined(ws, "web", fps, "margin/other") is None


def test_app_scale_benchmark_runs_small(tmp_path):
    report = load_benchmark("app_scale").main(["--n", "30000,60000", "--tests", "2", "--test-rows", "200",
                                               "--shard-rows", "20000", "--changes", "2", "--dir", str(tmp_path)])
    runs = report["runs"]
    assert [r["n"] for r in runs] == [30000, 60000] and all(r["pages_exact"] for r in runs)
    assert all(r[a]["peak_rss_mb"] > 0 and r[a]["change_ms"]["p99"] > 0 and r[a]["label_ms"]["p50"] > 0
               for r in runs for a in ("app", "app_first"))
    assert set(report["projection"]["figures"]) >= {"similarity_open_s", "peak_rss_mb", "change_ms_p99"}
    assert list(tmp_path.iterdir()) == []  # cleaned up

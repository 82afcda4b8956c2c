"""Pruning rules against brute force (random embeddings with planted ties, and the demo), counting queries, the
post-pruning similarity, manifests (files, refusal, atomicity, staleness, read-only) and the prune CLI."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from clipsim import Workspace, fileio, store
from clipsim.cli import main
from clipsim.errors import ReadOnlyError, WorkspaceError
from clipsim.prune import (
    PruneStats,
    RuleSpec,
    apply_rule,
    default_name,
    exact_post_prune_nn_similarity,
    list_manifests,
    load_manifest,
    post_prune_nn_similarity,
    rule_far,
    rule_near,
    rule_random,
    rule_similarity_gap,
    rule_stats,
    rule_threshold,
    save_manifest,
)
from clipsim.search import search
from clipsim.search.exact import brute_force
from tests.helpers import searched_workspace, unit16

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny blocks: see conftest.one_thread

TESTS = ["ta", "tb", "tc"]


def make_sets(rng: np.random.Generator, dim: int = 16) -> dict[str, np.ndarray]:
    """Test sets, a reference with near-copies of some test images, and a web set planted with ties.

    web holds exact copies of reference rows (margin exactly 0 for the test image they are nearest to), exact
    copies of test rows, noisy copies, and rows that appear twice (equal scores at any threshold or cut).
    """
    sets = {t: unit16(rng.standard_normal((40, dim))) for t in TESTS}
    tests = np.concatenate([sets[t] for t in TESTS])
    ref = np.concatenate([unit16(tests[rng.choice(len(tests), 60, replace=False)] + 0.3 * rng.standard_normal((60, dim))),
                          unit16(rng.standard_normal((60, dim)))])
    web = [unit16(rng.standard_normal((380, dim))), ref[:40], tests[rng.choice(len(tests), 20, replace=False)],
           unit16(tests[rng.choice(len(tests), 60)] + 0.4 * rng.standard_normal((60, dim)))]
    web = np.concatenate(web)
    web = np.concatenate([web, web[rng.choice(len(web), 100, replace=False)]])  # 100 rows twice
    return {**sets, "curated": ref, "web": web[rng.permutation(len(web))]}


@pytest.fixture(scope="module")
def rand_ws(tmp_path_factory) -> Workspace:
    """A workspace of random embeddings (web 600 rows in 2 shards), searched with margins against 'curated'."""
    return searched_workspace(tmp_path_factory.mktemp("prune") / "ws", make_sets(np.random.default_rng(7)), TESTS, 300, 128)


@pytest.fixture
def ws_copy(rand_ws, tmp_path) -> Workspace:
    """A private copy of rand_ws (modification times kept, so its searches stay fresh) for tests that change it."""
    shutil.copytree(rand_ws.root, tmp_path / "ws")
    return Workspace.open(tmp_path / "ws")


def brute(ws: Workspace, web: str, tests: list[str], ref: str) -> dict:
    """Literal statistics: c (n_t, n_web) = float32(Q64 @ X64.T), s_R, m_T = max_t c, g_T = max_t f32(c - s_R)."""
    x = ws.embeddings(web).all()
    out = {}
    for t in tests:
        q = ws.embeddings(t).all()
        c = brute_force(q, x)
        s_ref = brute_force(q, ws.embeddings(ref).all()).max(axis=1)
        g = (c.astype(np.float64) - s_ref.astype(np.float64)[:, None]).astype(np.float32)
        out[t] = {"c": c, "s_ref": s_ref, "m": c.max(axis=0), "g": g.max(axis=0)}
    return out


@pytest.fixture(scope="module")
def rand_brute(rand_ws):
    return brute(rand_ws, "web", TESTS, "curated")


def stable_keep(m: np.ndarray, keep: int, lowest: bool) -> np.ndarray:
    """Brute-force near/far: stable sort on (m, row) or (-m, row), keep the first `keep`; returns `removed`."""
    rows = np.arange(len(m))
    order = np.lexsort((rows, m if lowest else -m))
    removed = np.ones(len(m), dtype=bool)
    removed[order[:keep]] = False
    return removed


# ----- statistics and rules vs brute force --------------------------------------------------------------
@pytest.mark.parametrize("which", ["rand", "demo"])
def test_rules_equal_brute_force(which, request):
    ws = request.getfixturevalue("rand_ws" if which == "rand" else "demo_ws")
    tests = TESTS if which == "rand" else ws.dataset_names("test")
    bf = request.getfixturevalue("rand_brute") if which == "rand" else brute(ws, "web", tests, "curated")
    stats = PruneStats.load(ws, "web", tests, reference="curated")
    for t in tests:
        assert np.array_equal(stats.max_sim(t), bf[t]["m"]) and np.array_equal(stats.margin(t), bf[t]["g"])
    for sel in (None, [tests[0]], tests[1:3]):
        chosen = sel or tests
        m = np.max([bf[t]["m"] for t in chosen], axis=0).astype(np.float64)
        for tau in (float(np.median(m)), float(np.quantile(m, 0.9)), 0.5 + 1e-9, float(m.max()), -1.0):
            assert np.array_equal(rule_threshold(stats, tau, sel), m > tau)
        # the paper's rule, literally: remove x iff some t in the selection has cos(x, t) > s_R(t)
        literal = np.any([(bf[t]["c"] > bf[t]["s_ref"][:, None]).any(axis=0) for t in chosen], axis=0)
        assert np.array_equal(rule_similarity_gap(stats, 0.0, sel), literal)
        for delta in (-0.05, 0.02):
            lit = np.any([((bf[t]["c"].astype(np.float64) - bf[t]["s_ref"][:, None]).astype(np.float32) > delta).any(0)
                          for t in chosen], axis=0)
            assert np.array_equal(rule_similarity_gap(stats, delta, sel), lit)
        for keep in (0, 1, stats.n // 3, 0.5, 1.0):
            count = keep if isinstance(keep, int) else round(keep * stats.n)
            assert np.array_equal(rule_near(stats, keep, sel), stable_keep(m, count, lowest=True))
            assert np.array_equal(rule_far(stats, keep, sel), stable_keep(m, count, lowest=False))


def test_strict_threshold_keeps_a_sample_exactly_at_tau(rand_ws, rand_brute):
    stats = PruneStats.load(rand_ws, "web", TESTS, reference="curated")
    m = np.max([rand_brute[t]["m"] for t in TESTS], axis=0)
    values, counts = np.unique(m, return_counts=True)
    tied = values[(counts >= 2) & (values < values.max())]
    assert len(tied) >= 5  # planted duplicate rows
    for tau in tied[:: max(1, len(tied) // 10)]:
        removed = rule_threshold(stats, float(tau))
        at_tau = m == tau
        assert at_tau.sum() >= 2 and not removed[at_tau].any()  # strict: m == tau is kept
        assert np.array_equal(removed, m > tau)
        assert stats.count_threshold(float(tau)) == removed.sum()
        # one float32 ulp lower removes the tied samples too
        below = float(np.nextafter(tau, np.float32(-1)))
        assert rule_threshold(stats, below)[at_tau].all()
    # tau is compared as a real number: float32(0.1) > 0.1, so a sample at float32(0.1) counts as above 0.1
    one = PruneStats.from_arrays({"t": np.array([0.1, 0.2], np.float32)})
    assert one.count_threshold(0.1) == 2 and one.count_threshold(float(np.float32(0.1))) == 1


def test_planted_zero_margin_is_kept(rand_ws, rand_brute):
    """A web copy of the reference neighbour of t has cos(x, t) == s_R(t) exactly: not removed for delta = 0."""
    stats = PruneStats.load(rand_ws, "web", TESTS, reference="curated")
    g = np.max([rand_brute[t]["g"] for t in TESTS], axis=0)
    zero = g == 0
    assert zero.sum() >= 3
    assert not rule_similarity_gap(stats, 0.0)[zero].any()
    assert rule_similarity_gap(stats, -1e-9)[zero].all()


def test_near_far_split_tie_groups_by_row(rand_ws, rand_brute):
    stats = PruneStats.load(rand_ws, "web", TESTS)
    m = np.max([rand_brute[t]["m"] for t in TESTS], axis=0)
    srt = np.sort(m)
    cuts = np.flatnonzero(srt[:-1] == srt[1:])[:: 7] + 1  # keep counts that split a group of equal scores
    assert len(cuts) >= 5
    for keep in cuts:
        near, far = rule_near(stats, int(keep)), rule_far(stats, int(stats.n - keep))
        assert np.array_equal(near, stable_keep(m, int(keep), lowest=True))
        assert np.array_equal(far, stable_keep(m, int(stats.n - keep), lowest=False))
        tie = np.flatnonzero(m == srt[keep - 1])
        assert near[tie].any() and not near[tie].all() and not near[tie[0]]  # split; the lower row is kept
        assert near.sum() == stats.n - keep and (~far).sum() == stats.n - keep


def test_counts_equal_mask_sums_and_summary(rand_ws):
    stats = PruneStats.load(rand_ws, "web", TESTS, reference="curated")
    rng = np.random.default_rng(1)
    for tau, delta in zip(rng.uniform(0.0, 1.0, 25), rng.uniform(-0.2, 0.2, 25)):
        for t in TESTS:
            assert stats.count_threshold(tau, t) == rule_threshold(stats, tau, [t]).sum()
            assert stats.count_gap(delta, t) == rule_similarity_gap(stats, delta, t).sum()
        assert stats.count_threshold(tau) == rule_threshold(stats, tau).sum()
        assert stats.count_gap(delta) == rule_similarity_gap(stats, delta).sum()
    table = stats.summary("similarity-gap", delta=0.0)
    assert list(table["test"]) == TESTS + ["combined"]
    expected = [rule_similarity_gap(stats, 0.0, t).sum() for t in TESTS] + [rule_similarity_gap(stats, 0.0).sum()]
    assert list(table["removed"]) == expected
    assert (table["removed"] + table["kept"] == stats.n).all()
    assert np.allclose(table["share_of_web"], table["removed"] / stats.n)
    sub = stats.summary("threshold", tau=0.5, tests=["tb"])
    assert list(sub["removed"]) == [stats.count_threshold(0.5, "tb")] * 2
    assert list(stats.summary("far", keep=0.25)["kept"]) == [150] * 4


def test_tau_for_fraction_is_the_closest_achievable_count():
    rng = np.random.default_rng(3)
    m = np.round(rng.uniform(0, 1, 500), 2).astype(np.float32)  # many ties: not every count is achievable
    stats = PruneStats.from_arrays({"t": m}, margins={"t": m - np.float32(0.5)})
    achievable = np.array([(m > v).sum() for v in np.unique(m)] + [len(m)])
    for fraction in np.linspace(0, 1, 41):
        target = round(fraction * len(m))
        tau = stats.tau_for_fraction(fraction)
        got = stats.count_threshold(tau)
        assert got == (m > tau).sum()
        best = np.abs(achievable - target).min()
        assert abs(got - target) == best
        if (achievable == target - best).any() and best:  # equally close on both sides: the smaller count
            assert got == target - best
        delta = stats.delta_for_fraction(fraction)
        assert stats.count_gap(delta) == got
    assert stats.count_threshold(stats.tau_for_fraction(1.0)) == 500 and stats.count_threshold(stats.tau_for_fraction(0.0)) == 0


def test_random_rule_is_seeded_and_sized():
    a, b, c = rule_random(1000, 300, seed=5), rule_random(1000, 300, seed=5), rule_random(1000, 300, seed=6)
    assert (~a).sum() == 300 and np.array_equal(a, b) and not np.array_equal(a, c)
    assert (~rule_random(1000, 0.25, seed=0)).sum() == 250


def test_bad_inputs_raise_clear_errors(rand_ws):
    stats = PruneStats.load(rand_ws, "web", TESTS[:2])
    with pytest.raises(WorkspaceError, match="'tc'.*not in these statistics"):
        rule_threshold(stats, 0.5, ["tc"])
    with pytest.raises(WorkspaceError, match="reference="):
        stats.count_gap(0.0)
    with pytest.raises(WorkspaceError, match="--reference web"):  # the reference search stored no margins
        PruneStats.load(rand_ws, "curated", TESTS, reference="web")
    with pytest.raises(WorkspaceError, match="no dataset 'nope'"):
        PruneStats.load(rand_ws, "web", ["nope"])
    with pytest.raises(WorkspaceError, match="'curated' is a train set"):
        PruneStats.load(rand_ws, "web", ["curated"])
    for keep, message in ((601, r"\[0, 600\]"), (-1, "out of range"), (1.5, r"\(0, 1\]"), (0.0, r"\(0, 1\]")):
        with pytest.raises(ValueError, match=message):
            rule_near(stats, keep)
    with pytest.raises(ValueError, match="NaN"):
        rule_threshold(stats, float("nan"))
    with pytest.raises(ValueError, match="unknown pruning rule"):
        stats.summary("nearest", keep=3)


def test_gap_prunes_sketch_and_rendition_more_than_val(demo_ws):
    stats = PruneStats.load(demo_ws, "web", ["val", "sketch", "rendition"], reference="curated")
    counts = {t: stats.count_gap(0.0, t) for t in stats.tests}
    assert counts["sketch"] > counts["val"] and counts["rendition"] > counts["val"], counts


# ----- post-pruning similarity ---------------------------------------------------------------------------
def test_post_prune_similarity_bounds_and_exact_scan(rand_ws, rand_brute):
    stats = PruneStats.load(rand_ws, "web", TESTS, reference="curated")
    tau = float(np.quantile(stats.max_sim(), 0.7))
    cases = [("threshold", {"tau": tau}, rule_threshold(stats, tau)),
             ("similarity-gap", {"delta": 0.0}, rule_similarity_gap(stats, 0.0)),
             ("similarity-gap", {"delta": 0.03}, rule_similarity_gap(stats, 0.03))]
    for rule, params, removed in cases:
        for t in TESTS:
            truth = rand_brute[t]["c"][:, ~removed].max(axis=1)
            exact = exact_post_prune_nn_similarity(rand_ws, t, "web", removed, block_rows=100)
            assert np.array_equal(exact["s_after"].to_numpy(), truth) and exact["exact"].all()
            assert np.array_equal(exact["s_before"].to_numpy(), rand_brute[t]["c"].max(axis=1))
            assert np.array_equal(rand_brute[t]["c"][np.arange(len(truth)), exact["web_id"]], truth)
            for kw in ({}, {"rule": rule, "params": params, "tests": TESTS}):
                quick = post_prune_nn_similarity(rand_ws, t, "web", removed, **kw)
                ok = quick["exact"].to_numpy()
                assert np.array_equal(quick["s_after"].to_numpy()[ok], truth[ok])
                assert (quick["s_after"].to_numpy()[~ok] >= truth[~ok]).all()  # an upper bound
            assert (~ok).any() or rule == "threshold"
            if rule == "similarity-gap" and params["delta"] == 0:  # afterwards no t is closer to web than to R
                assert (truth <= rand_brute[t]["s_ref"]).all() and (quick["s_after"] <= rand_brute[t]["s_ref"]).all()
            if rule == "threshold":
                assert (quick["s_after"] <= tau).all()


# ----- manifests ------------------------------------------------------------------------------------------
def test_manifest_files_summary_and_refusal(ws_copy):
    stats = PruneStats.load(ws_copy, "web", TESTS, reference="curated")
    removed = rule_similarity_gap(stats, 0.0)
    m = save_manifest(ws_copy, "gap", "similarity-gap", {"delta": 0.0}, stats, removed)
    keys = ws_copy.keys("web")
    assert sorted(p.name for p in m.folder.iterdir()) == ["kept.parquet", "removed.parquet", "summary.json"]
    assert list(m.removed_keys()) == list(keys[removed]) and list(m.kept_keys()) == list(keys[~removed])
    s = json.loads((m.folder / "summary.json").read_text())
    assert (s["rule"], s["web"], s["reference"], s["tests"], s["n"]) == ("similarity-gap", "web", "curated", TESTS, 600)
    assert s["combined"] == {"removed": int(removed.sum()), "kept": int((~removed).sum()), "share": removed.sum() / 600}
    assert s["counts"]["tb"]["removed"] == stats.count_gap(0.0, "tb")
    assert s["inputs"]["search"] == {t: ws_copy.search_result(t, "web").fingerprint for t in TESTS}
    assert s["inputs"]["web_embeddings"] == ws_copy.embeddings("web").fingerprint()
    exact = exact_post_prune_nn_similarity(ws_copy, "tc", "web", removed)
    assert s["post_prune"]["tc"]["median_after"] == pytest.approx(float(exact["s_after"].median()), abs=0)
    assert s["post_prune"]["tc"]["median_after"] <= s["post_prune"]["tc"]["median_reference"]
    assert not m.stale and m.kept_count == (~removed).sum()
    with pytest.raises(WorkspaceError, match="exists.*pick another name or pass overwrite"):
        save_manifest(ws_copy, "gap", "similarity-gap", {"delta": 0.0}, stats, removed)
    with pytest.raises(ValueError, match="removes"):  # a mask that is not the rule's
        save_manifest(ws_copy, "gap2", "similarity-gap", {"delta": 0.0}, stats, rule_threshold(stats, 0.1))
    far = save_manifest(ws_copy, "gap", "far", {"keep": 0.5}, stats, rule_far(stats, 0.5), overwrite=True)
    assert far.rule == "far" and far.kept_count == 300 and far.summary["params"]["keep_count"] == 300
    table = list_manifests(ws_copy)
    assert list(table["name"]) == ["gap"] and list(table.loc[0, ["rule", "kept", "removed", "stale"]]) == ["far", 300, 300, False]


def test_manifest_write_is_atomic(ws_copy, monkeypatch):
    stats = PruneStats.load(ws_copy, "web", TESTS)
    removed = rule_threshold(stats, 0.6)
    calls = []
    real = fileio.write_parquet

    def failing(path, frame):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        real(path, frame)

    monkeypatch.setattr(fileio, "write_parquet", failing)
    with pytest.raises(OSError, match="simulated"):
        save_manifest(ws_copy, "thr", "threshold", {"tau": 0.6}, stats, removed)
    assert len(calls) == 2 and list(ws_copy.path("manifests").iterdir()) == []  # no folder, no leftovers
    os.makedirs(ws_copy.path("manifests", ".thr.crashed.tmp"))  # a killed writer's temporary folder
    (ws_copy.path("manifests", ".thr.crashed.tmp", "removed.parquet")).write_bytes(b"partial")
    assert list_manifests(ws_copy).empty
    with pytest.raises(WorkspaceError, match="no manifest 'thr'"):
        load_manifest(ws_copy, "thr")


def test_manifest_goes_stale_when_inputs_change(ws_copy):
    stats = PruneStats.load(ws_copy, "web", TESTS)
    save_manifest(ws_copy, "near", "near", {"keep": 200}, stats, rule_near(stats, 200))
    save_manifest(ws_copy, "rnd", "random", {"keep": 200, "seed": 1, "like": "near"},
                  PruneStats.load(ws_copy, "web", []), rule_random(600, 200, 1))
    search(ws_copy, "web", ["tb"], k=6, precision="fp32", device="cpu")  # a changed search
    assert any("'tb' vs 'web' changed" in r for r in load_manifest(ws_copy, "near").stale_reasons())
    assert not load_manifest(ws_copy, "rnd").stale  # a random subset depends on the web embeddings only
    with pytest.raises(WorkspaceError, match="no longer match"):  # statistics loaded before the change
        save_manifest(ws_copy, "near2", "near", {"keep": 200}, stats, rule_near(stats, 200))
    shard = ws_copy.embeddings("web").shards[1].emb
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))  # the web set rewritten
    assert "web set 'web' embeddings changed" in load_manifest(ws_copy, "rnd").stale_reasons()
    assert list(list_manifests(ws_copy)["stale"]) == [True, True]
    extra = unit16(np.random.default_rng(0).standard_normal((5, 16)))
    store.write_shard(ws_copy.root / "emb" / "web", 2, extra, pd.DataFrame({"key": [f"new{i}" for i in range(5)]}))
    with pytest.raises(WorkspaceError, match="covers 600 web rows but 'web' now has 605"):
        PruneStats.load(ws_copy, "web", TESTS)


def test_read_only_refuses_manifests(ws_copy, monkeypatch, capsys):
    stats = PruneStats.load(ws_copy, "web", TESTS)
    monkeypatch.setenv("CLIPSIM_READ_ONLY", "1")
    with pytest.raises(ReadOnlyError, match="read-only"):
        save_manifest(ws_copy, "x", "near", {"keep": 10}, stats, rule_near(stats, 10))
    assert main(["prune", "--workspace", str(ws_copy.root), "--rule", "near", "--keep", "10", "--name", "x"]) == 2
    assert "read-only" in capsys.readouterr().err and not ws_copy.path("manifests", "x").exists()


def test_cli_round_trip(ws_copy, capsys):
    w = str(ws_copy.root)
    stats = PruneStats.load(ws_copy, "web", ["ta", "tb"])
    tau = float(np.median(stats.max_sim()))
    assert main(["prune", "--workspace", w, "--rule", "threshold", "--tau", str(tau), "--tests", "ta,tb", "--name", "thr"]) == 0
    out = capsys.readouterr().out
    assert "combined" in out and str(stats.count_threshold(tau)) in out
    thr = load_manifest(ws_copy, "thr")
    assert list(thr.kept_keys()) == list(ws_copy.keys("web")[~rule_threshold(stats, tau)])
    assert main(["prune", "--workspace", w, "--rule", "threshold", "--tau", "0.9", "--name", "thr"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["prune", "--workspace", w, "--rule", "random", "--like", "thr", "--seed", "3", "--name", "rnd"]) == 0
    rnd = load_manifest(ws_copy, "rnd")
    assert rnd.kept_count == thr.kept_count and rnd.summary["params"] == {"keep": thr.kept_count, "seed": 3, "like": "thr",
                                                                        "keep_count": thr.kept_count}
    assert main(["prune", "--workspace", w, "--rule", "similarity-gap", "--name", "gap"]) == 0  # reference from settings
    assert load_manifest(ws_copy, "gap").summary["reference"] == "curated"
    assert main(["prune", "--workspace", w, "--rule", "near", "--tau", "0.5", "--name", "bad"]) == 2
    assert "tau does not apply to rule 'near'; it takes keep" in capsys.readouterr().err
    assert main(["manifests", "--workspace", w, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in listed] == ["gap", "rnd", "thr"] and not any(r["stale"] for r in listed)


def test_rule_spec_checks_its_options_and_names_itself():
    names = {RuleSpec("similarity-gap"): "similarity-gap_d0", RuleSpec("threshold", tau=0.85): "threshold_t0.85",
             RuleSpec("threshold", remove_fraction=0.1): "threshold_rf0.1",
             RuleSpec("near", keep=0.5, tests=["tb", "ta"]): "near_keep0.5_tb-ta", RuleSpec("far", keep=120): "far_keep120",
             RuleSpec("random", keep=0.5, tests=["ta"]): "random_keep0.5_s0",  # a random subset ignores test sets
             RuleSpec("random", like="gap", seed=3): "random_like-gap_s3"}
    for spec, name in names.items():
        assert default_name(spec) == name
        assert RuleSpec.from_params(json.loads(json.dumps({**spec.to_params(), "name": "x"}))) == spec  # job params
    for bad, message in (({"rule": "near", "tau": 0.5}, "tau does not apply to rule 'near'"),
                         ({"rule": "threshold"}, "needs tau"), ({"rule": "random"}, "needs keep"),
                         ({"rule": "gap", "delta": 0.0, "remove_fraction": 0.1}, "unknown pruning rule"),
                         ({"rule": "similarity-gap", "delta": 0.0, "remove_fraction": 0.1}, "not both"),
                         ({"rule": "random", "keep": 3, "like": "gap"}, "not both")):
        with pytest.raises(ValueError, match=message):
            RuleSpec(**bad)


def test_one_answer_for_web_set_reference_and_searches(rand_ws):
    from clipsim.search import completed_searches, has_margins, searched_tests, searched_web_sets

    assert rand_ws.reference == "curated" and rand_ws.web_sets() == ["web"] and rand_ws.web_set() == "web"
    with pytest.raises(WorkspaceError, match="'curated' is not a web train set"):
        rand_ws.web_set("curated")
    assert list(completed_searches(rand_ws, "ta")) == ["curated", "web"]
    assert completed_searches(rand_ws, "ta")["web"] == rand_ws.search_result("ta", "web").fingerprint
    assert searched_tests(rand_ws) == TESTS and searched_web_sets(rand_ws, TESTS) == ["web"]
    assert has_margins(rand_ws, "web", TESTS, "curated") and not has_margins(rand_ws, "curated", TESTS, "web")
    spec = RuleSpec("similarity-gap", tests=["ta"])
    pruning = apply_rule(rule_stats(rand_ws, spec), spec)
    assert pruning.params == {"delta": 0.0} and pruning.stats.tests == ["ta"]
    assert np.array_equal(pruning.removed, rule_similarity_gap(PruneStats.load(rand_ws, "web", ["ta"], "curated")))


def test_threshold_latency_benchmark_runs_small():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "threshold_latency.py"
    spec = importlib.util.spec_from_file_location("threshold_latency", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--n", "20000", "--tests", "3", "--changes", "5"])
    assert report["stats_bytes"] == (3 + 1) * 4 * 20000 * 4  # m, g and their sorted copies per test set + combined
    assert set(report["threshold_change_ms"]) == {"median", "p99", "max"} and report["build_seconds"] >= 0

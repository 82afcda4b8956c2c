"""Results with evidence: bootstrap intervals against a direct numpy reference, the paired comparison, seeds summarised
across runs, accuracy by similarity and the right/wrong table from stored per-image predictions."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipsim.runs import compare
from clipsim.runs.predictions import write_predictions
from clipsim.runs.results import add_results, result_row, results_frame, seed_summary
from clipsim.runs.stats import bootstrap_interval, paired_bootstrap
from clipsim.workspace import Workspace
from tests.helpers import chart_spec


def reference_interval(values: np.ndarray, n_boot: int, seed: int = 1) -> tuple[float, float]:
    """Percentile bootstrap done directly: resample image indices with replacement, average, take quantiles."""
    rng = np.random.default_rng(seed)
    means = np.array([values[rng.integers(0, len(values), len(values))].mean() for _ in range(n_boot)])
    return tuple(np.percentile(means, [2.5, 97.5]))


@pytest.mark.parametrize("kind", ["correct", "seed-averaged"])
def test_bootstrap_interval_matches_direct_resampling(kind):
    rng = np.random.default_rng(7)
    n = 300
    values = (rng.random(n) < 0.3).astype(float) if kind == "correct" else rng.integers(0, 4, n) / 3
    ours = bootstrap_interval(values, n_boot=20_000)
    low, high = reference_interval(values, 20_000)
    assert ours.mean == pytest.approx(values.mean()) and ours.n == n
    assert ours.low == pytest.approx(low, abs=0.006) and ours.high == pytest.approx(high, abs=0.006)
    half = 1.96 * values.std() / np.sqrt(n)  # and both agree with the normal approximation
    assert ours.high - ours.low == pytest.approx(2 * half, rel=0.1)
    assert bootstrap_interval(values) == bootstrap_interval(values)  # seeded: the same bits every time


def test_paired_bootstrap_matches_direct_resampling_of_pairs():
    rng = np.random.default_rng(3)
    a = (rng.random(400) < 0.55).astype(float)
    b = np.where(rng.random(400) < 0.8, a, 1 - a)  # mostly the same images right: pairing narrows the interval
    ours = paired_bootstrap(a, b, n_boot=20_000)
    low, high = reference_interval(a - b, 20_000)
    assert ours.diff == pytest.approx(a.mean() - b.mean())
    assert ours.low == pytest.approx(low, abs=0.006) and ours.high == pytest.approx(high, abs=0.006)
    unpaired = bootstrap_interval(a).high - bootstrap_interval(a).low
    assert ours.high - ours.low < 1.5 * unpaired
    same = paired_bootstrap(a, a)
    assert (same.diff, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    far = paired_bootstrap(np.ones(200), np.zeros(200))
    assert far.p_value < 0.001 and far.low == far.high == 1.0
    with pytest.raises(ValueError, match="aligned"):
        paired_bootstrap(a, b[:10])


@pytest.fixture(scope="module")
def results_ws(demo_ws, tmp_path_factory):
    """A copy of the small demo with result rows and per-image predictions of three seeds of a pruned model, its
    random control and one full-web run on sketch (correctness drawn so that the pruned model is worse)."""
    root = tmp_path_factory.mktemp("evidence") / "ws"
    shutil.copytree(demo_ws.root, root, ignore=shutil.ignore_patterns("runs", "results", "jobs.sqlite*"))
    ws = Workspace.open(root)
    keys = ws.keys("sketch").astype(str)
    labels = np.arange(len(keys)) % 12
    rng = np.random.default_rng(0)
    arms = [("full", "full", None, 0.6, [0])] + [("gap", "similarity-gap", None, 0.3, [0, 1, 2]),
                                                   ("gap-random", "random", "gap", 0.5, [0, 1, 2])]
    rows = []
    for manifest, rule, control_of, p, seeds in arms:
        for seed in seeds:
            run = f"{manifest}-s{seed}"
            right = rng.random(len(keys)) < p
            info = {"run": run, "checkpoint": f"/x/{run}/epoch_2.pt", "epoch": 2, "manifest": manifest,
                    "preset": "demo", "rule": rule, "control_of": control_of, "web": "web", "train_samples": 1000,
                    "web_samples": 3000, "seed": seed}
            per_image = pd.DataFrame({"key": keys, "label": labels, "prediction": np.where(right, labels, -1),
                                      "correct": right})
            write_predictions(ws, info, "sketch", per_image)
            rows.append(result_row(info, {"test": "sketch", "accuracy": right.mean(), "correct": int(right.sum()),
                                          "n": len(keys), "classes": 12, "predictions": per_image}, "demo"))
    add_results(ws, rows)
    return ws


def test_seeds_are_summarised_with_mean_sd_and_interval(results_ws):
    frame = results_frame(results_ws)
    assert set(frame["seed"]) == {0, 1, 2} and frame["ci_low"].notna().all()
    summary = seed_summary(frame).set_index("model")
    assert summary.loc["gap", "n_seeds"] == 3 and summary.loc["gap", "seeds"] == "0,1,2"
    gap = frame[frame["manifest"] == "gap"]["accuracy"]
    assert summary.loc["gap", "accuracy"] == pytest.approx(gap.mean()) and summary.loc["gap", "sd"] == pytest.approx(
        gap.std())
    assert summary.loc["gap", "chance"] == pytest.approx(1 / 12)
    full = frame[frame["manifest"] == "full"].iloc[0]
    assert (summary.loc["full web", "ci_low"], summary.loc["full web", "ci_high"]) == (full["ci_low"], full["ci_high"])
    with_ci = compare.arm_intervals(results_ws, frame).set_index("model")
    _, values = compare.seed_mean_correct(results_ws, compare.model_runs(frame)["gap"], "sketch")
    want = bootstrap_interval(values)
    assert (with_ci.loc["gap", "ci_low"], with_ci.loc["gap", "ci_high"]) == (want.low, want.high)


def test_pruned_against_control_is_a_paired_bootstrap_over_seed_averaged_images(results_ws):
    frame = results_frame(results_ws)
    assert compare.control_pairs(frame) == [("gap", "gap (random control)")]
    table = compare.compare_models(results_ws, frame, "gap", "gap (random control)")
    _, a = compare.seed_mean_correct(results_ws, ["gap-s0", "gap-s1", "gap-s2"], "sketch")
    _, b = compare.seed_mean_correct(results_ws, ["gap-random-s0", "gap-random-s1", "gap-random-s2"], "sketch")
    want = paired_bootstrap(a, b)
    row = table.iloc[0]
    assert (row["test"], row["diff"], row["ci_low"], row["ci_high"], row["p_value"]) == \
        ("sketch", want.diff, want.low, want.high, want.p_value)
    assert row["ci_high"] < 0 and row["p_value"] < 0.01 and row["seeds_a"] == 3


def test_accuracy_by_similarity_and_right_wrong(results_ws):
    frame = results_frame(results_ws)
    bins = compare.accuracy_by_similarity(results_ws, frame, "sketch", "web", bins=4)
    assert set(bins["model"]) == {"full web", "gap", "gap (random control)"}
    assert bins.groupby("model")["n"].sum().eq(96).all()
    s = results_ws.nn_similarity("sketch", "web")
    keys, values = compare.seed_mean_correct(results_ws, ["full-s0"], "sketch")
    first = bins[(bins["model"] == "full web") & (bins["bin"] == 0)].iloc[0]
    inside = (s.reindex(keys).to_numpy() >= first["s_low"]) & (s.reindex(keys).to_numpy() < first["s_high"])
    assert first["accuracy"] == pytest.approx(values[inside].mean())
    table = compare.right_wrong(results_ws, frame, "full web", "gap", "sketch", "web")
    _, bad = compare.seed_mean_correct(results_ws, ["gap-s0", "gap-s1", "gap-s2"], "sketch")
    assert len(table) == int(((values > 0.5) & (bad < 0.5)).sum())
    assert table["s_web"].is_monotonic_decreasing


def test_results_page_shows_intervals_seeds_chance_and_comparisons(results_ws, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CLIPSIM_WORKSPACE", str(results_ws.root))
    monkeypatch.delenv("CLIPSIM_READ_ONLY", raising=False)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "results.py"), default_timeout=120).run()
    assert not at.exception
    charts = {spec["layout"]["title"]["text"]: spec for spec in (chart_spec(c) for c in at.get("plotly_chart"))}
    bars = charts["Zero-shot top-1 accuracy per test set"]
    frame = results_frame(results_ws)
    summary = compare.arm_intervals(results_ws, frame).set_index("model")
    gap = next(t for t in bars["data"] if t["name"] == "gap" and t["type"] == "bar")
    assert gap["error_y"]["array"][0] == pytest.approx(summary.loc["gap", "ci_high"] - summary.loc["gap", "accuracy"])
    seeds = next(t for t in bars["data"] if t["name"] == "gap · seeds")
    assert len(seeds["y"]) == 3  # one dot per seed
    chance = next(t for t in bars["data"] if t["name"] == "chance (1 / classes)")
    assert chance["y"] == [pytest.approx(1 / 12)]
    paired = next(d.value for d in at.dataframe if "p_value" in d.value.columns)
    want = compare.compare_models(results_ws, frame, "gap", "gap (random control)")
    assert paired[["diff", "ci_low", "ci_high", "p_value"]].equals(want[["diff", "ci_low", "ci_high", "p_value"]])
    assert any(t.startswith("Paired difference") for t in charts)
    assert any(t.startswith("Accuracy on sketch against") for t in charts)
    assert 'data-testid="cs-gallery"' in "".join(h.proto.body for h in at.html)  # right by full web, wrong by gap


def test_train_seeds_queue_one_run_per_seed(results_ws, capsys):
    from clipsim import jobs
    from clipsim.cli import main as cli_main
    from clipsim.runs.pipeline import seed_overrides

    assert seed_overrides(results_ws, "demo", {"epochs": "1"}, 1) == [{"epochs": "1"}]
    assert seed_overrides(results_ws, "demo", {"epochs": "1"}, 3) == [{"epochs": "1", "seed": s} for s in (0, 1, 2)]
    results_ws.update_settings(jobs={"slots": 1})
    blocker = jobs.launch(results_ws, "sleep", {"seconds": 60, "steps": 600})  # holds the slot: the runs stay queued
    try:
        assert cli_main(["train", "--workspace", str(results_ws.root), "--manifest", "full", "--seeds", "3"]) == 0
        queued = [j for j in jobs.list_jobs(results_ws, kind="train")]
        assert sorted(j.params["overrides"]["seed"] for j in queued) == [0, 1, 2]
        assert cli_main(["train", "--workspace", str(results_ws.root), "--seeds", "0"]) == 2  # a clear error
    finally:
        for job in jobs.list_jobs(results_ws, states=jobs.ACTIVE):
            jobs.cancel(results_ws, job.id, grace=1.0)
    assert blocker.kind == "sleep"


def test_trainer_sample_shuffle_follows_the_seed():
    """webdataset seeds its sample shuffle from pid and clock; the trainer entry makes it follow the run's seed
    (two CPU runs with one --seed then train bit-identical checkpoints; measured on the small demo)."""
    import subprocess
    import sys

    code = ("import random, webdataset as wds\n"
            "def order(): return list(wds.shuffle(bufsize=10, initial=5)(iter(range(40))))\n"
            "random.seed(5); a = order(); random.seed(5); b = order()\n"
            "from clipsim.runs.entry import seed_sample_shuffle\nseed_sample_shuffle()\n"
            "random.seed(5); c = order(); random.seed(5); d = order()\n"
            "print(a == b, c == d, sorted(c) == list(range(40)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(__file__).resolve().parents[1])).stdout.split()
    assert out == ["False", "True", "True"]  # before: a new order every time; after: the seed decides it

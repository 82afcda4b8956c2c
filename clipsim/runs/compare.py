"""Results with evidence: a model's accuracy across training seeds with a bootstrap interval, a pruned model against
its random control (paired bootstrap over test images), accuracy binned by s_web(t), and the images one model gets
right and another wrong.

A *model* is a results label (clipsim.runs.results.model_label): the runs of one manifest (or its random control)
that differ only in their seed. Per test image its correctness is averaged over those seeds, so an interval over
images reflects both the test sample and, through the averaged values, the seeds.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from clipsim.errors import WorkspaceError
from clipsim.runs.predictions import correctness_matrix
from clipsim.runs.results import latest_per_run, model_label, seed_summary
from clipsim.runs.stats import bootstrap_interval, paired_bootstrap

COMPARE_COLUMNS = ["test", "model_a", "model_b", "accuracy_a", "accuracy_b", "diff", "ci_low", "ci_high", "p_value",
                   "n", "seeds_a", "seeds_b"]
BIN_COLUMNS = ["model", "bin", "s_low", "s_high", "s_mid", "n", "accuracy", "ci_low", "ci_high"]


def model_runs(frame: pd.DataFrame) -> dict[str, list[str]]:
    """{model label: its runs (one per seed)} from result rows."""
    latest = latest_per_run(frame)
    if latest.empty:
        return {}
    labelled = latest.assign(model=model_label(latest)).drop_duplicates(["model", "run"])
    return {m: list(g["run"]) for m, g in labelled.groupby("model", sort=False)}


def seed_mean_correct(ws, runs: list[str], test: str) -> tuple[np.ndarray, np.ndarray]:
    """(keys, per-image correctness averaged over the runs that have predictions); empty when none has."""
    keys, correct, _ = correctness_matrix(ws, runs, test)
    return keys, (correct.mean(axis=1) if correct.size else np.zeros(0))


def arm_intervals(ws, frame: pd.DataFrame) -> pd.DataFrame:
    """seed_summary(frame) with every model's 95% interval: the bootstrap over test images of its seed-averaged
    per-image correctness (a single run keeps the interval stored with its result row)."""
    summary = seed_summary(frame)
    runs = model_runs(frame)
    for i, row in summary[summary["n_seeds"] > 1].iterrows():
        _, values = seed_mean_correct(ws, runs[row["model"]], row["test"])
        if len(values):
            interval = bootstrap_interval(values)
            summary.loc[i, ["ci_low", "ci_high"]] = interval.low, interval.high
    return summary


def compare_models(ws, frame: pd.DataFrame, a: str, b: str, tests: list[str] | None = None) -> pd.DataFrame:
    """Paired bootstrap of model a minus model b on each test set, over the images both were scored on.

    Args:
        ws: the workspace.
        frame: result rows (clipsim.runs.results.results_frame).
        a, b: model labels (model_runs), e.g. 'similarity-gap-all' and 'similarity-gap-all (random control)'.
        tests: test sets (default: those both were evaluated on).

    Returns:
        COMPARE_COLUMNS, one row per test set with predictions of both (diff = accuracy_a - accuracy_b on the
        shared images).

    Raises:
        WorkspaceError: an unknown model label.
    """
    runs = model_runs(frame)
    for name in (a, b):
        if name not in runs:
            raise WorkspaceError(f"no evaluated model {name!r} in {ws.path('results')}; known: {sorted(runs)}")
    latest = latest_per_run(frame)
    have = [set(latest.loc[latest["run"].isin(runs[m]), "test"]) for m in (a, b)]
    rows = []
    for test in tests or [t for t in dict.fromkeys(latest["test"]) if t in have[0] & have[1]]:
        keys_a, va = seed_mean_correct(ws, runs[a], test)
        keys_b, vb = seed_mean_correct(ws, runs[b], test)
        shared = np.intersect1d(keys_a, keys_b)
        if not len(shared):  # no per-image predictions stored for one of them (evaluated before they were kept)
            continue
        va, vb = va[np.isin(keys_a, shared)], vb[np.isin(keys_b, shared)]  # both sorted by key
        result = paired_bootstrap(va, vb)
        rows.append({"test": test, "model_a": a, "model_b": b, "accuracy_a": float(va.mean()) if len(va) else np.nan,
                     "accuracy_b": float(vb.mean()) if len(vb) else np.nan, "diff": result.diff,
                     "ci_low": result.low, "ci_high": result.high, "p_value": result.p_value, "n": result.n,
                     "seeds_a": len(runs[a]), "seeds_b": len(runs[b])})
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def control_pairs(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(pruned model, its random control) label pairs present in the results."""
    latest = latest_per_run(frame)
    if latest.empty:
        return []
    latest = latest.assign(model=model_label(latest))
    controls = latest[latest["control_of"].fillna("") != ""]
    pairs = []
    for (of, control), _ in controls.groupby(["control_of", "model"], sort=False):
        pruned = latest[(latest["manifest"] == of) & (latest["control_of"].fillna("") == "")]["model"].unique()
        pairs += [(str(p), str(control)) for p in pruned if (str(p), str(control)) not in pairs]
    return pairs


def compare_pairs(ws, frame: pd.DataFrame, pairs: list[tuple[str, str]] | None = None,
                  tests: list[str] | None = None) -> pd.DataFrame:
    """compare_models for several (a, b) model pairs, by default every pruned model against its random control.

    Returns:
        COMPARE_COLUMNS, one row per pair and test set (empty when there is nothing to compare).
    """
    parts = [compare_models(ws, frame, a, b, tests) for a, b in (control_pairs(frame) if pairs is None else pairs)]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COMPARE_COLUMNS)


def similarity_bins(s: np.ndarray, bins: int) -> np.ndarray:
    """Edges of `bins` equal-count bins of s (quantiles; repeated edges merged): (m + 1,) float64."""
    edges = np.unique(np.quantile(np.asarray(s, np.float64), np.linspace(0, 1, bins + 1)))
    return edges if len(edges) > 1 else np.array([edges[0], edges[0]])


def accuracy_by_similarity(ws, frame: pd.DataFrame, test: str, web: str, bins: int = 6) -> pd.DataFrame:
    """Accuracy of every model within bins of s_web(t), the study's question: does a test image's closeness to the
    web set explain whether a model gets it right?

    Args:
        ws: the workspace.
        frame: result rows.
        test: test set; web: the train set whose nearest-neighbour similarity bins the images.
        bins: equal-count bins (so each holds enough images for an interval).

    Returns:
        BIN_COLUMNS, one row per model and bin (accuracy seed-averaged, 95% bootstrap interval over the bin's images).
    """
    s = ws.nn_similarity(test, web)
    edges = similarity_bins(s.to_numpy(), bins)
    rows = []
    for model, runs in model_runs(frame).items():
        keys, values = seed_mean_correct(ws, runs, test)
        if not len(keys):
            continue
        sim = s.reindex(keys).to_numpy(np.float64)
        which = np.clip(np.searchsorted(edges, sim, side="right") - 1, 0, len(edges) - 2)
        for b in range(len(edges) - 1):
            inside = values[(which == b) & np.isfinite(sim)]
            interval = bootstrap_interval(inside)
            rows.append({"model": model, "bin": b, "s_low": edges[b], "s_high": edges[b + 1],
                         "s_mid": (edges[b] + edges[b + 1]) / 2, "n": interval.n, "accuracy": interval.mean,
                         "ci_low": interval.low, "ci_high": interval.high})
    return pd.DataFrame(rows, columns=BIN_COLUMNS)


def right_wrong(ws, frame: pd.DataFrame, good: str, bad: str, test: str, web: str) -> pd.DataFrame:
    """Test images model `good` gets right and model `bad` gets wrong (majority over seeds), most similar first.

    Returns:
        key, s_web, good, bad (seed-averaged correctness), sorted by s_web(t) decreasing.
    """
    runs = model_runs(frame)
    keys_g, vg = seed_mean_correct(ws, runs.get(good, []), test)
    keys_b, vb = seed_mean_correct(ws, runs.get(bad, []), test)
    table = pd.DataFrame({"key": keys_g, "good": vg}).merge(pd.DataFrame({"key": keys_b, "bad": vb}), on="key")
    table = table[(table["good"] > 0.5) & (table["bad"] < 0.5)]
    table.insert(1, "s_web", ws.nn_similarity(test, web).reindex(table["key"]).to_numpy(np.float64))
    return table.sort_values("s_web", ascending=False, kind="stable", ignore_index=True)

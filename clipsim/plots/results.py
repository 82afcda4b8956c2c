"""Plotly figures and their data tables for zero-shot results and training curves (no Streamlit).

Each figure has a `*_table` companion returning the exact numbers drawn, for CSV download. Rows come from
`clipsim.results.results_frame` (one per run and test set); a run's model is labelled by its manifest:
'full web', the pruned manifest, or '<manifest> (random control)'.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from clipsim.runs.results import latest_per_run, model_label, seed_summary

FULL_COLOUR = "#4c78a8"  # the unpruned model
PRUNED_COLOURS = ["#e45756", "#f58518", "#b279a2", "#9d755d", "#54a24b", "#72b7b2"]
RANDOM_COLOUR = "#9e9e9e"  # random controls: grey, dashed where drawn as lines
DIAGONAL_COLOUR = "#222222"
CHANCE_COLOUR = "#555555"  # zero-shot chance, 1 / classes scored: the floor every accuracy is read against
SYMBOLS = {"full": "circle", "pruned": "diamond", "random": "x"}
KIND_NAMES = {"full": "full web set", "pruned": "pruned", "random": "random control"}
GROUP = 0.8  # share of a test set's slot its bars fill (plotly's bargap 0.2); per-seed dots are placed by it


def _kind(frame: pd.DataFrame) -> pd.Series:
    """'full', 'random' or 'pruned' per row."""
    manifest = frame["manifest"].fillna("").astype(str)
    rule = frame["rule"].fillna("").astype(str)
    full = manifest.isin(["", "full"]) | (rule == "full")
    kind = np.where(full, "full", np.where(rule == "random", "random", "pruned"))
    return pd.Series(kind, index=frame.index)


def _models(frame: pd.DataFrame) -> pd.DataFrame:
    """Newest checkpoint per run, with `model` (label) and `kind` columns, ordered full, pruned+control pairs; test
    sets keep the frame's order (results_frame: registry order)."""
    latest = latest_per_run(frame).copy()
    latest["model"], latest["kind"] = model_label(latest), _kind(latest)
    base = np.where(latest["control_of"].fillna("") != "", latest["control_of"].fillna(""), latest["manifest"])
    latest["_order"] = latest["kind"].map({"full": 0, "pruned": 1, "random": 1}).astype(int)
    latest["_base"], latest["_ctl"] = base, (latest["kind"] == "random").astype(int)
    latest["_test"] = latest["test"].map({t: i for i, t in enumerate(dict.fromkeys(frame["test"]))})
    return latest.sort_values(["_order", "_base", "_ctl", "run", "_test"], kind="stable", ignore_index=True)


def chance(frame: pd.DataFrame) -> pd.Series:
    """Zero-shot chance accuracy per test set, 1 / classes scored (NaN where the class count is unknown)."""
    classes = frame.groupby("test", sort=False)["classes"].max()
    return (1.0 / classes.where(classes > 0)).astype(float)


def unit_range(values, floor: bool = False) -> list[float]:
    """An axis range for shares in [0, 1] that fits the values with a margin and never runs past 0% or 100%.

    Args:
        values: the plotted values (NaN ignored).
        floor: start at 0 (bars).
    """
    vals = np.asarray([v for v in np.ravel(np.asarray(values, dtype=np.float64)) if np.isfinite(v)])
    if not len(vals):
        return [0.0, 1.0]
    lo, hi = float(vals.min()), float(vals.max())
    pad = 0.08 * max(hi - lo, 0.1)
    return [0.0 if floor else max(0.0, lo - pad), min(1.0, hi + pad)]


def bars_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per model (rows) and test set (columns): the mean over training seeds, newest checkpoint of each run."""
    models = _models(frame)
    if models.empty:
        return pd.DataFrame()
    table = models.pivot_table(index="model", columns="test", values="accuracy", aggfunc="mean", sort=False)
    return table.reset_index()


def accuracy_bars(frame: pd.DataFrame, tests: list[str] | None = None, summary: pd.DataFrame | None = None
                  ) -> go.Figure:
    """Grouped bars: zero-shot top-1 per test set, one bar per model (full, pruned, random controls side by side).

    A bar is the mean over the model's training seeds, its error bar the 95% bootstrap interval over test images
    (clipsim.runs.compare.arm_intervals; by default a single run's stored interval), black dots the single seeds.

    Args:
        frame: result rows.
        tests: test sets in order (default: as stored).
        summary: seed_summary-like table with intervals (default: seed_summary(frame)).
    """
    models = _models(frame)
    summary = seed_summary(frame) if summary is None else summary
    tests = tests or list(dict.fromkeys(models["test"]))
    n_models = max(models["model"].nunique(), 1)
    fig = go.Figure()
    pruned = 0
    for model, rows in models.groupby("model", sort=False):
        kind = rows["kind"].iloc[0]
        colour = FULL_COLOUR if kind == "full" else RANDOM_COLOUR if kind == "random" else \
            PRUNED_COLOURS[pruned % len(PRUNED_COLOURS)]
        pruned += kind == "pruned"
        mean = summary[summary["model"] == model].set_index("test").reindex(tests)
        fig.add_bar(name=model, x=tests, y=mean["accuracy"], marker_color=colour,
                    marker_pattern_shape="/" if kind == "random" else "",
                    error_y={"type": "data", "symmetric": False, "array": mean["ci_high"] - mean["accuracy"],
                             "arrayminus": mean["accuracy"] - mean["ci_low"], "color": "#333333"},
                    customdata=np.stack([mean["n"].fillna(0), mean["train_samples"].fillna(0),
                                         mean["n_seeds"].fillna(0), mean["sd"].fillna(0)], axis=1),
                    hovertemplate="%{x}: %{y:.1%} of %{customdata[0]:.0f} images<br>mean of %{customdata[2]:.0f} "
                                  "seed(s), sd %{customdata[3]:.1%}<br>trained on %{customdata[1]:,.0f} samples"
                                  "<extra>" + model + "</extra>")
        if rows["run"].nunique() > 1:  # on a hidden numeric axis over the categories, at this model's bar
            slot = models["model"].drop_duplicates().tolist().index(model)
            at = rows["test"].map({t: i for i, t in enumerate(tests)}) - GROUP / 2 + (slot + 0.5) * GROUP / n_models
            fig.add_scatter(x=at, y=rows["accuracy"], xaxis="x2", mode="markers", name=f"{model} · seeds",
                            showlegend=False, marker={"color": "#111111", "size": 6},
                            text=rows["seed"].astype(str), hovertemplate="seed %{text}: %{y:.1%}<extra></extra>")
    floor = chance(frame).reindex(tests)
    fig.add_scatter(x=tests, y=floor, mode="markers", name="chance (1 / classes)",
                    marker={"symbol": "line-ew-open", "size": 44, "color": CHANCE_COLOUR, "line": {"width": 2}},
                    hovertemplate="%{x}: chance %{y:.1%}<extra></extra>")
    fig.update_layout(xaxis2={"overlaying": "x", "range": [-0.5, len(tests) - 0.5], "visible": False},
                      bargap=1 - GROUP, bargroupgap=0)
    fig.update_layout(barmode="group", title="Zero-shot top-1 accuracy per test set",
                      height=420, yaxis_title="top-1 accuracy", yaxis_tickformat=".0%", xaxis_title="test set",
                      yaxis_range=unit_range(np.r_[models["accuracy"].to_numpy(float), floor.to_numpy(),
                                                   summary["ci_high"].to_numpy(float)], floor=True),
                      legend_title_text="trained on", margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig


def pruned_table(frame: pd.DataFrame, test: str | None = None) -> pd.DataFrame:
    """Accuracy (one test set, or the mean over test sets) against the share of the web set pruned away.

    Returns:
        Columns model, kind, rule, pruned_fraction, train_samples, accuracy, tests; sorted by kind and fraction.
    """
    models = _models(frame)
    if test is not None:
        models = models[models["test"] == test]
    if models.empty:
        return pd.DataFrame(columns=["model", "kind", "rule", "pruned_fraction", "train_samples", "accuracy", "tests"])
    grouped = models.groupby(["model", "kind", "rule", "run"], sort=False).agg(
        pruned_fraction=("pruned_fraction", "first"), train_samples=("train_samples", "first"),
        accuracy=("accuracy", "mean"), tests=("test", lambda t: ",".join(t))).reset_index()
    grouped["pruned_fraction"] = grouped["pruned_fraction"].fillna(0.0)
    return grouped.drop(columns="run").sort_values(["kind", "pruned_fraction"], ignore_index=True)


def accuracy_vs_pruned(frame: pd.DataFrame, test: str | None = None) -> go.Figure:
    """The paper's control figure: accuracy against fraction pruned, pruned sets vs random subsets of the same
    size; both lines start at the full web set (the mean when it was trained more than once)."""
    table = pruned_table(frame, test)
    full = table[table["kind"] == "full"]
    anchor = pd.DataFrame({"model": ["full web"], "pruned_fraction": [0.0], "accuracy": [full["accuracy"].mean()]})
    fig = go.Figure()
    for kind, colour, dash in (("pruned", PRUNED_COLOURS[0], "solid"), ("random", RANDOM_COLOUR, "dash")):
        rows = table[table["kind"] == kind]
        if len(rows):
            rows = pd.concat([anchor if len(full) else None, rows]).sort_values("pruned_fraction", kind="stable")
            fig.add_scatter(x=rows["pruned_fraction"], y=rows["accuracy"], mode="lines+markers", name=kind,
                            line={"color": colour, "dash": dash}, text=rows["model"],
                            hovertemplate="%{text}: %{y:.1%} at %{x:.1%} pruned<extra></extra>")
    if len(full):
        fig.add_scatter(x=full["pruned_fraction"], y=full["accuracy"], mode="markers", name="full web",
                        marker={"color": FULL_COLOUR, "size": 10}, text=full["model"],
                        hovertemplate="%{text}: %{y:.1%}<extra></extra>")
    floor = chance(frame)
    floor = float(floor.get(test, np.nan)) if test else float(floor.mean())
    if np.isfinite(floor):
        fig.add_hline(y=floor, line={"color": CHANCE_COLOUR, "dash": "dot", "width": 1.5},
                      annotation_text=f"chance {floor:.1%}", annotation_position="bottom right")
    what = f"on {test}" if test else "mean over test sets"
    fig.update_layout(title=f"Accuracy ({what}) against the share of the web set pruned", height=420,
                      xaxis_title="fraction of web samples removed", xaxis_tickformat=".0%",
                      xaxis_range=unit_range(np.r_[0.0, table["pruned_fraction"].to_numpy(float)], floor=True),
                      yaxis_range=unit_range(np.r_[table["accuracy"].to_numpy(float), floor]),
                      yaxis_title="top-1 accuracy", yaxis_tickformat=".0%", margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig


def robustness_table(frame: pd.DataFrame, id_test: str = "val") -> pd.DataFrame:
    """In-distribution accuracy (`id_test`) beside each other test set's accuracy, per model.

    Returns:
        Columns model, kind, test, id_accuracy, ood_accuracy (empty when no model was evaluated on id_test).
    """
    models = _models(frame)
    ident = models[models["test"] == id_test].set_index("run")["accuracy"]
    ood = models[(models["test"] != id_test) & models["run"].isin(ident.index)].copy()
    ood["id_accuracy"] = ood["run"].map(ident)
    ood = ood.rename(columns={"accuracy": "ood_accuracy"})
    return ood[["model", "kind", "test", "id_accuracy", "ood_accuracy"]].reset_index(drop=True)


def effective_robustness(frame: pd.DataFrame, id_test: str = "val") -> go.Figure:
    """In-distribution vs out-of-distribution accuracy, one point per (model, OOD test set), with y = x, chance and
    a legend for both encodings: colour = test set, marker = model kind."""
    table = robustness_table(frame, id_test)
    floor = chance(frame)
    fig = go.Figure()
    for i, (test, rows) in enumerate(table.groupby("test", sort=False)):
        fig.add_scatter(x=rows["id_accuracy"], y=rows["ood_accuracy"], mode="markers", name=test,
                        legendgroup="tests", legendgrouptitle_text="colour: test set",
                        marker={"size": 11, "color": PRUNED_COLOURS[i % len(PRUNED_COLOURS)],
                                "symbol": [SYMBOLS[k] for k in rows["kind"]]},
                        text=rows["model"], hovertemplate="%{text}<br>" + id_test + " %{x:.1%}, " + test +
                        " %{y:.1%}<extra></extra>")
    for kind in dict.fromkeys(table["kind"]):  # legend-only entries explaining the marker shapes
        fig.add_scatter(x=[None], y=[None], mode="markers", name=KIND_NAMES[kind], legendgroup="kinds",
                        legendgrouptitle_text="marker: trained on",
                        marker={"size": 11, "color": "#888888", "symbol": SYMBOLS[kind]})
    tests = list(dict.fromkeys(table["test"]))
    points = [(floor.get(id_test, np.nan), floor.get(t, np.nan)) for t in tests]
    if tests and all(np.isfinite(p).all() for p in points):
        fig.add_scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="markers", text=tests,
                        name="chance (1 / classes)", marker={"symbol": "star-open", "size": 10, "color": CHANCE_COLOUR},
                        hovertemplate="chance: " + id_test + " %{x:.1%}, %{text} %{y:.1%}<extra></extra>")
    values = np.r_[table[["id_accuracy", "ood_accuracy"]].to_numpy(float).ravel(), np.ravel(points)]
    axis = unit_range(values)
    fig.add_scatter(x=axis, y=axis, mode="lines", name="y = x", line={"color": DIAGONAL_COLOUR, "dash": "dot"})
    fig.update_layout(title=f"Effective robustness: {id_test} (in distribution) vs other test sets", height=460,
                      xaxis_title=f"{id_test} top-1", yaxis_title="out-of-distribution top-1",
                      xaxis_tickformat=".0%", yaxis_tickformat=".0%", xaxis_range=axis, yaxis_range=axis,
                      margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig


def loss_curve(curve: pd.DataFrame, title: str = "Training loss") -> go.Figure:
    """Loss per logged step (and its running mean over the epoch) from train_log.parse_train_log."""
    fig = go.Figure()
    fig.add_scatter(x=curve["step"], y=curve["loss"], mode="lines+markers", name="loss", line={"color": FULL_COLOUR})
    fig.add_scatter(x=curve["step"], y=curve["loss_avg"], mode="lines", name="epoch mean",
                    line={"color": PRUNED_COLOURS[1], "dash": "dash"})
    fig.update_layout(title=title, height=320, xaxis_title="step", yaxis_title="contrastive loss",
                      margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig


def figure_html(fig: go.Figure) -> str:
    """A self-contained HTML file of the figure (plotly.js embedded, so it opens offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)

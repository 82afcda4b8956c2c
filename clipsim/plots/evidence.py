"""Plotly figures for the evidence behind decisions (no Streamlit): precision and recall of a similarity threshold
against tau with their intervals, accuracy binned by s_web(t) per model, and paired differences with intervals.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

PRECISION_COLOUR = "#e45756"
RECALL_COLOUR = "#4c78a8"
TARGET_COLOUR = "#54a24b"
CHANCE_COLOUR = "#777777"
MODEL_COLOURS = ["#4c78a8", "#e45756", "#9e9e9e", "#f58518", "#b279a2", "#54a24b", "#72b7b2", "#9d755d"]
_MARGIN = {"l": 10, "r": 10, "t": 50, "b": 10}


def _band(fig: go.Figure, x, low, high, colour: str, name: str) -> None:
    """A filled interval band between low and high (drawn under its line)."""
    fig.add_scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([high, low[::-1]]), fill="toself",
                    fillcolor=colour, opacity=0.18, line={"width": 0}, hoverinfo="skip", showlegend=False,
                    name=f"{name} 95% interval")


def precision_recall_figure(table: pd.DataFrame, tau: float | None = None, target: float | None = None,
                            title: str = "Precision and recall of s > τ ⇒ (near-)duplicate") -> go.Figure:
    """Precision and recall against tau with 95% bands, the current tau and the target precision marked.

    Args:
        table: clipsim.labels.calibration.calibration_table output.
        tau: the page's current threshold (a vertical line), or None.
        target: target precision (a horizontal line), or None.
        title: figure title.

    Returns:
        The figure (an annotation says so when nothing is labelled yet).
    """
    fig = go.Figure()
    rows = table[table["n_labelled"] > 0].sort_values("tau")
    x = rows["tau"].to_numpy(np.float64)
    for name, colour in (("precision", PRECISION_COLOUR), ("recall", RECALL_COLOUR)):
        low, high = rows[f"{name}_low"].to_numpy(np.float64), rows[f"{name}_high"].to_numpy(np.float64)
        if len(x):
            _band(fig, x, low, high, colour, name)
        fig.add_scatter(x=x, y=rows[name], mode="lines+markers", name=name, line={"color": colour},
                        marker={"size": 5}, customdata=np.stack([low, high, rows["n_labelled"]], axis=1) if len(x)
                        else None, hovertemplate="τ %{x:.4f}: " + name + " %{y:.3f} [%{customdata[0]:.3f}, "
                        "%{customdata[1]:.3f}] from %{customdata[2]:.0f} labels<extra></extra>")
    if tau is not None:
        fig.add_vline(x=float(tau), line={"color": "#222222", "dash": "dash"}, annotation_text=f"τ = {tau:.3f}",
                      annotation_position="top left")
    if target is not None:
        fig.add_hline(y=float(target), line={"color": TARGET_COLOUR, "dash": "dot"},
                      annotation_text=f"target {target:.0%}", annotation_position="bottom right")
    if not len(x):
        fig.add_annotation(text="No labelled pair yet: label pairs below", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper")
    fig.update_layout(title=title, height=340, xaxis_title="threshold τ on s_web(t)", yaxis_title="share",
                      yaxis_range=[-0.02, 1.02], yaxis_tickformat=".0%", margin=_MARGIN,
                      legend={"orientation": "h", "y": -0.25})
    return fig


def accuracy_by_similarity_figure(bins: pd.DataFrame, chance: float | None = None, title: str = "") -> go.Figure:
    """Accuracy per s_web(t) bin for each model, with 95% intervals and the chance level.

    Args:
        bins: clipsim.runs.compare.accuracy_by_similarity output.
        chance: accuracy of guessing (1 / classes), drawn as a dotted line; None to leave it out.
        title: figure title.

    Returns:
        The figure.
    """
    fig = go.Figure()
    for i, (model, rows) in enumerate(bins.groupby("model", sort=False)):
        colour = MODEL_COLOURS[i % len(MODEL_COLOURS)]
        fig.add_scatter(x=rows["s_mid"], y=rows["accuracy"], mode="lines+markers", name=model,
                        line={"color": colour}, error_y={"type": "data", "symmetric": False,
                                                         "array": rows["ci_high"] - rows["accuracy"],
                                                         "arrayminus": rows["accuracy"] - rows["ci_low"]},
                        customdata=np.stack([rows["s_low"], rows["s_high"], rows["n"]], axis=1),
                        hovertemplate="s in [%{customdata[0]:.3f}, %{customdata[1]:.3f}]: %{y:.1%} of "
                                      "%{customdata[2]:.0f} images<extra>" + model + "</extra>")
    if chance is not None and np.isfinite(chance):
        fig.add_hline(y=chance, line={"color": CHANCE_COLOUR, "dash": "dot"}, annotation_text="chance",
                      annotation_position="bottom right")
    fig.update_layout(title=title or "Accuracy against the test image's similarity to the web set", height=400,
                      xaxis_title="s_web(t) (bin centre; equal-count bins)", yaxis_title="top-1 accuracy",
                      yaxis_tickformat=".0%", margin=_MARGIN, legend_title_text="trained on")
    return fig


def paired_difference_figure(table: pd.DataFrame) -> go.Figure:
    """Accuracy difference (model a - model b) per test set with its paired-bootstrap 95% interval and 0 marked.

    Args:
        table: clipsim.runs.compare.compare_models output (one or more pairs).

    Returns:
        The figure.
    """
    fig = go.Figure()
    for i, ((a, b), rows) in enumerate(table.groupby(["model_a", "model_b"], sort=False)):
        fig.add_scatter(x=rows["test"], y=rows["diff"], mode="markers", name=f"{a} − {b}",
                        marker={"size": 11, "color": MODEL_COLOURS[(i + 1) % len(MODEL_COLOURS)]},
                        error_y={"type": "data", "symmetric": False, "array": rows["ci_high"] - rows["diff"],
                                 "arrayminus": rows["diff"] - rows["ci_low"]},
                        customdata=np.stack([rows["ci_low"], rows["ci_high"], rows["p_value"]], axis=1),
                        hovertemplate="%{x}: %{y:+.1%} [%{customdata[0]:+.1%}, %{customdata[1]:+.1%}], "
                                      "p = %{customdata[2]:.3f}<extra></extra>")
    fig.add_hline(y=0, line={"color": "#222222", "width": 1})
    fig.update_layout(title="Paired difference in top-1 accuracy (95% bootstrap interval over test images)",
                      height=380, xaxis_title="test set", yaxis_title="accuracy difference", yaxis_tickformat="+.0%",
                      margin=_MARGIN, legend={"orientation": "h", "y": -0.25}, scattermode="group")
    return fig

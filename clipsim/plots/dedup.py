"""Plotly figure builders of the Dedup page (no Streamlit): the within-cluster maximum similarity with the eps cut,
and cluster sizes. Both take precomputed counts, so a new eps redraws without touching the per-sample arrays, and
each is one validated `go.Figure(data, layout)` from plain dicts (validating once is what keeps a redraw fast)."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from clipsim.plots.explore import THRESHOLD_COLOUR
from clipsim.plots.palette import REFERENCE_COLOUR, TRAIN_PALETTE

EARLIER_COLOUR, ANY_COLOUR = TRAIN_PALETTE[0], REFERENCE_COLOUR


def _bars(edges: np.ndarray, counts: np.ndarray, name: str, colour: str) -> dict:
    return {"type": "bar", "x": (edges[:-1] + edges[1:]) / 2, "y": counts, "width": np.diff(edges), "name": name,
            "marker": {"color": colour}, "opacity": 0.6,
            "hovertemplate": "%{x:.4f}<br>%{y} samples<extra>" + name + "</extra>"}


def within_histogram(edges: np.ndarray, earlier: np.ndarray, any_other: np.ndarray, cut: float | None = None,
                     title: str = "", height: int = 360) -> go.Figure:
    """Histogram of each sample's maximum similarity inside its cluster, to an earlier member (SemDeDup's M, which
    the cut applies to) and to any other member, with the cut at cosine 1 - eps.

    Args:
        edges: (bins + 1,) bin edges; earlier, any_other: (bins,) counts (see clipsim.dedup.stats.DedupStats.histogram).
        cut: 1 - eps (a vertical line) or None.
        title: figure title; height: pixels.

    Returns:
        The figure (log-scaled counts: the duplicate bump near 1 is small beside the bulk).
    """
    shapes, notes = [], []
    if cut is not None:
        shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": cut, "x1": cut, "y0": 0, "y1": 1,
                       "line": {"color": THRESHOLD_COLOUR, "width": 2}})
        notes.append({"x": cut, "y": 1, "xref": "x", "yref": "paper", "text": f"1 − ε = {cut:.4f}", "showarrow": False,
                      "xanchor": "right", "font": {"size": 11}})
    layout = {"title": {"text": title, "x": 0.0, "font": {"size": 15}}, "barmode": "overlay", "height": height,
              "bargap": 0, "margin": {"l": 10, "r": 10, "t": 36 if title else 10, "b": 10},
              "xaxis": {"title": {"text": "max cosine similarity inside the cluster"}},
              "yaxis": {"title": {"text": "samples"}, "type": "log"}, "shapes": shapes, "annotations": notes,
              "legend": {"orientation": "h", "yanchor": "top", "y": -0.22, "x": 0.0, "font": {"size": 11}}}
    return go.Figure(data=[_bars(edges, any_other, "to any other member", ANY_COLOUR),
                           _bars(edges, earlier, "to an earlier member (SemDeDup's M)", EARLIER_COLOUR)], layout=layout)


def cluster_sizes(sizes: np.ndarray, height: int = 300) -> go.Figure:
    """Cluster sizes, largest first (one bar per cluster; log-scaled when they span two decades).

    Args:
        sizes: (k,) members per cluster.
        height: pixels.
    """
    ordered = np.sort(np.asarray(sizes))[::-1]
    spread = ordered[0] / max(1, ordered[-1]) if len(ordered) else 1
    trace = {"type": "bar", "x": np.arange(1, len(ordered) + 1), "y": ordered, "marker": {"color": REFERENCE_COLOUR},
             "hovertemplate": "cluster rank %{x}<br>%{y} samples<extra></extra>"}
    layout = {"height": height, "bargap": 0.05, "margin": {"l": 10, "r": 10, "t": 10, "b": 10},
              "xaxis": {"title": {"text": "clusters, largest first"}},
              "yaxis": {"title": {"text": "samples"}, "type": "log" if spread >= 100 else "linear"}}
    return go.Figure(data=[trace], layout=layout)

"""Plotly figure builders of the Dedup page (no Streamlit): the within-cluster maximum similarity with the eps cut,
and cluster sizes. Both take precomputed counts, so a new eps redraws without touching the per-sample arrays."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from clipsim.plots.explore import PALETTE, REFERENCE_COLOUR, THRESHOLD_COLOUR

EARLIER_COLOUR, ANY_COLOUR = PALETTE[0], REFERENCE_COLOUR


def _bars(edges: np.ndarray, counts: np.ndarray, name: str, colour: str) -> go.Bar:
    centres = (edges[:-1] + edges[1:]) / 2
    return go.Bar(x=centres, y=counts, width=np.diff(edges), name=name, marker_color=colour, opacity=0.6,
                  hovertemplate="%{x:.4f}<br>%{y} samples<extra>" + name + "</extra>")


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
    fig = go.Figure([_bars(edges, any_other, "to any other member", ANY_COLOUR),
                     _bars(edges, earlier, "to an earlier member (SemDeDup's M)", EARLIER_COLOUR)])
    if cut is not None:  # a layout shape: a quarter of add_vline's cost, which redraws on every eps change
        fig.update_layout(shapes=[{"type": "line", "x0": cut, "x1": cut, "y0": 0, "y1": 1, "yref": "paper",
                                   "line": {"color": THRESHOLD_COLOUR, "width": 2}}],
                          annotations=[{"x": cut, "y": 1, "yref": "paper", "text": f"1 − ε = {cut:.4f}",
                                        "showarrow": False, "xanchor": "right", "font": {"size": 11}}])
    fig.update_layout(title={"text": title, "x": 0.0, "font": {"size": 15}}, barmode="overlay", height=height,
                      bargap=0, margin={"l": 10, "r": 10, "t": 36 if title else 10, "b": 10},
                      xaxis_title="max cosine similarity inside the cluster", yaxis_title="samples", yaxis_type="log",
                      legend={"orientation": "h", "yanchor": "top", "y": -0.22, "x": 0.0, "font": {"size": 11}})
    return fig


def cluster_sizes(sizes: np.ndarray, height: int = 300) -> go.Figure:
    """Cluster sizes, largest first (one bar per cluster; log-scaled when they span two decades).

    Args:
        sizes: (k,) members per cluster.
        height: pixels.
    """
    ordered = np.sort(np.asarray(sizes))[::-1]
    fig = go.Figure(go.Bar(x=np.arange(1, len(ordered) + 1), y=ordered, marker_color=REFERENCE_COLOUR,
                           hovertemplate="cluster rank %{x}<br>%{y} samples<extra></extra>"))
    spread = ordered[0] / max(1, ordered[-1]) if len(ordered) else 1
    fig.update_layout(height=height, bargap=0.05, margin={"l": 10, "r": 10, "t": 10, "b": 10},
                      xaxis_title="clusters, largest first", yaxis_title="samples",
                      yaxis_type="log" if spread >= 100 else "linear")
    return fig

"""The UMAP map figure (no Streamlit): WebGL scatter of test and train points, coloured by dataset or an attribute.

Test points are diamonds drawn over train points (circles); hover shows key, caption or class, and similarity.
Each point carries its position in the drawn frame as customdata[0], so a selection maps back to rows.
"""
from __future__ import annotations

from html import escape

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from clipsim.plots.palette import dataset_colours

CATEGORY_PALETTE = ["#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#ff9da6",
                    "#9d755d", "#17becf", "#1f77b4", "#8c564b", "#bcbd22", "#d62728", "#2ca02c", "#9467bd"]
MANIFEST_COLOURS = {"removed": "#d62728", "kept": "#4c78a8", "not pruned": "#c7c7c7"}
MISSING_COLOUR = "#c7c7c7"
UNKNOWN = "unknown"
SYMBOL = {"test": "diamond", "train": "circle"}
SIZE = {"test": 6, "train": 4}  # px: test points stand out over the (many more) train points
OPACITY = {"test": 0.9, "train": 0.45}  # dense train clouds stay see-through
OUTLINE = {"test": {"width": 0.5, "color": "#ffffff"}, "train": {"width": 0}}
CAPTION_CHARS = 80  # hover text per point; the full caption is in the selection gallery


def _hover(points: pd.DataFrame) -> np.ndarray:
    text = points["text"].fillna("").astype(str).str.slice(0, CAPTION_CHARS)
    return ("<b>" + points["key"].astype(str).map(escape) + "</b><br>" + text.map(escape)).to_numpy(object)


def _trace(points: pd.DataFrame, rows: np.ndarray, role: str, name: str, colour, hover: np.ndarray,
           **marker) -> go.Scattergl:
    """One WebGL trace of the points at `rows` (all of one role: its marker symbol, size and opacity)."""
    sub = points.iloc[rows]
    marker = {"color": colour, "symbol": SYMBOL.get(role, "circle"), "size": SIZE.get(role, 4),
              "opacity": OPACITY.get(role, 0.6), "line": OUTLINE.get(role, {"width": 0}), **marker}
    custom = np.column_stack([rows.astype(np.float64), sub["similarity"].to_numpy(np.float64)])
    return go.Scattergl(x=sub["x"].to_numpy(), y=sub["y"].to_numpy(), mode="markers", name=name, marker=marker,
                        customdata=custom, hovertext=hover[rows], legendgroup=name,
                        hovertemplate="%{hovertext}<br>s = %{customdata[1]:.4f}<extra>%{fullData.name}</extra>")


def _dataset_colours(points: pd.DataFrame) -> dict[str, str]:
    """palette.dataset_colours of the datasets in `points` (no reference known; pages pass the workspace's colours)."""
    names = list(pd.unique(points["dataset"]))
    roles = dict(zip(points["dataset"], points["role"]))
    return dataset_colours([n for n in names if roles.get(n) != "test"], [n for n in names if roles.get(n) == "test"])


def _categories(points: pd.DataFrame, colour: str, cats: np.ndarray, colours: dict[str, str] | None
                ) -> tuple[list[str], dict[str, str]]:
    """Legend order and colour of each category (grey 'unknown' / 'not pruned' last)."""
    if colour == "dataset":
        return list(pd.unique(points["dataset"])), colours or _dataset_colours(points)
    if colour == "manifest":
        return [c for c in MANIFEST_COLOURS if (cats == c).any()], MANIFEST_COLOURS
    names = sorted(set(cats) - {UNKNOWN}) + ([UNKNOWN] if (cats == UNKNOWN).any() else [])
    colours = {n: CATEGORY_PALETTE[i % len(CATEGORY_PALETTE)] for i, n in enumerate(names)}
    return names, {**colours, UNKNOWN: MISSING_COLOUR}


def _categorical(fig: go.Figure, points: pd.DataFrame, colour: str, cats: np.ndarray,
                 colours: dict[str, str] | None, hover: np.ndarray) -> None:
    """Train traces of every category first, then test traces on top; one legend entry per category."""
    names, colours = _categories(points, colour, cats, colours)
    role = points["role"].to_numpy()
    shown: set[str] = set()
    for which in ("train", "test"):
        for rank, name in enumerate(names):
            rows = np.flatnonzero((cats == name) & (role == which))
            if len(rows):
                fig.add_trace(_trace(points, rows, which, str(name), colours[name], hover).update(
                    showlegend=name not in shown, legendrank=100 + rank))
                shown.add(name)


def map_figure(points: pd.DataFrame, colour: str = "dataset", values: np.ndarray | None = None,
               colours: dict[str, str] | None = None, selected: np.ndarray | None = None, title: str = "",
               height: int = 640) -> go.Figure:
    """The map: WebGL traces per dataset or category (train points first, test points on top).

    Args:
        points: map_view.map_points frame (dataset, key, x, y, role, text, class, domain, similarity).
        colour: 'dataset', 'class', 'domain', 'similarity' or 'manifest'.
        values: per-point categories for 'manifest' (map_view.removed_by); default the `colour` column.
        colours: {dataset: colour} for colour='dataset' (palette.workspace_colours: the same as every other plot
            and badge; default from the datasets in `points`).
        selected: positions of selected points (others are dimmed), or None.
        title: figure title.
        height: pixels.

    Returns:
        The figure (drag mode: box select).
    """
    hover = _hover(points)
    fig = go.Figure()
    if colour == "similarity":
        sim = points["similarity"].to_numpy(np.float64)
        rows = np.flatnonzero(~np.isfinite(sim))
        if len(rows):
            fig.add_trace(_trace(points, rows, "train", "not searched", MISSING_COLOUR, hover))
        for role, label in (("train", "train: max_t cos(x, t)"), ("test", "test: s_web(t)")):
            rows = np.flatnonzero((points["role"].to_numpy() == role) & np.isfinite(sim))
            if len(rows):
                fig.add_trace(_trace(points, rows, role, label, sim[rows], hover, coloraxis="coloraxis"))
        fig.update_layout(coloraxis={"colorscale": "Viridis", "colorbar": {"title": {"text": "similarity"},
                                                                             "thickness": 12}})
    else:
        cats = np.asarray(values if values is not None else points[colour].to_numpy(), dtype=object)
        _categorical(fig, points, colour, cats, colours, hover)
    if selected is not None:
        chosen = np.zeros(len(points), bool)
        chosen[selected] = True
        for trace in fig.data:
            rows = np.asarray(trace.customdata, dtype=np.float64)[:, 0].astype(np.int64)
            trace.selectedpoints = np.flatnonzero(chosen[rows]).tolist()
            trace.unselected = {"marker": {"opacity": 0.08}}
    _layout(fig, title, height)
    return fig


def _layout(fig: go.Figure, title: str, height: int) -> None:
    axis = {"showticklabels": False, "showgrid": False, "zeroline": False, "title": None}
    fig.update_xaxes(**axis)
    fig.update_yaxes(**axis)
    fig.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left", "font": {"size": 15}} if title else None,
        height=height, dragmode="select", hovermode="closest", plot_bgcolor="#fbfbfc",
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "left", "x": 0.0, "font": {"size": 12},
                "itemsizing": "constant"},
    )

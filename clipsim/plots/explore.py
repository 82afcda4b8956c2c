"""Plotly figure builders for the app and reports (no Streamlit): similarity histograms, before/after pruning.

Every builder takes plain arrays and returns a `plotly.graph_objects.Figure`; colours come from
`clipsim.plots.palette` (pass `colours=workspace_colours(ws)` so every figure and badge agrees).
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from clipsim.plots.palette import dataset_colours

THRESHOLD_COLOUR = "#222222"
BOUND_COLOUR = "#7f7f7f"
DEFAULT_BINS = 40


def _bins(arrays: list[np.ndarray], bins: int) -> dict:
    """Shared histogram bins over all arrays (so overlaid bars line up)."""
    values = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]) if arrays else np.zeros(0)
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    if hi - lo < 1e-6:
        lo, hi = lo - 0.01, hi + 0.01
    return {"start": lo, "end": hi, "size": (hi - lo) / bins}


def _figure(traces: list[dict], shapes: list[dict], title: str, height: int, x_title: str, xbins: dict,
            mark: float | None = None, annotations: list[dict] | None = None) -> go.Figure:
    """One Figure from plain trace and shape dicts: plotly validates once (add_vline / update_layout per line would
    re-validate the whole layout each time, ~100 ms per histogram)."""
    pad = xbins["size"]
    lo, hi = xbins["start"] - pad, xbins["end"] + pad
    if mark is not None:  # keep a threshold line in view
        lo, hi = min(lo, mark - pad), max(hi, mark + pad)
    layout = {
        "title": {"text": title, "x": 0.0, "xanchor": "left", "font": {"size": 15}}, "barmode": "overlay",
        "height": height, "margin": {"l": 10, "r": 10, "t": 36 if title else 10, "b": 10}, "bargap": 0.02,
        "legend": {"orientation": "h", "yanchor": "top", "y": -0.22, "xanchor": "left", "x": 0.0, "font": {"size": 11}},
        "xaxis": {"title": {"text": x_title}, "range": [lo, hi]}, "yaxis": {"title": {"text": "test images"}},
        "shapes": shapes, "annotations": annotations or [],
    }
    return go.Figure(data=traces, layout=layout)


def _vline(x: float, colour: str, dash: str = "dash", width: float = 1.5) -> dict:
    """A vertical line across the plot at x (a shape dict)."""
    return {"type": "line", "xref": "x", "yref": "paper", "x0": x, "x1": x, "y0": 0, "y1": 1,
            "line": {"color": colour, "dash": dash, "width": width}}


def _median(values: np.ndarray) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if len(values) else None


def _label(name: str, med: float | None) -> str:
    return name if med is None else f"{name} · median {med:.3f}"


def similarity_histogram(
    values: dict[str, np.ndarray], reference: str | None = None, title: str = "", threshold: float | None = None,
    bins: int = DEFAULT_BINS, height: int = 360, colours: dict[str, str] | None = None,
) -> go.Figure:
    """Overlaid histograms of nearest-neighbour similarity s_D(t), one per train set, with dashed medians.

    Args:
        values: {train set name: (n_test,) s_D(t) values}.
        reference: the reference train set (drawn in REFERENCE_COLOUR, listed first).
        title: figure title (e.g. the test set).
        threshold: draw a vertical line at this similarity when given.
        bins: number of shared bins.
        height: figure height in pixels.
        colours: {train set: colour} (default: palette.dataset_colours of these names).

    Returns:
        The figure.
    """
    names = sorted(values, key=lambda n: n != reference)
    colours = colours or dataset_colours(names, (), reference)
    xbins = _bins(list(values.values()), bins)
    traces, shapes = [], []
    for name in names:
        vals = np.asarray(values[name], dtype=np.float64)
        med = _median(vals)
        label = _label(f"s_{name}(t)" + (" (reference)" if name == reference else ""), med)
        traces.append(go.Histogram(x=vals, name=label, xbins=xbins, marker_color=colours[name], opacity=0.6,
                                   hovertemplate="s %{x}<br>%{y} test images<extra>" + name + "</extra>"))
        shapes += [_vline(med, colours[name])] if med is not None else []
    notes = []
    if threshold is not None:
        shapes.append(_vline(threshold, THRESHOLD_COLOUR, "solid", 2))
        notes.append({"x": threshold, "xref": "x", "y": 1, "yref": "paper", "text": f"τ {threshold:.4f}",
                      "showarrow": False, "xanchor": "left", "yanchor": "top", "font": {"size": 11}})
    return _figure(traces, shapes, title, height, "nearest-neighbour cosine similarity s(t)", xbins, threshold, notes)


def _bounds_traces(bounds: np.ndarray, xbins: dict) -> list:
    """Values that are only upper bounds, drawn again as a hatched grey overlay (none: no trace)."""
    if not len(bounds):
        return []
    return [go.Histogram(x=bounds, name=f"upper bounds only ({len(bounds)})", xbins=xbins,
                         marker={"color": "rgba(127,127,127,0.35)", "pattern": {"shape": "/"},
                                 "line": {"color": BOUND_COLOUR, "width": 1}})]


def post_prune_histogram(
    after: np.ndarray, exact: np.ndarray, reference_values: np.ndarray | None, before: np.ndarray | None = None,
    web: str = "web", reference: str = "reference", title: str = "", bins: int = DEFAULT_BINS, height: int = 400,
    colours: dict[str, str] | None = None,
) -> go.Figure:
    """s_web(t) after pruning against s_ref(t), with values that are only upper bounds marked.

    After pruning, a test image whose stored top-k web neighbours were all removed has only an upper bound
    (the k-th stored similarity); those are drawn again as a hatched grey overlay.

    Args:
        after: (n_test,) s_web(t) after pruning (exact or upper bound).
        exact: (n_test,) bool, True where `after` is exact.
        reference_values: (n_test,) s_ref(t), or None when there is no reference.
        before: optional (n_test,) s_web(t) before pruning (drawn as an outline).
        web, reference: train set names for the legend.
        title: figure title.
        bins: number of shared bins.
        height: figure height in pixels.
        colours: {train set: colour} (default: palette.dataset_colours of web and reference).

    Returns:
        The figure.
    """
    after = np.asarray(after, dtype=np.float64)
    exact = np.asarray(exact, dtype=bool)
    arrays = [a for a in (after, reference_values, before) if a is not None]
    xbins = _bins(arrays, bins)
    colours = {**dataset_colours([web, reference], (), reference), **(colours or {})}
    traces, shapes = [], []
    if before is not None:
        traces.append(go.Histogram(x=before, name=_label(f"s_{web}(t) before", _median(before)), xbins=xbins,
                                   marker_color="rgba(0,0,0,0)", marker_line={"color": "#999999", "width": 1}))
    if reference_values is not None:
        med = _median(reference_values)
        traces.append(go.Histogram(x=reference_values, name=_label(f"s_{reference}(t) (reference)", med),
                                   xbins=xbins, marker_color=colours[reference], opacity=0.6))
        shapes += [_vline(med, colours[reference])] if med is not None else []
    med = _median(after)
    traces.append(go.Histogram(x=after, name=_label(f"s_{web}(t) after pruning", med), xbins=xbins,
                               marker_color=colours[web], opacity=0.6))
    shapes += [_vline(med, colours[web])] if med is not None else []
    traces += _bounds_traces(after[~exact], xbins)
    return _figure(traces, shapes, title, height, "nearest-neighbour cosine similarity s(t)", xbins)


def removal_curve(curves: dict[str, tuple[np.ndarray, np.ndarray]], n: int, cut: float | None, x_title: str,
                  colours: dict[str, str] | None = None, title: str = "") -> go.Figure:
    """Share of web samples a cut would remove, as a function of the cut, from stored cumulative histograms.

    Args:
        curves: {name: (edges (b,) float32, above (b,) int64: how many values are > each edge)} per test set
            (and 'combined'); clipsim.prune.columns.Column.hist.
        n: web samples.
        cut: the current cut, drawn as a line (None: none).
        x_title: the cut's name, e.g. 'τ' or 'δ'.
        colours: {name: colour}.

    Returns:
        The figure (x: cut, y: share removed), zoomed to where the share changes.
    """
    colours = colours or dataset_colours(list(curves))
    traces, lo, hi = [], np.inf, -np.inf
    for name, (edges, above) in curves.items():
        share = above / max(n, 1)
        moving = np.flatnonzero((share > 0) & (share < 1))
        if len(moving):
            lo, hi = min(lo, float(edges[max(moving[0] - 1, 0)])), max(hi, float(edges[min(moving[-1] + 1, len(edges) - 1)]))
        traces.append({"type": "scatter", "mode": "lines", "x": edges, "y": share, "name": name,
                       "line": {"color": colours.get(name, THRESHOLD_COLOUR), "width": 2 if name == "combined" else 1.2,
                                "shape": "hv"}})
    xbins = {"start": lo if np.isfinite(lo) else -1.0, "end": hi if np.isfinite(hi) else 1.0, "size": 0.01}
    fig = _figure(traces, [_vline(cut, THRESHOLD_COLOUR)] if cut is not None else [], title, 260, x_title, xbins, cut)
    fig.update_yaxes(title_text="share of web removed", tickformat=".0%")
    return fig

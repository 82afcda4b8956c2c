"""Plotly figure builders for the app and reports (no Streamlit): similarity histograms, before/after pruning.

Every builder takes plain arrays and returns a `plotly.graph_objects.Figure`; colours are stable per role
(the reference train set is always drawn in REFERENCE_COLOUR).
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

REFERENCE_COLOUR = "#4c78a8"  # the curated/ImageNet-like reference: calm blue, as in the paper's figures
PALETTE = ["#e45756", "#f58518", "#54a24b", "#b279a2", "#9d755d", "#72b7b2"]  # other train sets in order
THRESHOLD_COLOUR = "#222222"
BOUND_COLOUR = "#7f7f7f"
DEFAULT_BINS = 40


def train_colours(names: list[str], reference: str | None) -> dict[str, str]:
    """A colour per train set name; the reference gets REFERENCE_COLOUR, others PALETTE in order."""
    others = [n for n in names if n != reference]
    colours = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(others)}
    if reference in names:
        colours[reference] = REFERENCE_COLOUR
    return colours


def _bins(arrays: list[np.ndarray], bins: int) -> dict:
    """Shared histogram bins over all arrays (so overlaid bars line up)."""
    values = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]) if arrays else np.zeros(0)
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    if hi - lo < 1e-6:
        lo, hi = lo - 0.01, hi + 0.01
    return {"start": lo, "end": hi, "size": (hi - lo) / bins}


def _layout(fig: go.Figure, title: str, height: int, x_title: str, xbins: dict, mark: float | None = None
            ) -> go.Figure:
    pad = xbins["size"]
    lo, hi = xbins["start"] - pad, xbins["end"] + pad
    if mark is not None:  # keep a threshold line in view
        lo, hi = min(lo, mark - pad), max(hi, mark + pad)
    fig.update_xaxes(range=[lo, hi])
    fig.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left", "font": {"size": 15}}, barmode="overlay", height=height,
        margin={"l": 10, "r": 10, "t": 36 if title else 10, "b": 10}, bargap=0.02,
        legend={"orientation": "h", "yanchor": "top", "y": -0.22, "xanchor": "left", "x": 0.0, "font": {"size": 11}},
        xaxis_title=x_title, yaxis_title="test images",
    )
    return fig


def _median(values: np.ndarray) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if len(values) else None


def _median_line(fig: go.Figure, med: float | None, colour: str) -> None:
    """A dashed vertical line at the median (the value itself is in the trace's legend entry)."""
    if med is not None:
        fig.add_vline(x=med, line={"color": colour, "dash": "dash", "width": 1.5})


def _label(name: str, med: float | None) -> str:
    return name if med is None else f"{name} · median {med:.3f}"


def similarity_histogram(
    values: dict[str, np.ndarray], reference: str | None = None, title: str = "", threshold: float | None = None,
    bins: int = DEFAULT_BINS, height: int = 360,
) -> go.Figure:
    """Overlaid histograms of nearest-neighbour similarity s_D(t), one per train set, with dashed medians.

    Args:
        values: {train set name: (n_test,) s_D(t) values}.
        reference: the reference train set (drawn in REFERENCE_COLOUR, listed first).
        title: figure title (e.g. the test set).
        threshold: draw a vertical line at this similarity when given.
        bins: number of shared bins.
        height: figure height in pixels.

    Returns:
        The figure.
    """
    names = sorted(values, key=lambda n: n != reference)
    colours = train_colours(names, reference)
    xbins = _bins(list(values.values()), bins)
    fig = go.Figure()
    for name in names:
        vals = np.asarray(values[name], dtype=np.float64)
        med = _median(vals)
        label = _label(f"s_{name}(t)" + (" (reference)" if name == reference else ""), med)
        fig.add_trace(go.Histogram(x=vals, name=label, xbins=xbins, marker_color=colours[name], opacity=0.6,
                                   hovertemplate="s %{x}<br>%{y} test images<extra>" + name + "</extra>"))
        _median_line(fig, med, colours[name])
    if threshold is not None:
        fig.add_vline(x=threshold, line={"color": THRESHOLD_COLOUR, "width": 2}, annotation_text=f"τ {threshold:.3f}",
                      annotation_position="top right", annotation_font={"size": 11})
    return _layout(fig, title, height, "nearest-neighbour cosine similarity s(t)", xbins, threshold)


def _bounds_trace(fig: go.Figure, bounds: np.ndarray, xbins: dict) -> None:
    """Values that are only upper bounds, drawn again as a hatched grey overlay."""
    if len(bounds):
        fig.add_trace(go.Histogram(x=bounds, name=f"upper bounds only ({len(bounds)})", xbins=xbins,
                                   marker={"color": "rgba(127,127,127,0.35)", "pattern": {"shape": "/"},
                                           "line": {"color": BOUND_COLOUR, "width": 1}}))


def post_prune_histogram(
    after: np.ndarray, exact: np.ndarray, reference_values: np.ndarray | None, before: np.ndarray | None = None,
    web: str = "web", reference: str = "reference", title: str = "", bins: int = DEFAULT_BINS, height: int = 400,
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

    Returns:
        The figure.
    """
    after = np.asarray(after, dtype=np.float64)
    exact = np.asarray(exact, dtype=bool)
    arrays = [a for a in (after, reference_values, before) if a is not None]
    xbins = _bins(arrays, bins)
    colours = train_colours([web, reference], reference)
    fig = go.Figure()
    if before is not None:
        fig.add_trace(go.Histogram(x=before, name=_label(f"s_{web}(t) before", _median(before)), xbins=xbins,
                                   marker_color="rgba(0,0,0,0)", marker_line={"color": "#999999", "width": 1}))
    if reference_values is not None:
        med = _median(reference_values)
        fig.add_trace(go.Histogram(x=reference_values, name=_label(f"s_{reference}(t) (reference)", med), xbins=xbins,
                                   marker_color=colours[reference], opacity=0.6))
        _median_line(fig, med, colours[reference])
    med = _median(after)
    fig.add_trace(go.Histogram(x=after, name=_label(f"s_{web}(t) after pruning", med), xbins=xbins,
                               marker_color=colours[web], opacity=0.6))
    _median_line(fig, med, colours[web])
    _bounds_trace(fig, after[~exact], xbins)
    return _layout(fig, title, height, "nearest-neighbour cosine similarity s(t)", xbins)

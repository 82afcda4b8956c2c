"""Figure builders: one histogram per train set on shared bins, medians and bounds shown, reference coloured."""
from __future__ import annotations

import numpy as np

from clipsim import plots


def test_similarity_histogram_overlays_train_sets_with_medians():
    rng = np.random.default_rng(0)
    values = {"web": rng.uniform(0.6, 1.0, 50).astype(np.float32), "curated": rng.uniform(0.2, 0.7, 50)}
    fig = plots.similarity_histogram(values, reference="curated", title="sketch", threshold=0.9)
    names = [t.name for t in fig.data]
    assert names[0].startswith("s_curated(t) (reference)")  # the reference first, in its colour
    assert fig.data[0].marker.color == plots.REFERENCE_COLOUR
    for trace, name in zip(fig.data, ["curated", "web"]):
        assert trace.name.endswith(f"median {np.median(values[name]):.3f}")
        assert np.array_equal(np.asarray(trace.x), np.asarray(values[name], dtype=np.float64))
    assert fig.data[0].xbins.size == fig.data[1].xbins.size and fig.data[0].xbins.start == fig.data[1].xbins.start
    lines = [s.x0 for s in fig.layout.shapes]
    assert 0.9 in lines and np.median(values["web"]) in lines  # threshold and median lines


def test_threshold_outside_the_data_stays_in_view():
    fig = plots.similarity_histogram({"web": np.array([0.8, 0.85, 0.9])}, threshold=0.5)
    lo, hi = fig.layout.xaxis.range
    assert lo < 0.5 < hi


def test_post_prune_histogram_marks_upper_bounds():
    after = np.array([0.5, 0.6, 0.7, 0.8], dtype=np.float32)
    exact = np.array([True, False, True, False])
    fig = plots.post_prune_histogram(after, exact, np.array([0.55, 0.65, 0.75, 0.7]), before=after + 0.1,
                                     web="web", reference="curated")
    bounds = next(t for t in fig.data if t.name.startswith("upper bounds"))
    assert bounds.name == "upper bounds only (2)"
    assert np.allclose(np.asarray(bounds.x), [0.6, 0.8])
    fig = plots.post_prune_histogram(after, np.ones(4, dtype=bool), None)
    assert not any(t.name.startswith("upper bounds") for t in fig.data)
    assert [t.name.split(" ·")[0] for t in fig.data] == ["s_web(t) after pruning"]

"""Map page helpers: cached map points, the selection kept in the URL, the selection gallery, the compute controls.

The stored map is read, never refitted: points are cached by the map's config.json modification time.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from clipsim import plots, views
from clipsim.errors import ClipsimError
from clipsim.maps import compute as mapping
from clipsim.maps import rows as map_rows
from clipsim.maps import view as map_view
from clipsim.names import read_only
from clipsim.plots import maps as plots_map
from clipsim.search.result import completed_searches
from clipsim.ui import gallery, loaders
from clipsim.ui.jobs import job_monitor, launch_button
from clipsim.workspace import Workspace

SEL = "sel"  # query parameter of the selection shapes
CHART = "map_chart"  # widget key of the plotly chart
THUMB, TEST_THUMB, K = 80, 96, 4  # gallery thumbnails (px) and neighbours per train set


@st.cache_data(show_spinner="Reading the map…", max_entries=4)
def _points(root: str, name: str, stamp: int, max_points: int, _ws: Workspace) -> tuple[pd.DataFrame, int]:
    return map_view.map_points(_ws, mapping.load_map(_ws, name), max_points)


def points(ws: Workspace, info: mapping.MapInfo, max_points: int = map_view.MAX_DRAW) -> tuple[pd.DataFrame, int]:
    """(points to draw with their attributes, the map's total points), cached until the map is rewritten."""
    stamp = (info.folder / "config.json").stat().st_mtime_ns
    return _points(str(ws.root.resolve()), info.name, stamp, max_points, ws)


@st.cache_data(show_spinner=False, max_entries=16)
def _removed(root: str, name: str, stamp: int, manifest: str, _ws: Workspace, _points: pd.DataFrame) -> np.ndarray:
    from clipsim.prune.manifest import load_manifest

    return map_view.removed_by(_ws, _points, load_manifest(_ws, manifest))


def removed(ws: Workspace, info: mapping.MapInfo, pts: pd.DataFrame, manifest: str) -> np.ndarray:
    """'removed' / 'kept' / 'not pruned' per point for a manifest (cached)."""
    stamp = (info.folder / "config.json").stat().st_mtime_ns
    stamp += (ws.path("manifests", manifest, "summary.json").stat().st_mtime_ns)
    return _removed(str(ws.root.resolve()), info.name, stamp, manifest, ws, pts)


@st.cache_data(show_spinner=False, max_entries=8)
def _stale(root: str, name: str, stamp: int, stamps: tuple, _ws: Workspace) -> list[str]:
    return mapping.load_map(_ws, name).stale_reasons()


def stale_reasons(ws: Workspace, info: mapping.MapInfo) -> list[str]:
    """Why the map no longer matches its embeddings (MapInfo.stale_reasons), cached until the map or an embedding
    folder changes."""
    stamp = (info.folder / "config.json").stat().st_mtime_ns
    return _stale(str(ws.root.resolve()), info.name, stamp, loaders.embedding_stamps(ws), ws)


@st.cache_resource(show_spinner=False, max_entries=16)
def _figure(key: tuple, colour: str, shown: tuple, shapes: tuple, _ws: Workspace, _info, _points: pd.DataFrame,
            _manifest: str | None):
    view = _points[_points["dataset"].isin(shown)].reset_index(drop=True)
    values = None
    if _manifest:
        values = removed(_ws, _info, _points, _manifest)[_points["dataset"].isin(shown).to_numpy()]
    parsed = [map_view.parse_shape(t) for t in shapes]
    chosen = map_view.selected(view, parsed)
    fig = plots_map.map_figure(view, colour if colour != "manifest" or _manifest else "dataset", values,
                               plots.workspace_colours(_ws), chosen if parsed else None)
    return fig, view, chosen


def figure(ws: Workspace, info: mapping.MapInfo, pts: pd.DataFrame, colour: str, shown: list[str],
           manifest: str | None, shapes: list[map_view.Shape]):
    """(the map figure, the points drawn, the selected positions among them), cached per view: reopening a map or
    going back to a colouring costs nothing.

    Args:
        ws, info, pts: the workspace, the map and its points (see points()).
        colour: a map_view.COLOURS entry; shown: datasets drawn; manifest: for colour 'manifest';
        shapes: the selection (url_shapes()).
    """
    stamp = (info.folder / "config.json").stat().st_mtime_ns
    mstamp = loaders.file_stamp(ws.path("manifests", manifest, "summary.json")) if manifest else ()
    texts = tuple(map_view.format_shape(s) for s in shapes)
    key = (str(ws.root.resolve()), info.name, stamp, len(pts), mstamp, manifest)
    return _figure(key, colour, tuple(shown), texts, ws, info, pts, manifest)


def url_shapes() -> list[map_view.Shape]:
    """The selection in the URL (invalid entries are dropped from it)."""
    raw = st.query_params.get_all(SEL)
    shapes = []
    for text in raw:
        try:
            shapes.append(map_view.parse_shape(text))
        except ValueError:
            continue
    if len(shapes) != len(raw):
        set_url_shapes(shapes)
    return shapes


def set_url_shapes(shapes: list[map_view.Shape]) -> None:
    """Write the selection into the URL (none: remove it)."""
    if shapes:
        st.query_params[SEL] = [map_view.format_shape(s) for s in shapes]
    elif SEL in st.query_params:
        del st.query_params[SEL]


def on_select(pts: pd.DataFrame):
    """The chart's on_select callback: the new selection goes into the URL, the gallery back to its first page."""

    def _store() -> None:
        event = st.session_state.get(CHART) or {}
        set_url_shapes(map_view.shapes_from_event(event.get("selection") or {}, pts))
        st.session_state.pop("selpage", None)

    return _store


@st.cache_resource(show_spinner=False, max_entries=8)
def _nearest(root: str, train: str, fingerprints: tuple, _ws: Workspace) -> dict:
    return map_rows.nearest_tests(_ws, train)


def _train_stats(ws: Workspace, train: str) -> dict:
    fps = tuple(completed_searches(ws, t).get(train) for t in ws.dataset_names("test"))
    return _nearest(str(ws.root.resolve()), train, fps, ws)


def selection_gallery(ws: Workspace, pts: pd.DataFrame, chosen: np.ndarray, per_page: int = 8) -> None:
    """The selected points, closest first, grouped by dataset: each image beside its neighbours."""
    ref, colours = ws.reference, plots.workspace_colours(ws)
    planted = loaders.planted(ws)
    sub = pts.iloc[chosen].copy()
    sub["_s"] = sub["similarity"].fillna(-2.0)
    for dataset, group in sub.groupby("dataset", sort=False):
        group = group.sort_values("_s", ascending=False, kind="stable")
        rows = group["row"].to_numpy(np.int64)[:per_page]
        role = group["role"].iat[0]
        st.markdown(f"**{dataset}** · {role} set · {len(group):,} selected"
                    + (f", the {len(rows)} closest shown" if len(group) > len(rows) else ""))
        try:
            if role == "test":
                nn = loaders.test_neighbours(ws, dataset)
                trains = [t for t in nn.trains if t != ref] + [t for t in nn.trains if t == ref]  # web sets first
                grows = views.gallery_rows(ws, nn, rows, K, THUMB, trains, planted, TEST_THUMB)
            else:
                grows = map_rows.train_rows(ws, dataset, rows, THUMB, _train_stats(ws, dataset), TEST_THUMB)
        except (ClipsimError, IndexError) as err:  # IndexError: a stale map's rows beyond the current set
            st.caption(f"No neighbours to show for {dataset}: {err}")
            continue
        gallery.show(gallery.gallery_html(grows, THUMB, TEST_THUMB, ref, colours=colours,
                                          roles=("test", "train") if role == "test" else ("train", "test")))


def compute_controls(ws: Workspace, key: str = "map_compute") -> None:
    """Settings and the launch button of a map job (read-only: a notice and the command instead), and its jobs."""
    if read_only():
        st.info("Read-only presentation mode: computing maps is disabled here; compute one on a writable copy:",
                icon=":material/lock:")
        st.code(f"python -m clipsim map --workspace {ws.root} --wait", language="bash")
        return
    if not mapping.umap_available():
        st.warning(f"Cannot compute a map here: {mapping.UMAP_MISSING}.", icon=":material/warning:")
        return
    from clipsim.cli.report import map_params

    c = st.columns(4)
    sample = c[0].number_input("Points fitted", 100, 10_000_000, mapping.DEFAULT_SAMPLE, step=10_000, key=f"{key}_n",
                               help="stratified by dataset; the rest are placed with the fitted model")
    neighbours = c[1].number_input("UMAP n_neighbors", 2, 200, mapping.UMAP_DEFAULTS["n_neighbors"], key=f"{key}_k")
    min_dist = c[2].number_input("UMAP min_dist", 0.0, 1.0, mapping.UMAP_DEFAULTS["min_dist"], step=0.05,
                                 key=f"{key}_d")
    seed = c[3].number_input("Seed", 0, 2**31 - 1, 0, key=f"{key}_seed")
    params = map_params(None, int(sample), int(seed), mapping.DEFAULT_NAME, int(neighbours), float(min_dist))
    launch_button(ws, "Compute map", "umap", params, key=f"{key}_go",
                  help_text="runs as a job; the first UMAP fit in a process spends 10-25 s compiling")
    st.caption(f"Or from the command line: `python -m clipsim map --workspace {ws.root} --wait`")
    job_monitor(ws, kinds="umap", limit=3, key=f"{key}_jobs")

"""What the Map page draws, without Streamlit: a stratified subset of a stored map with each point's text and colour
attributes (class, domain, nearest-neighbour similarity, removed by a manifest), and the points a selection holds.

Selections are kept as shapes (boxes, lasso polygons, or clicked points) so a URL can carry them: `box:x0,x1,y0,y1`,
`lasso:x,y;x,y;...`, `pts:dataset:row,dataset:row`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from clipsim.errors import ClipsimError
from clipsim.maps.compute import MapInfo, allocate_sample, sample_rows
from clipsim.search.result import completed_searches

COLOURS = ("dataset", "class", "domain", "similarity", "manifest")
MAX_DRAW = 100_000  # WebGL stays smooth up to about this many points; beyond, a stratified subset is drawn
LASSO_VERTICES = 64  # a lasso kept in a URL is thinned to this many vertices
UNKNOWN = "unknown"


def draw_subset(coords: pd.DataFrame, max_points: int = MAX_DRAW, seed: int = 0) -> np.ndarray:
    """Positions of a stratified subset of a map's points (all of them when they fit), increasing.

    Args:
        coords: the stored coordinates (MapInfo.coords()).
        max_points: most points to draw.
        seed: seed of the subset.

    Returns:
        (m,) int64 positions into `coords`.
    """
    groups = {name: np.flatnonzero(coords["dataset"].to_numpy() == name) for name in pd.unique(coords["dataset"])}
    sizes = allocate_sample({n: len(p) for n, p in groups.items()}, max_points)
    picked = [pos[sample_rows(len(pos), sizes[n], seed, n)] for n, pos in groups.items()]
    return np.sort(np.concatenate(picked)).astype(np.int64) if picked else np.zeros(0, np.int64)


def shown_train(ws, test: str) -> str | None:
    """The train set whose s(t) a test point shows: the first web set searched against `test`, else any searched
    train set (the reference), else None."""
    searched = completed_searches(ws, test)
    return next((t for t in ws.web_sets() if t in searched), next(iter(searched), None))


def _similarity(ws, dataset: str, rows: np.ndarray) -> np.ndarray:
    """s_web(t) for test rows; max_t cos(x, t) over every searched test set for train rows; NaN when not searched."""
    out = np.full(len(rows), np.nan, np.float32)
    if ws.dataset(dataset).role == "test":
        web = shown_train(ws, dataset)
        if web is not None:
            out[:] = ws.search_result(dataset, web).arrays()[0][rows, 0]
        return out
    for test in ws.dataset_names("test"):
        if dataset in completed_searches(ws, test):
            out = np.fmax(out, ws.search_result(test, dataset).train_stat("max_sim")[rows])
    return out


def _truth(ws, dataset: str) -> pd.DataFrame | None:
    """Per-sample ground truth (key -> domain, label) where a workspace has one (the demo's web set)."""
    path = ws.path("demo", f"{dataset}_truth.parquet")
    return pd.read_parquet(path, columns=["key", "domain", "label"]).set_index("key") if path.exists() else None


def _attributes(ws, dataset: str, part: pd.DataFrame) -> pd.DataFrame:
    """role, text (caption, else class name), class, domain, similarity for one dataset's points."""
    ds = ws.dataset(dataset)
    emb = ws.embeddings(dataset)
    have = set(emb.columns())
    meta = emb.metadata_at(part["row"].to_numpy(), [c for c in ("caption", "label") if c in have])
    labels = meta["label"].fillna(-1).astype(np.int64).to_numpy() if "label" in meta else np.full(len(part), -1)
    domain = np.full(len(part), ds.extra.get("domain") or UNKNOWN, dtype=object)
    truth = _truth(ws, dataset)
    if truth is not None:  # per-sample truth fills what the dataset itself does not know
        found = truth.reindex(part["key"].to_numpy())
        domain = found["domain"].fillna(UNKNOWN).to_numpy(object)
        labels = np.where(labels >= 0, labels, found["label"].fillna(-1).astype(np.int64).to_numpy())
    classes = ds.classes or []
    names = np.array([classes[i] if 0 <= i < len(classes) else UNKNOWN for i in labels], dtype=object)
    captions = meta["caption"].to_numpy(object) if "caption" in meta else np.full(len(part), None, object)
    text = np.array([c if isinstance(c, str) and c else n for c, n in zip(captions, names)], dtype=object)
    return pd.DataFrame({"role": ds.role, "text": text, "class": names, "domain": domain,
                         "similarity": _similarity(ws, dataset, part["row"].to_numpy())}, index=part.index)


def map_points(ws, info: MapInfo, max_points: int = MAX_DRAW) -> tuple[pd.DataFrame, int]:
    """The points to draw: a stratified subset of the map with each point's attributes.

    Args:
        ws: the workspace.
        info: the stored map.
        max_points: most points to draw.

    Returns:
        (frame with columns dataset, key, row, x, y, fitted, role, text, class, domain, similarity; the map's
        total number of points).
    """
    coords = info.coords()
    points = coords.iloc[draw_subset(coords, max_points, info.config.get("seed", 0))].reset_index(drop=True)
    parts = []
    for dataset in pd.unique(points["dataset"]):
        part = points[points["dataset"] == dataset]
        try:
            parts.append(_attributes(ws, dataset, part))
        except (ClipsimError, IndexError):  # a dataset removed or re-embedded since: draw it without attributes
            parts.append(pd.DataFrame({"role": "train", "text": "", "class": UNKNOWN, "domain": UNKNOWN,
                                       "similarity": np.nan}, index=part.index))
    extra = pd.concat(parts).reindex(points.index) if parts else pd.DataFrame(index=points.index)
    return pd.concat([points, extra], axis=1), len(coords)


def removed_by(ws, points: pd.DataFrame, manifest) -> np.ndarray:
    """Per point: 'removed' or 'kept' for points of the manifest's web set, 'not pruned' for every other set.

    Args:
        ws: the workspace.
        points: map points (dataset, key columns).
        manifest: a clipsim.manifest.Manifest.

    Returns:
        (n,) object array.
    """
    out = np.full(len(points), "not pruned", dtype=object)
    web = (points["dataset"] == manifest.summary["web"]).to_numpy()
    gone = np.isin(points["key"].to_numpy()[web].astype(str), manifest.removed_keys().astype(str))
    out[np.flatnonzero(web)] = np.where(gone, "removed", "kept")
    return out


@dataclass(frozen=True)
class Shape:
    """A selection: kind 'box' (xs = (x0, x1), ys = (y0, y1)), 'lasso' (polygon vertices) or 'pts' (refs)."""

    kind: str
    xs: tuple = ()
    ys: tuple = ()
    refs: tuple = ()  # 'pts': (dataset, row) pairs


def shapes_from_event(selection: dict, points: pd.DataFrame) -> list[Shape]:
    """Shapes of a plotly selection event (Streamlit's `selection` dict): boxes and lassos, else clicked points.

    Points carry their position in `points` as customdata[0].
    """
    shapes = [Shape("box", tuple(b["x"][:2]), tuple(b["y"][:2])) for b in selection.get("box") or [] if "x" in b]
    for lasso in selection.get("lasso") or []:
        xs, ys = list(lasso.get("x") or []), list(lasso.get("y") or [])
        step = max(1, -(-len(xs) // LASSO_VERTICES))
        if len(xs) >= 3:
            shapes.append(Shape("lasso", tuple(xs[::step]), tuple(ys[::step])))
    if not shapes and selection.get("points"):
        idx = [int(p["customdata"][0]) for p in selection["points"] if p.get("customdata") is not None]
        idx = [i for i in idx if 0 <= i < len(points)]
        refs = tuple((str(points["dataset"].iat[i]), int(points["row"].iat[i])) for i in idx)
        shapes.append(Shape("pts", refs=refs))
    return shapes


def format_shape(shape: Shape) -> str:
    """The URL form of a shape (4 decimals)."""
    if shape.kind == "pts":
        return "pts:" + ",".join(f"{d}:{r}" for d, r in shape.refs)
    if shape.kind == "box":
        return "box:" + ",".join(f"{v:.4f}" for v in (*shape.xs, *shape.ys))
    return "lasso:" + ";".join(f"{x:.4f},{y:.4f}" for x, y in zip(shape.xs, shape.ys))


def parse_shape(text: str) -> Shape:
    """Inverse of format_shape.

    Raises:
        ValueError: text that is not a shape.
    """
    kind, _, body = text.partition(":")
    if kind == "box":
        values = [float(v) for v in body.split(",")]
        if len(values) != 4 or not np.all(np.isfinite(values)):
            raise ValueError(f"box {body!r} needs 4 finite numbers")
        return Shape("box", tuple(values[:2]), tuple(values[2:]))
    if kind == "lasso":
        pairs = [tuple(float(v) for v in p.split(",")) for p in body.split(";")]
        if len(pairs) < 3 or any(len(p) != 2 for p in pairs) or not np.all(np.isfinite(pairs)):
            raise ValueError(f"lasso {body!r} needs at least 3 x,y vertices")
        return Shape("lasso", tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))
    if kind == "pts":
        refs = tuple((d, int(r)) for d, _, r in (p.rpartition(":") for p in body.split(",")) if d)
        if not refs:
            raise ValueError(f"points {body!r} need dataset:row entries")
        return Shape("pts", refs=refs)
    raise ValueError(f"selection {text!r} is not box:..., lasso:... or pts:...")


def _in_polygon(x: np.ndarray, y: np.ndarray, xs: tuple, ys: tuple) -> np.ndarray:
    """Even-odd rule: is each point inside the polygon with vertices (xs, ys)?"""
    inside = np.zeros(len(x), bool)
    px, py = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    for i in range(len(px)):
        x0, y0, x1, y1 = px[i - 1], py[i - 1], px[i], py[i]
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < at)
    return inside


def selected(points: pd.DataFrame, shapes: list[Shape]) -> np.ndarray:
    """Positions in `points` inside any of the shapes (union), increasing.

    Returns:
        (m,) int64.
    """
    x, y = points["x"].to_numpy(np.float64), points["y"].to_numpy(np.float64)
    mask = np.zeros(len(points), bool)
    for shape in shapes:
        if shape.kind == "box":
            mask |= (x >= min(shape.xs)) & (x <= max(shape.xs)) & (y >= min(shape.ys)) & (y <= max(shape.ys))
        elif shape.kind == "lasso":
            mask |= _in_polygon(x, y, shape.xs, shape.ys)
        else:
            wanted = pd.MultiIndex.from_tuples(shape.refs, names=["dataset", "row"])
            mask |= pd.MultiIndex.from_arrays([points["dataset"], points["row"]]).isin(wanted)
    return np.flatnonzero(mask).astype(np.int64)

"""Data behind the Explore pages, without Streamlit: a test set's neighbours in every train set, gallery order,
page rows with thumbnails, and the test images just above/below a similarity threshold.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from clipsim.errors import WorkspaceError
from clipsim.images import Thumb, dataset_thumbs, frame_thumbs, locator_frame
from clipsim.prune.stats import floor32
from clipsim.search.result import completed_searches

SORTS = ("nearest", "least", "dataset")  # most similar first (near-duplicates), least covered first, stored order


@dataclass
class TestNeighbours:
    """A test set's stored top-k neighbours in every searched train set.

    Attributes:
        test: test set name.
        keys: (n,) object array of test keys, row-aligned with the embeddings.
        labels: (n,) int64 class index (-1 unknown).
        classes: class names of the test set (or None).
        sims: {train: (n, k) float32 similarities, sorted decreasing}.
        ids: {train: (n, k) int64 global train rows, -1 where the train set had < k rows}.
        fingerprints: {train: search fingerprint}.
    """

    test: str
    keys: np.ndarray
    labels: np.ndarray
    classes: list[str] | None
    sims: dict[str, np.ndarray] = field(default_factory=dict)
    ids: dict[str, np.ndarray] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    _rows: dict[str, int] | None = field(default=None, repr=False)

    @property
    def trains(self) -> list[str]:
        """Train sets with a stored search, in workspace order."""
        return list(self.sims)

    def nn(self, train: str) -> np.ndarray:
        """s_train(t) for every test image: (n,) float32."""
        return self.sims[train][:, 0]

    def row_of(self, key: str) -> int | None:
        """The row of a test key, or None when the key is not in the set."""
        if self._rows is None:
            self._rows = {str(k): i for i, k in enumerate(self.keys)}
        return self._rows.get(key)

    def class_name(self, label: int) -> str:
        """Class name of a label index ('' when unknown)."""
        if self.classes and 0 <= int(label) < len(self.classes):
            return self.classes[int(label)]
        return ""


def load_test_neighbours(ws, test: str) -> TestNeighbours:
    """Read a test set's keys, labels and stored neighbours in every searched train set.

    Raises:
        WorkspaceError: the test set has no completed search (the message names the command).
    """
    fingerprints = completed_searches(ws, test)
    if not fingerprints:
        raise WorkspaceError(
            f"test set {test!r} has no completed search in {ws.root}; run "
            f"`python -m clipsim search --workspace {ws.root}`"
        )
    emb = ws.embeddings(test)
    meta = emb.metadata([c for c in ("key", "label") if c in emb.columns()])
    labels = meta["label"].fillna(-1).to_numpy(np.int64) if "label" in meta else np.full(len(meta), -1, np.int64)
    out = TestNeighbours(test, meta["key"].to_numpy(), labels, ws.dataset(test).classes, fingerprints=fingerprints)
    for train in fingerprints:
        out.sims[train], out.ids[train] = ws.search_result(test, train).arrays()
    return out


def gallery_order(
    nn: TestNeighbours, sort_train: str, sort: str = "nearest", labels: list[int] | None = None,
    sim_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Test rows to show, filtered by class and by s_sort_train(t) range, in the chosen order.

    Args:
        nn: the test set's neighbours.
        sort_train: train set whose s(t) sorts and filters.
        sort: 'nearest' (highest s first), 'least' (lowest first) or 'dataset' (stored order).
        labels: keep only these class indices (None or empty: all).
        sim_range: keep lo <= s(t) <= hi (None: all).

    Returns:
        (m,) int64 row indices into the test set.
    """
    if sort not in SORTS:
        raise ValueError(f"sort {sort!r} is not one of {SORTS}")
    s = nn.nn(sort_train).astype(np.float64)
    keep = np.ones(len(s), dtype=bool)
    if labels:
        keep &= np.isin(nn.labels, np.asarray(labels, dtype=np.int64))
    if sim_range is not None:
        keep &= (s >= sim_range[0]) & (s <= sim_range[1])
    rows = np.flatnonzero(keep)
    if sort == "dataset":
        return rows.astype(np.int64)
    order = np.argsort(-s[rows] if sort == "nearest" else s[rows], kind="stable")  # ties keep dataset order
    return rows[order].astype(np.int64)


@dataclass
class Tile:
    """One image in a gallery: thumbnail, key, similarity to its query (None for the query), text, planted flag."""

    thumb: Thumb
    key: str
    similarity: float | None
    text: str
    planted: bool = False


@dataclass
class GalleryRow:
    """A test image and its top-k neighbours in each train set."""

    row: int
    test: Tile
    neighbours: dict[str, list[Tile]]


def planted_pairs(ws) -> set[tuple[str, str, str]]:
    """(test_key, train set, train_key) of the demo's planted near-duplicates; empty without ground truth."""
    path = ws.path("demo", "planted.parquet")
    if not path.exists():
        return set()
    table = pd.read_parquet(path, columns=["test_key", "train_dataset", "train_key"])
    return set(zip(table["test_key"], table["train_dataset"], table["train_key"]))


def tile_texts(frame: pd.DataFrame, classes: list[str] | None) -> list[str]:
    """Per row of a metadata frame (caption, label): the caption where there is one, else the class name (else '')."""
    out = []
    for caption, label in zip(frame["caption"], frame["label"]):
        if isinstance(caption, str) and caption:
            out.append(caption)
        elif classes and pd.notna(label) and 0 <= int(label) < len(classes):
            out.append(classes[int(label)])
        else:
            out.append("")
    return out


def gallery_rows(
    ws, nn: TestNeighbours, rows: np.ndarray, k: int, size: int, trains: list[str] | None = None,
    planted: set | None = None, test_size: int | None = None,
) -> list[GalleryRow]:
    """Thumbnails and texts for some test rows and their top-k neighbours (one metadata read per dataset).

    Args:
        ws: the workspace.
        nn: the test set's neighbours.
        rows: test rows to show (one page).
        k: neighbours per train set (capped at the stored k).
        size: neighbour thumbnail size in pixels.
        trains: train sets to show (default all searched).
        planted: (test_key, train, train_key) pairs to flag (see planted_pairs).
        test_size: test thumbnail size (default `size`).

    Returns:
        One GalleryRow per test row, in order.
    """
    rows = np.asarray(rows, dtype=np.int64)
    planted = planted or set()
    test_thumbs = dataset_thumbs(ws, nn.test, rows, test_size or size)
    test_texts = [nn.class_name(label) for label in nn.labels[rows]]
    out = [GalleryRow(int(r), Tile(th, str(nn.keys[r]), None, txt), {})
           for r, th, txt in zip(rows, test_thumbs, test_texts)]
    for train in trains or nn.trains:
        tiles = _neighbour_tiles(ws, nn, train, rows, k, size)
        for grow, row_tiles in zip(out, tiles):
            for tile in row_tiles:
                tile.planted = (grow.test.key, train, tile.key) in planted
            grow.neighbours[train] = row_tiles
    return out


def _neighbour_tiles(ws, nn: TestNeighbours, train: str, rows: np.ndarray, k: int, size: int) -> list[list[Tile]]:
    """Per test row, its top-k `train` neighbours as tiles (one metadata read for the whole page)."""
    kk = min(k, nn.sims[train].shape[1])
    ids, sims = nn.ids[train][rows, :kk], nn.sims[train][rows, :kk]
    valid = ids >= 0  # -1: the train set had fewer than k rows
    frame = locator_frame(ws, train, ids[valid])
    thumbs, texts = frame_thumbs(frame, size), tile_texts(frame, ws.dataset(train).classes)
    keys = frame["key"].astype(str).to_numpy()
    flat = iter(range(len(frame)))
    out = []
    for i in range(len(rows)):
        out.append([])
        for j in np.flatnonzero(valid[i]):
            n = next(flat)
            out[-1].append(Tile(thumbs[n], keys[n], float(sims[i, j]), texts[n]))
    return out


def row_tiles(ws, dataset: str, rows: np.ndarray, size: int, sims: np.ndarray | None = None) -> list[Tile]:
    """Tiles of some rows of a dataset (one metadata read), with similarities when given (dedup pairs, text hits)."""
    frame = locator_frame(ws, dataset, np.asarray(rows, dtype=np.int64))
    texts, thumbs = tile_texts(frame, ws.dataset(dataset).classes), frame_thumbs(frame, size)
    values = [None] * len(frame) if sims is None else [float(s) for s in sims]
    return [Tile(t, str(k), v, x) for t, k, v, x in zip(thumbs, frame["key"], values, texts)]


def similarity_summary(nns: dict[str, TestNeighbours], reference: str | None) -> pd.DataFrame:
    """Per test set: images, median s_D(t) per train set D, and for every other D the share with s_D > s_ref.

    Returns:
        DataFrame with columns test, images, `median s_<D>` per D, `share s_<D> > s_<ref>` per D != ref.
    """
    rows = []
    for test, nn in nns.items():
        row = {"test": test, "images": len(nn.keys)}
        for train in nn.trains:
            row[f"median s_{train}"] = float(np.median(nn.nn(train)))
        if reference in nn.sims:
            for train in nn.trains:
                if train != reference:
                    row[f"share s_{train} > s_{reference}"] = float(np.mean(nn.nn(train) > nn.nn(reference)))
        rows.append(row)
    return pd.DataFrame(rows)


def sorted_similarity(nn: TestNeighbours, train: str) -> tuple[np.ndarray, np.ndarray]:
    """(s sorted increasing (n,) float32, rows in that order (n,) int64): the precomputed order for thresholds."""
    s = nn.nn(train)
    order = np.argsort(s, kind="stable").astype(np.int64)
    return s[order], order


def count_above(sorted_s: np.ndarray, tau: float) -> int:
    """How many float32 values in an increasing array are > tau (strict, tau a real number, like the rules)."""
    return int(len(sorted_s) - np.searchsorted(sorted_s, floor32(tau), side="right"))


def threshold_neighbours(sorted_s: np.ndarray, order: np.ndarray, tau: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the n test images just above tau (closest first) and the n just at/below it (closest first).

    Args:
        sorted_s: s(t) sorted increasing (see sorted_similarity).
        order: the rows in that order.
        tau: threshold.
        n: images per side.

    Returns:
        (above rows, below rows), each int64, nearest to tau first.
    """
    cut = int(np.searchsorted(sorted_s, floor32(tau), side="right"))
    above = order[cut : cut + n]
    below = order[max(0, cut - n) : cut][::-1]
    return above, below


def threshold_counts(sorted_s: dict[str, np.ndarray], stats, tau: float) -> pd.DataFrame:
    """Per test set and combined: test images with s_web(t) > tau and web samples a threshold cut would remove.

    Args:
        sorted_s: {test: s_web(t) sorted increasing}.
        stats: PruneStats of the web set against (at least) these test sets.
        tau: threshold.

    Returns:
        DataFrame: test, test_images, above (count), share_above, web_removed, share_of_web; last row 'combined'.
        While the combination is not stored and its count not exact, that row's web_removed is <NA> and
        `frame.attrs["bounds"]` holds (low, high) (PruneStats.combined_count).
    """
    rows = []
    for test, s in sorted_s.items():
        above = count_above(s, tau)
        rows.append({"test": test, "test_images": len(s), "above": above, "share_above": above / max(len(s), 1),
                     "web_removed": stats.count_threshold(tau, test)})
    total = sum(len(s) for s in sorted_s.values())
    above = sum(r["above"] for r in rows)
    low, high = stats.select(list(sorted_s)).combined_count("m", tau) if sorted_s else (0, 0)
    rows.append({"test": "combined", "test_images": total, "above": above, "share_above": above / max(total, 1),
                 "web_removed": low if low == high else pd.NA})
    frame = pd.DataFrame(rows)
    frame["web_removed"] = frame["web_removed"].astype("Int64" if low != high else "int64")
    frame["share_of_web"] = (frame["web_removed"] / max(stats.n, 1)).astype(float)
    if low != high:
        frame.attrs["bounds"] = (low, high)
    return frame


def nearest_pairs(ws, nn: TestNeighbours, train: str, rows: np.ndarray, size: int) -> list[tuple[Tile, Tile]]:
    """(test tile, nearest `train` neighbour tile) for some test rows, in order."""
    grows = gallery_rows(ws, nn, rows, 1, size, trains=[train])
    return [(g.test, g.neighbours[train][0]) for g in grows if g.neighbours[train]]

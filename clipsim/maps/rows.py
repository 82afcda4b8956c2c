"""Gallery rows for points selected on the Map, without Streamlit: a test image beside its top-k neighbours in every
train set (the Neighbours gallery's rows), a train image beside its nearest image in every test set.
"""
from __future__ import annotations

import numpy as np

from clipsim.images import dataset_thumbs, frame_thumbs, locator_frame
from clipsim.search.result import completed_searches
from clipsim.views import GalleryRow, Tile, tile_texts


def nearest_tests(ws, train: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{test set: (max_t cos(x, t) (n,) float32, argmax test row (n,) int64)} for every test set searched against
    `train` (the per-sample statistics the search stored)."""
    out = {}
    for test in ws.dataset_names("test"):
        if train in completed_searches(ws, test):
            res = ws.search_result(test, train)
            out[test] = (res.train_stat("max_sim"), res.train_stat("argmax").astype(np.int64))
    return out


def train_rows(ws, train: str, rows: np.ndarray, size: int, stats: dict[str, tuple[np.ndarray, np.ndarray]],
               test_size: int | None = None) -> list[GalleryRow]:
    """Train images with their nearest test image in each test set (one metadata read per dataset).

    Args:
        ws: the workspace.
        train: the train set.
        rows: its embedding rows to show.
        size: thumbnail size of the test images.
        stats: nearest_tests(ws, train).
        test_size: thumbnail size of the train image (default `size`).

    Returns:
        One GalleryRow per train row: `test` holds the train image, `neighbours` {test set: [nearest test image]}.
    """
    rows = np.asarray(rows, dtype=np.int64)
    frame = locator_frame(ws, train, rows)
    thumbs, texts = frame_thumbs(frame, test_size or size), tile_texts(frame, ws.dataset(train).classes)
    out = [GalleryRow(int(r), Tile(th, str(k), None, t), {}) for r, th, k, t in zip(rows, thumbs, frame["key"], texts)]
    for test, (sims, argmax) in stats.items():
        near = argmax[rows]
        test_frame = locator_frame(ws, test, near)
        tiles = dataset_thumbs(ws, test, near, size)
        names = tile_texts(test_frame, ws.dataset(test).classes)
        for grow, thumb, key, text, sim in zip(out, tiles, test_frame["key"], names, sims[rows]):
            grow.neighbours[test] = [Tile(thumb, str(key), float(sim), text)]
    return out

"""What the Dedup page shows, without Streamlit: the samples either side of the eps cut beside the earlier member
that decides them, as gallery tiles; and the list of computed dedup statistics."""
from __future__ import annotations

import numpy as np
import pandas as pd

from clipsim import fileio
from clipsim.views import Tile, row_tiles


def cut_pairs(ws, stats, eps: float, count: int, size: int) -> tuple[list[tuple[Tile, Tile]], list[tuple[Tile, Tile]]]:
    """(sample, earlier member) tile pairs just above the cut (removed) and just at/below it (kept).

    Args:
        ws: the workspace.
        stats: DedupStats of the web set.
        eps: SemDeDup's eps.
        count: pairs per side.
        size: thumbnail size in pixels.

    Returns:
        (above, below); the second tile of a pair carries the similarity.
    """
    out = []
    for rows in stats.pairs_at_cut(eps, count):
        samples = row_tiles(ws, stats.web, rows, size)
        partners = row_tiles(ws, stats.web, stats.earlier_id[rows], size, stats.earlier_sim[rows])
        out.append(list(zip(samples, partners)))
    return out[0], out[1]


def list_dedups(ws) -> pd.DataFrame:
    """One row per committed within-cluster result: web, clusters, keep, seed, rows, largest_cluster, created, folder."""
    rows = []
    for config in sorted(ws.path("dedup").glob("*/k*/within-*/config.json")):
        info = fileio.read_json(config)
        web, k = config.parts[-4], int(config.parts[-3][1:])
        rows.append({"web": web, "clusters": k, "keep": info["keep"], "seed": info.get("seed"), "rows": info["rows"],
                     "largest_cluster": info.get("largest_cluster"), "created": info["created"],
                     "folder": str(config.parent)})
    cols = ["web", "clusters", "keep", "seed", "rows", "largest_cluster", "created", "folder"]
    frame = pd.DataFrame(rows, columns=cols)
    return frame.sort_values("created", ascending=False, kind="stable").reset_index(drop=True)


def eps_range(stats) -> tuple[float, float]:
    """eps bounds for a slider: 0 up to the eps that removes every removable sample (at least 0.2)."""
    finite = stats.earlier_sim[np.isfinite(stats.earlier_sim)]
    top = float(np.ceil((1.0 - float(finite.min())) * 100) / 100) if len(finite) else 0.2
    return 0.0, float(min(2.0, max(0.2, top)))

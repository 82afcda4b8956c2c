"""Stored maps: `maps/<name>/` folders (coords.parquet + config.json), listed, loaded, checked for staleness and
swapped into place atomically. `clipsim.mapping` computes them and re-exports this API.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from clipsim import fileio
from clipsim.errors import WorkspaceError
from clipsim.names import check_name

MAPS = "maps"
DEFAULT_NAME = "default"


@dataclass
class MapInfo:
    """A stored map: its folder and config.json (datasets, sample_sizes, seed, umap, inputs, points, created)."""

    ws: object
    name: str
    folder: Path
    config: dict

    @property
    def datasets(self) -> list[str]:
        """Datasets on the map, in order."""
        return list(self.config["datasets"])

    def coords(self, columns: list[str] | None = None) -> pd.DataFrame:
        """The stored coordinates (COLUMNS; x, y float32), datasets in order, rows increasing."""
        return pd.read_parquet(self.folder / "coords.parquet", columns=columns)

    def stale_reasons(self) -> list[str]:
        """Why the map no longer matches its inputs (empty when fresh)."""
        reasons = []
        for name, fp in self.config["inputs"].items():
            try:
                now = self.ws.embeddings_fingerprint(name)
            except WorkspaceError:
                reasons.append(f"dataset {name!r} is no longer registered")
                continue
            if now != fp:
                reasons.append(f"embeddings of {name!r} changed")
        return reasons

    @property
    def stale(self) -> bool:
        """True when an input's embeddings changed since the map was computed."""
        return bool(self.stale_reasons())


def list_maps(ws) -> list[str]:
    """Names of the stored maps, sorted."""
    root = ws.path(MAPS)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and (p / "config.json").exists())


def load_map(ws, name: str = DEFAULT_NAME) -> MapInfo:
    """The stored map `name`.

    Raises:
        WorkspaceError: no such map (the message names the command that computes one).
    """
    folder = ws.path(MAPS, check_name(name, "map"))
    if not (folder / "config.json").exists():
        known = ", ".join(list_maps(ws)) or "none"
        raise WorkspaceError(f"no map {name!r} in {ws.path(MAPS)} (stored: {known}); compute it with "
                             f"`python -m clipsim map --workspace {ws.root} --name {name} --wait`")
    return MapInfo(ws, name, folder, fileio.read_json(folder / "config.json"))


def swap_into_place(root: Path, name: str, tmp: Path) -> None:
    """Make the finished folder `tmp` the map root/name in one step (fileio.swap_dir), replacing an older one."""
    fileio.swap_dir(tmp, root / name)

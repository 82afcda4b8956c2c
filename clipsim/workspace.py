"""The study folder: registered datasets, where every artifact lives, and the public read API.

A workspace is one folder holding `clipsim.json` (the dataset registry and settings), `embeddings/`,
`search/`, `manifests/`, `runs/` and the demo's ground truth. Every artifact has its config beside it.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from clipsim import fileio
from clipsim.errors import WorkspaceError
from clipsim.names import check_name, check_writable
from clipsim.store import EmbeddingSet

REGISTRY = "clipsim.json"
ROLES = ("train", "test")
KINDS = ("folder", "table", "wds", "embeddings")


def default_root() -> Path:
    """Workspace folder from $CLIPSIM_WORKSPACE, else ./workspace."""
    return Path(os.environ.get("CLIPSIM_WORKSPACE", "workspace"))


@dataclass
class Dataset:
    """A registered dataset: role 'train' or 'test', source path and kind, class names for labelled sets."""

    name: str
    role: str
    source: str
    kind: str
    classes: list[str] | None = None
    extra: dict = field(default_factory=dict)


class Workspace:
    """A study folder. Open with `Workspace.open(path)`; create with `Workspace.create(path)`."""

    def __init__(self, root: Path, registry: dict):
        self.root = Path(root)
        self._registry = registry

    # ----- lifecycle -------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path | None = None) -> Workspace:
        """Open an existing workspace.

        Raises:
            WorkspaceError: the folder holds no clipsim.json.
        """
        root = Path(root) if root is not None else default_root()
        reg = root / REGISTRY
        if not reg.exists():
            raise WorkspaceError(
                f"{root.resolve()} is not a clipsim workspace (no {REGISTRY}); build the demo there with "
                f"`python -m clipsim demo --workspace {root}` or create an empty one with "
                f"`python -m clipsim init --workspace {root}`"
            )
        return cls(root, fileio.read_json(reg))

    @classmethod
    def create(cls, root: str | Path, exist_ok: bool = True) -> Workspace:
        """Create (or open, if exist_ok) a workspace folder."""
        root = Path(root)
        if (root / REGISTRY).exists():
            if not exist_ok:
                raise WorkspaceError(f"{root} already holds a workspace; pick another folder or open it")
            return cls.open(root)
        ws = cls(root, {"version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "datasets": {}, "settings": {}})
        ws._save()
        return ws

    def _save(self) -> None:
        check_writable()
        fileio.write_json(self.root / REGISTRY, self._registry, sort_keys=False)  # keeps dataset order

    def reload(self) -> None:
        """Re-read the registry (another process may have changed it)."""
        self._registry = fileio.read_json(self.root / REGISTRY)

    # ----- datasets --------------------------------------------------------------------------------
    def register_dataset(
        self, name: str, role: str, source: str | Path, kind: str, classes: list[str] | None = None, **extra
    ) -> Dataset:
        """Register (or update) a dataset.

        Args:
            name: dataset name, e.g. 'web', 'val'.
            role: 'train' or 'test'.
            source: image folder, table file, tar shard folder/glob, or clip-retrieval embedding folder.
            kind: one of 'folder', 'table', 'wds', 'embeddings'.
            classes: class names (label i -> classes[i]); required for zero-shot evaluation of test sets.

        Raises:
            WorkspaceError: bad name, role or kind.
        """
        check_name(name)
        check_writable()  # before the registry in memory changes
        if role not in ROLES:
            raise WorkspaceError(f"role {role!r} for dataset {name!r} must be one of {ROLES}")
        if kind not in KINDS:
            raise WorkspaceError(f"kind {kind!r} for dataset {name!r} must be one of {KINDS}")
        if kind == "embeddings" and "columns" not in extra:  # clip-retrieval folders name metadata columns their way
            columns = _imported_columns(self.resolve(source))
            extra.update({"columns": columns} if columns is not None else {})
        ds = Dataset(name, role, str(source), kind, list(classes) if classes is not None else None, dict(extra))
        entry = asdict(ds)
        entry.pop("name")
        self._registry["datasets"][name] = entry
        self._save()
        return ds

    def dataset(self, name: str) -> Dataset:
        """The registered dataset `name`.

        Raises:
            WorkspaceError: no such dataset (the message lists the registered ones).
        """
        entry = self._registry["datasets"].get(name)
        if entry is None:
            known = ", ".join(sorted(self._registry["datasets"])) or "none"
            raise WorkspaceError(f"no dataset {name!r} in workspace {self.root} (registered: {known})")
        ds = Dataset(name=name, **entry)
        ds.source = str(self.resolve(ds.source))
        return ds

    def resolve(self, path: str | Path) -> Path:
        """A registry path made absolute: relative paths are relative to the workspace folder."""
        path = Path(path)
        return path if path.is_absolute() else self.root / path

    def dataset_names(self, role: str | None = None) -> list[str]:
        """Registered dataset names in registration order, optionally of one role."""
        return [n for n, e in self._registry["datasets"].items() if role is None or e["role"] == role]

    def datasets(self) -> pd.DataFrame:
        """One row per dataset: name, role, kind, count, dim (count/dim 0 until embedded), source."""
        rows = []
        for name in self.dataset_names():
            ds = self.dataset(name)
            emb = self.embeddings(name, required=False)
            rows.append(
                {"name": name, "role": ds.role, "kind": ds.kind, "count": emb.count if emb else 0,
                 "dim": emb.dim if emb else 0, "classes": len(ds.classes or []), "source": ds.source}
            )
        cols = ["name", "role", "kind", "count", "dim", "classes", "source"]
        return pd.DataFrame(rows, columns=cols)

    # ----- paths and artifacts ---------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        """A path inside the workspace."""
        return self.root.joinpath(*parts)

    def embedding_dir(self, name: str) -> Path:
        """Where a dataset's embeddings live (the source itself for imported clip-retrieval folders)."""
        ds = self.dataset(name)
        return Path(ds.source) if ds.kind == "embeddings" else self.path("embeddings", name)

    def embeddings(self, name: str, required: bool = True) -> EmbeddingSet | None:
        """The dataset's embedding shards; None (or an error when required) if not embedded yet.

        Imported folders whose metadata lacks clipsim's column names are seen through the mapping found when
        they were registered (clipsim.data.retrieval), so `key`, `caption`, `url` always read the same.
        """
        ds = self.dataset(name)
        folder = Path(ds.source) if ds.kind == "embeddings" else self.path("embeddings", name)
        if not required and not (folder / "img_emb").is_dir():
            return None
        if ds.kind == "embeddings":
            from clipsim.data.retrieval import open_imported

            return open_imported(folder, ds.extra.get("columns"), allow_partial=not required)
        return EmbeddingSet(folder, allow_partial=not required)

    @property
    def settings(self) -> dict:
        """Workspace settings (SLURM partition, similarity model, ...)."""
        return self._registry.setdefault("settings", {})

    def update_settings(self, **values) -> None:
        """Merge values into the workspace settings and save."""
        check_writable()
        self.settings.update(values)
        self._save()

    # ----- results (read API) ----------------------------------------------------------------------
    def search_result(self, test: str, train: str):
        """The stored exact search of test set `test` against train set `train` (see search.SearchResult)."""
        from clipsim.search.result import SearchResult

        return SearchResult.load(self, test, train)

    def neighbours(self, test: str, train: str, k: int = 10) -> pd.DataFrame:
        """Top-k train neighbours of every test image.

        Returns:
            DataFrame with columns test_key, rank (1 = nearest), train_key, similarity (float32), train_id.
        """
        return self.search_result(test, train).neighbours(k)

    def nn_similarity(self, test: str, train: str) -> pd.Series:
        """s_train(t) = max_x cos(t, x) for every test image: float32 Series indexed by test key."""
        return self.search_result(test, train).nn_similarity()

    def train_max_similarity(self, train: str, test: str) -> pd.DataFrame:
        """Every train sample's maximum similarity to test set `test` and the test key attaining it."""
        return self.search_result(test, train).train_max()

    def keys(self, name: str) -> np.ndarray:
        """All keys of a dataset, row-aligned with its embeddings."""
        return self.embeddings(name).keys()


def _imported_columns(folder: Path) -> dict[str, str] | None:
    """The column mapping of a clip-retrieval folder, logged when it renames; None while the folder is empty."""
    from clipsim.data.retrieval import describe, detect_columns

    if not (folder / "metadata").is_dir():
        return None  # detected when the folder is first opened
    mapping = detect_columns(folder)
    if mapping:
        logging.getLogger(__name__).info(describe(folder, mapping))
    return mapping

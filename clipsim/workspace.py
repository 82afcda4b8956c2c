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
from clipsim.errors import ClipsimError, DataError, WorkspaceError
from clipsim.names import check_name, check_writable
from clipsim.store import EmbeddingSet, SetState, check_commit, set_state

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
        return cls(root, check_registry(fileio.read_json(reg), reg))

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
        self._registry = check_registry(fileio.read_json(self.root / REGISTRY), self.root / REGISTRY)

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
            DataError: an imported embeddings folder that is malformed or repeats keys.
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
        if kind == "embeddings":
            _check_imported(self.resolve(source), extra.get("columns"), name)
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
        """One row per dataset: name, role, kind, count, dim (count/dim 0 until committed), classes, state
        ('complete', 'complete with 3 losses (see skipped.parquet)', 'incomplete (1 of 4 shards)', 'not embedded'
        or 'unreadable: <why>'), source."""
        rows = []
        for name in self.dataset_names():
            ds = self.dataset(name)
            try:
                state = self.embedding_state(name).label
                emb = self.embeddings(name, required=False)
            except ClipsimError as err:  # a truncated shard, a corrupt summary, ...: shown, never raised here
                state, emb = f"unreadable: {err}", None
            rows.append(
                {"name": name, "role": ds.role, "kind": ds.kind, "count": emb.count if emb else 0,
                 "dim": emb.dim if emb else 0, "classes": len(ds.classes or []), "state": state, "source": ds.source}
            )
        cols = ["name", "role", "kind", "count", "dim", "classes", "state", "source"]
        return pd.DataFrame(rows, columns=cols)

    def embedding_state(self, name: str) -> SetState:
        """Where a dataset's embeddings stand (complete, incomplete (k of n shards), not embedded); see
        clipsim.store.SetState. Imported folders are complete as given."""
        ds = self.dataset(name)
        if ds.kind == "embeddings":
            done = (Path(ds.source) / "img_emb").is_dir()
            return SetState("complete", 0, None) if done else SetState("not embedded", 0, None)
        return set_state(self.path("embeddings", name))

    # ----- paths and artifacts ---------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        """A path inside the workspace."""
        return self.root.joinpath(*parts)

    def embedding_dir(self, name: str) -> Path:
        """Where a dataset's embeddings live (the source itself for imported clip-retrieval folders)."""
        ds = self.dataset(name)
        return Path(ds.source) if ds.kind == "embeddings" else self.path("embeddings", name)

    def embeddings(self, name: str, required: bool = True) -> EmbeddingSet | None:
        """The dataset's committed embedding shards; None (or an error when required) if not embedded yet, or if an
        embed run has not committed them (`incomplete (k of n shards)`: no command reads a partial set).

        Imported folders whose metadata lacks clipsim's column names are seen through the mapping found when
        they were registered (clipsim.data.retrieval), so `key`, `caption`, `url` always read the same.

        Raises:
            DataError: (required) not embedded, or incomplete (the message names the command that finishes it);
                (always) a shard that is truncated or changed after the set was committed.
        """
        ds = self.dataset(name)
        folder = Path(ds.source) if ds.kind == "embeddings" else self.path("embeddings", name)
        if ds.kind == "embeddings":
            if not required and not (folder / "img_emb").is_dir():
                return None
            from clipsim.data.retrieval import open_imported

            return open_imported(folder, ds.extra.get("columns"), allow_partial=not required)
        state = set_state(folder)
        if state.state != "complete":
            if required and state.state == "incomplete":
                raise DataError(self._unfinished(name, folder, state))
            if not required:
                return None
        emb = EmbeddingSet(folder, allow_partial=not required)
        check_commit(emb)
        return emb

    def _unfinished(self, name: str, folder: Path, state: SetState) -> str:
        again = f"python -m clipsim embed --workspace {self.root} --datasets {name}"
        return (f"the embeddings of {name!r} in {folder} are {state.label}: an embed run was interrupted or has "
                f"not finished; finish them with `{again}` (after shard-range runs: `{again} --finalize`)")

    def embeddings_fingerprint(self, name: str) -> str | None:
        """Fingerprint of the dataset's committed, non-empty embeddings; None when there are none, they are
        incomplete, or they cannot be read (so every artifact made from them shows as stale, never as fresh)."""
        try:
            emb = self.embeddings(name, required=False)
        except ClipsimError:
            return None
        return emb.fingerprint() if emb is not None and emb.count else None

    # ----- study roles: the one place that decides the reference and the web sets -----------------------
    @property
    def reference(self) -> str | None:
        """The reference train set (ImageNet-like, defines s_ref(t)): settings['reference'] when it names a
        registered train set, else None."""
        ref = self.settings.get("reference")
        return ref if ref in self.dataset_names("train") else None

    def web_sets(self) -> list[str]:
        """The web train sets (the ones pruned and trained on): every train set but the reference, in registry order."""
        return [n for n in self.dataset_names("train") if n != self.reference]

    def web_set(self, web: str | None = None) -> str:
        """The web set to use: `web` when given (checked), else the first web set in registry order.

        Raises:
            WorkspaceError: `web` is not a registered web set, or there is none (the message says what to register).
        """
        webs = self.web_sets()
        if web is None and webs:
            return webs[0]
        if web in webs:
            return web
        if web is not None:
            raise WorkspaceError(f"{web!r} is not a web train set of workspace {self.root} (web sets: "
                                 f"{', '.join(webs) or 'none'}; the reference is {self.reference!r}); pass one of them")
        raise WorkspaceError(f"workspace {self.root} has no web train set (a train set other than the reference "
                             f"{self.reference!r}); register one: `python -m clipsim register --workspace {self.root} "
                             "--name web --role train ...`")

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


def check_registry(registry: object, path: Path) -> dict:
    """Validate a registry read from `path`: an object whose 'datasets' maps valid names to entries with a known role,
    kind and a source path, and whose 'settings' (if any) is an object.

    Returns:
        The registry, unchanged.

    Raises:
        WorkspaceError: the first problem found, naming the file, the key and the fix.
    """
    fix = f"fix {path} by hand (or move it aside and register the datasets again)"
    if not isinstance(registry, dict):
        raise WorkspaceError(f"{path} must hold a JSON object, not {type(registry).__name__}; {fix}")
    datasets = registry.get("datasets")
    if not isinstance(datasets, dict):
        raise WorkspaceError(f"{path} has no \"datasets\" object (got {datasets!r:.60}); a workspace registry lists its "
                             f"datasets there, e.g. \"datasets\": {{}}; {fix}")
    settings = registry.get("settings", {})
    if not isinstance(settings, dict):
        raise WorkspaceError(f"\"settings\" in {path} must be a JSON object; {fix}")
    bad = [k for k in ("jobs", "slurm", "presets", "similarity_model") if not isinstance(settings.get(k, {}), dict)]
    if bad or not isinstance(settings.get("reference", ""), (str, type(None))):
        raise WorkspaceError(f"settings.{(bad or ['reference'])[0]} in {path} has the wrong type "
                             f"({settings.get((bad or ['reference'])[0])!r:.40}): jobs, slurm, presets and "
                             f"similarity_model are objects, reference a dataset name; {fix}")
    for name, entry in datasets.items():
        try:
            check_name(name)
        except WorkspaceError as err:
            raise WorkspaceError(f"{path}: {err}; rename that dataset in the file") from err
        if not isinstance(entry, dict):
            raise WorkspaceError(f"dataset {name!r} in {path} must be a JSON object; {fix}")
        bad = next((key for key, allowed in (("role", ROLES), ("kind", KINDS)) if entry.get(key) not in allowed), None)
        if bad is not None:
            allowed = ROLES if bad == "role" else KINDS
            raise WorkspaceError(f"dataset {name!r} in {path} has {bad} {entry.get(bad)!r}; use one of {allowed}")
        if not isinstance(entry.get("source"), str) or not entry["source"]:
            raise WorkspaceError(f"dataset {name!r} in {path} has no \"source\" path; {fix}")
        unknown = set(entry) - {"role", "kind", "source", "classes", "extra"}
        if unknown or not isinstance(entry.get("classes") or [], list) or not isinstance(entry.get("extra", {}), dict):
            raise WorkspaceError(f"dataset {name!r} in {path} has unknown keys {sorted(unknown)} or a malformed "
                                 f"\"classes\" list / \"extra\" object; {fix}")
    return registry


def _check_imported(folder: Path, mapping: dict[str, str] | None, name: str) -> None:
    """Refuse an imported folder with repeated keys (read once, at register; `embed` checks it again)."""
    from clipsim.data.retrieval import check_imported

    if (folder / "metadata").is_dir():
        check_imported(folder, mapping, name)


def _imported_columns(folder: Path) -> dict[str, str] | None:
    """The column mapping of a clip-retrieval folder, logged when it renames; None while the folder is empty."""
    from clipsim.data.retrieval import describe, detect_columns

    if not (folder / "metadata").is_dir():
        return None  # detected when the folder is first opened
    mapping = detect_columns(folder)
    if mapping:
        logging.getLogger(__name__).info(describe(folder, mapping))
    return mapping

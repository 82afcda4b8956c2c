"""Labels in and out: CSV export and import (validated before anything is written), and labels simulated from the
demo's planted ground truth (`demo/planted.parquet`), marked as simulated wherever they are stored or shown.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from clipsim import fileio
from clipsim.errors import DataError, WorkspaceError
from clipsim.labels import store
from clipsim.labels.pairs import SIMULATED, load_population, next_pairs, record_design

REQUIRED = ["test", "test_key", "train", "train_key", "label"]


def export_frame(ws, test: str | None = None, train: str | None = None) -> pd.DataFrame:
    """Stored labels as exported (store.LABEL_COLUMNS; created as ISO 8601 local time)."""
    frame = store.read_labels(ws, test, train)
    frame["created"] = [time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)) for t in frame["created"]]
    return frame


def export_labels_csv(ws, path: str | Path, test: str | None = None, train: str | None = None) -> int:
    """Write stored labels as CSV (export_frame), atomically.

    Returns:
        Rows written.
    """
    frame = export_frame(ws, test, train)
    fileio.atomic_write(Path(path), lambda tmp: frame.to_csv(tmp, index=False))
    return len(frame)


def _created(values: pd.Series, path: Path) -> pd.Series:
    """Epoch seconds from numbers or ISO 8601 text (now where empty)."""
    numeric = pd.to_numeric(values, errors="coerce")
    text = pd.to_datetime(values.where(numeric.isna()), errors="coerce", format="ISO8601")
    bad = values.notna() & numeric.isna() & text.isna()
    if bad.any():
        raise DataError(f"{path}: created value {values[bad].iloc[0]!r} (row {int(np.flatnonzero(bad)[0]) + 2}) is "
                        "neither epoch seconds nor an ISO 8601 time; fix or empty the cell")
    local = text.dt.tz_localize(None) if text.dt.tz is not None else text
    seconds = np.array([time.mktime(t.timetuple()) if pd.notna(t) else np.nan for t in local])
    return numeric.fillna(pd.Series(seconds, index=values.index)).fillna(time.time())


def import_labels_csv(ws, path: str | Path, labeller: str | None = None) -> int:
    """Read labels from a CSV (columns test, test_key, train, train_key, label; optional labeller, created, model,
    similarity, inclusion, design) and store them, replacing labels of the same pairs. Every row is checked first:
    nothing is written when any row is wrong.

    Args:
        ws: the workspace.
        path: the CSV file.
        labeller: labeller for rows without one (default the file name).

    Returns:
        Rows stored.

    Raises:
        DataError: unreadable file, missing columns, an unknown label or dataset (the message names the row).
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={"test_key": str, "train_key": str, "label": str, "test": str, "train": str})
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read labels from {path} ({err}); give a CSV with columns {REQUIRED}") from err
    missing = [c for c in REQUIRED if c not in frame]
    if missing:
        raise DataError(f"{path} lacks columns {missing}; a label CSV has {REQUIRED} (+ labeller, created, model)")
    for column, allowed in (("label", store.LABELS), ("test", ws.dataset_names("test")),
                            ("train", ws.dataset_names("train"))):
        bad = ~frame[column].isin(allowed)
        if bad.any():
            raise DataError(f"{path} row {int(np.flatnonzero(bad)[0]) + 2}: {column} {frame[column][bad].iloc[0]!r} is "
                            f"not one of {list(allowed)}; fix the file")
    frame["labeller"] = frame.get("labeller", pd.Series(index=frame.index, dtype=object)).fillna(labeller or path.stem)
    frame["created"] = _created(frame["created"], path) if "created" in frame else time.time()
    frame["simulated"] = (frame["labeller"] == SIMULATED).astype(int)
    return store.upsert_labels(ws, frame)


def planted_labels(ws, test: str, pairs: pd.DataFrame) -> pd.Series:
    """The label the demo's ground truth gives each (test_key, train_key) pair: 'near-duplicate' for a planted pair,
    'same concept' for the same class, else 'different'.

    Raises:
        WorkspaceError: the workspace is not a demo (no demo/planted.parquet or demo/web_truth.parquet).
    """
    planted_file, truth_file = ws.path("demo", "planted.parquet"), ws.path("demo", "web_truth.parquet")
    if not planted_file.exists() or not truth_file.exists():
        raise WorkspaceError(f"{ws.root} has no planted ground truth ({planted_file}); simulated labels need a demo "
                             f"workspace: `python -m clipsim demo --workspace DIR`")
    planted = pd.read_parquet(planted_file)
    planted = set(zip(planted.loc[planted["test_dataset"] == test, "test_key"],
                      planted.loc[planted["test_dataset"] == test, "train_key"]))
    test_meta = ws.embeddings(test).metadata(["key", "label"])
    test_class = pd.Series(test_meta["label"].to_numpy(), index=test_meta["key"].astype(str))
    web_class = pd.read_parquet(truth_file, columns=["key", "label"]).set_index("key")["label"]
    same = test_class.reindex(pairs["test_key"]).to_numpy() == web_class.reindex(pairs["train_key"]).to_numpy()
    dup = np.array([(t, w) in planted for t, w in zip(pairs["test_key"], pairs["train_key"])], bool)
    return pd.Series(np.where(dup, "near-duplicate", np.where(same, "same concept", "different")), index=pairs.index)


def simulate_from_planted(ws, test: str, train: str, n: int, tau: float) -> pd.DataFrame:
    """Label the next `n` pairs of the design centred on `tau` from the demo's planted ground truth, as labeller
    'simulated-from-planted' (for tests and demos: these are not human judgements).

    Returns:
        The stored rows (store.LABEL_COLUMNS).

    Raises:
        WorkspaceError: not a demo workspace, no search, or n < 1.
    """
    if n < 1:
        raise WorkspaceError(f"--n {n} must be at least 1")
    todo = next_pairs(ws, test, train, tau, n)
    population = load_population(ws, test, train)
    design = record_design(ws, population, tau)
    rows = todo[["test_key", "train_key", "similarity"]].assign(
        test=test, train=train, label=planted_labels(ws, test, todo), labeller=SIMULATED, created=time.time(),
        model=population.model, inclusion=None, design=design, simulated=1)
    store.upsert_labels(ws, rows)
    after = load_population(ws, test, train).pairs.set_index("test_key")["pi"]
    rows["inclusion"] = after.reindex(rows["test_key"]).to_numpy()
    store.upsert_labels(ws, rows)
    return rows[store.LABEL_COLUMNS]

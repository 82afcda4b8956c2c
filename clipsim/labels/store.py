"""The workspace's labels and tags in SQLite (`labels/labels.sqlite`): pair labels (pair, label, labeller, time,
similarity-model fingerprint, inclusion probability when labelled), the sampling designs that proposed pairs, and
image tags. One transaction per write, so a kill never leaves half a label; readers see committed rows only.
"""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pandas as pd

from clipsim.errors import ReadOnlyError, WorkspaceError
from clipsim.names import read_only

DB = ("labels", "labels.sqlite")
LABELS = ("duplicate", "near-duplicate", "same concept", "different")  # the order of the keyboard shortcuts 1-4
DUPLICATES = ("duplicate", "near-duplicate")  # what "s > tau means (near-)duplicate" counts as a hit
LABEL_COLUMNS = ["test", "test_key", "train", "train_key", "label", "labeller", "created", "model", "similarity",
                 "inclusion", "design", "simulated"]
SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    test TEXT NOT NULL, test_key TEXT NOT NULL, train TEXT NOT NULL, train_key TEXT NOT NULL,
    label TEXT NOT NULL, labeller TEXT NOT NULL, created REAL NOT NULL, model TEXT, similarity REAL,
    inclusion REAL, design INTEGER, simulated INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (test, test_key, train, train_key));
CREATE TABLE IF NOT EXISTS designs (
    id INTEGER PRIMARY KEY, test TEXT NOT NULL, train TEXT NOT NULL, model TEXT NOT NULL, tau REAL NOT NULL,
    lo REAL NOT NULL, hi REAL NOT NULL, bump REAL NOT NULL, bins INTEGER NOT NULL, width REAL NOT NULL,
    created REAL NOT NULL, UNIQUE (test, train, model, tau, lo, hi, bump, bins, width));
CREATE TABLE IF NOT EXISTS tags (
    dataset TEXT NOT NULL, key TEXT NOT NULL, tag TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (dataset, key, tag));
"""


def check_label(label: str) -> str:
    """The label itself when it is one of LABELS.

    Raises:
        WorkspaceError: any other value (the message lists the allowed ones).
    """
    if label not in LABELS:
        raise WorkspaceError(f"label {label!r} is not one of {list(LABELS)}; fix the value (CSV column 'label')")
    return label


@contextmanager
def connect(ws, write: bool = False) -> Iterator[sqlite3.Connection]:
    """A connection to the workspace's label database, committed on success and rolled back on error.

    Raises:
        ReadOnlyError: write=True while the workspace is served read-only.
    """
    if write and read_only():
        raise ReadOnlyError("this workspace is served read-only (CLIPSIM_READ_ONLY=1); labels and tags were not "
                            "changed")
    path = ws.path(*DB)
    if not write and not path.exists():
        con = sqlite3.connect(":memory:")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(path, timeout=30)
    try:
        con.executescript(SCHEMA)
        yield con
        con.commit()
    except BaseException:
        con.rollback()
        raise
    finally:
        con.close()


def upsert_labels(ws, rows: pd.DataFrame) -> int:
    """Store labels, replacing an earlier label of the same pair (one transaction).

    Args:
        ws: the workspace.
        rows: LABEL_COLUMNS (missing optional columns become NULL; created defaults to now).

    Returns:
        How many rows were written.

    Raises:
        WorkspaceError: a label outside LABELS or a missing pair column.
    """
    missing = [c for c in ("test", "test_key", "train", "train_key", "label", "labeller") if c not in rows]
    if missing:
        raise WorkspaceError(f"label rows lack columns {missing}; expected {LABEL_COLUMNS}")
    rows = rows.copy()
    for column in LABEL_COLUMNS:
        if column not in rows:
            rows[column] = time.time() if column == "created" else (0 if column == "simulated" else None)
    for label in rows["label"].unique():
        check_label(label)
    records = [tuple(None if pd.isna(v) else v for v in r) for r in rows[LABEL_COLUMNS].itertuples(index=False)]
    with connect(ws, write=True) as con:
        con.executemany(f"INSERT OR REPLACE INTO labels ({', '.join(LABEL_COLUMNS)}) VALUES "
                        f"({', '.join('?' * len(LABEL_COLUMNS))})", records)
    return len(records)


def where_equal(filters: dict[str, str | None]) -> tuple[str, list]:
    """A SQL ' WHERE a = ? AND b = ?' clause (empty without filters) and its arguments, for the filters not None.

    Args:
        filters: {column: value}; the column names come from this module's callers, never from users.

    Returns:
        (clause, arguments) to append to a SELECT and pass as its parameters.
    """
    used = {column: value for column, value in filters.items() if value is not None}
    return (" WHERE " + " AND ".join(f"{column} = ?" for column in used) if used else ""), list(used.values())


def read_labels(ws, test: str | None = None, train: str | None = None) -> pd.DataFrame:
    """Stored labels (LABEL_COLUMNS), optionally of one test and train set, oldest first."""
    where, args = where_equal({"test": test, "train": train})
    with connect(ws) as con:
        frame = pd.read_sql_query(f"SELECT {', '.join(LABEL_COLUMNS)} FROM labels{where} ORDER BY created, test_key",
                                  con, params=args)
    return frame.astype({"simulated": bool})


def design_id(ws, test: str, train: str, model: str, params: dict) -> int:
    """The id of a sampling design (created on first use). params: tau, lo, hi, bump, bins, width."""
    values = (test, train, model, params["tau"], params["lo"], params["hi"], params["bump"], params["bins"],
              params["width"])
    with connect(ws, write=True) as con:
        con.execute("INSERT OR IGNORE INTO designs (test, train, model, tau, lo, hi, bump, bins, width, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (*values, time.time()))
        (found,) = con.execute("SELECT id FROM designs WHERE test = ? AND train = ? AND model = ? AND tau = ? AND "
                               "lo = ? AND hi = ? AND bump = ? AND bins = ? AND width = ?", values).fetchone()
    return int(found)


def read_designs(ws, test: str, train: str, model: str | None = None) -> pd.DataFrame:
    """The sampling designs used on a test and train set (of one similarity model when given)."""
    query = "SELECT id, test, train, model, tau, lo, hi, bump, bins, width, created FROM designs WHERE test = ? " \
            "AND train = ?" + (" AND model = ?" if model is not None else "")
    with connect(ws) as con:
        return pd.read_sql_query(query + " ORDER BY id", con, params=[test, train] + ([model] if model else []))

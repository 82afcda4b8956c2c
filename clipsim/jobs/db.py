"""Job records in the workspace's SQLite database `jobs.sqlite`: schema, the Job dataclass, short transactions.

Every process (the app, the CLI, workers, SLURM tasks) opens its own short-lived connection; WAL mode lets
readers and one writer work at once, and `BEGIN IMMEDIATE` serialises the read-then-write steps (claiming a
slot, deduplicating a launch) so two processes never claim the same job.

History is never lost silently: a database created (or found empty) next to run folders is filled from them in
the same transaction that creates its schema (clipsim.jobs.recovery); a corrupt file is refused with the fix.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from clipsim import fileio
from clipsim.errors import WorkspaceError

DB_FILE = "jobs.sqlite"
STATES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE = ("queued", "running")
BUSY_TIMEOUT_S = 30  # a writer holds the lock for milliseconds; 30 s only matters on a very slow shared disk
SCHEMA_VERSION = 1
_JSON_COLUMNS = ("params", "result", "resources")


@dataclass
class Job:
    """One job record. Timestamps are Unix seconds (float); `run_dir` holds config.json, log.txt, progress.json."""

    id: str
    kind: str
    params: dict
    state: str = "queued"
    created: float = 0.0
    submitted: float | None = None  # claimed a slot and handed to its backend
    started: float | None = None  # the worker began running the kind
    finished: float | None = None
    exit_code: int | None = None
    result: dict | None = None
    error: str | None = None
    backend: str = "local"
    backend_id: str | None = None  # pid (local) or SLURM job id
    depends_on: str | None = None
    dedupe_key: str | None = None
    resources: dict = field(default_factory=dict)  # per-job overrides of the SLURM settings
    pid: int | None = None  # the worker process, as it reported itself
    host: str | None = None
    proc_start: str | None = None  # process start time of backend_id's process (guards against pid reuse)
    heartbeat: float | None = None
    cancel_requested: float | None = None
    root: str = ""  # workspace folder (not stored)

    @property
    def run_dir(self) -> Path:
        """The job's folder `<workspace>/runs/<id>`."""
        return Path(self.root) / "runs" / self.id

    @property
    def is_active(self) -> bool:
        """True while queued or running."""
        return self.state in ACTIVE

    def to_dict(self) -> dict:
        """The record as JSON-able data (with run_dir)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "root"}
        out["run_dir"] = str(self.run_dir)
        return out


COLUMNS = [f.name for f in fields(Job) if f.name != "root"]
_SQL_TYPES = {"created": "REAL NOT NULL", "submitted": "REAL", "started": "REAL", "finished": "REAL",
              "heartbeat": "REAL", "cancel_requested": "REAL", "exit_code": "INTEGER", "pid": "INTEGER"}
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS jobs ("
    + ", ".join(f"{c} {'TEXT PRIMARY KEY' if c == 'id' else _SQL_TYPES.get(c, 'TEXT')}" for c in COLUMNS)
    + ")",
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created)",
    "CREATE INDEX IF NOT EXISTS jobs_dedupe ON jobs (dedupe_key, state)",
)


def db_path(ws) -> Path:
    """Where the workspace's job database lives."""
    return ws.path(DB_FILE)


def new_job_id(kind: str) -> str:
    """A short id that sorts by creation time: `20261129-013204-train-ab12`."""
    safe = "".join(c for c in kind.lower() if c.isalnum())[:16] or "job"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}-{secrets.token_hex(2)}"


def dedupe_key(kind: str, params: dict) -> str:
    """Identity of a (kind, params) pair: identical launches share it."""
    return hashlib.sha256(kind.encode() + b"\0" + fileio.json_bytes(params)).hexdigest()[:20]


def _open(ws, path: Path, journal_mode: str) -> sqlite3.Connection:
    con = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    con.row_factory = sqlite3.Row
    try:
        con.execute(f"PRAGMA journal_mode={journal_mode}")
        con.execute("PRAGMA synchronous=NORMAL")
        if con.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            con.execute("BEGIN IMMEDIATE")
            fresh = con.execute("PRAGMA user_version").fetchone()[0] == 0  # another process may have won the race
            for statement in _SCHEMA:
                con.execute(statement)
            if fresh:
                from clipsim.jobs.recovery import recover_jobs

                recover_jobs(ws, con)  # a new (or emptied) database beside run folders: their jobs come back
            con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            con.execute("COMMIT")
    except sqlite3.OperationalError as err:
        con.close()
        if "locked" not in str(err):
            raise _unusable(ws, path, err) from err
        raise WorkspaceError(f"{path} stayed locked by another process for {BUSY_TIMEOUT_S} s ({err}); try again, or "
                             "find the process holding it (`fuser` on the file)") from err
    except sqlite3.DatabaseError as err:
        con.close()
        raise _unusable(ws, path, err) from err
    return con


def _unusable(ws, path: Path, err: Exception) -> WorkspaceError:
    runs = ws.path("runs")
    return WorkspaceError(
        f"{path} is not a usable job database ({err}); move it aside (e.g. `mv {path} {path}.bad`): clipsim then "
        f"rebuilds the job history from the run folders in {runs}. On filesystems without WAL support set "
        "settings.jobs.journal_mode to 'delete'"
    )


@contextmanager
def connect(ws, write: bool = True) -> Iterator[sqlite3.Connection | None]:
    """A short-lived connection (autocommit); yields None for `write=False` when no database exists yet.

    Raises:
        WorkspaceError: the file is not a SQLite database.
    """
    from clipsim.jobs.recovery import has_runs
    from clipsim.names import check_writable, read_only

    path = db_path(ws)
    missing = not path.exists() or path.stat().st_size == 0
    if missing and read_only():
        if write:
            check_writable(f"create the job database {path}")
        yield None  # a database lost beside run folders is rebuilt from them once writes are allowed again
        return
    if missing and not write and not has_runs(ws):
        yield None  # nothing recorded yet
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = str(ws.settings.get("jobs", {}).get("journal_mode", "wal"))
    con = _open(ws, path, mode)
    try:
        yield con
    finally:
        con.close()


@contextmanager
def transaction(ws) -> Iterator[sqlite3.Connection]:
    """`BEGIN IMMEDIATE` ... `COMMIT` (rolled back on error): the write lock is taken before the first read."""
    with connect(ws) as con:
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")


def _to_job(row: sqlite3.Row, root: str) -> Job:
    values: dict[str, Any] = dict(row)
    for c in _JSON_COLUMNS:
        values[c] = json.loads(values[c]) if values[c] is not None else ({} if c == "resources" else None)
    return Job(root=root, **values)


def insert(con: sqlite3.Connection, job: Job) -> None:
    """Insert a new record."""
    values = [json.dumps(getattr(job, c), sort_keys=True, default=str) if c in _JSON_COLUMNS else getattr(job, c)
              for c in COLUMNS]
    con.execute(f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", values)


def fetch(con: sqlite3.Connection, job_id: str, root: str) -> Job | None:
    """The record `job_id`, or None."""
    row = con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return _to_job(row, root) if row is not None else None


def select(con: sqlite3.Connection, root: str, where: str = "1", args: tuple = (), order: str = "created DESC, id DESC",
           limit: int | None = None) -> list[Job]:
    """Records matching an SQL condition (internal callers only; values always go through `args`)."""
    sql = f"SELECT * FROM jobs WHERE {where} ORDER BY {order}" + (f" LIMIT {int(limit)}" if limit else "")
    return [_to_job(r, root) for r in con.execute(sql, args).fetchall()]


def update(con: sqlite3.Connection, job_id: str, only_if: tuple[str, ...] | None = None, **values: Any) -> bool:
    """Set columns of one record, optionally only while its state is one of `only_if`; True if it changed."""
    unknown = set(values) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown job columns {sorted(unknown)}")
    sets = ", ".join(f"{c} = ?" for c in values)
    args = [json.dumps(v, sort_keys=True, default=str) if c in _JSON_COLUMNS and v is not None else v
            for c, v in values.items()]
    sql = f"UPDATE jobs SET {sets} WHERE id = ?"
    args.append(job_id)
    if only_if:
        sql += f" AND state IN ({', '.join('?' * len(only_if))})"
        args.extend(only_if)
    return con.execute(sql, args).rowcount == 1

"""Rebuilding lost job records from the run folders: each `runs/<id>/` holds the job's config.json (kind, params,
backend, dependencies, creation time) and, once it is done, result.json.

A database that is created, or found empty, while run folders exist is filled from them in the transaction that
creates its schema, so `jobs list` never silently shows an empty history. Recovered jobs without a result are
marked failed with a note: their outcome was lost with the database.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
from pathlib import Path

from clipsim.jobs import db

log = logging.getLogger(__name__)
RECOVERED_NOTE = "recovered from {folder} after the job database {db} was lost"


def _configs(ws):
    runs = ws.path("runs")
    if not runs.is_dir():
        return
    for entry in sorted(os.scandir(runs), key=lambda e: e.name):
        config = Path(entry.path) / "config.json"
        if entry.is_dir() and config.is_file():
            yield Path(entry.path), config


def has_runs(ws) -> bool:
    """True when the workspace has at least one job run folder (runs/<id>/config.json)."""
    return next(_configs(ws), None) is not None


def _job_from_folder(ws, folder: Path, config: Path) -> db.Job | None:
    try:
        info = json.loads(config.read_text())
        job = db.Job(id=str(info["id"]), kind=str(info["kind"]), params=dict(info.get("params") or {}),
                     created=float(info.get("created") or config.stat().st_mtime),
                     backend=str(info.get("backend") or "local"), depends_on=info.get("depends_on"),
                     resources=dict(info.get("resources") or {}), root=str(ws.root))
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("run folder %s: config.json unreadable (%s); not recovered", folder, err)
        return None
    if job.id != folder.name:
        log.warning("run folder %s holds the config of job %s; not recovered", folder, job.id)
        return None
    note = RECOVERED_NOTE.format(folder=folder, db=db.db_path(ws))
    result_file, log_file = folder / "result.json", folder / "log.txt"
    try:
        job.result = json.loads(result_file.read_text()) if result_file.is_file() else None
    except (OSError, ValueError):
        job.result = None
    ended = max((p.stat().st_mtime for p in (result_file, log_file, config) if p.exists()), default=job.created)
    job.finished = ended
    if job.result is not None:
        job.state, job.exit_code = "done", 0
    else:
        job.state = "failed"
        job.error = f"{note}; it left no result.json, so its outcome is unknown (see {log_file})"
    return job


def recover_jobs(ws, con: sqlite3.Connection) -> int:
    """Insert a record for every run folder whose job is not in the database (inside the caller's transaction).

    Args:
        ws: the workspace.
        con: a connection inside `BEGIN IMMEDIATE`, with the schema created.

    Returns:
        The number of jobs recovered.
    """
    count = 0
    for folder, config in _configs(ws):
        if db.fetch(con, folder.name, str(ws.root)) is not None:
            continue
        job = _job_from_folder(ws, folder, config)
        if job is not None:
            db.insert(con, job)
            count += 1
    if count:
        log.warning("the job database %s was missing or empty: recovered %d job(s) from the run folders in %s "
                    "(jobs without result.json are marked failed)", db.db_path(ws), count, ws.path("runs"))
    return count

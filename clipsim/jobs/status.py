"""Reading a job's state for people: what it works on, why it waits, its progress (with ETA), the tail of its log,
and a table of all jobs."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from clipsim.jobs.db import Job, db_path

TAIL_BLOCK = 16384  # bytes read per step from the end of a log


def read_progress(job: Job) -> dict:
    """The job's latest progress report: done, total, message, fraction, rate (units/s), eta_s, updated.

    Returns:
        {} before the first report. For a running job `eta_s` is counted down from the report's time; a
        finished job reports fraction 1.0 when it is done.
    """
    path = job.run_dir / "progress.json"
    try:
        progress = json.loads(path.read_text())
    except (OSError, ValueError):  # not written yet (writes are atomic, so never half-written)
        progress = {}
    if progress and job.state == "running" and progress.get("eta_s") is not None:
        progress["eta_s"] = max(0.0, progress["eta_s"] - (time.time() - progress["updated"]))
    if job.state == "done":
        progress.update(fraction=1.0, eta_s=0.0)
    elif job.state != "running" and progress:
        progress["eta_s"] = None  # failed or cancelled: nothing left to wait for
    return progress


def describe_job(job: Job) -> str:
    """What a job works on, in a few words, so that runs of the same kind can be told apart.

    Returns:
        e.g. 'train on manifest gap (random control of the same size)', 'train on the full web set',
        'evaluate run train-1', 'prune (similarity-gap) into manifest similarity-gap_d0'; '' for unknown kinds.
    """
    p = job.params
    if job.kind == "train":
        what = "the full web set" if p.get("manifest", "full") == "full" else f"manifest {p['manifest']}"
        return f"train on {what}" + (" (random control of the same size)" if p.get("control") else "")
    if job.kind == "evaluate":
        return f"evaluate run {p.get('run')}" + (f" on {', '.join(p['tests'])}" if p.get("tests") else "")
    if job.kind == "prune":
        return f"prune ({p.get('rule')})" + (f" into manifest {p['name']}" if p.get("name") else "")
    if job.kind in ("search", "search-array"):
        train = p.get("train")
        return "search " + (", ".join(train) if isinstance(train, list) else train or "every train set")
    texts = {"umap": f"map {p.get('name') or ''}".strip(), "report": "study report", "demo": "build the demo"}
    return texts.get(job.kind, "")


def waiting_for(ws, job: Job) -> str:
    """Why a queued job has not started: the dependency it waits for (with its state), or a free slot in its lane
    with its place there and an estimated start (clipsim.jobs.lanes).

    Returns:
        'waiting for job ID (running)', or 'waiting for a free heavy slot (1 of 1 busy); 2nd in the heavy lane,
        starts in about 12 min (when job X ends)'; '' unless queued.
    """
    from clipsim.jobs.lanes import describe_spot, lane_of, lane_slots, queue_spots
    from clipsim.jobs.scheduler import get_job, list_jobs

    if job.state != "queued":
        return ""
    for dep in (d for d in (job.depends_on or "").split(",") if d):
        state = get_job(ws, dep).state
        if state != "done":
            return f"waiting for job {dep} ({state})"
    if job.backend != "local":
        return f"waiting for {job.backend} to start it"
    lane = lane_of(ws, job)
    busy = len([j for j in list_jobs(ws, states=["running"]) if j.backend == "local" and lane_of(ws, j) == lane])
    spot = queue_spots(ws).get(job.id)
    return f"waiting for a free {lane} slot ({busy} of {lane_slots(ws)[lane]} busy)" + (
        f"; {describe_spot(spot)}" if spot is not None else "")


def format_eta(seconds: float | None) -> str:
    """'1 h 02 min', '3 min 05 s', '42 s'; '' when unknown."""
    if seconds is None:
        return ""
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def change_stamp(ws) -> tuple:
    """A cheap stamp of the job records: (size, mtime) of the jobs database and its write-ahead log.

    It changes whenever a job is launched or changes state (progress and logs live in files, not in the database),
    so a page can watch it with two `stat` calls instead of reading the jobs.
    """
    out = []
    for suffix in ("", "-wal"):
        try:
            st = Path(f"{db_path(ws)}{suffix}").stat()
            out += [st.st_size, st.st_mtime_ns]
        except FileNotFoundError:
            out += [0, 0]
    return tuple(out)


def _tail_file(path: Path, lines: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            end = pos = f.tell()
            data = b""
            while pos > 0 and data.count(b"\n") <= lines:
                pos = max(0, pos - TAIL_BLOCK)
                f.seek(pos)
                data = f.read(end - pos)
    except OSError:
        return []
    return data.decode("utf-8", errors="replace").splitlines()[-lines:]


def tail_log(job: Job, lines: int = 50) -> str:
    """The last `lines` lines of the job's log.txt (for SLURM jobs also submitit's stderr when the log is empty)."""
    out = _tail_file(job.run_dir / "log.txt", lines)
    if not out and job.backend == "slurm":
        for err in sorted((job.run_dir / "submitit").glob("*_log.err")):
            out += _tail_file(err, lines)
        out = out[-lines:]
    return "\n".join(out)


def _fmt_time(ts: float | None) -> pd.Timestamp | None:
    return pd.Timestamp(ts, unit="s", tz="UTC").tz_convert(None) if ts else None


def jobs_frame(ws, kind: str | list[str] | None = None, limit: int | None = None) -> pd.DataFrame:
    """One row per job, newest first: id, kind, state, fraction, message, eta_s, created, started, finished,
    duration_s, backend, backend_id, depends_on, exit_code, params, result, error (params/result as JSON text),
    lane, queue_position and start_in_s (queued local jobs: clipsim.jobs.lanes.queue_spots).
    """
    from clipsim.jobs.lanes import lane_of, queue_spots
    from clipsim.jobs.scheduler import list_jobs

    columns = ["id", "kind", "state", "fraction", "message", "eta_s", "created", "started", "finished", "duration_s",
               "backend", "backend_id", "depends_on", "exit_code", "params", "result", "error", "lane",
               "queue_position", "start_in_s"]
    rows = []
    now = time.time()
    listed = list_jobs(ws, kind=kind, limit=limit)
    spots = queue_spots(ws) if any(j.state == "queued" for j in listed) else {}
    for job in listed:
        spot = spots.get(job.id)
        progress = read_progress(job)
        end = job.finished or (now if job.started else None)
        rows.append({
            "id": job.id, "kind": job.kind, "state": job.state, "fraction": progress.get("fraction"),
            "message": progress.get("message", ""), "eta_s": progress.get("eta_s"),
            "created": _fmt_time(job.created), "started": _fmt_time(job.started), "finished": _fmt_time(job.finished),
            "duration_s": round(end - job.started, 1) if job.started and end else None, "backend": job.backend,
            "backend_id": job.backend_id, "depends_on": job.depends_on, "exit_code": job.exit_code,
            "params": json.dumps(job.params, sort_keys=True),
            "result": json.dumps(job.result, sort_keys=True) if job.result is not None else None,
            "error": job.error, "lane": lane_of(ws, job), "queue_position": spot.position if spot else None,
            "start_in_s": spot.start_in_s if spot else None,
        })
    return pd.DataFrame(rows, columns=columns)

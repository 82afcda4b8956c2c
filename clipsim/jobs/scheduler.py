"""Launch, queue, reconcile, cancel and wait for jobs, with no daemon.

`launch` and `reconcile` (run by the CLI, by the app on every poll and by each worker as it finishes) start
queued jobs while slots are free and their dependency is done, and mark jobs whose process died as failed.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time

from clipsim import fileio
from clipsim.errors import ClipsimError, ReadOnlyError, WorkspaceError
from clipsim.jobs import db
from clipsim.jobs.backends import get_backend, reap_children
from clipsim.jobs.db import ACTIVE, Job
from clipsim.jobs.lanes import gpu_count, lane_of, lane_slots, slot_count  # noqa: F401  (gpu_count, slot_count: public here too)
from clipsim.names import read_only

log = logging.getLogger(__name__)
START_TIMEOUT_S = 120  # a claimed job whose process never appeared (its launcher died) is failed after this
CANCEL_GRACE_S = 5.0  # SIGTERM first; a worker still alive after this gets SIGKILL


class JobTimeout(ClipsimError, TimeoutError):
    """`wait` gave up while the job was still queued or running."""


def _refuse_read_only(action: str) -> None:
    if read_only():
        raise ReadOnlyError(f"cannot {action}: the workspace is served read-only (CLIPSIM_READ_ONLY=1); "
                            "unset it to launch or cancel jobs")


def get_job(ws, job_id: str) -> Job:
    """The job `job_id`.

    Raises:
        WorkspaceError: no such job.
    """
    with db.connect(ws, write=False) as con:
        job = db.fetch(con, job_id, str(ws.root)) if con is not None else None
    if job is None:
        raise WorkspaceError(f"no job {job_id!r} in {db.db_path(ws)}; list them with "
                             f"`python -m clipsim jobs list --workspace {ws.root}`")
    return job


def list_jobs(ws, kind: str | list[str] | None = None, states: list[str] | tuple[str, ...] | None = None,
              limit: int | None = None) -> list[Job]:
    """Jobs, newest first.

    Args:
        kind: one kind or a list of kinds (None: all).
        states: keep only these states (None: all).
        limit: at most this many.
    """
    where, args = ["1"], []
    for column, values in (("kind", [kind] if isinstance(kind, str) else kind), ("state", states)):
        if values is not None:
            where.append(f"{column} IN ({', '.join('?' * len(values))})" if values else "0")
            args.extend(values)
    with db.connect(ws, write=False) as con:
        return db.select(con, str(ws.root), " AND ".join(where), tuple(args), limit=limit) if con is not None else []


def launch(ws, kind: str, params: dict | None = None, backend: str | None = None,
           depends_on: str | list[str] | None = None, dedupe: bool = True, resources: dict | None = None) -> Job:
    """Queue a job and start it at once when a slot is free (and its dependency is done).

    Args:
        ws: the workspace.
        kind: a registered kind (clipsim.jobs.kinds.KINDS), e.g. 'search', 'train'.
        params: JSON-able parameters passed to the kind function.
        backend: 'local' or 'slurm' (default: settings.jobs.backend, else 'local').
        depends_on: id of a job (or a list of ids) that must be done first; if one fails this job fails, if one is
            cancelled this job is cancelled (its error names the dependency).
        dedupe: return the queued or running job with identical (kind, params) instead of launching twice.
        resources: per-job overrides of settings.slurm (e.g. {"gpus": 8, "time_min": 2880}).

    An array kind (clipsim.jobs.kinds.ARRAY_TASKS, e.g. 'search-array' with params["tasks"] = N) also queues N
    task jobs (one SLURM array on the slurm backend); the returned job depends on all of them and runs last.

    Returns:
        The job record (queued, or running when it started).

    Raises:
        ReadOnlyError: the workspace is served read-only.
        ClipsimError: unknown kind or backend, params not JSON-able or refused by the kind's check
            (clipsim.jobs.checks), unknown dependency; nothing is recorded then.
    """
    from clipsim.jobs.checks import Launch, check_params
    from clipsim.jobs.kinds import KINDS

    _refuse_read_only(f"launch a {kind!r} job")
    if kind not in KINDS:
        raise ClipsimError(f"unknown job kind {kind!r}; registered kinds: {', '.join(sorted(KINDS))}")
    params = dict(params or {})
    try:
        params = json.loads(json.dumps(params, sort_keys=True))
    except (TypeError, ValueError) as err:
        raise ClipsimError(f"params of the {kind!r} job must be JSON-able ({err}): {params!r}") from err
    backend = backend or ws.settings.get("jobs", {}).get("backend", "local")
    get_backend(backend)
    lane_slots(ws)  # a bad settings.jobs.slots is refused now, not after the record is written
    depends_on = ",".join(depends_on) if isinstance(depends_on, (list, tuple)) else depends_on
    check_params(ws, kind, params, Launch(backend, waits=bool(depends_on)))
    job = Job(id=db.new_job_id(kind), kind=kind, params=params, created=time.time(), backend=backend,
              depends_on=depends_on, dedupe_key=db.dedupe_key(kind, params), resources=dict(resources or {}),
              root=str(ws.root))
    same = _insert(ws, job, dedupe)
    if same is not None:
        return same
    _start_ready(ws)
    return get_job(ws, job.id)


def _insert(ws, job: Job, dedupe: bool) -> Job | None:
    """Record a new job and write its config.json, unless `dedupe` finds an identical active job (returned)."""
    from clipsim.jobs.arrays import array_tasks
    from clipsim.jobs.kinds import KINDS

    root = str(ws.root)
    with db.transaction(ws) as con:
        for dep in _dependencies(job):
            if db.fetch(con, dep, root) is None:
                raise ClipsimError(f"depends_on={dep!r}: no such job in {db.db_path(ws)}")
        if dedupe:
            same = db.select(con, root, "dedupe_key = ? AND state IN ('queued', 'running')", (job.dedupe_key,), limit=1)
            if same:
                return same[0]
        _fresh_id(con, job)
        tasks = array_tasks(job)  # [] unless an array kind: its tasks inherit the dependency, it waits for them
        for task in tasks:
            _fresh_id(con, task)
            _record(con, task, KINDS)
        if tasks:
            job.depends_on = ",".join(t.id for t in tasks)
        _record(con, job, KINDS)
    return None


def _fresh_id(con, job: Job) -> None:
    while db.fetch(con, job.id, job.root) is not None:  # same second, same 4 hex digits
        job.id = db.new_job_id(job.kind)


def _record(con, job: Job, kinds: dict) -> None:
    config = {k: v for k, v in job.to_dict().items()
              if k in ("id", "kind", "params", "backend", "depends_on", "resources", "created")}
    config["target"] = kinds[job.kind]  # the worker runs this, even for a kind registered only in this process
    fileio.write_json(job.run_dir / "config.json", config)
    db.insert(con, job)


def _dependencies(job: Job) -> list[str]:
    """The ids a job waits for (depends_on holds one id or several joined by commas)."""
    return [d for d in (job.depends_on or "").split(",") if d]


def _claim_ready(ws, start_backends: tuple[str, ...] | None) -> list[Job]:
    """In one transaction: end jobs whose dependency failed or was cancelled, claim runnable ones (-> running)."""
    now, root, claimed = time.time(), str(ws.root), []
    slots = lane_slots(ws)
    with db.transaction(ws) as con:
        busy = dict.fromkeys(slots, 0)
        for running in db.select(con, root, "state = 'running' AND backend = 'local'"):
            busy[lane_of(ws, running)] += 1
        for job in db.select(con, root, "state = 'queued'", order="created ASC, id ASC"):
            deps = {d: db.fetch(con, d, root) for d in _dependencies(job)}
            bad = next((d for d, dep in deps.items() if dep is None or dep.state in ("failed", "cancelled")), None)
            if bad is not None:  # a cancelled dependency cancels this job too; a failed or missing one fails it
                gone = deps[bad].state if deps[bad] else "missing"
                why = {"failed": "failed", "cancelled": "was cancelled", "missing": "is missing"}[gone]
                db.update(con, job.id, only_if=("queued",), state="cancelled" if gone == "cancelled" else "failed",
                          finished=now, error=f"dependency {bad} {why}; this job was not run")
                continue
            if any(dep.state != "done" for dep in deps.values()):
                continue
            if start_backends and job.backend not in start_backends:
                continue
            if job.backend == "local":  # each lane has its own slots: a light job never waits behind a heavy one
                lane = lane_of(ws, job)
                if busy[lane] >= slots[lane]:
                    continue
                busy[lane] += 1
            if db.update(con, job.id, only_if=("queued",), state="running", submitted=now):
                claimed.append(db.fetch(con, job.id, root))
    return claimed


def _start_ready(ws, start_backends: tuple[str, ...] | None = None) -> None:
    from clipsim.jobs.arrays import start_batches

    for batch in start_batches(_claim_ready(ws, start_backends)):  # an array's tasks go to SLURM as one array
        backend = get_backend(batch[0].backend)
        try:
            columns = backend.start_array(ws, batch) if len(batch) > 1 else [backend.start(ws, batch[0])]
        except Exception as err:  # noqa: BLE001  (record why instead of leaving a job that looks claimed forever)
            with db.transaction(ws) as con:
                for job in batch:
                    db.update(con, job.id, only_if=("running",), state="failed", finished=time.time(),
                              error=f"could not start on backend {job.backend!r}: {type(err).__name__}: {err}")
            continue
        with db.transaction(ws) as con:
            for job, cols in zip(batch, columns):
                db.update(con, job.id, **cols)


def _mark_dead(ws, job: Job, exit_code: int | None, why: str) -> None:
    """Record the end of a job whose process is gone: cancelled if a cancel was asked for, else failed. What is left
    of it (a trainer, torchrun ranks, loader workers) is killed first, so no process outlives its job."""
    from clipsim.jobs.status import tail_log

    try:
        killed = get_backend(job.backend).kill_remnants(ws, job)
    except ClipsimError as err:  # another host: say so in the record
        why, killed = f"{why}; {err}", []
    if killed:
        log.warning("job %s: killed %d leftover process(es) of its dead worker: %s", job.id, len(killed), killed)
        why = f"{why}; killed {len(killed)} leftover process(es) ({', '.join(map(str, killed))})"
    with db.transaction(ws) as con:
        current = db.fetch(con, job.id, str(ws.root))
        if current is None or current.state != "running":
            return
        cancelled = current.cancel_requested is not None
        error = None if cancelled else f"{why}; exit code {exit_code}. Last lines of {job.run_dir / 'log.txt'}:\n" \
                                       f"{tail_log(job, lines=40)}"
        db.update(con, job.id, only_if=("running",), state="cancelled" if cancelled else "failed",
                  finished=time.time(), exit_code=exit_code, error=error)


def reconcile(ws, start_backends: tuple[str, ...] | None = None) -> list[Job]:
    """Fail running jobs whose process died (with their log tail), then start queued jobs that can run.

    Args:
        ws: the workspace.
        start_backends: start only queued jobs of these backends (None: all); SLURM tasks pass ('slurm',).

    Returns:
        The active (queued or running) jobs afterwards; in read-only mode nothing is changed.
    """
    if read_only():
        return list_jobs(ws, states=ACTIVE)
    now = time.time()
    for job in list_jobs(ws, states=["running"]):
        backend = get_backend(job.backend)
        if job.backend_id is None:
            claimed = job.submitted or job.created
            if now - claimed > START_TIMEOUT_S:
                _mark_dead(ws, job, None, f"the job was claimed {now - claimed:.0f} s ago but its process "
                                          "never started (the launching process died?)")
            continue
        if not backend.alive(ws, job):
            _mark_dead(ws, job, backend.exit_code(job), f"the worker process {job.backend_id} ({job.backend}) ended "
                       f"without recording a result ({backend.end_note(job)})")
    _start_ready(ws, start_backends)
    reap_children()
    return list_jobs(ws, states=ACTIVE)


def cancel(ws, job_id: str, grace: float = CANCEL_GRACE_S) -> Job:
    """Cancel a job: a queued one at once; a running one by SIGTERM (scancel on SLURM), SIGKILL after `grace` s.

    Returns:
        The job afterwards (cancelled, or its final state if it ended first).

    Raises:
        ReadOnlyError: the workspace is served read-only.
        WorkspaceError: no such job.
    """
    _refuse_read_only(f"cancel job {job_id}")
    job = get_job(ws, job_id)
    if not job.is_active:  # already over; still make sure nothing of it runs on (e.g. a trainer whose worker died)
        with contextlib.suppress(ClipsimError):  # on another host: nothing to do from here
            get_backend(job.backend).kill_remnants(ws, job)
        return job
    now = time.time()
    with db.transaction(ws) as con:
        if not db.update(con, job_id, only_if=("queued",), state="cancelled", finished=now, cancel_requested=now):
            db.update(con, job_id, only_if=("running",), cancel_requested=now)
    job = get_job(ws, job_id)
    if job.state == "running":
        backend = get_backend(job.backend)
        if job.backend_id is not None:
            backend.signal(ws, job, hard=False)
            deadline = time.time() + grace
            while time.time() < deadline and backend.alive(ws, job):
                time.sleep(0.05)
            if backend.alive(ws, job):
                backend.signal(ws, job, hard=True)
                deadline = time.time() + 2.0
                while time.time() < deadline and backend.alive(ws, get_job(ws, job_id)):
                    time.sleep(0.05)
        _mark_dead(ws, job, backend.exit_code(job), "cancelled")
    for dep in _dependencies(job):  # an array job takes its own unfinished tasks with it
        task = get_job(ws, dep)
        if task.is_active and task.params.get("array_job") == job_id:
            cancel(ws, dep, grace)
    reconcile(ws)
    return get_job(ws, job_id)


def wait(ws, job_id: str, timeout: float | None = None, poll: float = 0.5) -> Job:
    """Block until the job is done, failed or cancelled, reconciling on every poll.

    Raises:
        JobTimeout: still active after `timeout` seconds (the job keeps running).
        WorkspaceError: no such job.
    """
    deadline = None if timeout is None else time.time() + timeout
    while True:
        job = get_job(ws, job_id)
        if not job.is_active:
            return job
        if deadline is not None and time.time() > deadline:
            raise JobTimeout(f"job {job_id} is still {job.state} after {timeout} s; follow it with `python -m clipsim "
                             f"jobs show --workspace {ws.root} --id {job_id}` or cancel it")
        reconcile(ws)
        time.sleep(poll)

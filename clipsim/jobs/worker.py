"""The job worker: `python -m clipsim.jobs.worker <workspace> <job_id>` runs one job's kind and records the outcome.

It marks the job started (pid, host), beats a heartbeat, turns SIGTERM/SIGINT into `JobCancelled`, stores
the result or the log tail, and finally calls `reconcile` so queued jobs start without a daemon. Everything it starts
carries CLIPSIM_JOB_ID=<id> (clipsim.jobs.procs); whatever of it still runs when the kind returns is killed.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from clipsim import fileio
from clipsim.jobs import db
from clipsim.jobs.backends import hostname
from clipsim.jobs.procs import JOB_ENV, kill_job_processes
from clipsim.workspace import Workspace

HEARTBEAT_S = 15  # how often a running worker stamps its record (other hosts judge liveness by it)
CANCEL_CHECK_S = 2.0  # check_cancelled() reads the database at most this often
PROGRESS_MIN_S = 0.2  # progress.json is rewritten at most this often (except for the final step)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
log = logging.getLogger(__name__)


class JobCancelled(BaseException):
    """Raised inside a running job when it is cancelled (BaseException: `except Exception` does not swallow it)."""


class JobContext:
    """What a kind function gets besides the workspace and params: run folder, logger, progress, cancellation."""

    def __init__(self, ws: Workspace, job: db.Job, logger: logging.Logger):
        self.ws = ws
        self.job_id = job.id
        self.run_dir: Path = job.run_dir
        self.log = logger
        self.cancelled = False  # set by the signal handler
        self.stopped_by: str | None = None  # the signal's name, e.g. 'SIGTERM'
        self.interruptible = False  # while True a signal raises JobCancelled at once
        self._first: tuple[float, int] | None = None
        self._last_write = 0.0
        self._last_check = 0.0
        self._pending: dict | None = None

    def progress(self, done: int, total: int, message: str = "") -> None:
        """Record progress in progress.json (atomically) with the rate and ETA since the first call.

        Args:
            done: units finished.
            total: units in all (0 when unknown).
            message: what is being done, e.g. 'search web'.
        """
        now = time.time()
        if self._first is None:
            self._first = (now, done)
        t0, d0 = self._first
        rate = (done - d0) / (now - t0) if now > t0 and done > d0 else None
        eta = (total - done) / rate if rate and total else None
        self._pending = {"done": done, "total": total, "message": message, "rate": rate, "eta_s": eta, "updated": now,
                         "fraction": min(1.0, done / total) if total else None}
        if now - self._last_write >= PROGRESS_MIN_S or done >= total:
            self.flush_progress()

    def flush_progress(self) -> None:
        """Write a report that throttling held back (the worker calls this when the job ends)."""
        if self._pending is not None:
            fileio.write_json(self.run_dir / "progress.json", self._pending)
            self._pending = None
            self._last_write = time.time()

    def result_path(self, name: str) -> Path:
        """A path for an output file inside the run folder (parent folders created)."""
        path = self.run_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def check_cancelled(self) -> None:
        """Raise JobCancelled if the job was cancelled (signal received, or cancel recorded in the database)."""
        if self.cancelled:
            raise JobCancelled(self.job_id)
        now = time.time()
        if now - self._last_check >= CANCEL_CHECK_S:
            self._last_check = now
            with db.connect(self.ws) as con:
                job = db.fetch(con, self.job_id, str(self.ws.root))
            if job is None or job.cancel_requested or job.state != "running":
                self.cancelled = True
                raise JobCancelled(self.job_id)


def _plain(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _start_logging(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "log.txt")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("clipsim").setLevel(logging.INFO)
    return handler


def _heartbeat(ws: Workspace, job_id: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            with db.transaction(ws) as con:
                db.update(con, job_id, only_if=("running",), heartbeat=time.time())
        except Exception:  # a busy or briefly unreachable disk must not kill the job
            log.warning("heartbeat of job %s not recorded", job_id, exc_info=True)


def _install_signals(ctx: JobContext) -> None:
    def handler(signum, frame):
        ctx.cancelled = True
        ctx.stopped_by = signal.Signals(signum).name
        if ctx.interruptible:
            raise JobCancelled(f"{ctx.job_id}: signal {signal.Signals(signum).name}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def _execute(ws: Workspace, job: db.Job, ctx: JobContext) -> tuple[str, int, dict | None]:
    """Run the kind; (state, exit code, result)."""
    from clipsim.jobs.kinds import resolve_kind

    try:
        config = job.run_dir / "config.json"
        fn = resolve_kind(job.kind, json.loads(config.read_text()).get("target") if config.exists() else None)
        ctx.log.info("job %s (%s) started with params %s", job.id, job.kind, json.dumps(job.params, sort_keys=True))
        ctx.interruptible = True
        try:
            ctx.check_cancelled()
            result = fn(ws, dict(job.params), ctx)
        finally:
            ctx.interruptible = False
        result = json.loads(json.dumps(result if result is not None else {}, default=_plain))
        fileio.write_json(job.run_dir / "result.json", result)
        ctx.log.info("job %s done: %s", job.id, json.dumps(result, sort_keys=True)[:2000])
        return "done", 0, result
    except JobCancelled:
        ctx.log.warning("job %s cancelled", job.id)
        return "cancelled", 128 + signal.SIGTERM, None
    except SystemExit as err:
        ctx.log.error("job %s exited with %s", job.id, err.code)
        return "failed", err.code if isinstance(err.code, int) and err.code else 1, None
    except BaseException:
        ctx.log.exception("job %s failed", job.id)
        return "failed", 1, None


def _claim_start(ws: Workspace, job_id: str) -> db.Job | None:
    with db.transaction(ws) as con:
        job = db.fetch(con, job_id, str(ws.root))
        if job is None or job.state != "running":
            return None
        now = time.time()
        db.update(con, job_id, started=now, pid=os.getpid(), host=hostname(), heartbeat=now)
        return db.fetch(con, job_id, str(ws.root))


def _finish(ws: Workspace, job: db.Job, state: str, code: int, result: dict | None, stopped_by: str | None) -> None:
    """Record the outcome. A signal no clipsim cancel asked for (SLURM's time limit, a node failure, preemption, a
    kill from outside) makes the job failed, not cancelled."""
    from clipsim.jobs.status import tail_log

    with db.transaction(ws) as con:
        current = db.fetch(con, job.id, str(ws.root))
        asked = current is not None and current.cancel_requested is not None
        if state == "failed" and asked:
            state = "cancelled"  # the cancel signal interrupted it mid-step
        error = tail_log(job, lines=40) if state == "failed" else None
        if state == "cancelled" and not asked and stopped_by:
            where = f"`sacct -j {current.backend_id}`" if job.backend == "slurm" and current else "who sent it"
            state, error = "failed", (f"stopped by {stopped_by}, which no clipsim cancel sent (on SLURM: a time limit, "
                                      f"node failure or preemption; see {where}). Last lines of the log:\n"
                                      f"{tail_log(job, lines=40)}")
        db.update(con, job.id, only_if=("running",), state=state, finished=time.time(), exit_code=code,
                  result=result, error=error)


def run_job(root: str, job_id: str) -> int:
    """Run job `job_id` of the workspace at `root` to its end (the local worker and the SLURM task call this).

    Args:
        root: workspace folder.
        job_id: the job's id; it must already be claimed (state 'running').

    Returns:
        The exit code: 0 done, 1 failed, 143 cancelled.
    """
    from clipsim.jobs.scheduler import reconcile

    os.environ[JOB_ENV] = job_id  # inherited by the trainer, torchrun and its ranks, loader workers
    ws = Workspace.open(root)
    job = _claim_start(ws, job_id)
    if job is None:
        print(f"job {job_id} is not waiting to run (cancelled or already finished); nothing to do", file=sys.stderr)
        return 0
    job.run_dir.mkdir(parents=True, exist_ok=True)
    handler = _start_logging(job.run_dir)
    ctx = JobContext(ws, job, logging.getLogger(f"clipsim.jobs.{job.kind}"))
    _install_signals(ctx)
    stop = threading.Event()
    threading.Thread(target=_heartbeat, args=(ws, job.id, stop), daemon=True).start()
    try:
        state, code, result = _execute(ws, job, ctx)
        ctx.flush_progress()
        leftover = kill_job_processes(job_id)  # a child that outlived the kind (the kind should have waited for it)
        if leftover:
            ctx.log.warning("job %s: killed %d process(es) still running after it ended: %s", job_id, len(leftover),
                            leftover)
        _finish(ws, job, state, code, result, ctx.stopped_by)
    finally:
        stop.set()
        os.environ.pop(JOB_ENV, None)  # jobs started from here on (reconcile below) are not this job's
        logging.getLogger().removeHandler(handler)
        handler.close()
    try:  # start what waited for this slot or this result; a SLURM task only submits further SLURM jobs
        reconcile(ws, start_backends=("slurm",) if job.backend == "slurm" else None)
    except Exception as err:  # noqa: BLE001  (the job itself is finished and recorded; say why, exit cleanly)
        print(f"reconcile after job {job_id} failed: {err}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m clipsim.jobs.worker <workspace> <job_id>`."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m clipsim.jobs.worker <workspace> <job_id>", file=sys.stderr)
        return 2
    return run_job(argv[0], argv[1])


if __name__ == "__main__":  # run through the imported module so its classes are the ones kinds see
    from clipsim.jobs.worker import main as worker_main

    sys.exit(worker_main())

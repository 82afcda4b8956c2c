"""Where a job's worker runs: a detached local process here, or a SLURM job (clipsim.jobs.slurm).

A backend starts the worker (`clipsim.jobs.worker.run_job`), tells whether it is still alive, signals it, and kills
what is left of a job whose worker died (`kill_remnants`: its process group and every process tagged with its id).
Liveness is checked against the process start time recorded at launch, so a reused pid never looks alive.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from clipsim.errors import ClipsimError
from clipsim.jobs.db import Job
from clipsim.jobs.procs import JOB_ENV, kill_job_processes, process_start

__all__ = ["BACKEND_NAMES", "LocalBackend", "get_backend", "hostname", "process_alive", "process_start",
           "reap_children"]

REPO_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the clipsim package (for PYTHONPATH)
HEARTBEAT_STALE_S = 90  # the worker beats every 15 s; six missed beats mean the process (or its node) is gone
_CHILDREN: dict[int, subprocess.Popen] = {}  # processes this process started: polled so none stays a zombie


def hostname() -> str:
    """This machine's name (jobs record where their process runs)."""
    return socket.gethostname()


def process_alive(pid: int, started: str | None) -> bool:
    """True when `pid` runs and is the process that started at `started` (None or "": any process)."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:  # reaps our own exited child
        return False
    now = process_start(pid)
    return now is not None and (not started or not now or now == started)


def reap_children() -> None:
    """Collect workers this process started that have ended, so none lingers as a zombie."""
    for pid, child in list(_CHILDREN.items()):
        if child.poll() is not None:
            del _CHILDREN[pid]


def _heartbeat_alive(job: Job) -> bool:
    beat = job.heartbeat or job.submitted or job.created
    return time.time() - beat < HEARTBEAT_STALE_S


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as err:
        raise ClipsimError(f"not allowed to signal process group {pid}; cancel it as the user who started it") from err


class LocalBackend:
    """Runs `python -m clipsim.jobs.worker <workspace> <job>` in a new session, detached from the caller."""

    name = "local"

    def start(self, ws, job: Job) -> dict:
        """Start the worker; returns the columns to record (backend_id = pid, its start time, host)."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        env[JOB_ENV] = job.id  # the worker and all it starts carry it (never the launching job's id)
        job.run_dir.mkdir(parents=True, exist_ok=True)
        with open(job.run_dir / "log.txt", "ab") as log:  # stdout/stderr too: import errors land in the log
            proc = subprocess.Popen(
                [sys.executable, "-m", "clipsim.jobs.worker", str(Path(ws.root).resolve()), job.id],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )
        _CHILDREN[proc.pid] = proc
        return {"backend_id": str(proc.pid), "proc_start": process_start(proc.pid), "host": hostname()}

    def alive(self, ws, job: Job) -> bool:
        """Whether the worker process still runs (heartbeat when it runs on another host)."""
        if job.backend_id is None:
            return True
        if job.host and job.host != hostname():
            return _heartbeat_alive(job)
        return process_alive(int(job.backend_id), job.proc_start)

    def exit_code(self, job: Job) -> int | None:
        """The exit status when this process started the worker and it has ended (-N: killed by signal N)."""
        child = _CHILDREN.get(int(job.backend_id)) if job.backend_id else None
        if child is None:
            return None
        try:  # called once the process looks dead; the kernel may take a moment before it can be reaped
            return child.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return None

    def end_note(self, job: Job) -> str:
        """Why a worker may have ended without recording a result (for the job's error)."""
        return "killed, out of memory, or its host went down"

    def signal(self, ws, job: Job, hard: bool) -> None:
        """SIGTERM (or SIGKILL when `hard`) to the worker's process group."""
        if job.backend_id is None or not self.alive(ws, job):
            return
        if job.host and job.host != hostname():
            raise ClipsimError(f"job {job.id} runs on host {job.host}; cancel it there "
                               "(`python -m clipsim jobs cancel`)")
        _signal_group(int(job.backend_id), signal.SIGKILL if hard else signal.SIGTERM)

    def kill_remnants(self, ws, job: Job) -> list[int]:
        """SIGKILL what is left of a job whose worker is gone (or being killed): its process group and every process
        tagged with its id (a trainer, torchrun ranks in their own sessions). Returns the pids signalled.

        Raises:
            ClipsimError: the job ran on another host (kill its processes there).
        """
        if job.backend_id is None:
            return []
        if job.host and job.host != hostname():
            raise ClipsimError(f"job {job.id} ran on host {job.host}; run `python -m clipsim jobs cancel --id {job.id}` "
                               "there to stop what is left of it")
        return kill_job_processes(job.id, int(job.backend_id), job.proc_start)


BACKEND_NAMES = ("local", "slurm")
_BACKENDS: dict[str, object] = {"local": LocalBackend()}  # one instance each (the SLURM one paces its sacct calls)


def get_backend(name: str):
    """The backend called `name` ('local' or 'slurm').

    Raises:
        ClipsimError: unknown name.
    """
    if name == "slurm" and name not in _BACKENDS:
        from clipsim.jobs.slurm import SlurmBackend  # imported on use: it builds on this module's process helpers

        _BACKENDS[name] = SlurmBackend()
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ClipsimError(f"unknown job backend {name!r}; use one of {list(BACKEND_NAMES)}") from None

"""Where a job's worker runs: a detached local process, or a SLURM job submitted through submitit.

A backend starts the worker (`clipsim.jobs.worker.run_job`), tells whether it is still alive, signals it, and kills
what is left of a job whose worker died (`kill_remnants`: its process group and every process tagged with its id).
Liveness is checked against the process start time recorded at launch, so a reused pid never looks alive.
"""
from __future__ import annotations

import atexit
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

__all__ = ["BACKENDS", "SLURM_DEFAULTS", "LocalBackend", "SlurmBackend", "get_backend", "hostname", "process_alive",
           "process_start", "reap_children"]

REPO_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the clipsim package (for PYTHONPATH)
HEARTBEAT_STALE_S = 90  # the worker beats every 15 s; six missed beats mean the process (or its node) is gone
SLURM_DEFAULTS = {  # ws.settings["slurm"] keys; resources given to launch() override them per job
    "cluster": None,  # None: submitit picks SLURM when `sbatch` is on PATH; "local": run here (tests)
    "partition": None, "account": None, "qos": None, "constraint": None,
    "gpus": 1, "cpus": 8, "mem_gb": 64,  # one GPU with the CPU cores and memory to feed it
    "time_min": 1440,  # SLURM kills the job after this many minutes
    "setup": [],  # shell lines run before the worker (module load ..., source /path/.venv/bin/activate)
    "additional": {},  # extra sbatch options, e.g. {"reservation": "x"}
}
_CHILDREN: dict[int, subprocess.Popen] = {}  # processes this process started: polled so none stays a zombie
_SUBMITTED: dict[str, object] = {}  # submitit jobs submitted from this process (local cluster: holds the process)
# Drop them while modules are intact: submitit's LocalJob.__del__ fails with a TypeError traceback when it only runs
# during interpreter teardown (it never cancels: submitit's local jobs keep running, as SLURM ones do).
atexit.register(_SUBMITTED.clear)


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


class SlurmBackend:
    """Submits the worker function with submitit; resources come from ws.settings['slurm'] and the job."""

    name = "slurm"

    @staticmethod
    def config(ws, job: Job) -> dict:
        """The SLURM settings for this job: defaults < workspace settings < the job's resources."""
        return {**SLURM_DEFAULTS, **ws.settings.get("slurm", {}), **(job.resources or {})}

    @staticmethod
    def _folder(job: Job) -> Path:
        """submitit's folder: the job's run folder, or for an array task its array job's (one sbatch script)."""
        array = job.params.get("array_job")
        return (Path(job.root) / "runs" / array if array else job.run_dir) / "submitit"

    def _executor(self, ws, job: Job, cfg: dict):
        import submitit

        setup = [f"export PYTHONPATH={REPO_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}", *cfg["setup"]]
        try:
            ex = submitit.AutoExecutor(folder=self._folder(job), cluster=cfg["cluster"])
        except RuntimeError as err:
            raise ClipsimError(
                f"no SLURM cluster found for job {job.id} (`sbatch` is not on PATH); launch from a login node, "
                "use backend 'local', or set settings.slurm.cluster to 'local' to try the path on this machine"
            ) from err
        ex.update_parameters(
            name=f"clipsim-{job.kind}", timeout_min=int(cfg["time_min"]), gpus_per_node=int(cfg["gpus"]),
            cpus_per_task=int(cfg["cpus"]), mem_gb=float(cfg["mem_gb"]), slurm_partition=cfg["partition"],
            slurm_account=cfg["account"], slurm_qos=cfg["qos"], slurm_constraint=cfg["constraint"],
            slurm_setup=setup, slurm_additional_parameters=dict(cfg["additional"]) or None, local_setup=setup[:1],
        )
        return ex

    def start(self, ws, job: Job) -> dict:
        """Submit; returns the columns to record (backend_id = SLURM job id, the effective resources)."""
        from clipsim.jobs.worker import run_job

        cfg = self.config(ws, job)
        sub = self._executor(ws, job, cfg).submit(run_job, str(Path(ws.root).resolve()), job.id)
        return self._record(sub, cfg)

    def start_array(self, ws, jobs: list[Job]) -> list[dict]:
        """Submit jobs of one array (same kind and resources) as one SLURM job array (`executor.map_array`).

        Returns:
            The columns to record per job, in order (backend_id = `<array id>_<task>` on SLURM).
        """
        from clipsim.jobs.worker import run_job

        cfg = self.config(ws, jobs[0])
        root = str(Path(ws.root).resolve())
        subs = self._executor(ws, jobs[0], cfg).map_array(run_job, [root] * len(jobs), [j.id for j in jobs])
        return [self._record(sub, cfg) for sub in subs]

    @staticmethod
    def _record(sub, cfg: dict) -> dict:
        _SUBMITTED[sub.job_id] = sub
        out = {"backend_id": str(sub.job_id), "resources": cfg}  # the worker records its own host
        if cfg["cluster"] == "local":  # the job id is the pid of submitit's local controller
            out["proc_start"] = process_start(int(sub.job_id))
        return out

    def _job(self, job: Job):
        import submitit

        known = _SUBMITTED.get(job.backend_id)
        return known or submitit.SlurmJob(folder=self._folder(job), job_id=job.backend_id)

    def alive(self, ws, job: Job) -> bool:
        """Whether SLURM (or the local controller) still holds the job."""
        if job.backend_id is None:
            return True
        if job.resources.get("cluster") == "local":
            sub = _SUBMITTED.get(job.backend_id)
            if sub is not None and sub._process is not None and sub._process.poll() is not None:
                return False
            return process_alive(int(job.backend_id), job.proc_start)
        state = str(self._job(job).state).split()[0].upper()  # e.g. "CANCELLED by 123"
        return state in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "UNKNOWN",
                         "RESIZING", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT")

    def exit_code(self, job: Job) -> int | None:
        """Not known from here (SLURM accounting has it: `sacct -j <backend_id>`)."""
        return None

    def kill_remnants(self, ws, job: Job) -> list[int]:
        """SLURM ends a job's processes with it (cgroup); submitit's local cluster: kill the tagged ones on this host."""
        if job.resources.get("cluster") != "local" or (job.host and job.host != hostname()):
            return []
        return kill_job_processes(job.id)

    def signal(self, ws, job: Job, hard: bool) -> None:
        """scancel (SLURM sends SIGTERM, SIGKILL after KillWait); locally SIGINT to the controller, then SIGKILL."""
        if job.backend_id is None or not self.alive(ws, job):
            return
        if job.resources.get("cluster") != "local":
            self._job(job).cancel(check=False)
            return
        if hard and job.pid and process_start(job.pid) is not None:  # the controller forwards signals to the
            os.kill(job.pid, signal.SIGKILL)  # worker; a hard kill hits both
        try:
            os.kill(int(job.backend_id), signal.SIGKILL if hard else signal.SIGINT)
        except ProcessLookupError:
            pass


BACKENDS = {"local": LocalBackend(), "slurm": SlurmBackend()}


def get_backend(name: str):
    """The backend called `name` ('local' or 'slurm').

    Raises:
        ClipsimError: unknown name.
    """
    try:
        return BACKENDS[name]
    except KeyError:
        raise ClipsimError(f"unknown job backend {name!r}; use one of {sorted(BACKENDS)}") from None

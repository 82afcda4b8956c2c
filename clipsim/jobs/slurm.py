"""The SLURM backend: the worker submitted through submitit (one sbatch per job, one job array for an array's tasks),
followed through `sacct` and cancelled with `scancel`; settings.slurm.cluster 'local' runs the same path through
submitit's local executor. tests/test_slurm.py runs it against a real one-node cluster.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from clipsim.errors import ClipsimError
from clipsim.jobs.backends import REPO_ROOT, hostname, process_alive, process_start
from clipsim.jobs.db import Job
from clipsim.jobs.procs import kill_job_processes

SLURM_DEFAULTS = {  # ws.settings["slurm"] keys; resources given to launch() override them per job
    "cluster": None,  # None: submitit picks SLURM when `sbatch` is on PATH; "local": run here, without a cluster
    "partition": None, "account": None, "qos": None, "constraint": None,
    "gpus": 1, "cpus": 8, "mem_gb": 64,  # one GPU with the CPU cores and memory to feed it
    "time_min": 1440,  # SLURM kills the job after this many minutes
    "setup": [],  # shell lines run before the worker (module load ..., source /path/.venv/bin/activate)
    "additional": {},  # extra sbatch options, e.g. {"reservation": "x"}
}
JOB_ENV_PREFIXES = ("SLURM_", "SLURMD_", "SRUN_", "SUBMITIT_")  # what SLURM and submitit set inside a job
SACCT_EVERY_S = 2.0  # sacct is asked at most this often per process (submitit alone backs off to every 10 minutes)
ALIVE_STATES = frozenset(("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "UNKNOWN",
                          "RESIZING", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"))
_SUBMITTED: dict[str, object] = {}  # submitit jobs submitted from this process (local cluster: holds the process)
# Drop them while modules are intact: submitit's LocalJob.__del__ fails with a TypeError traceback when it only runs
# during interpreter teardown (it never cancels: submitit's local jobs keep running, as SLURM ones do).
atexit.register(_SUBMITTED.clear)


@contextlib.contextmanager
def _outside_job() -> Iterator[None]:
    """Hide the variables SLURM and submitit set inside a job while submitting from one (SLURM_CONF stays).

    A finishing SLURM task submits what waited for it, and sbatch exports the caller's environment: the new job kept
    the SLURM_ARRAY_* variables SLURM sets only in arrays, so submitit ran the task's pickle again (job 10 ran task
    7_2) and the array's own step never ran.
    """
    if "SLURM_JOB_ID" not in os.environ:
        yield
        return
    hidden = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith(JOB_ENV_PREFIXES) and k != "SLURM_CONF"}
    try:
        yield
    finally:
        os.environ.update(hidden)


def sacct_record(job_id: str) -> dict[str, str]:
    """SLURM accounting's State and ExitCode ('<code>:<signal>') of one job or array task; {} when sacct has none.

    Args:
        job_id: '123' or an array task '123_4'.
    """
    try:
        out = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "JobID,State,ExitCode"],
                             check=False, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    for line in out.splitlines():
        fields = line.split("|")
        if len(fields) == 3 and fields[0] == job_id:
            return {"State": fields[1], "ExitCode": fields[2]}
    return {}


class SlurmBackend:
    """Submits the worker function with submitit; resources come from ws.settings['slurm'] and the job."""

    name = "slurm"

    def __init__(self) -> None:
        self._asked = 0.0  # when this process last made submitit ask sacct

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
            slurm_setup=setup, slurm_additional_parameters=self._additional(cfg), local_setup=setup[:1],
        )
        return ex

    @staticmethod
    def _additional(cfg: dict) -> dict:
        """settings.slurm.additional plus --no-requeue: SLURM requeues a job whose node failed, and the requeued run
        found its record ended (the worker had recorded the failure) and did nothing. A re-launch resumes instead."""
        extra = dict(cfg["additional"])
        if "requeue" not in extra:
            extra.setdefault("no_requeue", True)
        return extra

    def start(self, ws, job: Job) -> dict:
        """Submit; returns the columns to record (backend_id = SLURM job id, the effective resources)."""
        from clipsim.jobs.worker import run_job

        cfg = self.config(ws, job)
        with _outside_job():
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
        with _outside_job():
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
        return self.state(job) in ALIVE_STATES

    def state(self, job: Job) -> str:
        """SLURM's state of the job from sacct, e.g. 'RUNNING', 'NODE_FAIL' ('UNKNOWN' before sacct knows it).

        One sacct call covers every job this process follows, at most every SACCT_EVERY_S; in between the last
        answer is used. (submitit's own pacing stretches to 10 minutes for old jobs: a dead job looked alive.)
        """
        sub, now = self._job(job), time.time()
        mode = "force" if now - self._asked >= SACCT_EVERY_S else "cache"
        if mode == "force":
            self._asked = now
        return str(sub.watcher.get_state(sub.job_id, mode=mode)).split()[0].upper()  # e.g. "CANCELLED by 0"

    def exit_code(self, job: Job) -> int | None:
        """From SLURM accounting: the exit status, -N when signal N ended the job; None when not known."""
        if job.backend_id is None or job.resources.get("cluster") == "local":
            return None
        record = sacct_record(job.backend_id)
        code, _, sig = record.get("ExitCode", "").partition(":")
        if sig.isdigit() and int(sig):
            return -int(sig)
        ran_out = record.get("State", "").split(" ")[0] in ("COMPLETED", "FAILED")  # else 0:0 says nothing
        return int(code) if ran_out and code.isdigit() else None

    def end_note(self, job: Job) -> str:
        """What SLURM says about a job that ended without recording a result (for the job's error)."""
        if job.backend_id is None or job.resources.get("cluster") == "local":
            return "killed, or submitit's local controller ended"
        record = sacct_record(job.backend_id)
        return f"SLURM state {record.get('State', 'unknown')}, exit code {record.get('ExitCode', '?')}: " \
               f"see `sacct -j {job.backend_id}`"

    def kill_remnants(self, ws, job: Job) -> list[int]:
        """SLURM ends a job's processes with it (its cgroup); submitit's local cluster: kill the processes tagged with
        the job's id on this host (clipsim.jobs.procs). Returns the pids signalled."""
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

"""Jobs: long work run out of process, recorded in `<workspace>/jobs.sqlite`, each with a run folder `runs/<id>`.

    from clipsim import jobs
    job = jobs.launch(ws, "search", {"train": "web"})   # queued, started at once when a slot is free
    jobs.read_progress(job); jobs.tail_log(job); jobs.wait(ws, job.id); jobs.cancel(ws, job.id)

Backends: 'local' (a detached process) and 'slurm' (submitit). There is no daemon: `launch`, `reconcile` and
every finishing worker start queued jobs.
"""
from clipsim.jobs.checks import Launch, check_params
from clipsim.jobs.db import ACTIVE, STATES, Job
from clipsim.jobs.kinds import KINDS, register_kind
from clipsim.jobs.lanes import HEAVY, LANES, LIGHT, QueueSpot, describe_spot, lane_of, lane_slots, queue_spots
from clipsim.jobs.scheduler import (
    CANCEL_GRACE_S,
    JobTimeout,
    cancel,
    get_job,
    launch,
    list_jobs,
    reconcile,
    slot_count,
    wait,
)
from clipsim.jobs.slurm import SLURM_DEFAULTS
from clipsim.jobs.status import (
    change_stamp,
    describe_job,
    format_eta,
    jobs_frame,
    read_progress,
    tail_log,
    waiting_for,
)

_WORKER_NAMES = ("JobCancelled", "JobContext", "run_job")  # imported on use: `python -m clipsim.jobs.worker` must
# find the worker module not yet imported (runpy warns otherwise)


def __getattr__(name: str):
    if name in _WORKER_NAMES:
        from clipsim.jobs import worker

        return getattr(worker, name)
    raise AttributeError(f"module 'clipsim.jobs' has no attribute {name!r}")


__all__ = ["ACTIVE", "CANCEL_GRACE_S", "HEAVY", "KINDS", "LANES", "LIGHT", "SLURM_DEFAULTS", "STATES", "Job",
           "JobCancelled", "JobContext", "JobTimeout", "Launch", "QueueSpot", "cancel", "change_stamp", "check_params",
           "describe_job", "describe_spot", "format_eta", "get_job", "jobs_frame", "lane_of", "lane_slots", "launch",
           "list_jobs", "queue_spots", "read_progress", "reconcile", "register_kind", "run_job", "slot_count",
           "tail_log", "wait", "waiting_for"]

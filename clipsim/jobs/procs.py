"""A job's processes: every process a worker starts carries `CLIPSIM_JOB_ID=<id>` in its environment, so what
is left of a job whose worker died (a trainer, torchrun and its ranks, data loader workers) is found and killed,
even when it left the worker's process group or was re-parented to init.

Linux only (/proc); elsewhere the finders return nothing and only the process group is signalled.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

JOB_ENV = "CLIPSIM_JOB_ID"  # set by the worker for itself and everything it starts
PR_SET_PDEATHSIG = 1  # prctl option: signal this process when its parent thread exits (linux/prctl.h)


def process_start(pid: int) -> str | None:
    """Start time of process `pid` in clock ticks since boot (Linux /proc); None when gone or a zombie.

    Returns "" where /proc is unavailable but the process exists (no pid-reuse guard there).
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""
    except OSError:
        return None
    rest = text[text.rindex(")") + 2:].split()  # fields after the command name: state is field 3
    return None if rest[0] in ("Z", "X") else rest[19]  # field 22: starttime


def job_processes(job_id: str) -> list[int]:
    """Live processes of this user (other than this one) whose environment carries CLIPSIM_JOB_ID=<job_id>."""
    needle = f"{JOB_ENV}={job_id}".encode()
    found = []
    try:
        entries = [e for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return []
    for entry in entries:
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if needle in environ.split(b"\0") and process_start(pid) is not None:
            found.append(pid)
    return found


def kill_job_processes(job_id: str, leader: int | None = None, leader_start: str | None = None) -> list[int]:
    """SIGKILL every process left of job `job_id`: the process group of its worker `leader` and every process tagged
    with the job's id.

    The group is signalled only when no other process now holds the leader's pid (pid reuse): a group id cannot be
    reused while the group has members, so a group led by a dead `leader` is the job's own.

    Args:
        job_id: the job.
        leader: the worker's pid, the id of its process group (None: tagged processes only).
        leader_start: the worker's recorded start time (process_start), to recognise a reused pid.

    Returns:
        The pids that were signalled (the group counts as its leader's pid).
    """
    killed = []
    if leader is not None:
        now = process_start(leader)
        reused = bool(now and leader_start and now != leader_start)
        if not reused:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(leader, signal.SIGKILL)
                killed.append(leader)
    for pid in job_processes(job_id):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` to this process when its parent exits (Linux PR_SET_PDEATHSIG; no-op elsewhere).

    The trainer calls this first thing, so a worker killed with SIGKILL takes its trainer with it at once.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

"""Job lanes: heavy jobs (train, embed, search, dedup and their array parts) and light ones (prune, maps, reports,
evaluations of small test sets, every other short kind) take local slots from separate pools (`settings.jobs.slots`),
so a light job never waits behind a training; and where a queued job stands in its lane, with an estimated start.

The estimate replays the lane: each busy slot frees when its running job's progress ETA runs out, each job ahead then
holds a slot for the median duration of finished jobs of its kind; unknown stays unknown (no invented numbers).
"""
from __future__ import annotations

import functools
import heapq
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from clipsim.errors import ClipsimError
from clipsim.jobs.db import Job

HEAVY, LIGHT = "heavy", "light"
LANES = (HEAVY, LIGHT)
LIGHT_SLOTS = 2  # light jobs are short CPU work (a manifest, a map, a report): two side by side, beside the heavy ones
EVAL_LIGHT_ROWS = 50_000  # an evaluation of up to this many test images takes minutes on one CPU: a light job
TYPICAL_OF = 20  # the typical duration of a kind: the median of its last this many finished jobs
KIND_LANES: dict[str, str] = {kind: HEAVY for kind in (
    "train", "embed", "embed-array", "embed-part", "search", "search-array", "search-part", "dedup", "dedup-array",
    "dedup-part", "demo", "sleep")}  # every other kind is light; `sleep` (the test kind) takes params["lane"]


@functools.cache
def gpu_count() -> int:
    """Visible CUDA devices (torch.cuda.device_count()); 0 without an NVIDIA driver, without importing torch."""
    if not (Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia/gpus").is_dir()):
        return 0  # importing torch takes seconds; skip it on machines that cannot have a GPU
    import torch

    return torch.cuda.device_count()


def set_kind_lane(kind: str, lane: str) -> None:
    """Put a kind in a lane (clipsim.jobs.register_kind(..., lane=...)).

    Raises:
        ClipsimError: an unknown lane.
    """
    if lane not in LANES:
        raise ClipsimError(f"lane {lane!r} of job kind {kind!r} is unknown; use {' or '.join(LANES)}")
    KIND_LANES[kind] = lane


def lane_slots(ws) -> dict[str, int]:
    """Local slots per lane: settings.jobs.slots (an int: the heavy lane's; or {"heavy": N, "light": M}); by default
    one heavy slot per visible GPU (one on a CPU machine) and LIGHT_SLOTS light ones.

    Raises:
        ClipsimError: settings.jobs.slots is malformed (clipsim.jobs.checks.check_slots).
    """
    from clipsim.jobs.checks import check_slots

    given = check_slots(ws.settings.get("jobs", {}).get("slots"), ws.path("clipsim.json"))
    return {HEAVY: given.get(HEAVY) or max(1, gpu_count()), LIGHT: given.get(LIGHT) or LIGHT_SLOTS}


def slot_count(ws, lane: str = HEAVY) -> int:
    """How many local jobs of a lane may run at once (lane_slots)."""
    return lane_slots(ws)[lane]


def lane_of(ws, job: Job) -> str:
    """The lane of a job: its kind's (KIND_LANES, else light); `evaluate` is light up to EVAL_LIGHT_ROWS test images
    (heavy when larger or not embedded yet); `sleep` takes params['lane']."""
    if job.kind == "sleep":
        return job.params.get("lane", HEAVY)
    if job.kind == "evaluate":
        tests = job.params.get("tests") or ws.dataset_names("test")
        sizes = [ws.embeddings(t, required=False) for t in tests]
        rows = sum(e.count if e is not None else math.inf for e in sizes)
        return LIGHT if rows <= EVAL_LIGHT_ROWS else HEAVY
    return KIND_LANES.get(job.kind, LIGHT)


@dataclass(frozen=True)
class QueueSpot:
    """Where a queued local job stands.

    Attributes:
        lane: its lane.
        position: 1-based place among the lane's queued jobs that wait only for a slot (None: it waits for a job).
        start_in_s: estimated seconds until it starts (None: unknown).
        after: the job whose end is expected to free its slot, or the job it waits for.
    """

    lane: str
    position: int | None
    start_in_s: float | None
    after: str | None


def typical_seconds(ws, kind: str) -> float | None:
    """Median run time of the last TYPICAL_OF finished jobs of a kind (None before the first)."""
    from clipsim.jobs.scheduler import list_jobs

    done = [j.finished - j.started for j in list_jobs(ws, kind=kind, states=["done"], limit=TYPICAL_OF)
            if j.started and j.finished]
    return statistics.median(done) if done else None


def _remaining(ws, job: Job, typical) -> float:
    from clipsim.jobs.status import read_progress

    eta = read_progress(job).get("eta_s")
    if eta is not None:
        return float(eta)
    usual = typical(job.kind)
    if usual is not None and job.started:
        return max(0.0, usual - (time.time() - job.started))
    return math.inf


def queue_spots(ws, jobs: list[Job] | None = None) -> dict[str, QueueSpot]:
    """Lane, position and estimated start of every queued local job.

    Args:
        ws: the workspace.
        jobs: the active jobs (default: read them).

    Returns:
        {job id: QueueSpot} for queued jobs of the local backend.
    """
    from clipsim.jobs.scheduler import list_jobs

    active = list_jobs(ws, states=["queued", "running"]) if jobs is None else jobs
    states = {j.id: j.state for j in active}
    typical = functools.cache(lambda kind: typical_seconds(ws, kind))
    slots, out = lane_slots(ws), {}
    for lane in LANES:
        running = [j for j in active if j.state == "running" and j.backend == "local" and lane_of(ws, j) == lane]
        free = [(_remaining(ws, j, typical), j.id) for j in running] + [(0.0, None)] * max(0, slots[lane] - len(running))
        heapq.heapify(free)
        queued = sorted((j for j in active if j.state == "queued" and j.backend == "local" and lane_of(ws, j) == lane),
                        key=lambda j: (j.created, j.id))
        position = 0
        for job in queued:
            waits = [d for d in (job.depends_on or "").split(",") if d and states.get(d, "done") != "done"]
            if waits:
                out[job.id] = QueueSpot(lane, None, None, waits[0])
                continue
            position += 1
            start, frees = heapq.heappop(free) if free else (math.inf, None)
            usual = typical(job.kind)
            heapq.heappush(free, (start + usual if usual is not None else math.inf, job.id))
            out[job.id] = QueueSpot(lane, position, start if math.isfinite(start) else None, frees)
    return out


def describe_spot(spot: QueueSpot) -> str:
    """'2nd in the heavy lane, starts in about 12 min (when job X ends)'; position-less spots name the job awaited."""
    from clipsim.jobs.status import format_eta

    if spot.position is None:
        return f"in the {spot.lane} lane after job {spot.after}"
    n = spot.position
    nth = f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"
    if spot.start_in_s is None:
        when = "no start estimate yet (a job ahead reports no ETA)"
    elif spot.start_in_s < 1:
        when = "starts now"
    else:
        when = f"starts in about {format_eta(spot.start_in_s)}" + (f" (when job {spot.after} ends)" if spot.after else "")
    return f"{nth} in the {spot.lane} lane, {when}"

"""CLI commands `jobs list|show|logs|cancel` (inspect and stop jobs) and `run-job` (launch any kind)."""
from __future__ import annotations

import argparse
import json
import time

from clipsim.cli.common import POSITIVE, SECONDS, command
from clipsim.errors import ClipsimError
from clipsim.jobs import lanes, scheduler, status
from clipsim.jobs.db import STATES, Job
from clipsim.workspace import Workspace


def _jobs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "show", "logs", "cancel"])
    p.add_argument("--id", help="job id (show, logs, cancel)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--kind", help="list: only this kind")
    p.add_argument("--state", help="list: comma-separated states (" + ", ".join(STATES) + ")")
    p.add_argument("--limit", type=POSITIVE, help="list: at most this many (newest first)")
    p.add_argument("--lines", type=POSITIVE, default=50, help="logs: lines from the end of log.txt")
    p.add_argument("--grace", type=SECONDS, default=scheduler.CANCEL_GRACE_S,
                   help="cancel: seconds between SIGTERM and SIGKILL")


def _record(job: Job, ws: Workspace | None = None, spots: dict | None = None) -> dict:
    out = {**job.to_dict(), "progress": status.read_progress(job)}
    if ws is not None:
        spot = (spots or {}).get(job.id)
        out["lane"] = lanes.lane_of(ws, job)
        out["queue"] = None if spot is None else {"position": spot.position, "start_in_s": spot.start_in_s,
                                                  "after": spot.after, "text": lanes.describe_spot(spot)}
    return out


def _queue_text(spot) -> str:
    """'#2 ~12 min', '#1 now', '#3 ?' (no estimate yet) or 'after ID' for a queued job; '' otherwise."""
    if spot is None:
        return ""
    if spot.position is None:
        return f"after {spot.after}"
    if spot.start_in_s is None:
        return f"#{spot.position} ?"
    return f"#{spot.position} " + ("now" if spot.start_in_s < 1 else f"~{_fmt_eta(spot.start_in_s)}")


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds < 86400 else f"{seconds / 86400:.1f} d"


def _print_list(ws: Workspace, jobs: list[Job], spots: dict) -> None:
    """One line per job; a queued one shows its place in its lane and estimated start (`queue`: '#2 ~00:12:00')."""
    if not jobs:
        print(f"no jobs in {ws.root}")
        return
    print(f"{'id':32} {'kind':9} {'state':9} {'progress':>8} {'eta':>8} {'lane':5} {'queue':16} backend")
    for job in jobs:
        p = status.read_progress(job)
        frac = f"{100 * p['fraction']:.0f}%" if p.get("fraction") is not None else ""
        print(f"{job.id:32} {job.kind:9} {job.state:9} {frac:>8} {_fmt_eta(p.get('eta_s')):>8} "
              f"{lanes.lane_of(ws, job):5} {_queue_text(spots.get(job.id)):16} {job.backend} {job.backend_id or ''}")


def _print_show(job: Job, ws: Workspace) -> None:
    rec = _record(job, ws, lanes.queue_spots(ws) if job.state == "queued" else {})
    rec["queue"] = rec["queue"]["text"] if rec["queue"] else ""
    progress = rec.pop("progress")
    for key in ("id", "kind", "state", "lane", "queue", "params", "backend", "backend_id", "depends_on", "exit_code",
                "result", "run_dir"):
        value = rec[key]
        print(f"{key:11} {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    for key in ("created", "started", "finished"):
        ts = rec[key]
        print(f"{key:11} {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ts)) if ts else ''}")
    if progress:
        frac = progress.get("fraction")
        pct = f"{100 * frac:.1f}%" if frac is not None else "?"
        print(f"{'progress':11} {progress.get('done')}/{progress.get('total')} ({pct}) {progress.get('message', '')}"
              f"{'  eta ' + _fmt_eta(progress.get('eta_s')) if progress.get('eta_s') else ''}")
    if rec["error"]:
        print("error:\n" + rec["error"])


def _need_id(args: argparse.Namespace) -> str:
    if not args.id:
        raise ClipsimError(f"`jobs {args.action}` needs --id ID; list ids with "
                           f"`python -m clipsim jobs list --workspace {args.workspace}`")
    return args.id


@command("jobs", "list, show, follow the log of, or cancel jobs", _jobs_args)
def cmd_jobs(args: argparse.Namespace) -> int:
    ws = Workspace.open(args.workspace)
    scheduler.reconcile(ws)
    if args.action == "list":
        states = [s.strip() for s in args.state.split(",")] if args.state else None
        bad = [s for s in states or [] if s not in STATES]
        if bad:
            raise ClipsimError(f"--state {args.state!r}: unknown state(s) {bad}; use {', '.join(STATES)}")
        jobs = scheduler.list_jobs(ws, kind=args.kind, states=states, limit=args.limit)
        spots = lanes.queue_spots(ws) if any(j.state == "queued" for j in jobs) else {}
        if args.json:
            print(json.dumps([_record(j, ws, spots) for j in jobs], indent=2, default=str))
        else:
            _print_list(ws, jobs, spots)
        return 0
    job = scheduler.get_job(ws, _need_id(args))
    if args.action == "cancel":
        job = scheduler.cancel(ws, job.id, grace=args.grace)
    if args.action == "logs":
        print(status.tail_log(job, lines=args.lines))
    elif args.json:
        print(json.dumps(_record(job, ws, lanes.queue_spots(ws) if job.state == "queued" else {}), indent=2,
                         default=str))
    elif args.action == "show":
        _print_show(job, ws)
    else:
        print(f"{job.id}: {job.state}")
    return 0


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", required=True, help="job kind, e.g. search, prune, train, sleep")
    p.add_argument("--params", default="{}", help="kind parameters as a JSON object")
    p.add_argument("--backend", choices=["local", "slurm"], help="default: settings.jobs.backend, else local")
    p.add_argument("--depends-on", help="id of a job that must be done first")
    p.add_argument("--resources", help="JSON object overriding settings.slurm for this job, e.g. '{\"gpus\": 8}'")
    p.add_argument("--no-dedupe", action="store_true", help="launch even if an identical job is queued or running")
    p.add_argument("--wait", action="store_true", help="block until the job ends; exit 0 only if it is done")
    p.add_argument("--timeout", type=SECONDS, help="with --wait: give up after this many seconds")
    p.add_argument("--json", action="store_true", help="print the job record as JSON")


def _json_object(text: str, flag: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ClipsimError(f"{flag} {text!r} is not valid JSON ({err}); e.g. {flag} '{{\"seconds\": 2}}'") from err
    if not isinstance(value, dict):
        raise ClipsimError(f"{flag} must be a JSON object, got {text!r}")
    return value


@command("run-job", "launch a job of any kind (returns at once unless --wait)", _run_args)
def cmd_run_job(args: argparse.Namespace) -> int:
    ws = Workspace.open(args.workspace)
    params = _json_object(args.params, "--params")
    resources = _json_object(args.resources, "--resources") if args.resources else None
    job = scheduler.launch(ws, args.kind, params, backend=args.backend, depends_on=args.depends_on,
                           dedupe=not args.no_dedupe, resources=resources)
    if args.wait:
        job = scheduler.wait(ws, job.id, timeout=args.timeout)
    if args.json:
        print(json.dumps(_record(job, ws, lanes.queue_spots(ws) if job.state == "queued" else {}), indent=2,
                         default=str))
    else:
        print(f"{job.id}: {job.state}" + (f" {json.dumps(job.result)}" if job.result else ""))
        if job.state == "failed" and job.error:
            print(job.error)
    return 0 if not args.wait or job.state == "done" else 1

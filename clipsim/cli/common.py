"""What every command module shares: the command registry (`@command`), progress bars, list arguments and
printing a queued job."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help_text: str, add_args: Callable[[argparse.ArgumentParser], None]):
    """Register a subcommand: decorated function takes the parsed namespace, returns an exit code."""

    def wrap(fn: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (help_text, add_args, fn)
        return fn

    return wrap


def tqdm_progress() -> Callable[[int, int, str], None]:
    """A progress callback drawing one tqdm bar per description."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def update(done: int, total: int, desc: str = "") -> None:
        key = desc.split(" (")[0]
        bar = bars.get(key)
        if bar is None:
            for old in bars.values():
                old.close()
            bar = bars[key] = tqdm(total=total, desc=key, unit="it", dynamic_ncols=True, leave=True, file=sys.stderr)
        bar.total = max(total, done)
        bar.n = done
        bar.set_postfix_str(desc[len(key):].strip(" ()"), refresh=False)
        bar.refresh()

    return update


def print_job(ws, job, wait: bool = False, timeout: float | None = None) -> int:
    """Print a queued job; with `wait`, block until it ends and print its result. Returns the exit code (1 if the
    job failed or was cancelled)."""
    from clipsim import jobs

    print(f"{job.kind} job {job.id}: {job.state} (run folder {job.run_dir})")
    if not wait:
        return 0
    job = jobs.wait(ws, job.id, timeout=timeout)
    if job.state != "done":
        print(f"{job.kind} job {job.id} {job.state}: {job.error or ''}")
        return 1
    print(json.dumps(job.result, indent=2, sort_keys=True))
    return 0


def csv_list(value: str | None) -> list[str] | None:
    """'a,b' -> ['a', 'b']; None stays None."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None

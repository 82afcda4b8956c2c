"""What every command module shares: the command registry (`@command`), the one-line usage errors, argument types
(`clipsim.checks` rules as argparse types), progress bars, list arguments, printing a queued job, crash logs."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from clipsim import checks
from clipsim.errors import ClipsimError
from clipsim.names import check_name

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help_text: str, add_args: Callable[[argparse.ArgumentParser], None]):
    """Register a subcommand: decorated function takes the parsed namespace, returns an exit code."""

    def wrap(fn: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (help_text, add_args, fn)
        return fn

    return wrap


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (the value, the fix, where to find help), exit code 2."""

    def error(self, message: str):
        """Print `<prog>: error: <message>` and exit with code 2."""
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def arg_type(check: Callable, *args, **kwargs) -> Callable[[str], object]:
    """An argparse `type=` from a clipsim check, e.g. `arg_type(checks.check_int, minimum=1)`: the library's rule
    and message, raised as argparse's error (one line, exit code 2)."""

    def convert(text: str):
        try:
            return check(text, "value", *args, **kwargs)
        except ClipsimError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    convert.__name__ = check.__name__.removeprefix("check_")
    return convert


def name_type(what: str) -> Callable[[str], str]:
    """An argparse `type=` for a dataset, manifest, map or run name (clipsim.names.check_name)."""
    return arg_type(lambda text, _what: check_name(text, what))


POSITIVE = arg_type(checks.check_int, minimum=1)
NON_NEGATIVE = arg_type(checks.check_int, minimum=0)
SECONDS = arg_type(checks.check_float, minimum=0.0)
DEVICE = arg_type(checks.check_device)


def save_traceback(command: str, argv: list[str] | None) -> Path:
    """Write the current exception's traceback to a new log file; returns its path.

    The folder is $CLIPSIM_LOG_DIR, else ~/.cache/clipsim/logs (the system temp folder when that is not writable):
    never the workspace, which may be read-only or the very thing that is broken.
    """
    text = f"clipsim {command} {' '.join(sys.argv[1:] if argv is None else argv)}\n{traceback.format_exc()}"
    name = f"cli-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clipsim" / "logs"
    for folder in (Path(os.environ["CLIPSIM_LOG_DIR"]) if os.environ.get("CLIPSIM_LOG_DIR") else cache,
                   Path(tempfile.gettempdir()) / f"clipsim-logs-{os.getuid()}"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
            return folder / name
        except OSError:
            continue
    return Path("(no writable log folder)")


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

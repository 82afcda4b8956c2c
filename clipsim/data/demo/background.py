"""The demo workspace built from the app: a detached `python -m clipsim demo` process with a log and a pid file.

The process outlives the browser session and the Streamlit server; a second click or another session sees the
pid file and shows the running build instead of starting one more. No streamlit import: testable alone.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from clipsim import fileio

REPO_ROOT = Path(__file__).resolve().parents[3]
TAIL_LINES = 12


def size() -> str:
    """The demo preset the button builds: $CLIPSIM_DEMO_SIZE ('full' or 'small'), default 'full'."""
    return os.environ.get("CLIPSIM_DEMO_SIZE", "full")


def log_path(root: Path) -> Path:
    return Path(root).parent / f".{Path(root).name}.demo-build.log"


def _pid_path(root: Path) -> Path:
    return Path(root).parent / f".{Path(root).name}.demo-build.pid"


def _pid(root: Path) -> int | None:
    try:
        return int(_pid_path(root).read_text().strip())
    except (OSError, ValueError):
        return None


def running(root: Path) -> bool:
    """Whether a demo build started for `root` is still running (its pid alive and still our command)."""
    pid = _pid(root)
    if pid is None:
        return False
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if this process started it and it ended
    except ChildProcessError:
        pass
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        try:
            os.kill(pid, 0)  # no /proc (macOS): trust the pid
        except OSError:
            return False
        return True
    return b"clipsim" in cmdline and b"demo" in cmdline


def start(root: Path) -> int:
    """Start the build unless one runs already; returns its pid."""
    root = Path(root).absolute()
    if running(root):
        return _pid(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path(root), "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clipsim", "demo", "--workspace", str(root), "--size", size()],
            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    fileio.write_bytes(_pid_path(root), str(proc.pid).encode())
    return proc.pid


def stop(root: Path) -> None:
    """Stop a running build (its whole process group); it resumes where it was when started again."""
    pid = _pid(root)
    if pid is not None and running(root):
        os.killpg(pid, signal.SIGTERM)


def tail(root: Path, lines: int = TAIL_LINES) -> str:
    """The last lines of the build log (progress bars' carriage returns become line breaks)."""
    try:
        text = log_path(root).read_bytes()[-20000:].decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def failure(root: Path) -> str | None:
    """The log tail of a build that ended without leaving a workspace with the demo complete, else None."""
    if running(root) or not log_path(root).exists():
        return None
    if (Path(root) / "demo" / "demo.json").exists():  # written last by a finished build
        return None
    text = tail(root)
    return text if "Error" in text or "Traceback" in text else None

"""Atomic file writes, folder swaps, bounded reads and input fingerprints: a crash never leaves a half-written file
that looks whole, and a read of a local path never grows without bound.

Every durable step (a temporary file complete, a rename into place, a folder swap, a removal) passes
`commit_step`, the one fault-injection point: `CLIPSIM_KILL_AT=N` in the environment (or `kill_at_step(N)` in a
forked test process) makes the process SIGKILL itself right after its Nth step, so tests can interrupt a pipeline
at every commit point and check that a re-run gives the same bits. Unarmed, a step costs one integer compare.

Files and folders made here get the permissions of the user's umask (0644 / 0755 under the usual 022), as `open`
and `mkdir` would give them, so collaborators on a shared filesystem can read what a study wrote. In read-only
mode (clipsim.names.read_only) a write inside a workspace folder is refused, whatever called it.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipsim.errors import DataError, WorkspaceError

KILL_AT_ENV = "CLIPSIM_KILL_AT"
MAX_JSON_BYTES = 64 << 20  # configs, summaries and the registry are kilobytes; a job result is at most megabytes
_fault = {"steps": 0, "kill_at": int(os.environ.get(KILL_AT_ENV, "0") or 0)}


def commit_step(label: str) -> None:
    """Count one durable step of this process; SIGKILL the process at the armed step (fault injection for tests).

    Args:
        label: what the step was (for readers of the code; the hook counts, it does not log).
    """
    _fault["steps"] += 1
    if _fault["steps"] == _fault["kill_at"]:
        os.kill(os.getpid(), signal.SIGKILL)


def kill_at_step(n: int) -> None:
    """Arm the fault hook in this process: count steps from 0 again and SIGKILL after step `n` (0 disarms)."""
    _fault.update(steps=0, kill_at=int(n))


def steps_taken() -> int:
    """Durable steps this process has taken since start (or since `kill_at_step`)."""
    return _fault["steps"]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write `path` by calling `write(tmp)` on a temporary sibling, then renaming it into place.

    Args:
        path: final location.
        write: callable that writes the complete file at the given temporary path.
    """
    path = Path(path)
    refuse_read_only(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~current_umask())  # what open() would have given the file
        commit_step(f"{path.name} written aside")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    commit_step(f"{path.name} in place")


def current_umask() -> int:
    """This process's umask (read from /proc on Linux, so no thread ever sees it changed)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def make_temp_dir(parent: Path, prefix: str, suffix: str) -> Path:
    """A new uniquely named folder inside `parent` with the umask's permissions (mkdtemp alone gives 0700), to
    build a multi-file artifact in before it is renamed into place.

    Raises:
        ReadOnlyError: `parent` lies inside a workspace served read-only.
    """
    refuse_read_only(Path(parent) / prefix)
    folder = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    os.chmod(folder, 0o777 & ~current_umask())
    return folder


def refuse_read_only(path: Path) -> None:
    """In read-only mode, refuse a write to `path` when it lies inside a workspace (a folder with clipsim.json).

    Writes outside any workspace (a report saved with --out elsewhere, a download) stay allowed.

    Raises:
        ReadOnlyError: read-only mode and `path` is inside a workspace.
    """
    from clipsim.names import check_writable, read_only

    if not read_only():
        return
    for folder in Path(os.path.abspath(path)).parents:
        if (folder / "clipsim.json").is_file():
            check_writable(f"write {path}")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic rename (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    rename = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if rename is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if rename(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False  # the file system (NFS, ...) or the kernel cannot exchange: two renames instead
    raise OSError(code, os.strerror(code), str(a))


def swap_dir(tmp: Path, final: Path) -> None:
    """Make the finished folder `tmp` the folder `final` in one step, then delete the old `final`.

    Readers see the old folder or the new one, never a mix: where the file system can exchange two names
    atomically (Linux local file systems) there is no moment without `final`; elsewhere the old folder is moved
    aside first, so a crash between the two renames leaves no `final` (a re-run makes it again), never a half one.

    Args:
        tmp: a complete folder, a sibling of `final` (same file system).
        final: where it goes.
    """
    tmp, final = Path(tmp), Path(final)
    refuse_read_only(final)
    if not final.exists():
        os.rename(tmp, final)
        commit_step(f"{final.name} renamed into place")
        return
    if _exchange(tmp, final):
        commit_step(f"{final.name} swapped into place")
        remove_tree(tmp)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
    os.rename(final, old / final.name)
    commit_step(f"old {final.name} moved aside")
    os.rename(tmp, final)
    commit_step(f"{final.name} renamed into place")
    remove_tree(old)


def clear_leftovers(parent: Path, name: str) -> None:
    """Delete the temporary siblings (`.<name>.<random>.tmp` / `.old`) that a process killed while building or
    swapping `parent/name` left behind; readers never look at them."""
    for path in Path(parent).glob(f".{glob_escape(name)}.*"):
        middle, _, suffix = path.name[len(name) + 2 :].rpartition(".")
        if suffix in ("tmp", "old") and middle and "." not in middle:
            remove_tree(path)


def glob_escape(text: str) -> str:
    """`text` with glob's special characters escaped."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def remove_tree(path: Path) -> None:
    """Delete a folder (or file) if it exists, as one counted step."""
    path = Path(path)
    refuse_read_only(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)
    else:
        return
    commit_step(f"{path.name} removed")


@contextlib.contextmanager
def open_regular(path: str | os.PathLike, limit: int, what: str = "file"):
    """Open a local regular file for binary reading after checking it is one and holds at most `limit` bytes.

    Devices (`/dev/zero`), FIFOs and sockets are refused before a byte is read (a FIFO is opened non-blocking),
    so no read of a user-given path can grow without bound or hang.

    Args:
        path: the file.
        limit: the largest size accepted, in bytes.
        what: what the file is, for the message ('image', 'table', ...).

    Yields:
        (binary file object, size in bytes).

    Raises:
        DataError: missing, unreadable, not a regular file, or larger than `limit`.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise DataError(f"cannot read {what} {path} ({err.strerror}); check that it exists and is readable") from err
    handle = os.fdopen(fd, "rb")
    with handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{what} {path} is not a regular file (a device, pipe or socket); point to a file")
        if info.st_size > limit:
            raise DataError(f"{what} {path} holds {info.st_size:,} bytes, more than the {limit:,} a {what} may have; "
                            "check that the path names the right file")
        yield handle, info.st_size


def read_bounded(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """All bytes of a regular file of at most `limit` bytes (see open_regular).

    Raises:
        DataError: as open_regular, or the file grew past `limit` while being read.
    """
    with open_regular(path, limit, what) as (handle, _):
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise DataError(f"{what} {path} grew past {limit:,} bytes while being read; is it still being written?")
    return data


@contextlib.contextmanager
def locked(lock: Path):
    """Hold an exclusive advisory lock (flock) on the file `lock` (created if needed) for the block: serialises
    writers across processes."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_bytes(path: Path, data: bytes) -> None:
    """Atomically write raw bytes."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_json(path: Path, obj: Any, sort_keys: bool = True) -> None:
    """Atomically write `obj` as indented JSON (keys sorted unless their order carries meaning)."""
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=sort_keys, default=str) + "\n").encode())


def read_json(path: Path) -> Any:
    """Read a JSON file, naming the file if it is corrupt."""
    try:
        return json.loads(read_bounded(path, MAX_JSON_BYTES, "JSON file").decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise WorkspaceError(
            f"{path} is not valid JSON ({err}); restore it or delete it and re-run the step that made it"
        ) from err


def write_npy(path: Path, array: np.ndarray) -> None:
    """Atomically write one array in .npy format."""

    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, _write)


def write_parquet(path: Path, frame: pd.DataFrame, row_group_size: int | None = None) -> None:
    """Atomically write a DataFrame as parquet (index dropped), in row groups of `row_group_size` rows (default:
    pyarrow's, about 1M)."""
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False, row_group_size=row_group_size))


def file_fingerprint(paths: list[Path]) -> str:
    """Cheap fingerprint of files: names, sizes and modification times (no content read).

    Returns:
        16 hex characters; changes when any file is added, removed, resized or rewritten.
    """
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def array_fingerprint(*arrays: np.ndarray) -> str:
    """Content fingerprint of in-memory arrays (used for query sets and offsets)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:16]


def json_bytes(obj: Any) -> bytes:
    """Canonical JSON bytes (for fingerprints of configs)."""
    buf = io.StringIO()
    json.dump(obj, buf, sort_keys=True, default=str)
    return buf.getvalue().encode()

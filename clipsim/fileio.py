"""Atomic file writes and input fingerprints: a crash never leaves a half-written file that looks whole."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write `path` by calling `write(tmp)` on a temporary sibling, then renaming it into place.

    Args:
        path: final location.
        write: callable that writes the complete file at the given temporary path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    from clipsim.errors import WorkspaceError

    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise WorkspaceError(
            f"{path} is not valid JSON ({err}); restore it or delete it and re-run the step that made it"
        ) from err


def write_npy(path: Path, array: np.ndarray) -> None:
    """Atomically write one array in .npy format."""

    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, _write)


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    """Atomically write a DataFrame as parquet (index dropped)."""
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


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

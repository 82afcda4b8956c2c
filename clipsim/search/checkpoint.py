"""The resume state of a search pass or part: one `checkpoint.npz` holding the running top-k *and* the progress.

A checkpoint is one file written atomically, so the top-k and the list of shards it covers can never disagree: a
kill at any moment resumes either before or after a shard, never with a shard counted in one and not the other
(a rescanned shard would enter the top-k twice). Per-shard train statistics are staged beside it under
`stats/<test>/shard_<i>.npz` and reach the result folder only when the result is committed.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from clipsim import fileio

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.npz"
META = "checkpoint_meta"  # the npz member holding the progress as UTF-8 JSON bytes (uint8)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomically write arrays as one uncompressed .npz."""
    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    fileio.atomic_write(path, _write)


def write_checkpoint(folder: Path, state: dict[str, np.ndarray], meta: dict) -> None:
    """Write the running top-k (`state`: scanner.state()) and the progress `meta` (JSON-able) as one file."""
    write_npz(Path(folder) / CHECKPOINT, {**state, META: np.frombuffer(fileio.json_bytes(meta), dtype=np.uint8)})


def read_meta(folder: Path) -> dict | None:
    """The progress stored in a folder's checkpoint (the top-k arrays are not read); None when there is none."""
    path = Path(folder) / CHECKPOINT
    if not path.exists():
        return None
    with np.load(path) as z:
        return json.loads(z[META].tobytes()) if META in z.files else None


def read_state(folder: Path) -> dict[str, np.ndarray]:
    """The running top-k arrays of a folder's checkpoint (everything but the progress)."""
    with np.load(Path(folder) / CHECKPOINT) as z:
        return {n: z[n] for n in z.files if n != META}


def resume_checkpoint(folder: Path, signature: str, scanner) -> dict:
    """The progress of an interrupted pass or part with the same inputs (`signature`), its running top-k loaded
    into `scanner`; else {"done": []} after removing the folder (a checkpoint made from other inputs, or the
    two-file checkpoint of earlier versions)."""
    meta = read_meta(folder)
    if meta is not None and meta.get("signature") == signature:
        scanner.load_state(read_state(folder))
        log.info("resuming search %s: %d shards already done", Path(folder).name, len(meta["done"]))
        return {**meta, "done": list(meta["done"])}
    if Path(folder).exists():
        fileio.remove_tree(folder)
    return {"done": []}


def staged_stats(folder: Path, test: str, shard: int) -> Path:
    """Where a pass or part stages the statistics of one train shard for one test set until they are committed."""
    return Path(folder) / "stats" / test / f"shard_{shard}.npz"


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link `src` to `dst` (the staged file stays for a resume), or copy it where links are not possible."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)

"""Manifests that compose: pruning statistics restricted to the samples a base manifest keeps (e.g. a dedup
manifest, as the study pruned the deduplicated web set), and what a manifest cut from a base records to detect
that the base changed since."""
from __future__ import annotations

import numpy as np
import pandas as pd

from clipsim import fileio
from clipsim.errors import WorkspaceError


def restrict_to_base(stats, base: str):
    """The statistics of the web rows that manifest `base` keeps: rules then prune the base's kept set (the study
    prunes the deduplicated web set), counts and shares are relative to it, and a saved manifest records it.

    Args:
        stats: PruneStats loaded from a workspace, not yet restricted.
        base: manifest name.

    Returns:
        A PruneStats over the base's kept rows, with `base` (what a manifest records) and `base_rows` set.

    Raises:
        WorkspaceError: unknown or stale base, a base of another web set, or statistics already restricted.
    """
    from clipsim.prune.columns import Column
    from clipsim.prune.stats import PruneStats

    if stats.base is not None or stats.ws is None:
        why = "are already restricted to a base" if stats.base is not None else "were not loaded from a workspace"
        raise WorkspaceError(f"cannot restrict to base {base!r}: these statistics {why}; load them with "
                             "PruneStats.load(ws, web, tests, base=NAME)")
    rows, info = base_rows(stats.ws, base, stats.web)
    # the kept rows' values are read into memory and sorted there: stored sorted statistics (and stored combinations
    # of test sets) cover the whole web set, not a base's subset
    kinds = ("m", "g") if stats.has_margins else ("m",)
    columns = {(kind, test): Column(np.ascontiguousarray(stats.column(kind, test).values[rows]),
                                    stats.column(kind, test).name) for kind in kinds for test in stats.tests}
    out = PruneStats(stats.web, len(rows), columns, stats.tests, stats.reference, stats.fingerprints,
                     stats.web_fingerprint, ws=stats.ws, keys=stats.keys[rows])
    out.base, out.base_rows = info, rows
    return out


def base_rows(ws, base: str, web: str) -> tuple[np.ndarray, dict]:
    """The web rows that manifest `base` keeps, and what a manifest built on it records.

    Returns:
        (rows (k,) int64 increasing, {"name", "rule", "kept", "web_rows", "fingerprint" (of its kept keys)}).

    Raises:
        WorkspaceError: unknown base, a base of another web set, a stale base, or kept keys missing from the web set.
    """
    from clipsim.prune.manifest import load_manifest

    found = load_manifest(ws, base)
    if found.summary["web"] != web:
        raise WorkspaceError(f"base manifest {base!r} prunes web set {found.summary['web']!r}, not {web!r}; pick a "
                             f"manifest of {web!r} as base")
    if found.stale:
        raise WorkspaceError(f"base manifest {base!r} is stale ({'; '.join(found.stale_reasons())}); re-create it first")
    keys = ws.keys(web)
    rows = pd.Index(keys).get_indexer(found.kept_keys())
    if (rows < 0).any():
        raise WorkspaceError(f"base manifest {base!r} keeps {int((rows < 0).sum())} keys that {web!r} does not hold; "
                             "re-create the manifest from the current web set")
    return np.sort(rows).astype(np.int64), {"name": base, "rule": found.rule, "kept": len(rows),
                                            "web_rows": len(keys), "fingerprint": kept_fingerprint(found)}


def base_changes(ws, base: dict) -> list[str]:
    """Why the base a manifest or statistics were cut from no longer matches (empty when unchanged)."""
    from clipsim.prune.manifest import load_manifest

    try:
        found = load_manifest(ws, base["name"])
    except WorkspaceError:
        return [f"base manifest {base['name']!r} is gone"]
    reasons = [] if kept_fingerprint(found) == base["fingerprint"] else [f"base manifest {base['name']!r} changed"]
    return reasons + [f"base manifest {base['name']!r}: {r}" for r in found.stale_reasons()]


def kept_fingerprint(manifest) -> str:
    """Fingerprint of a manifest's kept keys and summary files (changes when it is saved again)."""
    return fileio.file_fingerprint([manifest.folder / "kept.parquet", manifest.folder / "summary.json"])

"""Search by shard ranges (one cluster task per range) and the exact merge of the parts into the final result.

A part scans train shards [lo, hi) against all test sets and keeps its running top-k, its progress and its
per-shard train statistics under `search/<train>/_parts/<lo>-<hi>/` (`checkpoint.npz`, `stats/<test>/`; see
`clipsim.search.checkpoint`). `merge_search_parts` checks that the parts
cover every shard once and were made from the current inputs, merges their top-k by (-sim, id) with the
scanner's own merge, and writes `neighbours.npz` + `config.json`: bit for bit what `search.search` writes.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from clipsim import fileio
from clipsim.checks import check_int, check_search_args
from clipsim.errors import WorkspaceError
from clipsim.names import check_writable
from clipsim.search.checkpoint import read_meta, read_state, resume_checkpoint, staged_stats
from clipsim.search.passes import DEFAULT_BLOCK_ROWS, Progress, SearchPass, resolve_precision, store_combined_stats
from clipsim.search.result import SearchResult
from clipsim.search.scan import ExactScanner
from clipsim.shard_ranges import check_range, index_runs

log = logging.getLogger(__name__)
PARTS_DIR = "_parts"


def part_dir(ws, train: str, shards: tuple[int, int]) -> Path:
    """The folder of the part of `train` over shard range `shards`."""
    return ws.path("search", train, PARTS_DIR, f"{shards[0]}-{shards[1]}")


def search_part(
    ws, train: str, tests: list[str], shards: tuple[int, int], k: int = 10, reference: str | None = None,
    precision: str = "auto", device: str = "auto", block_rows: int = DEFAULT_BLOCK_ROWS,
    progress: Progress | None = None,
) -> dict:
    """Scan train shards [lo, hi) against `tests`; resumable per shard like `search.search`.

    Args:
        ws: the workspace.
        train: train set name.
        tests: test set names; every part of one search must use the same list (it fixes the query rows).
        shards: (lo, hi) shard indices lo <= i < hi of the train set.
        k, reference, precision, device, block_rows, progress: as for `search.search`.

    Returns:
        {"range": [lo, hi], "shards": [indices scanned], "rows": train rows in range, "seconds", "folder"}.

    Raises:
        WorkspaceError: a bad range, a stale reference search, or a part of another split overlapping this one.
        ArgumentError, ReadOnlyError: a bad argument, or a read-only workspace (nothing is written).
    """
    check_search_args(k, block_rows, precision, device)
    lo, hi = check_range(shards)
    check_writable(f"search part {lo}:{hi} of {train}")
    spec = SearchPass.prepare(ws, train, list(tests), k, reference)
    chosen = [s for s in spec.train_set.shards if lo <= s.index < hi]
    signature = spec.signature
    folder = part_dir(ws, train, (lo, hi))
    out = {"range": [lo, hi], "shards": [s.index for s in chosen], "rows": sum(s.rows for s in chosen),
           "folder": str(folder)}
    if not chosen:
        log.info("no shard of %s lies in range %d:%d; nothing to scan", train, lo, hi)
        return {**out, "seconds": 0.0}
    _check_overlaps(ws, train, (lo, hi), signature)
    precision, dev = resolve_precision(precision, device)
    scanner = spec.scanner(precision, dev, block_rows)
    state = resume_checkpoint(folder, signature, scanner)  # shards done and seconds spent by an earlier run of this part
    done, before = state["done"], float(state.get("seconds", 0.0))
    t0 = time.time()

    def meta() -> dict:
        return {"signature": signature, "range": [lo, hi], "done": done, "shards": out["shards"], "tests": list(tests),
                "k": k, "reference": spec.reference, "precision": precision, "device": str(dev),
                "seconds": round(before + time.time() - t0, 3), "complete": set(done) >= set(out["shards"])}

    spec.scan_shards(scanner, chosen, done, block_rows, progress, folder, meta)
    return {**out, "seconds": read_meta(folder)["seconds"]}


def _read_parts(ws, train: str) -> list[tuple[tuple[int, int], Path, dict | None]]:
    """Every part folder of `train`: ((lo, hi), folder, checkpoint progress or None when it never checkpointed)."""
    parts = []
    for folder in ws.path("search", train, PARTS_DIR).glob("*-*"):
        try:
            lo, hi = (int(v) for v in folder.name.split("-"))
        except ValueError:
            continue
        parts.append(((lo, hi), folder, read_meta(folder)))
    return sorted(parts, key=lambda p: p[0])


def _check_overlaps(ws, train: str, shards: tuple[int, int], signature: str) -> None:
    """Drop parts made from other inputs (they can never be merged); refuse to overlap a part of another split."""
    lo, hi = shards
    for (a, b), folder, meta in _read_parts(ws, train):
        if meta is not None and meta.get("signature") != signature:
            log.warning("discarding search part %s: made from other inputs (tests, k, embeddings or reference)", folder)
            fileio.remove_tree(folder)
        elif (a, b) != (lo, hi) and a < hi and lo < b:
            raise WorkspaceError(
                f"shard range {lo}:{hi} overlaps the part {a}:{b} already in {folder} (same inputs, another split); "
                f"re-run with the earlier ranges to resume, or delete {folder.parent} to start the split over"
            )


def merge_search_parts(ws, train: str, tests: list[str], k: int = 10, reference: str | None = None,
                       keep_parts: bool = False) -> dict[str, SearchResult]:
    """Merge the parts of a search by shard ranges into the final results (bit-identical to one `search` pass).

    Args:
        ws: the workspace.
        train: train set name.
        tests: the test sets the parts were run with, in the same order.
        k, reference: as given to every part.
        keep_parts: keep `search/<train>/_parts/` afterwards (default: deleted once merged).

    Returns:
        {test: SearchResult} for every test set.

    Raises:
        WorkspaceError: no parts, a part made from other inputs, overlapping or unfinished parts, or shards that
            no part covers (the message names the ranges and the command that runs them).
        ArgumentError, ReadOnlyError: a bad k, or a read-only workspace (nothing is written).
    """
    check_int(k, "k (neighbours per test image)", minimum=1)
    check_writable(f"merge the search parts of {train}")
    spec = SearchPass.prepare(ws, train, list(tests), k, reference)
    parts = [p for p in _read_parts(ws, train) if p[0][0] < p[0][1]]
    _check_parts(spec, parts)
    # Only the running top-k of this scanner is used (no blocks are scanned), so an fp32 screen on CPU is enough.
    merger = ExactScanner(spec.queries, spec.groups, k, "fp32", torch.device("cpu"), row_stats=False)
    seconds, precisions, devices = 0.0, set(), set()
    for _, folder, meta in parts:
        state = read_state(folder)
        merger.merge_topk(state["top_s"], state["top_i"])
        seconds += float(meta["seconds"])
        precisions.add(meta["precision"])
        devices.add(meta["device"])
    spec.commit(merger, ",".join(sorted(precisions)), ",".join(sorted(devices)), seconds, [p[1] for p in parts])
    store_combined_stats(ws, train)
    log.info("merged %d search parts of %s (%d shards)", len(parts), train, len(spec.train_set.shards))
    if not keep_parts:
        fileio.remove_tree(ws.path("search", train, PARTS_DIR))
    return {t: SearchResult.load(ws, t, train) for t in tests}


def _check_parts(spec: SearchPass, parts: list) -> None:
    """Raise unless the parts were made from these inputs, are finished and cover every shard exactly once."""
    ws, train, tests, k, use_ref, train_set, signature = (spec.ws, spec.train, spec.tests, spec.k, spec.reference,
                                                          spec.train_set, spec.signature)
    command = (f"python -m clipsim search --workspace {ws.root} --train {train} --tests {','.join(tests)} --k {k}"
               + (f" --reference {use_ref}" if use_ref else ""))
    if not parts:
        raise WorkspaceError(f"no search parts of train set {train!r} under {ws.path('search', train, PARTS_DIR)}; "
                             f"run `{command} --shards LO:HI` for each range (or `--array N`) first")
    owner: dict[int, tuple[int, int]] = {}
    for (lo, hi), folder, meta in parts:
        again = f"`{command} --shards {lo}:{hi}`"
        if meta is None or meta.get("signature") != signature:
            why = "never finished a shard" if meta is None else "was made from other inputs (tests, k, embeddings or reference)"
            raise WorkspaceError(f"search part {folder} {why}; re-run it with {again}")
        if not meta["complete"]:
            raise WorkspaceError(f"search part {folder} is unfinished ({len(meta['done'])} of {len(meta['shards'])} "
                                 f"shards); resume it with {again}")
        clash = [i for i in meta["shards"] if i in owner]
        if clash:
            a, b = owner[clash[0]]
            raise WorkspaceError(f"search parts {a}:{b} and {lo}:{hi} both cover shard {clash[0]} of {train!r}; delete "
                                 f"one of them ({folder.parent}/{a}-{b} or {folder}) and re-run the shards it leaves")
        owner.update({i: (lo, hi) for i in meta["shards"]})
    missing = [s.index for s in train_set.shards if s.index not in owner]
    if missing:
        runs = index_runs(missing)
        raise WorkspaceError(f"no search part covers shards {', '.join(f'{a}:{b}' for a, b in runs)} of {train!r}; run "
                             + " and ".join(f"`{command} --shards {a}:{b}`" for a, b in runs) + ", then merge again")
    folders = {rng: folder for rng, folder, _ in parts}
    for s in train_set.shards:
        for t in tests:
            if not staged_stats(folders[owner[s.index]], t, s.index).exists():
                raise WorkspaceError(f"statistics of shard {s.index} for {t!r} vs {train!r} are missing; re-run "
                                     f"`{command} --shards {owner[s.index][0]}:{owner[s.index][1]}`")


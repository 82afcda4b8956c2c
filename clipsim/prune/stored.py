"""The stored sorted statistics (clipsim.sorted_stats) from the pruning side: open a search's, open or build the
elementwise maximum over a combination of test sets, and the `sort-stats` job that writes what is missing.

A search's `sorted/` folder is trusted only under that search's current fingerprint; a combination only while every
search it was made from still has the fingerprint it recorded. Anything else is not read, never half-read.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipsim.errors import WorkspaceError
from clipsim.prune.columns import DiskColumn
from clipsim.sorted_stats import COMBINED, SORTED, read_chunks, read_config, stem, write_folder, write_search_sorted

if TYPE_CHECKING:
    from clipsim.jobs.worker import JobContext

NAME_LIMIT = 120  # a combination folder named by its test sets, up to this many characters (else by a digest)


def stat_names(reference: str | None) -> list[str]:
    """The statistics a web set's rules read: 'max_sim', and 'margin/<reference>' with a reference."""
    return ["max_sim"] + ([f"margin/{reference}"] if reference else [])


def open_search_stats(res, names: list[str]) -> dict[str, DiskColumn] | None:
    """The search result's stored sorted statistics {name: column}, or None when absent, stale or lacking one."""
    folder = res.folder / SORTED
    config = read_config(folder)
    if config is None or config.get("search") != res.fingerprint or not set(names) <= set(config["stats"]):
        return None
    return {name: DiskColumn(folder, name) for name in names}


def combined_folder(ws, web: str, tests: list[str]) -> Path:
    """`search/<web>/_combined/<t1>+<t2>...` (test names sorted, so any order names one folder)."""
    key = "+".join(sorted(tests))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return ws.path("search", web, COMBINED, key if len(key) <= NAME_LIMIT else f"tests-{digest}")


def open_combined(ws, web: str, fingerprints: dict[str, str], name: str) -> DiskColumn | None:
    """The stored maximum of statistic `name` over the test sets of `fingerprints` ({test: search fingerprint}),
    or None when it is not stored or was made from other searches."""
    folder = combined_folder(ws, web, list(fingerprints))
    config = read_config(folder)
    if config is None or config.get("searches") != dict(fingerprints) or name not in config["stats"]:
        return None
    return DiskColumn(folder, name)


def _max_chunks(paths: list[Path]) -> Callable[[], Iterator[np.ndarray]]:
    def read() -> Iterator[np.ndarray]:
        for parts in zip(*(read_chunks(p) for p in paths)):
            yield np.maximum.reduce([chunk for _, chunk in parts])
    return read


def ensure_search_stats(ws, web: str, test: str, names: list[str]) -> bool:
    """Write the search's sorted statistics unless stored and current (searches committed before they existed).

    Returns:
        True when they were written now.
    """
    res = ws.search_result(test, web)
    if open_search_stats(res, names) is not None:
        return False
    shards = [res.folder / "stats" / f"shard_{i}.npz" for i in res.config["shards"]]
    write_search_sorted(res.folder, res.fingerprint, shards, names, int(res.config["train_count"]))
    return True


def build_sorted_stats(ws, web: str, tests: list[str], reference: str | None = None,
                       progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Store every search's sorted statistics of `web` against `tests` and, for several test sets, their elementwise
    maximum: what the pages read without loading or sorting anything. Already current parts are kept.

    Args:
        ws: the workspace.
        web: the web set.
        tests: test sets (their searches against `web` must be complete).
        reference: the reference of the similarity-gap margins (None: maxima only).
        progress: optional callable(done, total, description).

    Returns:
        {"written": [tests whose statistics were written], "combined": folder or None, "combined_written": bool}.

    Raises:
        WorkspaceError: a missing search, or margins over `reference` that a search did not store.
    """
    names = stat_names(reference)
    written, steps = [], len(tests) + (len(tests) > 1)
    for i, test in enumerate(tests):
        res = ws.search_result(test, web)
        if reference and reference not in res.config.get("references", {}):
            raise WorkspaceError(f"the search of {test!r} against {web!r} stored no margins over {reference!r}; run "
                                 f"`python -m clipsim search --workspace {ws.root} --train {web} --reference {reference}`")
        if ensure_search_stats(ws, web, test, names):
            written.append(test)
        if progress:
            progress(i + 1, steps, f"sorted statistics of {test} vs {web}")
    if len(tests) < 2:
        return {"written": written, "combined": None, "combined_written": False}
    fps = {t: ws.search_result(t, web).fingerprint for t in sorted(tests)}
    folder = combined_folder(ws, web, tests)
    fresh = all(open_combined(ws, web, fps, name) is not None for name in names)
    if not fresh:
        paths = {name: [ws.path("search", web, t, SORTED, f"{stem(name)}.values.npy") for t in fps] for name in names}
        n = int(ws.search_result(tests[0], web).config["train_count"])
        write_folder(folder, {"web": web, "tests": list(fps), "searches": fps},
                     {name: _max_chunks(paths[name]) for name in names}, n)
    if progress:
        progress(steps, steps, f"combined statistics of {', '.join(tests)} vs {web}")
    return {"written": written, "combined": str(folder), "combined_written": not fresh}


def sort_stats(ws, web: str | None = None, tests: list[str] | None = None, reference: str | None = "auto",
               progress: Callable[[int, int, str], None] | None = None) -> dict:
    """build_sorted_stats with the workspace's defaults: what `python -m clipsim sort-stats` and the job run.

    Args:
        ws: the workspace.
        web: the web set (None: Workspace.web_set).
        tests: test sets (None: every test set with a completed search against `web`).
        reference: the margins' reference ('auto': the workspace's, when every search stored margins over it).
        progress: optional callable(done, total, description).

    Returns:
        build_sorted_stats's answer plus web, tests, reference.

    Raises:
        WorkspaceError: an unknown set or a missing search.
    """
    from clipsim.search.result import completed_searches, has_margins

    web = ws.web_set(web)
    tests = list(tests or [t for t in ws.dataset_names("test") if web in completed_searches(ws, t)])
    if reference == "auto":
        reference = ws.reference if has_margins(ws, web, tests, ws.reference) else None
    return {**build_sorted_stats(ws, web, tests, reference, progress), "web": web, "tests": tests,
            "reference": reference}


def store_after_search(ws, train: str) -> None:
    """After a search of `train` commits: when it is a web set, store the combination of every test set searched
    against it (what the pages read first), so no page waits for it. Reference sets need none."""
    if train in ws.web_sets():
        sort_stats(ws, train)


def sort_stats_job(ws, params: dict, ctx: JobContext) -> dict:
    """The `sort-stats` job (a light one): sort_stats. params: web, tests, reference (see sort_stats).

    Returns:
        sort_stats's answer.
    """
    ctx.log.info("sorting the statistics of %s against %s", params.get("web") or "the web set",
                 params.get("tests") or "every searched test set")
    return sort_stats(ws, params.get("web"), params.get("tests"), params.get("reference", "auto"), ctx.progress)

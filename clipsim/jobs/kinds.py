"""Job kinds: name -> "module:function", imported lazily by the worker; each is `fn(ws, params, ctx) -> dict`.

The returned dict is stored as the job's result. Kinds here wrap library calls (search, prune, demo) and
provide `sleep` for tests; training, evaluation, maps, reports and shard-range arrays live in their own modules.
"""
from __future__ import annotations

import importlib
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from clipsim import fileio
from clipsim.errors import ClipsimError
from clipsim.names import check_name

if TYPE_CHECKING:
    from clipsim.jobs.worker import JobContext

KINDS: dict[str, str] = {
    "search": "clipsim.jobs.kinds:search_job",
    "prune": "clipsim.jobs.kinds:prune_job",
    "sort-stats": "clipsim.prune.stored:sort_stats_job",  # the sorted statistics the pages memory-map
    "demo": "clipsim.jobs.kinds:demo_job",
    "train": "clipsim.runs.train:train_job",
    "evaluate": "clipsim.runs.evaluate:evaluate_job",
    "umap": "clipsim.maps.compute:umap_job",
    "report": "clipsim.report.build:report_job",
    "sleep": "clipsim.jobs.kinds:sleep_job",
    "search-array": "clipsim.jobs.arrays:search_array_job",  # merges the parts of its search-part tasks
    "search-part": "clipsim.jobs.arrays:search_part_job",
    "embed-array": "clipsim.jobs.arrays:embed_array_job",  # finalizes after its embed-part tasks
    "embed-part": "clipsim.jobs.arrays:embed_part_job",
    "dedup": "clipsim.dedup.pipeline:dedup_job",
    "dedup-array": "clipsim.dedup.pipeline:dedup_array_job",  # commits the clustering after its dedup-part tasks
    "dedup-part": "clipsim.dedup.pipeline:dedup_part_job",
}
# Array kinds: launching one also queues params["tasks"] jobs of its task kind (one per shard range; a SLURM array
# on the slurm backend); the array job itself runs once all of them are done (clipsim.jobs.arrays).
ARRAY_TASKS: dict[str, str] = {"search-array": "search-part", "embed-array": "embed-part", "dedup-array": "dedup-part"}


def register_kind(name: str, target: str, check: Callable | None = None, lane: str | None = None) -> None:
    """Register (or replace) a kind: `target` is "package.module:function".

    Args:
        name: the kind's name (the one name rule: clipsim.names.check_name).
        target: "package.module:function" run by the worker.
        check: optional `check(ws, params, launch)` run at launch (see clipsim.jobs.checks).
        lane: 'heavy' or 'light' (clipsim.jobs.lanes; default: light unless the name is a known heavy kind).

    Raises:
        ClipsimError: a bad name, target or lane.
    """
    from clipsim.jobs.checks import register_check
    from clipsim.jobs.lanes import set_kind_lane

    check_name(name, "job kind")
    if ":" not in target:
        raise ClipsimError(f"job kind target {target!r} for {name!r} must look like 'package.module:function'")
    if lane is not None:
        set_kind_lane(name, lane)
    if check is not None:
        register_check(name, check)
    KINDS[name] = target


def resolve_kind(kind: str, target: str | None = None) -> Callable:
    """Import and return the function of `kind` (or of `target`, the "module:function" recorded at launch).

    Raises:
        ClipsimError: unknown kind, or its module/function cannot be imported.
    """
    target = target or KINDS.get(kind)
    if target is None:
        raise ClipsimError(f"unknown job kind {kind!r}; registered kinds: {', '.join(sorted(KINDS))}")
    module_name, _, attr = target.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ClipsimError(f"job kind {kind!r} points at {target}, which cannot be imported ({err}); "
                           "is that module part of this checkout?") from err
    return fn


def search_job(ws, params: dict, ctx: JobContext) -> dict:
    """Exact search. params: train (name, list or None = all, reference first), tests (None = all), k (10),
    reference (default settings.reference), precision, device, force.

    Returns:
        {"searches": {"<test>/<train>": median s_train(t)}, "train": [...], "tests": [...]}.
    """
    from clipsim.search import search

    reference = params.get("reference", ws.settings.get("reference"))
    train = params.get("train")
    trains = [train] if isinstance(train, str) else list(train or ws.dataset_names("train"))
    if reference in trains:  # margins against the reference need its own search first
        trains = [reference] + [t for t in trains if t != reference]
    tests = list(params.get("tests") or ws.dataset_names("test"))
    medians = {}
    for name in trains:
        ctx.log.info("searching %s against train set %s", tests, name)
        results = search(ws, name, tests, k=int(params.get("k", 10)), reference=reference,
                         precision=params.get("precision", "auto"), device=params.get("device", "auto"),
                         force=bool(params.get("force", False)), progress=ctx.progress)
        for test, res in results.items():
            medians[f"{test}/{name}"] = round(float(res.nn_similarity().median()), 6)
        ctx.check_cancelled()
    return {"searches": medians, "train": trains, "tests": tests}


def prune_job(ws, params: dict, ctx: JobContext) -> dict:
    """Apply a pruning rule and save its manifest (clipsim.prune.manifest.save_rule, as `python -m clipsim prune` does).

    params: rule and its options as clipsim.prune.rules.RuleSpec takes them (tau | delta | remove_fraction,
    keep (int count or float fraction), like, seed, tests, web, reference), name (default from the rule), overwrite.

    Returns:
        {"manifest", "rule", "params", "kept", "removed"}.
    """
    from clipsim.prune.manifest import save_rule
    from clipsim.prune.rules import RuleSpec, default_name

    spec = RuleSpec.from_params(params)
    name = params.get("name") or default_name(spec)
    ctx.log.info("pruning with %s into manifest %s", spec, name)
    manifest, pruning = save_rule(ws, spec, name, overwrite=bool(params.get("overwrite", False)),
                                  progress=ctx.progress)
    ctx.log.info("rule %s %s removes %d of %d samples of %s", spec.rule, pruning.params, manifest.removed_count,
                 pruning.stats.n, pruning.stats.web)
    return {"manifest": manifest.name, "rule": spec.rule, "params": pruning.params,
            "kept": manifest.kept_count, "removed": manifest.removed_count}


def demo_job(ws, params: dict, ctx: JobContext) -> dict:
    """Build the demo into this workspace. params: seed (0), size ('full' | 'small'), workers (2).

    Returns:
        {"datasets": {name: count}}.
    """
    from clipsim.data.demo.build import build_demo

    built = build_demo(ws.root, seed=int(params.get("seed", 0)), size=params.get("size", "full"),
                       workers=int(params.get("workers", 2)), progress=ctx.progress)
    frame = built.datasets()
    return {"datasets": dict(zip(frame["name"], frame["count"].astype(int)))}


def sleep_job(ws, params: dict, ctx: JobContext) -> dict:
    """A test kind: sleeps `seconds` in `steps` steps, reporting progress and checking for cancellation.

    params: seconds (1.0), steps (10), lane ('heavy' by default, or 'light': clipsim.jobs.lanes), fail_at (step at
    which to raise; `fail: true` = halfway),
    ignore_term (ignore SIGTERM/SIGINT and never check for cancellation: a stuck worker), children (0: how many
    child processes to start first, each with a grandchild in its own session, like torchrun and its ranks; their
    pids go to children.json), tag (a label that only tells otherwise identical jobs apart).

    Returns:
        {"slept_s", "steps"}.

    Raises:
        RuntimeError: at step fail_at.
    """
    seconds, steps = float(params.get("seconds", 1.0)), max(1, int(params.get("steps", 10)))
    fail_at = params.get("fail_at", steps // 2 if params.get("fail") else None)
    stuck = bool(params.get("ignore_term", False))
    if stuck:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if params.get("children"):
        _start_children(ctx, int(params["children"]))
    for step in range(steps):
        ctx.progress(step, steps, f"sleeping, step {step + 1} of {steps}")
        if fail_at is not None and step >= int(fail_at):
            raise RuntimeError(f"sleep job asked to fail at step {step} (params fail_at={fail_at})")
        time.sleep(seconds / steps)
        if not stuck:
            ctx.check_cancelled()
    ctx.progress(steps, steps, "slept")
    ctx.result_path("slept.txt").write_text(f"{seconds}\n")
    ctx.log.info("slept %.2f s in %d steps", seconds, steps)
    return {"slept_s": seconds, "steps": steps}


_CHILD = ("import subprocess, sys, time; g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'], "
          "start_new_session=True); print(g.pid, flush=True); time.sleep(3600)")  # a process tree that outlives us


def _start_children(ctx: JobContext, count: int) -> None:
    """Start `count` long-sleeping children, each with a grandchild in a new session; record their pids."""
    import subprocess
    import sys

    tree = {"children": [], "grandchildren": []}
    for _ in range(count):
        child = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True)
        tree["children"].append(child.pid)
        tree["grandchildren"].append(int(child.stdout.readline()))
    fileio.write_json(ctx.result_path("children.json"), tree)

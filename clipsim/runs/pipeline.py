"""Queue "prune -> train -> evaluate" chains as jobs (what the Runs page's button and the CLI do).

A chain is a prune job (skipped when the manifest exists), train jobs that depend on it (the pruned set, and
optionally a random control of the same size and the full web set) and an evaluate job after each train job.
Launches are deduplicated by the job system, so a double click queues one chain.
"""
from __future__ import annotations

from dataclasses import replace

from clipsim.errors import WorkspaceError
from clipsim.names import check_name
from clipsim.prune.rules import RuleSpec, default_name
from clipsim.runs.data import FULL
from clipsim.runs.presets import get_preset


def train_resources(ws, preset: str, overrides: dict | None = None) -> dict | None:
    """SLURM resources for multi-GPU presets (gpus = processes); None for one-process presets."""
    merged = get_preset(ws, preset, overrides)
    return {"gpus": merged["nproc"]} if merged["launcher"] == "torchrun" else None


def seed_overrides(ws, preset: str, overrides: dict | None = None, seeds: int = 1) -> list[dict]:
    """The preset overrides of `seeds` training runs that differ only in their seed.

    Args:
        ws: the workspace; preset, overrides: as for train.
        seeds: how many runs; run i trains with the preset's seed + i.

    Returns:
        One overrides dict per run ([overrides] unchanged for one seed, so a plain launch stays the same job).

    Raises:
        WorkspaceError: seeds < 1, or an unknown preset or field.
    """
    if int(seeds) < 1:
        raise WorkspaceError(f"seeds={seeds} must be at least 1")
    if int(seeds) == 1:
        return [dict(overrides or {})]
    base = get_preset(ws, preset, overrides)["seed"]
    return [{**(overrides or {}), "seed": base + i} for i in range(int(seeds))]


def train_manifest(ws, manifest: str, base: str | None) -> str:
    """The manifest a run trains on when it starts from `base`: 'full' means the base itself; any other manifest
    must have been cut from that base (clipsim.prune.base).

    Raises:
        WorkspaceError: unknown manifest, or one not cut from `base`.
    """
    if not base:
        return manifest
    from clipsim.prune.manifest import load_manifest

    load_manifest(ws, base)
    if manifest == FULL:
        return base
    found = (load_manifest(ws, manifest).summary.get("base") or {}).get("name")
    if manifest != base and found != base:
        raise WorkspaceError(f"manifest {manifest!r} was cut from {found or 'the whole web set'!r}, not from base "
                             f"{base!r}; prune it again with --base {base}, or train without --base")
    return manifest


def queue_pipeline(ws, manifest: str | None = None, spec: RuleSpec | None = None, preset: str = "demo",
                   overrides: dict | None = None, random_control: bool = False, include_full: bool = False,
                   web: str | None = None, eval_tests: list[str] | None = None, backend: str | None = None,
                   base: str | None = None, seeds: int = 1) -> list:
    """Queue a prune -> train -> evaluate chain.

    Args:
        ws: the workspace.
        manifest: manifest to train on; when it does not exist yet, `spec` makes it (default: default_name(spec)).
        spec: the pruning rule of a new manifest (clipsim.prune.rules.RuleSpec; its web set defaults to `web`).
        preset: training preset; overrides: preset changes.
        random_control: also train on a random subset of the same size as the manifest.
        include_full: also train on the whole web set.
        web: the web train set (default: ws.web_set()).
        eval_tests: test sets to evaluate on (default: all).
        backend: job backend ('local', 'slurm'; default the workspace's).
        base: start the chain from this manifest (e.g. a dedup manifest, as the study did): the rule prunes the
            samples it keeps, the random control is drawn from them, and 'the full web set' means the base.
        seeds: train every variant this many times with seeds preset seed + 0, 1, ... (seed_overrides).

    Returns:
        The queued (or deduplicated) jobs in launch order.

    Raises:
        WorkspaceError: neither a manifest nor a rule, or the manifest is missing and no rule makes it.
        ClipsimError: a parameter of one of the jobs is refused (clipsim.jobs.checks); nothing is queued then.
        ReadOnlyError: the workspace is served read-only.
    """
    web = ws.web_set(web or (spec.web if spec else None))
    if manifest is None and spec is None and not include_full:
        raise WorkspaceError("nothing to train: pick a manifest, a pruning rule, or the full web set")
    spec = replace(spec, base=base) if spec is not None and base else spec
    manifest, plan = _prune_step(ws, manifest, spec, web)
    if manifest is not None and not plan:
        manifest = train_manifest(ws, manifest, base)
    resources = train_resources(ws, preset, overrides)
    variants = ([{"manifest": base or FULL}] if include_full else []) + \
        ([{"manifest": manifest}] if manifest else []) + \
        ([{"manifest": manifest, "control": "random"}] if manifest and random_control else [])
    for variant in variants:
        after = 0 if plan and plan[0][0] == "prune" and variant["manifest"] == manifest else None
        for seeded in seed_overrides(ws, preset, overrides, seeds):
            plan.append(("train", {**variant, "web": web, "preset": preset, "overrides": seeded}, after, resources))
            plan.append(("evaluate", {"run": f"train-job-{len(plan)}",
                                      **({"tests": list(eval_tests)} if eval_tests else {})}, len(plan) - 1, None))
    return _launch_plan(ws, plan, backend)


Plan = list[tuple[str, dict, "int | None", "dict | None"]]  # (kind, params, index of the job it waits for, resources)


def _prune_step(ws, manifest: str | None, spec: RuleSpec | None, web: str) -> tuple[str | None, Plan]:
    """The manifest to train on (checked name) and the prune job that makes it, unless it exists or none is asked."""
    from clipsim.prune.manifest import MANIFESTS

    if spec is None and manifest is None:
        return None, []
    manifest = check_name(manifest or default_name(spec), "manifest")
    if (ws.path(MANIFESTS, manifest) / "summary.json").exists():
        return manifest, []
    if spec is None:
        raise WorkspaceError(f"manifest {manifest!r} does not exist in {ws.path(MANIFESTS)}; pick a rule to make it "
                             "or an existing manifest")
    return manifest, [("prune", {"name": manifest, **replace(spec, web=web).to_params()}, None, None)]


def _launch_plan(ws, plan: Plan, backend: str | None) -> list:
    """Check every job of the plan, then queue them in order (prune jobs run locally: they only read and write files)."""
    from clipsim import jobs

    chosen = backend or ws.settings.get("jobs", {}).get("backend", "local")
    for kind, params, after, _ in plan:  # nothing is queued unless every job passes
        jobs.check_params(ws, kind, params, jobs.Launch("local" if kind == "prune" else chosen, after is not None))
    queued = []
    for kind, params, after, resources in plan:
        if kind == "evaluate":
            params = {**params, "run": queued[after].id}
        queued.append(jobs.launch(ws, kind, params, backend="local" if kind == "prune" else backend,
                                  depends_on=queued[after].id if after is not None else None, resources=resources))
    return queued

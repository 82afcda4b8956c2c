"""Queue "prune -> train -> evaluate" chains as jobs (what the Runs page's button and the CLI do).

A chain is a prune job (skipped when the manifest exists), train jobs that depend on it (the pruned set, and
optionally a random control of the same size and the full web set) and an evaluate job after each train job.
Launches are deduplicated by the job system, so a double click queues one chain.
"""
from __future__ import annotations

from clipsim.errors import WorkspaceError
from clipsim.names import check_name
from clipsim.runs.data import FULL
from clipsim.runs.presets import get_preset


def default_web(ws) -> str:
    """The web train set: 'web' when registered, else the first train set that is not the reference."""
    trains = ws.dataset_names("train")
    if "web" in trains:
        return "web"
    reference = ws.settings.get("reference")
    for name in trains:
        if name != reference:
            return name
    raise WorkspaceError(f"workspace {ws.root} has no web train set to prune and train on; register one "
                         "(python -m clipsim register --role train ...)")


def manifest_name(rule: str, params: dict | None = None, tests: list[str] | None = None, base: str | None = None) -> str:
    """A default manifest name: 'similarity-gap-all', 'near-keep0.5-sketch', 'similarity-gap-all-on-dedup', ..."""
    parts = [rule] + [f"{k}{v}" for k, v in sorted((params or {}).items()) if k != "tests" and v not in (0, 0.0, None)]
    parts.append("-".join(tests) if tests else "all")
    parts += ["on", base] if base else []
    return "-".join(str(p) for p in parts).replace("_", "-")


def train_manifest(ws, manifest: str, base: str | None) -> str:
    """The manifest a run trains on when it starts from `base`: 'full' means the base itself; any other manifest
    must have been cut from that base.

    Raises:
        WorkspaceError: unknown manifest, or one not cut from `base`.
    """
    if not base:
        return manifest
    from clipsim.prune import load_manifest

    load_manifest(ws, base)
    if manifest == FULL:
        return base
    found = (load_manifest(ws, manifest).summary.get("base") or {}).get("name")
    if manifest != base and found != base:
        raise WorkspaceError(f"manifest {manifest!r} was cut from {found or 'the whole web set'!r}, not from base "
                             f"{base!r}; prune it again with --base {base}, or train without --base")
    return manifest


def train_resources(ws, preset: str, overrides: dict | None = None) -> dict | None:
    """SLURM resources for multi-GPU presets (gpus = processes); None for one-process presets."""
    merged = get_preset(ws, preset, overrides)
    return {"gpus": merged["nproc"]} if merged["launcher"] == "torchrun" else None


def queue_pipeline(ws, manifest: str | None = None, rule: str | None = None, rule_params: dict | None = None,
                   tests: list[str] | None = None, preset: str = "demo", overrides: dict | None = None,
                   random_control: bool = False, include_full: bool = False, web: str | None = None,
                   eval_tests: list[str] | None = None, backend: str | None = None, base: str | None = None) -> list:
    """Queue a prune -> train -> evaluate chain.

    Args:
        ws: the workspace.
        manifest: manifest to train on; when it does not exist yet, `rule` makes it (default name from the rule).
        rule: pruning rule for a new manifest ('similarity-gap', 'threshold', 'near', 'far', 'random').
        rule_params: the rule's parameters (delta, tau, keep, seed).
        tests: test sets the rule looks at (default: all).
        preset: training preset; overrides: preset changes.
        random_control: also train on a random subset of the same size as the manifest.
        include_full: also train on the whole web set.
        web: the web train set (default: default_web).
        eval_tests: test sets to evaluate on (default: all).
        backend: job backend ('local', 'slurm'; default the workspace's).
        base: start the chain from this manifest (e.g. a dedup manifest, as the study did): the rule prunes the
            samples it keeps, the random control is drawn from them, and 'the full web set' means the base.

    Returns:
        The queued (or deduplicated) jobs in launch order.

    Raises:
        WorkspaceError: neither a manifest nor a rule, or the manifest is missing and no rule makes it.
        ClipsimError: a parameter of one of the jobs is refused (clipsim.jobs.checks); nothing is queued then.
        ReadOnlyError: the workspace is served read-only.
    """
    web = web or default_web(ws)
    if manifest is None and rule is None and not include_full:
        raise WorkspaceError("nothing to train: pick a manifest, a pruning rule, or the full web set")
    manifest, plan = _prune_step(ws, manifest, rule, rule_params, tests, web, base)
    if manifest is not None and not plan:
        manifest = train_manifest(ws, manifest, base)
    resources = train_resources(ws, preset, overrides)
    variants = ([{"manifest": base or FULL}] if include_full else []) + \
        ([{"manifest": manifest}] if manifest else []) + \
        ([{"manifest": manifest, "control": "random"}] if manifest and random_control else [])
    for variant in variants:
        after = 0 if plan and plan[0][0] == "prune" and variant["manifest"] == manifest else None
        plan.append(("train", {**variant, "web": web, "preset": preset, "overrides": dict(overrides or {})}, after,
                     resources))
        plan.append(("evaluate", {"run": f"train-job-{len(plan)}", **({"tests": list(eval_tests)} if eval_tests else {})},
                     len(plan) - 1, None))
    return _launch_plan(ws, plan, backend)


Plan = list[tuple[str, dict, "int | None", "dict | None"]]  # (kind, params, index of the job it waits for, resources)


def _prune_step(ws, manifest: str | None, rule: str | None, rule_params: dict | None, tests: list[str] | None,
                web: str, base: str | None = None) -> tuple[str | None, Plan]:
    """The manifest to train on (checked name) and the prune job that makes it, unless it exists or none is asked."""
    from clipsim.prune.manifest import MANIFESTS

    if rule is None and manifest is None:
        return None, []
    manifest = check_name(manifest or manifest_name(rule, rule_params, tests, base), "manifest")
    if (ws.path(MANIFESTS, manifest) / "summary.json").exists():
        return manifest, []
    if rule is None:
        raise WorkspaceError(f"manifest {manifest!r} does not exist in {ws.path(MANIFESTS)}; pick a rule to make it "
                             "or an existing manifest")
    params = {"name": manifest, "rule": rule, "web": web, **(rule_params or {}), **({"tests": list(tests)} if tests else {}),
              **({"base": base} if base else {})}
    return manifest, [("prune", params, None, None)]


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

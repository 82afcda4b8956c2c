"""Queue "prune -> train -> evaluate" chains as jobs (what the Runs page's button and the CLI do).

A chain is a prune job (skipped when the manifest exists), train jobs that depend on it (the pruned set, and
optionally a random control of the same size and the full web set) and an evaluate job after each train job.
Launches are deduplicated by the job system, so a double click queues one chain.
"""
from __future__ import annotations

from clipsim.errors import WorkspaceError
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


def manifest_name(rule: str, params: dict | None = None, tests: list[str] | None = None) -> str:
    """A default manifest name: 'similarity-gap-all', 'near-keep0.5-sketch', ..."""
    parts = [rule] + [f"{k}{v}" for k, v in sorted((params or {}).items()) if k != "tests" and v not in (0, 0.0, None)]
    parts.append("-".join(tests) if tests else "all")
    return "-".join(str(p) for p in parts).replace("_", "-")


def train_resources(ws, preset: str, overrides: dict | None = None) -> dict | None:
    """SLURM resources for multi-GPU presets (gpus = processes); None for one-process presets."""
    merged = get_preset(ws, preset, overrides)
    return {"gpus": merged["nproc"]} if merged["launcher"] == "torchrun" else None


def queue_pipeline(ws, manifest: str | None = None, rule: str | None = None, rule_params: dict | None = None,
                   tests: list[str] | None = None, preset: str = "demo", overrides: dict | None = None,
                   random_control: bool = False, include_full: bool = False, web: str | None = None,
                   eval_tests: list[str] | None = None, backend: str | None = None) -> list:
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

    Returns:
        The queued (or deduplicated) jobs in launch order.

    Raises:
        WorkspaceError: neither a manifest nor a rule, or the manifest is missing and no rule makes it.
        ReadOnlyError: the workspace is served read-only.
    """
    from clipsim import jobs
    from clipsim.prune.manifest import MANIFESTS

    web = web or default_web(ws)
    if manifest is None and rule is None and not include_full:
        raise WorkspaceError("nothing to train: pick a manifest, a pruning rule, or the full web set")
    queued, prune_job = [], None
    if rule is not None or manifest is not None:
        manifest = manifest or manifest_name(rule, rule_params, tests)
        if not (ws.path(MANIFESTS, manifest) / "summary.json").exists():
            if rule is None:
                raise WorkspaceError(f"manifest {manifest!r} does not exist in {ws.path(MANIFESTS)}; pick a rule to "
                                     "make it or an existing manifest")
            params = {"name": manifest, "rule": rule, "web": web, **(rule_params or {})}
            if tests:
                params["tests"] = list(tests)
            prune_job = jobs.launch(ws, "prune", params, backend="local")
            queued.append(prune_job)
    resources = train_resources(ws, preset, overrides)
    variants = ([{"manifest": FULL}] if include_full else []) + \
        ([{"manifest": manifest}] if manifest else []) + \
        ([{"manifest": manifest, "control": "random"}] if manifest and random_control else [])
    for variant in variants:
        params = {**variant, "web": web, "preset": preset, "overrides": dict(overrides or {})}
        after = prune_job.id if prune_job is not None and variant["manifest"] != FULL else None
        train_job = jobs.launch(ws, "train", params, backend=backend, depends_on=after, resources=resources)
        evaluate = {"run": train_job.id, **({"tests": list(eval_tests)} if eval_tests else {})}
        queued += [train_job, jobs.launch(ws, "evaluate", evaluate, backend=backend, depends_on=train_job.id)]
    return queued

"""Queue "prune -> train -> evaluate" chains as jobs (what the Runs page's button and the CLI do).

A chain is a prune job (skipped when the manifest exists), train jobs that depend on it (the pruned set, and
optionally a random control of the same size and the full web set) and an evaluate job after each train job.
Launches are deduplicated by the job system, so a double click queues one chain.
"""
from __future__ import annotations

from dataclasses import replace

from clipsim.errors import WorkspaceError
from clipsim.prune.rules import RuleSpec, default_name
from clipsim.runs.data import FULL
from clipsim.runs.presets import get_preset


def train_resources(ws, preset: str, overrides: dict | None = None) -> dict | None:
    """SLURM resources for multi-GPU presets (gpus = processes); None for one-process presets."""
    merged = get_preset(ws, preset, overrides)
    return {"gpus": merged["nproc"]} if merged["launcher"] == "torchrun" else None


def queue_pipeline(ws, manifest: str | None = None, spec: RuleSpec | None = None, preset: str = "demo",
                   overrides: dict | None = None, random_control: bool = False, include_full: bool = False,
                   web: str | None = None, eval_tests: list[str] | None = None, backend: str | None = None) -> list:
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

    Returns:
        The queued (or deduplicated) jobs in launch order.

    Raises:
        WorkspaceError: neither a manifest nor a rule, or the manifest is missing and no rule makes it.
        ReadOnlyError: the workspace is served read-only.
    """
    from clipsim import jobs
    from clipsim.prune.manifest import MANIFESTS

    web = ws.web_set(web or (spec.web if spec else None))
    if manifest is None and spec is None and not include_full:
        raise WorkspaceError("nothing to train: pick a manifest, a pruning rule, or the full web set")
    queued, prune_job = [], None
    if spec is not None or manifest is not None:
        manifest = manifest or default_name(spec)
        if not (ws.path(MANIFESTS, manifest) / "summary.json").exists():
            if spec is None:
                raise WorkspaceError(f"manifest {manifest!r} does not exist in {ws.path(MANIFESTS)}; pick a rule to "
                                     "make it or an existing manifest")
            params = {"name": manifest, **replace(spec, web=web).to_params()}
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

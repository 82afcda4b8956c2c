"""Job parameters checked at launch, one function per kind: a bad parameter is refused before the job record or its
run folder is written, with one message naming the parameter, its value and the fix.

`jobs.launch` runs the kind's check, so the CLI, the pages, pipelines and `run-job` share it. A check sees the
`Launch` (backend, whether the job waits for others): a train job queued after its prune job may name a manifest
that does not exist yet, and a SLURM job may ask for a GPU this login node lacks.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from clipsim.checks import (
    check_bool,
    check_choice,
    check_datasets,
    check_device,
    check_embed_args,
    check_float,
    check_int,
    check_search_args,
)
from clipsim.errors import ArgumentError, ClipsimError
from clipsim.names import check_name


@dataclass(frozen=True)
class Launch:
    """Where and when a job will run: its backend, and whether it waits for other jobs (depends_on)."""

    backend: str = "local"
    waits: bool = False

    @property
    def here(self) -> bool:
        """True when the job runs on this machine (so devices must exist here)."""
        return self.backend == "local"


def check_params(ws, kind: str, params: dict, launch: Launch | None = None) -> None:
    """Check the parameters of a `kind` job (kinds registered without a check: nothing to check).

    Raises:
        ClipsimError: (usually ArgumentError) a parameter that is unknown, of the wrong type or out of range, or a
            dataset, manifest, preset or run that does not exist; the message names it and the fix.
    """
    check = CHECKS.get(kind)
    if check is not None:
        check(ws, dict(params), launch or Launch())


def _only(kind: str, params: dict, allowed: set[str]) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ArgumentError(f"{kind} job: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")


def _opt(params: dict, key: str, check: Callable, *args, **kwargs):
    """Run `check(value, "params['key']", ...)` when the key is present and not None."""
    if params.get(key) is not None:
        return check(params[key], f"params[{key!r}]", *args, **kwargs)
    return None


def _datasets(ws, params: dict, key: str, role: str | None) -> None:
    if params.get(key) is not None:
        check_datasets(ws, params[key], f"params[{key!r}]", role)


# ----- search and embed -----------------------------------------------------------------------------------
SEARCH_KEYS = {"train", "tests", "k", "reference", "precision", "device", "block_rows", "force"}
ARRAY_KEYS = {"tasks"}
TASK_KEYS = {"task", "array_job", "shards"}


def check_search(ws, params: dict, launch: Launch, kind: str = "search", extra: frozenset = frozenset()) -> None:
    """search: train (name, list or none = all), tests, k, reference, precision, device, block_rows, force."""
    _only(kind, params, SEARCH_KEYS | extra)
    _datasets(ws, params, "train", "train")
    _datasets(ws, params, "tests", "test")
    reference = params.get("reference", ws.settings.get("reference"))
    if reference is not None:
        check_datasets(ws, [reference], "params['reference']" if "reference" in params else "settings.reference",
                       "train")
    check_search_args(params.get("k", 10), params.get("block_rows", 65536), params.get("precision", "auto"),
                      params.get("device", "auto"), here=launch.here)
    _opt(params, "force", check_bool)


def check_search_array(ws, params: dict, launch: Launch) -> None:
    """search-array / search-part: a search of one train set split into `tasks` shard ranges."""
    from clipsim.jobs.arrays import MAX_TASKS

    check_search(ws, params, launch, "search-array", frozenset(ARRAY_KEYS | TASK_KEYS))
    if not isinstance(params.get("train"), str):
        raise ArgumentError(f"search-array job: params['train'] = {params.get('train')!r} must name one train set")
    check_int(params.get("tasks"), "params['tasks'] (shard ranges)", 1, MAX_TASKS)


def check_embed_array(ws, params: dict, launch: Launch) -> None:
    """embed-array / embed-part: dataset, model, pretrained, batch_size, workers, device, shard_size, precision,
    tasks."""
    from clipsim.jobs.arrays import MAX_TASKS

    allowed = {"dataset", "model", "pretrained", "batch_size", "workers", "device", "shard_size", "precision"}
    _only("embed-array", params, allowed | ARRAY_KEYS | TASK_KEYS)
    check_datasets(ws, [params.get("dataset")] if isinstance(params.get("dataset"), str) else params.get("dataset"),
                   "params['dataset']")
    check_embed_args(params.get("batch_size", 256), params.get("workers", 2), params.get("device", "auto"),
                     params.get("shard_size", 1), here=launch.here)
    _opt(params, "precision", check_choice, ("auto", "amp", "fp32"))
    check_int(params.get("tasks"), "params['tasks'] (shard ranges)", 1, MAX_TASKS)


# ----- prune, train, evaluate -------------------------------------------------------------------------------
def check_prune(ws, params: dict, launch: Launch) -> None:
    """prune: rule and its options as clipsim.prune.RuleSpec takes them (tau | delta | remove_fraction, keep (an int
    count or a float fraction), like, seed, tests, web, reference, base), name (default from the rule), overwrite.

    The rule's own options are checked by RuleSpec (the one place that decides them, also for the CLI and the page).
    """
    from clipsim.prune.manifest import MANIFESTS
    from clipsim.prune.rules import RuleSpec, default_name

    _only("prune", params, {"name", "overwrite", *(f.name for f in fields(RuleSpec))})
    try:
        spec = RuleSpec.from_params(params)
    except (TypeError, ValueError) as err:
        raise ArgumentError(f"prune job: {err}") from err
    name = check_name(params.get("name") or default_name(spec), "manifest")
    _opt(params, "tau", check_float, -1.0, 1.0)
    _opt(params, "delta", check_float, -2.0, 2.0)
    _opt(params, "remove_fraction", check_float, 0.0, 1.0)
    _opt(params, "seed", check_int, 0)
    if isinstance(spec.keep, float):  # a float is a fraction, an int a count (prune.resolve_keep)
        check_float(spec.keep, "params['keep'] (a fraction of the web set)", maximum=1.0, above=0.0)
    elif spec.keep is not None:
        check_int(spec.keep, "params['keep'] (samples kept)", minimum=0)
    _datasets(ws, params, "tests", "test")
    _datasets(ws, params, "reference", "train")
    ws.web_set(spec.web)  # the one rule for the web set: a registered train set other than the reference
    if spec.rule == "similarity-gap" and (spec.reference or ws.reference) is None:
        raise ArgumentError("prune job: the similarity-gap rule needs a reference train set; set params['reference'] "
                            "or the workspace's reference setting")
    for key in ("like", "base"):  # a manifest made by a job this one waits for may not exist yet
        value = getattr(spec, key)
        if value is not None and not launch.waits and not (ws.path(MANIFESTS, check_name(value, "manifest"))
                                                           / "summary.json").exists():
            raise ArgumentError(f"prune job: params[{key!r}] = {value!r}: no such manifest in {ws.path(MANIFESTS)}")
    overwrite = _opt(params, "overwrite", check_bool)
    if not overwrite and (ws.path(MANIFESTS, name) / "summary.json").exists():
        raise ArgumentError(f"manifest {name!r} already exists in {ws.path(MANIFESTS)}; pick another name or set "
                            "overwrite")


def check_sort_stats(ws, params: dict, launch: Launch) -> None:
    """sort-stats: web (default the workspace's web set), tests (default every searched one), reference ('auto')."""
    _only("sort-stats", params, {"web", "tests", "reference"})
    ws.web_set(params.get("web"))
    _datasets(ws, params, "tests", "test")
    if params.get("reference") not in (None, "auto"):
        check_datasets(ws, [params["reference"]], "params['reference']", "train")


def check_train(ws, params: dict, launch: Launch) -> None:
    """train: manifest ('full' or a saved manifest), web, preset, overrides, control, seed."""
    from clipsim.prune.manifest import MANIFESTS
    from clipsim.runs.data import FULL
    from clipsim.runs.presets import get_preset
    from clipsim.runs.train import control_name

    _only("train", params, {"manifest", "web", "preset", "overrides", "control", "seed"})
    manifest = check_name(params.get("manifest", FULL), "manifest")
    ws.web_set(params.get("web"))  # the one rule for the web set (a registered train set, not the reference)
    overrides = params.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ArgumentError(f"train job: params['overrides'] = {overrides!r} must be an object, e.g. {{\"epochs\": 1}}")
    get_preset(ws, params.get("preset", "demo"), overrides)  # unknown preset, field or a wrong type
    seed = _opt(params, "seed", check_int, 0) or 0
    if params.get("control") is not None:
        check_choice(params["control"], "params['control']", ["random"])
        if manifest == FULL:
            raise ArgumentError("train job: a random control needs a pruned manifest to match in size, not 'full'")
        check_name(control_name(manifest, seed), "random control manifest")
    if manifest != FULL and not launch.waits and not (ws.path(MANIFESTS, manifest) / "summary.json").exists():
        raise ArgumentError(f"train job: manifest {manifest!r} does not exist in {ws.path(MANIFESTS)}; save it first "
                            "(Prune page or `python -m clipsim prune`) or queue it with a pruning rule")


def check_evaluate(ws, params: dict, launch: Launch) -> None:
    """evaluate: run (a train job id, a run folder or a checkpoint), tests, templates, model, device, batch_size."""
    _only("evaluate", params, {"run", "tests", "templates", "model", "device", "batch_size"})
    run = params.get("run")
    if not isinstance(run, str) or not run:
        raise ArgumentError(f"evaluate job: params['run'] = {run!r} must be a run id or a run folder")
    if not Path(run).exists():
        check_name(run, "run")
        if not launch.waits and not ws.path("runs", run).is_dir():
            raise ArgumentError(f"evaluate job: no run {run!r} in {ws.path('runs')}; train it first or give its folder")
    _datasets(ws, params, "tests", "test")
    templates = params.get("templates")
    if templates is not None and not (templates in ("openai", "demo") or (
            isinstance(templates, list) and templates and all(isinstance(t, str) and "{}" in t for t in templates))):
        raise ArgumentError(f"evaluate job: params['templates'] = {templates!r}; use 'openai', 'demo' or a list of "
                            "prompts holding '{}'")
    _opt(params, "device", check_device, here=launch.here)
    _opt(params, "batch_size", check_int, 1)


# ----- maps, reports, demo, tests ---------------------------------------------------------------------------
def check_umap(ws, params: dict, launch: Launch) -> None:
    """umap: name, datasets, sample, seed, umap {n_neighbors, min_dist, metric}, place, sizes, force."""
    _only("umap", params, {"name", "datasets", "sample", "seed", "umap", "place", "sizes", "force"})
    check_name(params.get("name", "default"), "map")
    _datasets(ws, params, "datasets", None)
    _opt(params, "sample", check_int, 2)
    _opt(params, "seed", check_int, 0)
    umap = params.get("umap") or {}
    if not isinstance(umap, dict) or set(umap) - {"n_neighbors", "min_dist", "metric"}:
        raise ArgumentError(f"umap job: params['umap'] = {umap!r}; give an object with n_neighbors, min_dist, metric")
    _opt(umap, "n_neighbors", check_int, 2, 1000)
    _opt(umap, "min_dist", check_float, 0.0, 1.0)
    _opt(umap, "metric", check_choice, ("cosine", "euclidean"))
    sizes = params.get("sizes") or {}
    if not isinstance(sizes, dict):
        raise ArgumentError(f"umap job: params['sizes'] = {sizes!r} must map dataset names to sample sizes")
    for name, size in sizes.items():
        check_datasets(ws, [name], "params['sizes']")
        check_int(size, f"params['sizes'][{name!r}]", 0)
    _opt(params, "place", check_bool)
    _opt(params, "force", check_bool)


def check_report(ws, params: dict, launch: Launch) -> None:
    """report: out (a file path), pairs, thumb."""
    _only("report", params, {"out", "pairs", "thumb"})
    out = params.get("out")
    if out is not None and (not isinstance(out, str) or not out or Path(out).is_dir()):
        raise ArgumentError(f"report job: params['out'] = {out!r} must be the path of an HTML file")
    _opt(params, "pairs", check_int, 0, 1000)
    _opt(params, "thumb", check_int, 8, 1024)


def check_demo(ws, params: dict, launch: Launch) -> None:
    """demo: seed, size ('full' | 'small'), workers."""
    _only("demo", params, {"seed", "size", "workers"})
    _opt(params, "seed", check_int, 0)
    _opt(params, "size", check_choice, ("full", "small"))
    _opt(params, "workers", check_int, 1, 256)


def check_sleep(ws, params: dict, launch: Launch) -> None:
    """sleep (the test kind): seconds, steps, lane, fail_at, fail, ignore_term, children, tag (any label)."""
    from clipsim.jobs.lanes import LANES

    _only("sleep", params, {"seconds", "steps", "lane", "fail_at", "fail", "ignore_term", "children", "tag"})
    _opt(params, "lane", check_choice, LANES)
    _opt(params, "seconds", check_float, 0.0)
    _opt(params, "steps", check_int, 1)
    _opt(params, "fail_at", check_int, 0)
    _opt(params, "children", check_int, 0, 8)
    for key in ("fail", "ignore_term"):
        _opt(params, key, check_bool)


CHECKS: dict[str, Callable[[object, dict, Launch], None]] = {
    "search": check_search, "search-array": check_search_array, "search-part": check_search_array,
    "embed-array": check_embed_array, "embed-part": check_embed_array, "prune": check_prune,
    "sort-stats": check_sort_stats, "train": check_train,
    "evaluate": check_evaluate, "umap": check_umap, "report": check_report, "demo": check_demo, "sleep": check_sleep,
}


def check_slots(value, where) -> dict[str, int]:
    """settings.jobs.slots: None (defaults), an int (the heavy lane's slots) or {"heavy": N, "light": M} (either key
    may be left out); see clipsim.jobs.lanes.

    Returns:
        {lane: slots} for the lanes given.

    Raises:
        ClipsimError: another type, an unknown lane or a count below 1 (the message names the value and the file).
    """
    from clipsim.jobs.lanes import LANES

    form = 'an integer >= 1 (the heavy lane\'s slots) or {"heavy": N, "light": M}'
    if value is None:
        return {}
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ClipsimError(f"settings.jobs.slots = {value!r} in {where} must be {form}")
        return {"heavy": value}
    if not isinstance(value, dict):
        raise ClipsimError(f"settings.jobs.slots = {value!r} in {where} must be {form}")
    unknown = sorted(set(value) - set(LANES))
    if unknown:
        raise ClipsimError(f"settings.jobs.slots in {where} names unknown lane(s) {unknown}; the lanes are "
                           f"{', '.join(LANES)} (e.g. {{\"heavy\": 1, \"light\": 2}})")
    for lane, count in value.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ClipsimError(f"settings.jobs.slots.{lane} = {count!r} in {where} must be an integer >= 1")
    return dict(value)


def check_dedup(ws, params: dict, launch: Launch) -> None:
    """dedup, dedup-array, dedup-part: the fields of clipsim.dedup.pipeline.DedupOptions (checked there)."""
    from clipsim.dedup.pipeline import check_dedup_params

    check_dedup_params(ws, params)


CHECKS.update({"dedup": check_dedup, "dedup-array": check_dedup, "dedup-part": check_dedup})


def register_check(kind: str, check: Callable[[object, dict, Launch], None]) -> None:
    """Register the parameter check of a kind (see `jobs.register_kind`).

    Raises:
        ClipsimError: `check` is not callable.
    """
    if not callable(check):
        raise ClipsimError(f"the parameter check of job kind {kind!r} must be callable, got {check!r}")
    CHECKS[kind] = check

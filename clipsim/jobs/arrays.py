"""Job arrays over shard ranges: an array job (search-array, embed-array) queues N task jobs, one per range, and
runs its own step (merge, finalize) once all are done. On SLURM the tasks go out as one job array.

Each task takes range `task` of `split_ranges(shards, tasks)` over the shards present when it runs, so an array
can wait for an upstream job (embed-array -> search-array) whose shards do not exist yet at launch.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from clipsim.errors import ClipsimError
from clipsim.jobs import db
from clipsim.jobs.db import Job
from clipsim.shard_ranges import check_range, split_ranges

if TYPE_CHECKING:
    from clipsim.jobs.worker import JobContext

MAX_TASKS = 10_000  # sbatch refuses arrays beyond the cluster's MaxArraySize (often 1001..10001)


def array_tasks(job: Job) -> list[Job]:
    """The task jobs of an array job (none for other kinds): params + {"task": i, "array_job": job.id}.

    Tasks take over the job's dependency and resources; the job itself (merge/finalize) asks for no GPU.

    Raises:
        ClipsimError: params["tasks"] missing or not in 1 .. MAX_TASKS.
    """
    from clipsim.jobs.kinds import ARRAY_TASKS

    task_kind = ARRAY_TASKS.get(job.kind)
    if task_kind is None:
        return []
    n = job.params.get("tasks")
    if not isinstance(n, int) or not 1 <= n <= MAX_TASKS:
        raise ClipsimError(f"a {job.kind!r} job needs params['tasks'] = the number of shard ranges, an integer in "
                           f"1..{MAX_TASKS} (got {n!r}), e.g. --array 8")
    tasks = []
    for i in range(n):
        params = {**job.params, "task": i, "array_job": job.id}
        tasks.append(dataclasses.replace(job, id=db.new_job_id(task_kind), kind=task_kind, params=params,
                                         dedupe_key=db.dedupe_key(task_kind, params)))
    job.resources = {**job.resources, "gpus": 0}  # merging and finalizing read files on CPU
    return tasks


def start_batches(jobs: list[Job]) -> list[list[Job]]:
    """Claimed jobs grouped for starting: tasks of one array on a backend that submits arrays go together."""
    from clipsim.jobs.backends import get_backend

    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        array = job.params.get("array_job") if hasattr(get_backend(job.backend), "start_array") else None
        groups.setdefault((job.backend, array) if array else (job.id,), []).append(job)
    # job ids carry random digits: order an array's tasks by task number, so SLURM array index i runs task i
    return [sorted(batch, key=lambda j: j.params.get("task", 0)) for batch in groups.values()]


def task_range(params: dict, indices: list[int]) -> tuple[int, int]:
    """This task's [lo, hi): params['shards'] when given, else range params['task'] of params['tasks']."""
    if params.get("shards") is not None:
        return check_range(params["shards"])
    return split_ranges(indices, int(params["tasks"]))[int(params["task"])]


# ----- search -------------------------------------------------------------------------------------------
def _search_args(ws, params: dict) -> dict:
    """train, the tests still to do (all with force), k, reference from the params of a search array."""
    from clipsim.search.result import is_fresh

    train = params["train"]
    reference = params.get("reference", ws.settings.get("reference"))
    k = int(params.get("k", 10))
    tests = list(params.get("tests") or ws.dataset_names("test"))
    todo = [t for t in tests if params.get("force") or not is_fresh(ws, t, train, k, reference)]
    return {"train": train, "tests": todo, "k": k, "reference": reference}


def search_part_job(ws, params: dict, ctx: JobContext) -> dict:
    """One task of a search array: search_part over this task's train shard range (tests already fresh: skipped).

    Returns:
        {"range": [lo, hi], "shards", "rows", "seconds", "folder", "tests"}, or {"tests": []} when all are fresh.
    """
    from clipsim.search.parts import search_part

    args = _search_args(ws, params)
    if not args["tests"]:
        ctx.log.info("every test set vs %s is fresh; nothing to search", args["train"])
        return {"tests": []}
    lo, hi = task_range(params, [s.index for s in ws.embeddings(args["train"]).shards])
    ctx.log.info("search part %d:%d of %s against %s", lo, hi, args["train"], args["tests"])
    out = search_part(ws, shards=(lo, hi), precision=params.get("precision", "auto"),
                      device=params.get("device", "auto"), block_rows=int(params.get("block_rows", 65536)),
                      progress=ctx.progress, **args)
    return {**out, "tests": args["tests"]}


def search_array_job(ws, params: dict, ctx: JobContext) -> dict:
    """The last step of a search array: merge the parts into the final results.

    Returns:
        {"searches": {"<test>/<train>": median s_train(t)}, "train", "tests" (merged), "tasks"}.
    """
    from clipsim.search import SearchResult
    from clipsim.search.parts import merge_search_parts

    args = _search_args(ws, params)
    results = merge_search_parts(ws, **args) if args["tests"] else {}
    tests = list(params.get("tests") or ws.dataset_names("test"))
    medians = {f"{t}/{args['train']}": round(float(SearchResult.load(ws, t, args["train"]).nn_similarity().median()), 6)
               for t in tests}
    ctx.log.info("merged %d search parts of %s", int(params["tasks"]), args["train"])
    return {"searches": medians, "train": args["train"], "tests": sorted(results), "tasks": int(params["tasks"])}


# ----- embed --------------------------------------------------------------------------------------------
def embed_options(ws, params: dict) -> dict:
    """Keyword arguments of embed_dataset from job params (model/pretrained default to the workspace's)."""
    from clipsim.data.sources import DEFAULT_SHARD_SIZE
    from clipsim.models import DEFAULT_MODEL, DEFAULT_PRETRAINED

    saved = ws.settings.get("similarity_model", {})
    model = params.get("model") or (str(ws.resolve(saved["model"])) if "model" in saved else DEFAULT_MODEL)
    pretrained = params.get("pretrained") or (str(ws.resolve(saved["pretrained"])) if "pretrained" in saved
                                              else DEFAULT_PRETRAINED)
    return {"model": model, "pretrained": pretrained, "batch_size": int(params.get("batch_size", 256)),
            "workers": int(params.get("workers", 2)), "device": params.get("device", "auto"),
            "shard_size": int(params.get("shard_size", DEFAULT_SHARD_SIZE)), "precision": params.get("precision", "auto")}


def embed_part_job(ws, params: dict, ctx: JobContext) -> dict:
    """One task of an embed array: embed_dataset over this task's source shard range.

    Returns:
        {"dataset", "range": [lo, hi], "shards" (embedded shards in this range; a count over all ranges would depend
        on how far the other tasks got)}.
    """
    from clipsim.data.sources import open_source
    from clipsim.embed import embed_dataset

    name, opts = params["dataset"], embed_options(ws, params)
    ds = ws.dataset(name)
    if ds.kind == "embeddings":
        return {"dataset": name, "range": None, "shards": len(ws.embeddings(name).shards)}  # imported: used in place
    source = open_source(ds.kind, ds.source, opts["shard_size"], options=ds.extra)
    lo, hi = task_range(params, [s.index for s in source.shards])
    ctx.log.info("embedding shards %d:%d of %s", lo, hi, name)
    emb = embed_dataset(ws, name, shards=(lo, hi), progress=ctx.progress, **opts)
    return {"dataset": name, "range": [lo, hi], "shards": sum(lo <= s.index < hi for s in emb.shards)}


def embed_array_job(ws, params: dict, ctx: JobContext) -> dict:
    """The last step of an embed array: finalize_embeddings (checks every shard, writes the summary).

    Returns:
        {"dataset", "rows", "dim", "tasks"}.
    """
    from clipsim.embed import finalize_embeddings

    emb = finalize_embeddings(ws, params["dataset"])
    return {"dataset": params["dataset"], "rows": emb.count, "dim": emb.dim, "tasks": int(params["tasks"])}

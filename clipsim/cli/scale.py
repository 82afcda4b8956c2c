"""The cluster side of `clipsim embed` and `clipsim search`: one shard range (--shards), the step that joins the
ranges (--finalize, --merge), or an array of range jobs plus that step (--array N, a SLURM array on --backend slurm).
"""
from __future__ import annotations

import argparse

from clipsim.errors import ClipsimError


def add_scale_args(p: argparse.ArgumentParser, finish: str, finish_help: str) -> None:
    """Add --shards, --<finish>, --array, --backend and --wait to the embed or search parser."""
    p.add_argument("--shards", metavar="LO:HI", help="only shards LO <= i < HI (one range of a cluster array)")
    p.add_argument(f"--{finish}", action="store_true", help=finish_help)
    p.add_argument("--array", type=int, metavar="N", help=f"queue N jobs, one per shard range, then a {finish} job "
                                                           "(a SLURM job array with --backend slurm)")
    p.add_argument("--backend", choices=["local", "slurm"], help="with --array (default: the workspace's jobs backend)")
    p.add_argument("--wait", action="store_true", help="with --array: wait for the jobs and print their results")


def _one_mode(args: argparse.Namespace, finish: str) -> None:
    chosen = [f"--{n}" for n in ("shards", finish, "array") if getattr(args, n)]
    if len(chosen) > 1:
        raise ClipsimError(f"give one of {', '.join(chosen)}: --shards runs one range, --{finish} joins the ranges, "
                           "--array queues both")


def _single(names: list[str], flag: str, what: str) -> str:
    if len(names) != 1:
        raise ClipsimError(f"{flag} works on one {what} at a time (got {', '.join(names) or 'none'}); "
                           f"name it with --{'train' if what == 'train set' else 'datasets'}")
    return names[0]


def _launch(ws, kind: str, params: dict, args: argparse.Namespace, depends_on: str | None = None):
    from clipsim import jobs

    job = jobs.launch(ws, kind, params, backend=args.backend, depends_on=depends_on)
    print(f"queued {kind} job {job.id} after {args.array} range jobs; follow it with "
          f"`python -m clipsim jobs show --workspace {ws.root} --id {job.id}`")
    return job


def _report(ws, launched: list, args: argparse.Namespace) -> int:
    """With --wait: wait for every array job, print its result; exit code 1 if one did not finish."""
    from clipsim import jobs

    code = 0
    for job in launched if args.wait else []:
        job = jobs.wait(ws, job.id)
        print(f"{job.kind} {job.id}: {job.state}: {job.result if job.state == 'done' else job.error}")
        code = code or int(job.state != "done")
    return code


def search_scaled(ws, args: argparse.Namespace, trains: list[str], tests: list[str], reference: str | None) -> int:
    """`clipsim search` with --shards, --merge or --array; returns the exit code.

    Raises:
        ClipsimError: several modes at once, or --shards/--merge without a single train set.
    """
    _one_mode(args, "merge")
    common = {"tests": tests, "k": args.k, "reference": reference}
    if args.array:
        launched, ref_job = [], None
        for t in trains:  # the reference comes first; margins need its merged search, so the others wait for it
            params = {"train": t, **common, "precision": args.precision, "device": args.device,
                      "block_rows": args.block_rows, "force": args.force, "tasks": args.array}
            launched.append(_launch(ws, "search-array", params, args, None if t == reference else ref_job))
            ref_job = launched[-1].id if t == reference else ref_job
        return _report(ws, launched, args)
    train = _single(trains, "--shards/--merge", "train set")
    if args.shards:
        from clipsim.cli.common import tqdm_progress
        from clipsim.search.parts import search_part
        from clipsim.shard_ranges import parse_range

        out = search_part(ws, train, shards=parse_range(args.shards), precision=args.precision, device=args.device,
                          block_rows=args.block_rows, progress=tqdm_progress(), **common)
        print(f"search part {args.shards} of {train}: shards {out['shards']} ({out['rows']} rows) in {out['seconds']} s")
        return 0
    from clipsim.search.parts import merge_search_parts

    for test, res in merge_search_parts(ws, train, **common).items():
        print(f"{test} vs {train}: median s_{train}(t) = {float(res.nn_similarity().median()):.4f}")
    return 0


def embed_scaled(ws, args: argparse.Namespace, names: list[str], model: str, pretrained: str) -> int:
    """`clipsim embed` with --shards, --finalize or --array; returns the exit code.

    Raises:
        ClipsimError: several modes at once, --force with ranges, or --shards without a single dataset.
    """
    from clipsim.embed import embed_dataset, finalize_embeddings

    _one_mode(args, "finalize")
    if args.force and not args.finalize:
        raise ClipsimError("--force with --shards/--array would let each range delete the others' shards; delete "
                           f"{ws.path('embeddings')}/<dataset> once instead, then launch the ranges")
    opts = {"model": model, "pretrained": pretrained, "batch_size": args.batch_size, "workers": args.workers,
            "device": args.device}
    if args.array:
        launched = [_launch(ws, "embed-array", {"dataset": n, **opts, "tasks": args.array}, args) for n in names]
        return _report(ws, launched, args)
    if args.shards:
        from clipsim.cli.common import tqdm_progress
        from clipsim.shard_ranges import parse_range

        name = _single(names, "--shards", "dataset")
        emb = embed_dataset(ws, name, shards=parse_range(args.shards), progress=tqdm_progress(), **opts)
        print(f"{name}: shards {args.shards} embedded ({len(emb.shards)} shards done so far); finish with "
              f"`python -m clipsim embed --workspace {ws.root} --datasets {name} --finalize`")
        return 0
    for name in names:
        emb = finalize_embeddings(ws, name)
        print(f"{name}: {emb.count} embeddings of dimension {emb.dim} (complete)")
    return 0

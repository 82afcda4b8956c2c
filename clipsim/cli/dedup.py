"""CLI command `dedup`: SemDeDup deduplication of a set (faiss k-means, exact within clusters), saved as a manifest;
in this process, or as jobs (--backend, --array N: the assignment as a SLURM array of shard ranges)."""
from __future__ import annotations

import argparse
import json
import sys

from clipsim.checks import SCREEN_PRECISIONS
from clipsim.cli.common import DEVICE, NON_NEGATIVE, POSITIVE, command, name_type, tqdm_progress
from clipsim.errors import ClipsimError
from clipsim.workspace import Workspace


def _dedup_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="web", type=name_type("dataset"), help="the set to deduplicate (default: web)")
    p.add_argument("--name", required=True, type=name_type("manifest"), help="manifest name (saved under W/manifests/NAME)")
    p.add_argument("--clusters", type=POSITIVE, help="k-means clusters (default: 50,000, or n // 500 for smaller sets)")
    p.add_argument("--eps", type=float, help="remove a sample whose similarity to an earlier member of its cluster "
                                             "exceeds 1 - EPS (default: the workspace's, else the study's 0.124)")
    p.add_argument("--keep", choices=["hard", "easy", "random"], default="hard",
                   help="which member of a duplicate group survives (SemDeDup's which_to_keep; default hard)")
    p.add_argument("--seed", type=NON_NEGATIVE, help="k-means seed and the seed of --keep random (default 1234)")
    p.add_argument("--niter", type=POSITIVE, help="k-means iterations (default 20)")
    p.add_argument("--sample", type=POSITIVE, help="k-means training rows (default: 256 per cluster)")
    p.add_argument("--exact-global", action="store_true",
                   help="also find every exact eps-duplicate pair of the whole set and report how many the clustering "
                        "split across clusters (O(n^2): for sets up to a few million rows)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing manifest of that name")
    p.add_argument("--precision", default="auto", choices=SCREEN_PRECISIONS)
    p.add_argument("--device", default="auto", type=DEVICE, help="auto (GPU when available), cpu or cuda")
    p.add_argument("--backend", choices=["local", "slurm"], help="run as jobs on this backend (default: in this process)")
    p.add_argument("--array", type=POSITIVE, metavar="N", help="assign shard ranges in N jobs (a SLURM array with --backend "
                                                          "slurm), after a centroids job and before the rest")
    p.add_argument("--wait", action="store_true", help="with --backend/--array: wait for the jobs, print the result")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")


def _options(args: argparse.Namespace):
    from clipsim.dedup.pipeline import DedupOptions

    given = {k: getattr(args, k) for k in ("clusters", "eps", "seed", "niter", "sample") if getattr(args, k) is not None}
    return DedupOptions(args.dataset, keep=args.keep, exact_global=args.exact_global, name=args.name,
                        overwrite=args.overwrite, precision=args.precision, device=args.device, **given)


def _print(out: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(out, indent=2, sort_keys=True))
        return
    print(f"{out['web']}: {out['removed']:,} of {out['removed'] + out['kept']:,} samples removed ({out['share']:.2%}) at "
          f"eps={out['eps']:g} with {out['clusters']} clusters (keep {out['keep']}; largest cluster "
          f"{out['largest_cluster']:,}); manifest {out['manifest']}")
    if "global" in out:
        g = out["global"]
        print(f"exact global eps-pairs: {g['pairs']:,}; within one cluster {g['same_cluster']:,}, split across clusters "
              f"{g['split']:,}: recall of the clustering {g['recall']:.4f}")


@command("dedup", "SemDeDup: spherical k-means (faiss), exact duplicates within clusters, saved as a manifest", _dedup_args)
def cmd_dedup(args: argparse.Namespace) -> int:
    from clipsim.dedup.pipeline import launch_dedup, run_dedup

    ws = Workspace.open(args.workspace)
    opts = _options(args)
    try:
        if args.backend or args.array:
            from clipsim import jobs

            launched = launch_dedup(ws, opts, args.array, args.backend)
            for job in launched:  # with --json on stderr, so stdout is the JSON alone
                print(f"queued {job.kind} job {job.id}" + (f" after {job.depends_on}" if job.depends_on else ""),
                      file=sys.stderr if args.json else sys.stdout)
            if not args.wait:
                return 0
            last = jobs.wait(ws, launched[-1].id)
            if last.state != "done":
                print(f"{last.kind} job {last.id} {last.state}: {last.error or ''}")
                return 1
            _print(last.result, args.json)
            return 0
        _print(run_dedup(ws, opts, progress=None if args.json else tqdm_progress()), args.json)
    except ValueError as err:
        raise ClipsimError(str(err)) from err
    return 0

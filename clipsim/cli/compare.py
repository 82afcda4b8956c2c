"""CLI commands `chain` (queue prune -> train -> evaluate for a pruned set, its random control and the full web set,
N seeds each: what the Runs page's button queues) and `compare` (paired bootstrap of two models per test set)."""
from __future__ import annotations

import argparse
import json

from clipsim.cli.common import command, csv_list
from clipsim.errors import ClipsimError
from clipsim.workspace import Workspace


def _chain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rule", default="similarity-gap", help="pruning rule of a new manifest (default similarity-gap)")
    p.add_argument("--manifest", help="train on this manifest (made by --rule when it does not exist)")
    p.add_argument("--tests", help="comma-separated test sets the rule looks at (default: all)")
    for name in ("delta", "tau", "keep"):
        p.add_argument(f"--{name}", type=float, help=f"the rule's {name}")
    p.add_argument("--control", action="store_true", help="also a random control of the same size")
    p.add_argument("--full", action="store_true", help="also the full web set")
    p.add_argument("--seeds", type=int, default=1, help="train every variant N times (seeds preset seed + 0..N-1)")
    p.add_argument("--preset", default="demo", help="training preset")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="preset override, e.g. --set epochs=1")
    p.add_argument("--wait", action="store_true", help="block until every job ends, then print the comparison")
    p.add_argument("--backend", help="job backend: local or slurm (default: the workspace's)")


@command("chain", "queue prune -> train -> evaluate: pruned set, random control, full web set, N seeds each",
         _chain_args)
def cmd_chain(args: argparse.Namespace) -> int:
    from clipsim import jobs
    from clipsim.cli.runs import parse_overrides
    from clipsim.runs.pipeline import queue_pipeline

    ws = Workspace.open(args.workspace)
    params = {k: getattr(args, k) for k in ("delta", "tau", "keep") if getattr(args, k) is not None}
    queued = queue_pipeline(ws, manifest=args.manifest, rule=args.rule, rule_params=params, tests=csv_list(args.tests),
                            preset=args.preset, overrides=parse_overrides(args.set), random_control=args.control,
                            include_full=args.full, backend=args.backend, seeds=args.seeds)
    for job in queued:
        print(f"{job.kind} job {job.id}: {job.state}" + (f" (after {job.depends_on})" if job.depends_on else ""))
    if not args.wait:
        return 0
    failed = [j for j in (jobs.wait(ws, job.id) for job in queued) if j.state != "done"]
    for job in failed:
        print(f"{job.kind} job {job.id} {job.state}: {job.error or ''}")
    if not failed:
        print(_comparison_text(ws, None, None, None))
    return 1 if failed else 0


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--a", help="model label, e.g. similarity-gap-all (default: every pruned model ...)")
    p.add_argument("--b", help="model label, e.g. 'similarity-gap-all (random control)' (... against its control)")
    p.add_argument("--tests", help="comma-separated test sets (default: all both were evaluated on)")
    p.add_argument("--json", action="store_true", help="one JSON row per (pair, test set)")


def comparison_frame(ws, a: str | None, b: str | None, tests: list[str] | None):
    """The compare command's rows: the given pair, or every pruned model against its random control."""
    import pandas as pd

    from clipsim.runs.compare import COMPARE_COLUMNS, compare_models, control_pairs
    from clipsim.runs.results import results_frame

    frame = results_frame(ws)
    if (a is None) != (b is None):
        raise ClipsimError("give both --a and --b, or neither (then every pruned model is compared with its control)")
    pairs = [(a, b)] if a is not None else control_pairs(frame)
    parts = [compare_models(ws, frame, x, y, tests) for x, y in pairs]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COMPARE_COLUMNS)


def _comparison_text(ws, a, b, tests) -> str:
    table = comparison_frame(ws, a, b, tests)
    if table.empty:
        return "no pair of evaluated models to compare (train a pruned set with --control first)"
    shown = table.copy()
    for column, fmt in (("accuracy_a", "{:.4f}"), ("accuracy_b", "{:.4f}"), ("diff", "{:+.4f}"),
                        ("ci_low", "{:+.4f}"), ("ci_high", "{:+.4f}"), ("p_value", "{:.4f}")):
        shown[column] = shown[column].map(fmt.format)
    return shown.to_string(index=False)


@command("compare", "paired bootstrap of two models on each test set: accuracy difference, 95% interval, p-value",
         _compare_args)
def cmd_compare(args: argparse.Namespace) -> int:
    ws = Workspace.open(args.workspace)
    if args.json:
        table = comparison_frame(ws, args.a, args.b, csv_list(args.tests))
        print(json.dumps(table.to_dict(orient="records"), indent=2))
        return 0
    print(_comparison_text(ws, args.a, args.b, csv_list(args.tests)))
    return 0

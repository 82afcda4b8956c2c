"""CLI command `compare`: the paired bootstrap of two models per test set (by default every pruned model against its
random control): accuracy difference, 95% interval, p-value."""
from __future__ import annotations

import argparse
import json

from clipsim.cli.common import command, csv_list
from clipsim.errors import ClipsimError
from clipsim.workspace import Workspace


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--a", help="model label, e.g. similarity-gap-all (default: every pruned model ...)")
    p.add_argument("--b", help="model label, e.g. 'similarity-gap-all (random control)' (... against its control)")
    p.add_argument("--tests", help="comma-separated test sets (default: all both were evaluated on)")
    p.add_argument("--json", action="store_true", help="one JSON row per (pair, test set)")


def comparison_frame(ws, a: str | None, b: str | None, tests: list[str] | None):
    """The compare command's rows: the given pair, or every pruned model against its random control."""
    from clipsim.runs.compare import compare_pairs
    from clipsim.runs.results import results_frame

    if (a is None) != (b is None):
        raise ClipsimError("give both --a and --b, or neither (then every pruned model is compared with its control)")
    return compare_pairs(ws, results_frame(ws), None if a is None else [(a, b)], tests)


def comparison_text(ws, a: str | None = None, b: str | None = None, tests: list[str] | None = None) -> str:
    """comparison_frame as an aligned text table (what `compare` and `chain --wait` print)."""
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
    print(comparison_text(ws, args.a, args.b, csv_list(args.tests)))
    return 0

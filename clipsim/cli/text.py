"""CLI command `text-search`: the exact top-k images of a set for a text prompt, embedded with the similarity
model's own text tower."""
from __future__ import annotations

import argparse
import json

from clipsim.checks import SCREEN_PRECISIONS
from clipsim.cli.common import DEVICE, POSITIVE, command, name_type
from clipsim.workspace import Workspace


def _text_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="web", type=name_type("dataset"), help="the set to search (default: web)")
    p.add_argument("--query", required=True, action="append",
                   help="text prompt, e.g. 'a sketch of a star' (repeat for several; one scan serves all)")
    p.add_argument("--k", type=POSITIVE, default=50, help="results per query (default 50)")
    p.add_argument("--precision", default="auto", choices=SCREEN_PRECISIONS)
    p.add_argument("--device", default="auto", type=DEVICE)
    p.add_argument("--json", action="store_true", help="print the results as JSON records")


@command("text-search", "exact top-k images of a set for a text prompt (the similarity model's text tower)", _text_args)
def cmd_text_search(args: argparse.Namespace) -> int:
    from clipsim.search.text import text_search

    frame = text_search(Workspace.open(args.workspace), args.dataset, args.query, k=args.k, precision=args.precision,
                        device=args.device)
    if args.json:
        records = frame.drop(columns="row").to_dict(orient="records")
        print(json.dumps([{**r, "similarity": float(r["similarity"])} for r in records], indent=2))
        return 0
    for query, rows in frame.groupby("query", sort=False):
        print(f"{query!r}: top {len(rows)} of {args.dataset}")
        print(rows[["rank", "key", "similarity", "caption"]].to_string(index=False))
    return 0

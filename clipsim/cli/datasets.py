"""CLI for real studies' data: `register-benchmark` (ImageNet family, ObjectNet) and `metadata` (DuckDB queries).

Imported by clipsim.cli when present; each command is one library call.
"""
from __future__ import annotations

import argparse
import json

from clipsim import checks
from clipsim.cli.common import NON_NEGATIVE, POSITIVE, arg_type, command, csv_list, name_type, tqdm_progress
from clipsim.data.benchmarks import DEFAULT_CHECK_IMAGES, KINDS, register_report, validate_benchmark
from clipsim.workspace import Workspace


def _benchmark_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=list(KINDS), required=True)
    p.add_argument("--root", required=True, help="the benchmark folder as downloaded (class folders inside; "
                                                 "ObjectNet: objectnet-1.0 holding images/ and mappings/)")
    p.add_argument("--name", type=name_type("dataset"), help="dataset name (default: the kind)")
    p.add_argument("--check-images", default=str(DEFAULT_CHECK_IMAGES), type=_check_images,
                   help=f"decode this many random images, or 'all' (default {DEFAULT_CHECK_IMAGES})")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="seed of the random image sample")
    p.add_argument("--json", action="store_true", help="print the validation report as JSON")


def _check_images(text: str) -> str:
    """--check-images: 'all' or a whole number >= 0 (kept as text; the command converts it)."""
    return text if text == "all" else str(arg_type(checks.check_int, minimum=0)(text))


@command("register-benchmark", "validate an ImageNet-family benchmark or ObjectNet folder and register it",
         _benchmark_args)
def cmd_register_benchmark(args: argparse.Namespace) -> int:
    check = args.check_images if args.check_images == "all" else int(args.check_images)
    progress = tqdm_progress() if check == "all" and not args.json else None
    report = validate_benchmark(args.kind, args.root, check, args.seed, progress)
    name = None
    if report.ok:
        name = register_report(Workspace.create(args.workspace), report, args.name).name
    if args.json:
        print(json.dumps({**report.to_dict(), "registered": name}, indent=2))
    else:
        print(report.text())
        print(f"registered {name} ({KINDS[args.kind].role} set, {report.images_found:,} images)" if name
              else "not registered: fix the errors above and run the command again")
    return 0 if name else 2


def _metadata_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, type=name_type("dataset"))
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--keys", help="comma-separated sample keys")
    what.add_argument("--ids", help="comma-separated global row ids")
    what.add_argument("--search", help="captions containing this text (case-insensitive)")
    what.add_argument("--count", action="store_true", help="number of samples (with --contains: matching ones)")
    p.add_argument("--contains", help="with --count: count captions containing this text")
    p.add_argument("--columns", default="key,caption,url", help="comma-separated metadata columns")
    p.add_argument("--limit", type=POSITIVE, default=50, help="with --search: at most this many rows")
    p.add_argument("--json", action="store_true", help="print JSON records")


@command("metadata", "look up captions, urls and image locations by key, row id or caption text", _metadata_args)
def cmd_metadata(args: argparse.Namespace) -> int:
    from clipsim import metadata

    ws = Workspace.open(args.workspace)
    ids = checks.parse_ids(args.ids) if args.ids is not None else None  # every argument checked before the lookup
    if args.count:
        print(metadata.count(ws, args.dataset, args.contains))
        return 0
    columns = csv_list(args.columns) or ["key"]
    if args.search is not None:
        frame = metadata.search_captions(ws, args.dataset, args.search, args.limit, columns)
    elif args.keys is not None:
        frame = metadata.lookup(ws, args.dataset, keys=csv_list(args.keys) or [], columns=columns)
    else:
        frame = metadata.lookup(ws, args.dataset, ids=ids, columns=columns)
    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    print(json.dumps(records, indent=2, default=str) if args.json else frame.to_string(index=False))
    return 0

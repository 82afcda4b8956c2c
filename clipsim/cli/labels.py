"""CLI commands `label` (simulate labels from the demo's ground truth, import or export label CSVs), `calibrate`
(precision and recall of a similarity threshold per tau) and `tags` (list, add, export tagged images)."""
from __future__ import annotations

import argparse
import json
import sys

from clipsim.cli.common import command, csv_list
from clipsim.errors import ClipsimError
from clipsim.workspace import Workspace


def _label_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--test", help="test set whose (image, nearest neighbour) pairs are labelled")
    p.add_argument("--train", default="web", help="the train set of the neighbours (default web)")
    p.add_argument("--simulate-from-planted", action="store_true",
                   help="fill labels from the demo's planted ground truth (simulated, for tests and demos)")
    p.add_argument("--n", type=int, default=200, help="--simulate-from-planted: pairs to label")
    p.add_argument("--tau", type=float, help="threshold the sampler concentrates on (default: 90th percentile of s)")
    p.add_argument("--import", dest="import_csv", metavar="CSV", help="store the labels of a CSV file")
    p.add_argument("--export", dest="export_csv", metavar="CSV", help="write the stored labels to a CSV file")


@command("label", "label (test image, nearest web neighbour) pairs: simulate from the demo, import or export CSV",
         _label_args)
def cmd_label(args: argparse.Namespace) -> int:
    from clipsim.labels import exchange, pairs

    ws = Workspace.open(args.workspace)
    actions = [a for a in ("simulate_from_planted", "import_csv", "export_csv") if getattr(args, a)]
    if len(actions) != 1:
        raise ClipsimError("give exactly one of --simulate-from-planted, --import CSV, --export CSV")
    if args.import_csv:
        print(f"stored {exchange.import_labels_csv(ws, args.import_csv)} labels from {args.import_csv}")
    elif args.export_csv:
        count = exchange.export_labels_csv(ws, args.export_csv, args.test, args.train if args.test else None)
        print(f"wrote {count} labels to {args.export_csv}")
    else:
        if not args.test:
            raise ClipsimError("--simulate-from-planted needs --test (a test set of the demo, e.g. sketch)")
        tau = args.tau if args.tau is not None else pairs.default_tau(ws, args.test, args.train)
        rows = exchange.simulate_from_planted(ws, args.test, args.train, args.n, tau)
        counts = rows["label"].value_counts().to_dict()
        print(f"SIMULATED {len(rows)} labels of {args.test} vs {args.train} from the demo's planted ground truth "
              f"(labeller {pairs.SIMULATED!r}; not human judgements), sampler centred on tau={tau}: {counts}")
    return 0


def _calibrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--test", required=True, help="test set")
    p.add_argument("--train", default="web", help="train set (default web)")
    p.add_argument("--target-precision", type=float, default=0.95, help="precision the threshold should reach")
    p.add_argument("--taus", help="comma-separated thresholds (default: 41 across the similarity range)")
    p.add_argument("--json", action="store_true", help="one JSON row per tau")


@command("calibrate", "precision and recall of 's > tau means (near-)duplicate' per tau, from labelled pairs",
         _calibrate_args)
def cmd_calibrate(args: argparse.Namespace) -> int:
    from clipsim.labels import calibrate

    ws = Workspace.open(args.workspace)
    taus = [float(t) for t in csv_list(args.taus)] if args.taus else None
    result = calibrate(ws, args.test, args.train, taus, args.target_precision)
    note = (f"{result.used} labelled pairs used ({result.simulated} simulated), {result.outside} labelled outside "
            f"the sample, {result.other} not nearest-neighbour pairs, {result.stale} under another model; tau "
            f"reaching precision {result.target_precision}: {result.tau_target} (interval), "
            f"{result.tau_target_estimate} (estimate)")
    if args.json:
        print(json.dumps(result.table.to_dict(orient="records"), indent=2))
        print(note, file=sys.stderr)
        return 0
    print(result.table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(note)
    return 0


def _tags_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "add", "remove", "export"])
    p.add_argument("--tag", help="tag name")
    p.add_argument("--dataset", help="add/remove: the dataset of the keys; list: only this dataset")
    p.add_argument("--keys", help="add/remove: comma-separated keys")
    p.add_argument("--format", choices=["csv", "parquet", "manifest"], help="export: file format, or a manifest")
    p.add_argument("--out", help="export csv/parquet: output file")
    p.add_argument("--web", default="web", help="export manifest: the train set whose tagged samples are removed")
    p.add_argument("--name", help="export manifest: manifest name (default tag-<tag>)")
    p.add_argument("--overwrite", action="store_true", help="export manifest: replace a manifest of that name")


@command("tags", "image tags: list, add, remove, export as CSV/parquet or as a manifest that removes them", _tags_args)
def cmd_tags(args: argparse.Namespace) -> int:
    from clipsim.labels import tags

    ws = Workspace.open(args.workspace)
    if args.action == "list":
        frame = tags.read_tags(ws, args.tag, args.dataset)
        counts = frame.groupby(["tag", "dataset"]).size().rename("images").reset_index()
        print(counts.to_string(index=False) if len(counts) else "no tagged images")
        return 0
    if not args.tag:
        raise ClipsimError(f"tags {args.action} needs --tag NAME")
    if args.action in ("add", "remove"):
        if not args.dataset or not args.keys:
            raise ClipsimError(f"tags {args.action} needs --dataset NAME and --keys K1,K2,...")
        fn = tags.add_tags if args.action == "add" else tags.remove_tags
        print(f"{args.action}: {fn(ws, args.dataset, csv_list(args.keys), args.tag)} images, tag {args.tag!r}")
    elif args.format == "manifest":
        manifest = tags.tag_manifest(ws, args.tag, args.web, args.name, args.overwrite)
        print(f"manifest {manifest.name!r} removes {manifest.removed_count} of {args.web} "
              f"(train on it: python -m clipsim train --workspace {ws.root} --manifest {manifest.name})")
    else:
        if not args.out:
            raise ClipsimError("tags export needs --out FILE (or --format manifest)")
        print(f"wrote {tags.export_tags(ws, args.tag, args.out, args.format)} tagged images to {args.out}")
    return 0

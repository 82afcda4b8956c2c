"""Core commands: init, demo, register, embed, search, status."""
from __future__ import annotations

import argparse
import json

from clipsim import checks, fileio
from clipsim.cli.common import DEVICE, NON_NEGATIVE, POSITIVE, command, csv_list, name_type, tqdm_progress
from clipsim.names import check_writable
from clipsim.status import workspace_status
from clipsim.workspace import Workspace

CLASSES_FILE_BYTES = 16 << 20  # 21k ImageNet class names take ~0.5 MB


def _no_args(p: argparse.ArgumentParser) -> None:
    return None


@command("init", "create an empty workspace", _no_args)
def cmd_init(args: argparse.Namespace) -> int:
    ws = Workspace.create(args.workspace)
    print(f"workspace ready at {ws.root.resolve()}")
    return 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="world seed (same seed, same demo)")
    p.add_argument("--size", choices=["full", "small"], default="full", help="'small' builds in about a minute")
    p.add_argument("--workers", type=POSITIVE, default=2, help="processes for drawing and decoding")


@command("demo", "build the embedded demo workspace (offline, CPU, a few minutes)", _demo_args)
def cmd_demo(args: argparse.Namespace) -> int:
    from clipsim.data.demo.build import build_demo

    ws = build_demo(args.workspace, seed=args.seed, size=args.size, workers=args.workers, progress=tqdm_progress())
    print(ws.datasets().to_string(index=False))
    return 0


def _register_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True, type=name_type("dataset"))
    p.add_argument("--role", choices=["train", "test"], required=True)
    p.add_argument("--kind", choices=["folder", "table", "wds", "embeddings"], required=True)
    p.add_argument("--source", required=True, help="image folder, table file, tar folder/glob, or clip-retrieval folder")
    p.add_argument("--classes", help="text file with one class name per line (label i = line i); "
                                     "default for folders: the sorted sub-folder names")


@command("register", "register a dataset (image folder, table, webdataset tars, clip-retrieval embeddings)", _register_args)
def cmd_register(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clipsim.data.sources import open_source

    check_writable(f"register dataset {args.name!r}")  # before the source folder is walked for class names
    ws = Workspace.create(args.workspace)
    classes = None
    if args.classes:
        text = fileio.read_bounded(args.classes, CLASSES_FILE_BYTES, "classes file").decode("utf-8", "replace")
        classes = [line.strip() for line in text.splitlines() if line.strip()]
    elif args.kind == "folder":
        classes = open_source("folder", args.source).classes or None
    ds = ws.register_dataset(args.name, args.role, Path(args.source).resolve(), args.kind, classes=classes)
    print(f"registered {ds.name} ({ds.role}, {ds.kind}, {len(ds.classes or [])} classes) from {ds.source}")
    return 0


def _embed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--datasets", help="comma-separated (default: all registered)")
    p.add_argument("--model", help="open_clip architecture or JSON config path "
                                   "(default: the workspace's similarity model, else ViT-B-16-plus-240)")
    p.add_argument("--pretrained", help="pretrained tag from the local cache or a checkpoint path "
                                        "(default: the workspace's, else laion400m_e32)")
    p.add_argument("--batch-size", type=POSITIVE, default=256)
    p.add_argument("--workers", type=NON_NEGATIVE, default=2)
    p.add_argument("--device", type=DEVICE, default="auto")
    p.add_argument("--force", action="store_true", help="discard existing shards and re-embed")
    from clipsim.cli.scale import add_scale_args

    add_scale_args(p, "finalize", "check that every shard is embedded and write the summary (after --shards runs)")


@command("embed", "embed registered datasets into clip-retrieval shards (resumable)", _embed_args)
def cmd_embed(args: argparse.Namespace) -> int:
    from clipsim.embed import DEFAULT_MODEL, DEFAULT_PRETRAINED, embed_dataset

    ws = Workspace.open(args.workspace)
    saved = ws.settings.get("similarity_model", {})
    model = args.model or (str(ws.resolve(saved["model"])) if "model" in saved else DEFAULT_MODEL)
    pretrained = args.pretrained or (str(ws.resolve(saved["pretrained"])) if "pretrained" in saved else DEFAULT_PRETRAINED)
    names = checks.check_datasets(ws, csv_list(args.datasets) or ws.dataset_names(),
                                  "--datasets" if args.datasets else "datasets")
    checks.check_embed_args(args.batch_size, args.workers, args.device)
    if args.shards or args.finalize or args.array:
        from clipsim.cli.scale import embed_scaled

        return embed_scaled(ws, args, names, model, pretrained)
    for name in names:
        emb = embed_dataset(ws, name, model=model, pretrained=pretrained, batch_size=args.batch_size,
                            workers=args.workers, device=args.device, progress=tqdm_progress(), force=args.force)
        print(f"{name}: {emb.count} embeddings of dimension {emb.dim} ({ws.embedding_state(name).label})")
    return 0


def _search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", help="comma-separated train sets (default: all)")
    p.add_argument("--tests", help="comma-separated test sets (default: all)")
    p.add_argument("--k", type=POSITIVE, default=10)
    p.add_argument("--reference", help="train set giving s_ref(t) for similarity-gap margins "
                                       "(default: the workspace's reference setting)")
    p.add_argument("--precision", default="auto", choices=checks.SCREEN_PRECISIONS)
    p.add_argument("--device", type=DEVICE, default="auto")
    p.add_argument("--block-rows", type=POSITIVE, default=65536)
    p.add_argument("--force", action="store_true")
    from clipsim.cli.scale import add_scale_args

    add_scale_args(p, "merge", "merge the parts made by --shards runs into the final results")


@command("search", "exact nearest neighbours and per-sample statistics (resumable)", _search_args)
def cmd_search(args: argparse.Namespace) -> int:
    from clipsim.search import search

    ws = Workspace.open(args.workspace)
    reference = args.reference or ws.settings.get("reference")
    trains = csv_list(args.train) or ws.dataset_names("train")
    if reference in trains:  # margins against the reference need its own search first
        trains = [reference] + [t for t in trains if t != reference]
    tests = csv_list(args.tests) or ws.dataset_names("test")
    checks.check_datasets(ws, trains, "--train" if args.train else "train sets")
    checks.check_datasets(ws, tests, "--tests" if args.tests else "test sets")
    if reference is not None:
        checks.check_datasets(ws, [reference], "--reference" if args.reference else "settings.reference")
    checks.check_search_args(args.k, args.block_rows, args.precision, args.device)
    if args.shards or args.merge or args.array:
        from clipsim.cli.scale import search_scaled

        return search_scaled(ws, args, trains, tests, reference)
    for train in trains:
        results = search(ws, train, tests, k=args.k, reference=reference, precision=args.precision,
                         device=args.device, block_rows=args.block_rows, force=args.force, progress=tqdm_progress())
        for test, res in results.items():
            print(f"{test} vs {train}: median s_{train}(t) = {float(res.nn_similarity().median()):.4f}")
    return 0


def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


@command("status", "datasets and artifacts of a workspace", _status_args)
def cmd_status(args: argparse.Namespace) -> int:
    ws = Workspace.open(args.workspace)
    status = workspace_status(ws)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
        return 0
    print(f"workspace {status['workspace']}")
    print(ws.datasets().to_string(index=False))
    for s in status["searches"]:
        flag = "STALE: " + "; ".join(s["stale"]) if s["stale"] else "fresh"
        print(f"search {s['test']} vs {s['train']} (k={s['k']}): {flag}")
    for s in status["searches_interrupted"]:
        print(f"search {','.join(s['tests'])} vs {s['train']} (k={s['k']}): {s['state']}; run the same search to resume")
    for m in status["manifests"]:
        print(f"manifest {m['name']} ({m['rule']}): kept {m['kept']:,}, removed {m['removed']:,}"
              + (" STALE" if m["stale"] else ""))
    if status["jobs"]["counts"]:
        print("jobs " + ", ".join(f"{n} {state}" for state, n in sorted(status["jobs"]["counts"].items())))
    for run, n in status["results"].items():
        print(f"results {run}: {n} rows")
    for m in status["maps"]:
        print(f"map {m['name']}" + (" STALE" if m["stale"] else ""))
    return 0

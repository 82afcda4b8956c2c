"""CLI commands `train`, `evaluate` (queue the same jobs as the Runs page) and `results` (print result rows)."""
from __future__ import annotations

import argparse

from clipsim.cli.common import DEVICE, NON_NEGATIVE, SECONDS, command, csv_list, name_type, print_job
from clipsim.errors import ClipsimError
from clipsim.workspace import Workspace


def _overrides(pairs: list[str] | None) -> dict:
    """['epochs=1', 'lr=5e-4'] -> {'epochs': '1', 'lr': '5e-4'} (presets.get_preset converts the types)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ClipsimError(f"--set {pair!r} must look like FIELD=VALUE, e.g. --set epochs=1")
        out[key.strip()] = value.strip()
    return out


def _wait_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true", help="block until the job ends and print its result")
    p.add_argument("--timeout", type=SECONDS, help="--wait: give up after this many seconds (the job keeps running)")
    p.add_argument("--backend", help="job backend: local or slurm (default: the workspace's)")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", default="full", type=name_type("manifest"),
                   help="manifest name, or 'full' for the whole web set")
    p.add_argument("--web", type=name_type("dataset"),
                   help="the web train set (default: the first train set that is not the reference)")
    p.add_argument("--base", type=name_type("manifest"), help="start from this manifest (e.g. a dedup manifest): "
                   "--manifest full trains on it, other manifests must have been cut from it")
    p.add_argument("--preset", default="demo", help="training preset: demo, paper or one from settings.presets")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="preset override, e.g. --set epochs=1")
    p.add_argument("--control", choices=["random"], help="train on a random subset as large as the manifest")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="seed of the random control")
    _wait_args(p)


@command("train", "train CLIP (open_clip_train) on a manifest's kept samples, as a job", _train_args)
def cmd_train(args: argparse.Namespace) -> int:
    from clipsim import jobs
    from clipsim.runs.pipeline import train_manifest, train_resources

    ws = Workspace.open(args.workspace)
    web = ws.web_set(args.web)
    ws.embeddings(web)  # an incomplete or unreadable web set is refused here, before a job is queued
    overrides = _overrides(args.set)
    manifest = train_manifest(ws, args.manifest, args.base)
    params = {"manifest": manifest, "web": web, "preset": args.preset, "overrides": overrides}
    if args.control:
        params.update(control=args.control, seed=args.seed)
    job = jobs.launch(ws, "train", params, backend=args.backend, resources=train_resources(ws, args.preset, overrides))
    return print_job(ws, job, args.wait, args.timeout)


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="training run id (the train job's id) or run folder")
    p.add_argument("--tests", help="comma-separated test sets (default: all)")
    p.add_argument("--templates", help="'openai' (80 ImageNet prompts) or 'demo' (default: by workspace)")
    p.add_argument("--device", default="auto", type=DEVICE, help="auto (cuda if available), cpu or cuda")
    _wait_args(p)


@command("evaluate", "zero-shot top-1 of a training run on the test sets, as a job", _evaluate_args)
def cmd_evaluate(args: argparse.Namespace) -> int:
    from clipsim import jobs

    ws = Workspace.open(args.workspace)
    params = {"run": args.run, "device": args.device}
    if args.tests:
        params["tests"] = csv_list(args.tests)
    if args.templates:
        params["templates"] = args.templates
    return print_job(ws, jobs.launch(ws, "evaluate", params, backend=args.backend), args.wait, args.timeout)


def _results_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output (all columns)")


@command("results", "zero-shot result rows: run, manifest, test set, accuracy, images", _results_args)
def cmd_results(args: argparse.Namespace) -> int:
    from clipsim.runs.results import results_frame

    frame = results_frame(Workspace.open(args.workspace))
    if args.json:
        print(frame.to_json(orient="records", indent=2))
        return 0
    if frame.empty:
        print(f"no results yet in {args.workspace}; train and evaluate first "
              f"(python -m clipsim train --workspace {args.workspace} --manifest full --wait)")
        return 0
    shown = frame[["run", "manifest", "test", "accuracy", "n"]].copy()
    shown["accuracy"] = shown["accuracy"].map(lambda a: f"{a:.4f}")
    print(shown.to_string(index=False))
    return 0

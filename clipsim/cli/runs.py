"""CLI commands `train`, `chain`, `evaluate` (queue the same jobs as the Runs page) and `results` (print result
rows)."""
from __future__ import annotations

import argparse

from clipsim.cli.common import DEVICE, NON_NEGATIVE, POSITIVE, SECONDS, command, csv_list, name_type, print_job
from clipsim.errors import ClipsimError
from clipsim.prune import RULES
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
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="seed of the random control's subset")
    p.add_argument("--seeds", type=POSITIVE, default=1,
                   help="train N runs with training seeds preset seed + 0..N-1 (replicates for error bars)")
    _wait_args(p)


@command("train", "train CLIP (open_clip_train) on a manifest's kept samples, as a job", _train_args)
def cmd_train(args: argparse.Namespace) -> int:
    from clipsim import jobs
    from clipsim.runs.pipeline import seed_overrides, train_manifest, train_resources

    ws = Workspace.open(args.workspace)
    web = ws.web_set(args.web)
    ws.embeddings(web)  # an incomplete or unreadable web set is refused here, before a job is queued
    manifest = train_manifest(ws, args.manifest, args.base)
    queued = []
    for overrides in seed_overrides(ws, args.preset, _overrides(args.set), args.seeds):
        params = {"manifest": manifest, "web": web, "preset": args.preset, "overrides": overrides}
        if args.control:
            params.update(control=args.control, seed=args.seed)
        queued.append(jobs.launch(ws, "train", params, backend=args.backend,
                                  resources=train_resources(ws, args.preset, overrides)))
    return max(print_job(ws, job, args.wait, args.timeout) for job in queued)


def _chain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rule", default="similarity-gap", choices=RULES, help="pruning rule (default similarity-gap)")
    p.add_argument("--name", type=name_type("manifest"), help="manifest to train on (made by the rule when missing)")
    p.add_argument("--web", help="web train set (default: the first train set that is not the reference)")
    p.add_argument("--reference", help="reference train set for similarity-gap (default: the workspace's)")
    p.add_argument("--base", type=name_type("manifest"), help="start from this manifest (e.g. a dedup manifest): the "
                   "rule prunes what it keeps, the control is drawn from it, --full trains on it")
    p.add_argument("--tests", help="comma-separated test sets the rule looks at (default: all)")
    for flag, kind in (("--tau", float), ("--delta", float), ("--remove-fraction", float), ("--keep", NON_NEGATIVE),
                       ("--keep-fraction", float)):
        p.add_argument(flag, type=kind, help="the rule's cut, as for `prune`")
    p.add_argument("--like", help="random: keep as many samples as this manifest keeps")
    p.add_argument("--seed", type=NON_NEGATIVE, help="random rule: its seed")
    p.add_argument("--control", action="store_true", help="also a random control of the same size")
    p.add_argument("--full", action="store_true", help="also the full web set")
    p.add_argument("--seeds", type=POSITIVE, default=1, help="train every model N times (seeds preset seed + 0..N-1)")
    p.add_argument("--preset", default="demo", help="training preset")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="preset override, e.g. --set epochs=1")
    p.add_argument("--wait", action="store_true", help="block until every job ends, then print the comparison")
    p.add_argument("--backend", help="job backend: local or slurm (default: the workspace's)")


@command("chain", "queue prune -> train -> evaluate: a pruned set, its random control, the full web set; N seeds each",
         _chain_args)
def cmd_chain(args: argparse.Namespace) -> int:
    from clipsim import jobs
    from clipsim.cli.compare import comparison_text
    from clipsim.cli.prune import rule_spec
    from clipsim.runs.pipeline import queue_pipeline

    ws = Workspace.open(args.workspace)
    queued = queue_pipeline(ws, manifest=args.name, spec=rule_spec(args), preset=args.preset,
                            overrides=_overrides(args.set), random_control=args.control, include_full=args.full,
                            web=args.web, backend=args.backend, base=args.base, seeds=args.seeds)
    for job in queued:
        print(f"{job.kind} job {job.id}: {job.state}" + (f" (after {job.depends_on})" if job.depends_on else ""))
    if not args.wait:
        return 0
    failed = [j for j in (jobs.wait(ws, job.id) for job in queued) if j.state != "done"]
    for job in failed:
        print(f"{job.kind} job {job.id} {job.state}: {job.error or ''}")
    if not failed:
        print(comparison_text(ws))
    return 1 if failed else 0


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


@command("results", "zero-shot result rows: run, manifest, seed, test set, accuracy with its 95% bootstrap interval",
         _results_args)
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
    shown = frame[["run", "manifest", "seed", "test", "accuracy", "ci_low", "ci_high", "n"]].copy()
    for column in ("accuracy", "ci_low", "ci_high"):
        shown[column] = shown[column].map(lambda a: f"{a:.4f}")
    print(shown.to_string(index=False))
    return 0

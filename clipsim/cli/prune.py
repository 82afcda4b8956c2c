"""CLI commands `prune` (apply a rule to the web set, save a manifest) and `manifests` (list them)."""
from __future__ import annotations

import argparse
import json

from clipsim.cli.common import command, csv_list, tqdm_progress
from clipsim.errors import ClipsimError
from clipsim.prune import (
    RULES,
    PruneStats,
    canonical_rule,
    rule_far,
    rule_near,
    rule_random,
    rule_similarity_gap,
    rule_threshold,
)
from clipsim.prune.manifest import list_manifests, load_manifest, save_manifest
from clipsim.workspace import Workspace

_CUT_OPTIONS = {"threshold": ("tau", "remove_fraction"), "similarity-gap": ("delta", "remove_fraction"),
                "near": ("keep", "keep_fraction"), "far": ("keep", "keep_fraction"),
                "random": ("keep", "keep_fraction", "like", "seed")}


def _prune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rule", required=True, choices=RULES)
    p.add_argument("--name", required=True, help="manifest name (saved under W/manifests/NAME)")
    p.add_argument("--web", help="web train set (default: the only train set other than the reference)")
    p.add_argument("--reference", help="reference train set for similarity-gap (default: the workspace's reference)")
    p.add_argument("--tests", help="comma-separated test sets (default: all)")
    cut = p.add_mutually_exclusive_group()
    cut.add_argument("--tau", type=float, help="threshold: remove x if max_t cos(x, t) > TAU")
    cut.add_argument("--delta", type=float, help="similarity-gap: remove x if some cos(x, t) > s_ref(t) + DELTA (default 0)")
    cut.add_argument("--remove-fraction", type=float, help="threshold / similarity-gap: the cut removing closest to this share")
    cut.add_argument("--keep", type=int, help="near / far / random: samples to keep")
    cut.add_argument("--keep-fraction", type=float, help="near / far / random: share of samples to keep, in (0, 1]")
    cut.add_argument("--like", help="random: keep as many samples as this manifest keeps")
    p.add_argument("--seed", type=int, help="random: seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing manifest of that name")


@command("prune", "prune the web set with an exact rule and save a manifest of kept/removed keys", _prune_args)
def cmd_prune(args: argparse.Namespace) -> int:
    ws = Workspace.open(args.workspace)
    rule = canonical_rule(args.rule)
    given = [o for o in ("tau", "delta", "remove_fraction", "keep", "keep_fraction", "like", "seed")
             if getattr(args, o) is not None]
    wrong = [o for o in given if o not in _CUT_OPTIONS[rule]]
    if wrong:
        flags = ", ".join("--" + o.replace("_", "-") for o in wrong)
        allowed = ", ".join("--" + o.replace("_", "-") for o in _CUT_OPTIONS[rule])
        raise ClipsimError(f"{flags} does not apply to rule {rule!r}; use {allowed}")
    reference = args.reference or ws.settings.get("reference")
    web = args.web or _default_web(ws, reference)
    tests = [] if rule == "random" else csv_list(args.tests) or ws.dataset_names("test")
    try:
        stats = PruneStats.load(ws, web, tests, reference if rule == "similarity-gap" else None)
        params, removed = _apply(ws, rule, stats, args)
        manifest = save_manifest(ws, args.name, rule, params, stats, removed, overwrite=args.overwrite,
                                 progress=tqdm_progress())
    except ValueError as err:
        raise ClipsimError(str(err)) from err
    summary = stats.summary(rule, **{k: v for k, v in params.items() if k in ("tau", "delta", "keep")})
    if rule == "random":
        summary = summary[summary["test"] == "combined"]
    print(f"manifest {manifest.name} ({rule}, {', '.join(f'{k}={v}' for k, v in params.items())}) "
          f"saved at {manifest.folder}")
    print(summary.to_string(index=False))
    for test, med in manifest.summary.get("post_prune", {}).items():
        ref = f", s_{reference} {med['median_reference']:.4f}" if "median_reference" in med else ""
        print(f"{test}: median s_{web}(t) {med['median_before']:.4f} -> {med['median_after']:.4f}{ref}")
    return 0


def _apply(ws, rule: str, stats: PruneStats, args: argparse.Namespace):
    """(params, removed mask) for the parsed options."""
    if rule in ("threshold", "similarity-gap"):
        fraction = args.remove_fraction
        if rule == "threshold":
            if args.tau is None and fraction is None:
                raise ClipsimError("rule 'threshold' needs --tau T or --remove-fraction F")
            tau = args.tau if fraction is None else stats.tau_for_fraction(fraction)
            params = {"tau": tau}
            removed = rule_threshold(stats, tau)
        else:
            delta = (args.delta or 0.0) if fraction is None else stats.delta_for_fraction(fraction)
            params = {"delta": delta}
            removed = rule_similarity_gap(stats, delta)
        return ({**params, "remove_fraction": fraction} if fraction is not None else params), removed
    if args.like:
        keep = load_manifest(ws, args.like).kept_count
    elif args.keep is not None or args.keep_fraction is not None:
        keep = args.keep if args.keep is not None else args.keep_fraction
    else:
        raise ClipsimError(f"rule {rule!r} needs --keep N or --keep-fraction F" + (" or --like MANIFEST" if rule == "random" else ""))
    if rule == "random":
        seed = args.seed if args.seed is not None else 0
        params = {"keep": keep, "seed": seed, **({"like": args.like} if args.like else {})}
        return params, rule_random(stats.n, keep, seed)
    return {"keep": keep}, (rule_near if rule == "near" else rule_far)(stats, keep)


def _default_web(ws, reference: str | None) -> str:
    trains = [t for t in ws.dataset_names("train") if t != reference]
    if len(trains) != 1:
        raise ClipsimError(f"cannot tell which train set is the web set (candidates: {trains or 'none'}); pass --web NAME")
    return trains[0]


def _manifests_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


@command("manifests", "list saved pruning manifests", _manifests_args)
def cmd_manifests(args: argparse.Namespace) -> int:
    table = list_manifests(Workspace.open(args.workspace))
    if args.json:
        print(json.dumps(table.to_dict(orient="records"), indent=2, default=str))
    elif table.empty:
        print(f"no manifests yet; create one with `python -m clipsim prune --workspace {args.workspace} ...`")
    else:
        print(table.to_string(index=False))
    return 0

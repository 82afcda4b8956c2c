"""CLI commands `prune` (apply a rule to the web set, save a manifest), `manifests` (list them) and `sort-stats`
(store the sorted statistics the pages memory-map)."""
from __future__ import annotations

import argparse
import json

from clipsim.cli.common import NON_NEGATIVE, command, csv_list, name_type, tqdm_progress
from clipsim.errors import ClipsimError
from clipsim.prune import RULES
from clipsim.prune.manifest import list_manifests, save_rule
from clipsim.prune.rules import RuleSpec, default_name
from clipsim.workspace import Workspace


def _prune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rule", required=True, choices=RULES)
    p.add_argument("--name", type=name_type("manifest"), help="manifest name, saved under W/manifests/NAME (default "
                   "from the rule, e.g. similarity-gap_d0, threshold_t0.85, near_keep0.5)")
    p.add_argument("--web", help="web train set (default: the first train set that is not the reference)")
    p.add_argument("--reference", help="reference train set for similarity-gap (default: the workspace's reference)")
    p.add_argument("--tests", help="comma-separated test sets (default: all)")
    cut = p.add_mutually_exclusive_group()
    cut.add_argument("--tau", type=float, help="threshold: remove x if max_t cos(x, t) > TAU")
    cut.add_argument("--delta", type=float, help="similarity-gap: remove x if some cos(x, t) > s_ref(t) + DELTA (default 0)")
    cut.add_argument("--remove-fraction", type=float, help="threshold / similarity-gap: the cut removing closest to this share")
    cut.add_argument("--keep", type=NON_NEGATIVE, help="near / far / random: samples to keep")
    cut.add_argument("--keep-fraction", type=float, help="near / far / random: share of samples to keep, in (0, 1]")
    cut.add_argument("--like", help="random: keep as many samples as this manifest keeps")
    p.add_argument("--seed", type=NON_NEGATIVE, help="random: seed (default 0)")
    p.add_argument("--base", type=name_type("manifest"),
                   help="prune only the samples this manifest keeps (e.g. a dedup manifest, as the study did)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing manifest of that name")


def rule_spec(args: argparse.Namespace) -> RuleSpec:
    """The RuleSpec of the parsed `prune` options (--keep-fraction F is keep=F, a float).

    Raises:
        ClipsimError: an option that does not apply to the rule, or a missing one (the message names the options).
    """
    keep = args.keep if args.keep is not None else args.keep_fraction
    try:
        return RuleSpec(args.rule, tau=args.tau, delta=args.delta, remove_fraction=args.remove_fraction, keep=keep,
                        like=args.like, seed=args.seed, tests=csv_list(args.tests), web=args.web,
                        reference=args.reference, base=args.base)
    except ValueError as err:
        raise ClipsimError(f"{err} (options: --tau, --delta, --remove-fraction, --keep, --keep-fraction, --like, "
                           "--seed)") from err


@command("prune", "prune the web set with an exact rule and save a manifest of kept/removed keys", _prune_args)
def cmd_prune(args: argparse.Namespace) -> int:
    ws = Workspace.open(args.workspace)
    spec = rule_spec(args)
    try:
        manifest, pruning = save_rule(ws, spec, args.name or default_name(spec), overwrite=args.overwrite,
                                      progress=tqdm_progress())
    except ValueError as err:
        raise ClipsimError(str(err)) from err
    params = ", ".join(f"{k}={v}" for k, v in pruning.params.items())
    print(f"manifest {manifest.name} ({spec.rule}, {params}) saved at {manifest.folder}")
    print(pruning.counts().to_string(index=False))
    web, reference = pruning.stats.web, manifest.summary.get("reference")
    for test, med in manifest.summary.get("post_prune", {}).items():
        ref = f", s_{reference} {med['median_reference']:.4f}" if "median_reference" in med else ""
        print(f"{test}: median s_{web}(t) {med['median_before']:.4f} -> {med['median_after']:.4f}{ref}")
    return 0


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


def _sort_stats_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--web", help="web train set (default: the first train set that is not the reference)")
    p.add_argument("--tests", help="comma-separated test sets (default: every searched one); several also store "
                   "their elementwise maximum")
    p.add_argument("--reference", default="auto", help="reference of the margins (default: the workspace's, when "
                   "every search stored them)")


@command("sort-stats", "store the sorted per-sample statistics (and a combination of test sets) that the pages read",
         _sort_stats_args)
def cmd_sort_stats(args: argparse.Namespace) -> int:
    from clipsim.prune.stored import sort_stats

    out = sort_stats(Workspace.open(args.workspace), args.web, csv_list(args.tests), args.reference, tqdm_progress())
    written = ", ".join(out["written"]) or "none (all current)"
    print(f"sorted statistics of {out['web']} against {', '.join(out['tests'])}: written for {written}")
    if out["combined"]:
        print(f"combined: {out['combined']} ({'written' if out['combined_written'] else 'already current'})")
    return 0

"""CLI commands `map` (queue the UMAP job, as the Map page does) and `report` (write the self-contained HTML report)."""
from __future__ import annotations

import argparse

from clipsim import checks
from clipsim.cli.common import NON_NEGATIVE, POSITIVE, SECONDS, arg_type, command, csv_list, name_type, print_job
from clipsim.workspace import Workspace


def _map_args(p: argparse.ArgumentParser) -> None:
    from clipsim.maps.compute import DEFAULT_NAME, DEFAULT_SAMPLE, UMAP_DEFAULTS

    p.add_argument("--datasets", help="comma-separated datasets to map (default: every embedded one)")
    p.add_argument("--sample", type=POSITIVE, default=DEFAULT_SAMPLE,
                   help="points UMAP is fitted on, stratified by dataset; the rest are placed with transform")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="seed of the sample and of UMAP")
    p.add_argument("--name", default=DEFAULT_NAME, type=name_type("map"), help="map name (stored under W/maps/NAME)")
    p.add_argument("--n-neighbors", type=arg_type(checks.check_int, minimum=2), default=UMAP_DEFAULTS["n_neighbors"],
                   help="UMAP n_neighbors")
    p.add_argument("--min-dist", type=arg_type(checks.check_float, minimum=0.0, maximum=1.0),
                   default=UMAP_DEFAULTS["min_dist"], help="UMAP min_dist")
    p.add_argument("--sample-only", action="store_true", help="store the fitted sample only (no transform)")
    p.add_argument("--force", action="store_true", help="recompute even when an identical fresh map exists")
    p.add_argument("--wait", action="store_true", help="block until the job ends and print its result")
    p.add_argument("--timeout", type=SECONDS, help="--wait: give up after this many seconds (the job keeps running)")
    p.add_argument("--backend", help="job backend: local or slurm (default: the workspace's)")


@command("map", "queue a UMAP map of test and train embeddings (the Map page's job)", _map_args)
def cmd_map(args: argparse.Namespace) -> int:
    from clipsim import jobs
    from clipsim.maps.compute import map_config

    ws = Workspace.open(args.workspace)
    map_config(ws, csv_list(args.datasets), args.sample, args.seed)  # refuses missing or incomplete embeddings now
    params = map_params(csv_list(args.datasets), args.sample, args.seed, args.name, args.n_neighbors, args.min_dist,
                        not args.sample_only, args.force)
    return print_job(ws, jobs.launch(ws, "umap", params, backend=args.backend), args.wait, args.timeout)


def map_params(datasets: list[str] | None, sample: int, seed: int, name: str, n_neighbors: int, min_dist: float,
               place: bool = True, force: bool = False) -> dict:
    """The umap job's params as the CLI and the Map page build them (same settings, same job: launch dedupes).

    Returns:
        A JSON-able dict for jobs.launch(ws, "umap", ...).
    """
    params = {"name": name, "sample": int(sample), "seed": int(seed),
              "umap": {"n_neighbors": int(n_neighbors), "min_dist": float(min_dist)}, "place": bool(place)}
    if datasets:
        params["datasets"] = list(datasets)
    if force:
        params["force"] = True
    return params


def _report_args(p: argparse.ArgumentParser) -> None:
    from clipsim.report import PAIRS, THUMB

    p.add_argument("--out", help="HTML file to write (default: W/reports/report.html)")
    p.add_argument("--pairs", type=NON_NEGATIVE, default=PAIRS, help="closest test/train pairs per test set")
    p.add_argument("--thumb", type=arg_type(checks.check_int, minimum=8, maximum=1024), default=THUMB,
                   help="thumbnail size in pixels")


@command("report", "write the study as one self-contained HTML file (opens offline)", _report_args)
def cmd_report(args: argparse.Namespace) -> int:
    from clipsim.report import write_report

    ws = Workspace.open(args.workspace)
    path = write_report(ws, args.out, pairs=args.pairs, thumb=args.thumb)
    print(f"report written to {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0

"""Command line: `python -m clipsim <command> --workspace DIR ...`; each command is one library call.

Each module of this package registers one group of commands (`clipsim.cli.common.command`); all are imported
here, explicitly.
"""
from __future__ import annotations

import argparse
import logging
import sys

from clipsim.cli import core, datasets, jobs, prune, report, runs  # noqa: F401  (each registers its commands)
from clipsim.cli.common import COMMANDS, csv_list, print_job, tqdm_progress
from clipsim.errors import ClipsimError
from clipsim.workspace import default_root

__all__ = ["build_parser", "csv_list", "main", "print_job", "tqdm_progress"]


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with every registered command."""
    parser = argparse.ArgumentParser(prog="python -m clipsim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, fn) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--workspace", default=str(default_root()),
                       help="workspace folder (default: $CLIPSIM_WORKSPACE or ./workspace)")
        p.add_argument("-v", "--verbose", action="store_true")
        add_args(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 with a one-line message for user errors)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("clipsim").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except ClipsimError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

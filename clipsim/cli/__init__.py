"""Command line: `python -m clipsim <command> --workspace DIR ...`; each command is one library call.

Each module of this package registers one group of commands (`clipsim.cli.common.command`); all are imported
here, explicitly. Bad arguments end in one line and exit code 2; an unexpected failure in one line, exit code 1
and the path of a log holding its traceback (shown in full with -v).
"""
from __future__ import annotations

import argparse
import logging
import sys

# each of these modules registers its commands
from clipsim.cli import compare, core, datasets, dedup, jobs, labels, prune, report, runs, text  # noqa: F401
from clipsim.cli.common import COMMANDS, OneLineParser, csv_list, print_job, save_traceback, tqdm_progress
from clipsim.errors import ClipsimError
from clipsim.workspace import default_root

__all__ = ["build_parser", "csv_list", "main", "print_job", "tqdm_progress"]


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with every registered command (usage errors: one line, exit code 2)."""
    parser = OneLineParser(prog="python -m clipsim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for name, (help_text, add_args, fn) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--workspace", default=str(default_root()),
                       help="workspace folder (default: $CLIPSIM_WORKSPACE or ./workspace)")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging; full tracebacks")
        add_args(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code: 0 done, 2 bad arguments or input (one line naming the value and the fix),
    1 an unexpected failure (one line and the path of the log with its traceback), 130 interrupted."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error (2, already printed)
        return stop.code if isinstance(stop.code, int) else 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("clipsim").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except ClipsimError as err:
        if args.verbose:
            logging.getLogger("clipsim").exception("%s failed", args.command)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as err:  # last resort: one line for the user, the traceback in a file
        if args.verbose:
            raise
        where = save_traceback(args.command, argv)
        print(f"error: {args.command} failed unexpectedly: {type(err).__name__}: {err}. The traceback is in {where}; "
              "re-run with -v to see it here, and please report it", file=sys.stderr)
        return 1

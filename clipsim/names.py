"""Small leaves every layer may use: the one name rule for datasets, manifests, maps and runs, and read-only mode.

A name is a full match of `NAME_PATTERN` and at most `MAX_NAME_LENGTH` characters, so it is always one safe path
component (no '/', no '..', no newline) that fits in a file name with room for suffixes.
"""
from __future__ import annotations

import os
import re

from clipsim.errors import ReadOnlyError, WorkspaceError

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_NAME_RE = re.compile(NAME_PATTERN)
MAX_NAME_LENGTH = 100  # file systems allow 255 bytes per component; names get suffixes (".tmp", "_part3-4", ...)
READ_ONLY_ENV = "CLIPSIM_READ_ONLY"


def check_name(name: object, what: str = "dataset") -> str:
    """Validate a dataset, manifest, map or run name: letters, digits, '_', '.', '-', starting with a letter or
    digit, at most MAX_NAME_LENGTH characters.

    Args:
        name: the proposed name.
        what: what is being named, for the message ('dataset', 'manifest', ...).

    Returns:
        The name, unchanged.

    Raises:
        WorkspaceError: the name breaks the rule (the message names it and shows a valid example).
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise WorkspaceError(f"{what} name {name!r} is not allowed; use letters, digits, '_', '.', '-', starting "
                             f"with a letter or digit (e.g. 'web')")
    if len(name) > MAX_NAME_LENGTH:
        raise WorkspaceError(f"{what} name {name[:40]!r}... is {len(name)} characters long; use at most "
                             f"{MAX_NAME_LENGTH}")
    return name


def is_valid_name(name: object) -> bool:
    """True when `check_name` would accept `name`."""
    try:
        check_name(name)
    except WorkspaceError:
        return False
    return True


def read_only() -> bool:
    """True when the workspace is served read-only (CLIPSIM_READ_ONLY=1, or the app's `[clipsim] read_only`)."""
    return os.environ.get(READ_ONLY_ENV, "").strip().lower() in ("1", "true", "yes")


def check_writable(action: str = "change the workspace") -> None:
    """Raise ReadOnlyError when the workspace is read-only.

    Args:
        action: what was attempted, for the message (e.g. "save manifest 'gap'").
    """
    if read_only():
        raise ReadOnlyError(f"cannot {action}: this workspace is served read-only ({READ_ONLY_ENV}=1); "
                            "nothing was changed")

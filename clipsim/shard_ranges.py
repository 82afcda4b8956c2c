"""Shard ranges [lo, hi) for cluster arrays: parse 'LO:HI', split a dataset's shards into N ranges, name gaps."""
from __future__ import annotations

from clipsim.errors import ClipsimError


def parse_range(text: str) -> tuple[int, int]:
    """'LO:HI' -> (lo, hi), the shard indices lo <= i < hi.

    Raises:
        ClipsimError: not two integers with 0 <= lo <= hi.
    """
    try:
        lo, hi = (int(v) for v in str(text).split(":"))
    except ValueError:
        raise ClipsimError(f"shard range {text!r} must look like LO:HI (shards LO <= i < HI), e.g. 0:8") from None
    return check_range((lo, hi))


def check_range(shards) -> tuple[int, int]:
    """Validate a (lo, hi) pair of shard indices; returns it as ints.

    Raises:
        ClipsimError: not a pair with 0 <= lo <= hi.
    """
    try:
        lo, hi = (int(v) for v in shards)
    except (TypeError, ValueError):
        raise ClipsimError(f"shard range {shards!r} must be a pair (lo, hi) of shard indices") from None
    if not 0 <= lo <= hi:
        raise ClipsimError(f"shard range {lo}:{hi} is reversed or negative; give LO:HI with 0 <= LO <= HI")
    return lo, hi


def split_ranges(indices: list[int], parts: int) -> list[tuple[int, int]]:
    """Cut shard indices into `parts` contiguous [lo, hi) ranges with near-equal shard counts.

    Args:
        indices: shard indices present (any order).
        parts: number of ranges (>= 1); when it exceeds the shard count some ranges are empty.

    Returns:
        `parts` ranges that together cover 0 .. max(indices) + 1 without overlap.

    Raises:
        ClipsimError: parts < 1.
    """
    if parts < 1:
        raise ClipsimError(f"cannot split shards into {parts} ranges; give a number of tasks >= 1")
    ordered = sorted(indices)
    end = ordered[-1] + 1 if ordered else 0
    cuts = [ordered[len(ordered) * i // parts] for i in range(parts)] if ordered else [0] * parts
    cuts[0] = 0
    cuts.append(end)
    return [(cuts[i], cuts[i + 1]) for i in range(parts)]


def index_runs(indices: list[int]) -> list[tuple[int, int]]:
    """Consecutive indices as [lo, hi) ranges: [2, 3, 4, 9] -> [(2, 5), (9, 10)]."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return [(a, b) for a, b in runs]

"""Exact pruning rules over stored per-sample statistics: build `PruneStats` once, threshold it many times.

All rules are pure functions of the exact float32 statistics that `search` stored per web sample x and test
set T: m_T(x) = max_t cos(x, t) and the similarity-gap margin g_T(x) = max_t float32(cos(x, t) - s_R(t)).
Thresholds are compared with these float32 values as real numbers (strict `>`), so counts, masks and a
brute-force evaluation agree exactly.
"""
from __future__ import annotations

import numpy as np

from clipsim.prune.stats import PruneStats, floor32, resolve_keep


# ----- rules: boolean `removed` masks (n,) in web row order ---------------------------------------------
def rule_threshold(stats: PruneStats, tau: float, tests: list[str] | str | None = None) -> np.ndarray:
    """Remove x if max over the selected tests of m_T(x) > tau (strict: m == tau is kept).

    Returns:
        removed (n,) bool.
    """
    return _scores(stats, "m", tests) > floor32(tau)


def rule_similarity_gap(stats: PruneStats, delta: float = 0.0, tests: list[str] | str | None = None) -> np.ndarray:
    """Remove x if some selected test set has g_T(x) > delta, i.e. some t has cos(x, t) > s_R(t) (+ delta).

    With one test set this is the paper's per-benchmark split; with several, their union ("combined").

    Raises:
        WorkspaceError: the statistics were loaded without a reference.
    """
    return _scores(stats, "g", tests) > floor32(delta)


def rule_near(stats: PruneStats, keep: float, tests: list[str] | str | None = None) -> np.ndarray:
    """Keep the `keep` web samples with the lowest m(x) (max over the selected tests); remove the rest.

    Ties at the cut: order is a stable sort on (m, row), so among equal scores the lower row is kept.
    """
    return _keep_extreme(stats, keep, tests, lowest=True)


def rule_far(stats: PruneStats, keep: float, tests: list[str] | str | None = None) -> np.ndarray:
    """Keep the `keep` web samples with the highest m(x); remove the rest.

    Ties at the cut: order is a stable sort on (-m, row), so among equal scores the lower row is kept.
    """
    return _keep_extreme(stats, keep, tests, lowest=False)


def rule_random(n: int, keep: float, seed: int = 0) -> np.ndarray:
    """A seeded uniform random subset of `keep` samples is kept (the control for near/far pruning).

    Returns:
        removed (n,) bool with exactly n - keep True entries; the same (n, keep, seed) gives the same mask.
    """
    count = resolve_keep(n, keep)
    removed = np.ones(n, dtype=bool)
    removed[np.random.default_rng(seed).choice(n, count, replace=False)] = False
    return removed


def _keep_extreme(stats: PruneStats, keep: float, tests, lowest: bool) -> np.ndarray:
    count = resolve_keep(stats.n, keep)
    m, ordered = _scores(stats, "m", tests), _sorted_scores(stats, "m", tests)
    if count == 0:
        return np.ones(stats.n, dtype=bool)
    cut = ordered[count - 1] if lowest else ordered[stats.n - count]
    strictly = m < cut if lowest else m > cut
    ties = np.flatnonzero(m == cut)[: count - int(strictly.sum())]  # lower rows first
    kept = strictly
    kept[ties] = True
    return ~kept


def _selected(stats: PruneStats, tests) -> list[str] | None:
    """None when the selection is all loaded tests (their combined arrays are cached), else the list."""
    if tests is None:
        return None
    tests = stats.check_tests(tests)
    return None if tests == stats.tests else tests


def _scores(stats: PruneStats, kind: str, tests) -> np.ndarray:
    sel = _selected(stats, tests)
    if sel is None or len(sel) == 1:
        return stats.array(kind, sel[0] if sel else None, False)
    return np.maximum.reduce([stats.array(kind, t, False) for t in sel])


def _sorted_scores(stats: PruneStats, kind: str, tests) -> np.ndarray:
    sel = _selected(stats, tests)
    if sel is None or len(sel) == 1:
        return stats.array(kind, sel[0] if sel else None, True)
    return np.sort(_scores(stats, kind, tests))



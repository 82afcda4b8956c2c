"""What the Prune page computes, without Streamlit: a rule's parameters and removed mask exactly as the
`prune` CLI records them, a default manifest name, and the post-pruning similarities to plot.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from clipsim import prune

RULE_LABELS = {"threshold": "Threshold", "similarity-gap": "Similarity gap", "near": "Near", "far": "Far",
               "random": "Random"}
RULE_HELP = {
    "threshold": "Remove web sample x if max_t cos(x, t) > τ.",
    "similarity-gap": "Remove x if some test image t has cos(x, t) > s_ref(t) + δ: afterwards no test image is "
                      "closer to the web set than to the reference (the paper's core experiment, δ = 0).",
    "near": "Keep the N web samples least similar to the test sets (max_t cos(x, t) lowest); remove the rest.",
    "far": "Keep the N web samples most similar to the test sets; remove the rest.",
    "random": "Keep a seeded uniform random subset of N web samples (the control for near/far pruning).",
}


def rule_params(stats, rule: str, tau: float | None = None, delta: float | None = None,
                remove_fraction: float | None = None, keep: float | None = None, like_kept: int | None = None,
                like: str | None = None, seed: int = 0) -> tuple[dict, np.ndarray]:
    """A rule's recorded parameters and removed mask, as `python -m clipsim prune` builds them.

    Args:
        stats: PruneStats restricted to the rule's test sets (empty for 'random').
        rule: one of prune.RULES.
        tau, delta: the cut for 'threshold' / 'similarity-gap' (ignored when remove_fraction is given).
        remove_fraction: cut those two rules at the value removing closest to this share of the web set.
        keep: 'near' / 'far' / 'random': an int count or a float fraction kept.
        like_kept, like: 'random': keep as many as manifest `like` keeps (like_kept, its kept count).
        seed: 'random': seed.

    Returns:
        (params dict, removed (n,) bool mask).

    Raises:
        ValueError: a missing or out-of-range parameter.
    """
    rule = prune.canonical_rule(rule)
    if rule in ("threshold", "similarity-gap"):
        name = "tau" if rule == "threshold" else "delta"
        if remove_fraction is not None:
            cut = (stats.tau_for_fraction if rule == "threshold" else stats.delta_for_fraction)(remove_fraction)
        else:
            cut = tau if rule == "threshold" else (delta or 0.0)
        if cut is None:
            raise ValueError("rule 'threshold' needs tau or remove_fraction")
        mask = (prune.rule_threshold if rule == "threshold" else prune.rule_similarity_gap)(stats, cut)
        params = {name: cut, **({"remove_fraction": remove_fraction} if remove_fraction is not None else {})}
        return params, mask
    if like is not None:
        keep = like_kept
    if keep is None:
        raise ValueError(f"rule {rule!r} needs keep (a count or a fraction)")
    if rule == "random":
        params = {"keep": keep, "seed": int(seed), **({"like": like} if like else {})}
        return params, prune.rule_random(stats.n, keep, seed)
    return {"keep": keep}, (prune.rule_near if rule == "near" else prune.rule_far)(stats, keep)


def counts(stats, rule: str, params: dict) -> pd.DataFrame:
    """Removed / kept / share of web per test set and combined (random: combined only)."""
    table = stats.summary(rule, **{k: v for k, v in params.items() if k in ("tau", "delta", "keep")})
    return table[table["test"] == "combined"].reset_index(drop=True) if rule == "random" else table


def default_name(rule: str, params: dict, tests: list[str], all_tests: list[str]) -> str:
    """A manifest name such as 'similarity-gap_d0_sketch' or 'near_keep0.5'."""
    short = {"tau": "t", "delta": "d", "keep": "keep", "seed": "s", "remove_fraction": "rf"}
    parts = [rule] + [f"{short[k]}{_fmt(v)}" for k, v in params.items() if k in short and not
                      (k == "keep" and "like" in params)]
    if "like" in params:
        parts.append(f"like-{params['like']}")
    if rule != "random" and tests and sorted(tests) != sorted(all_tests):
        parts.append("-".join(tests))
    return re.sub(r"[^A-Za-z0-9_.-]", "-", "_".join(parts))[:80]


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def post_prune(ws, stats, test: str, rule: str, params: dict, removed: np.ndarray) -> pd.DataFrame:
    """s_web(t) before/after pruning for one test set from the stored top-k (bounds where all k were removed)."""
    return prune.post_prune_nn_similarity(ws, test, stats.web, removed, rule, params,
                                          stats.tests if rule != "random" else None, stats.reference)

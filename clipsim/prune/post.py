"""Nearest-neighbour similarity of test images to the web set after pruning: a bound from the stored top-k, or exact.

`post_prune_nn_similarity` answers from the stored top-k neighbours at once (exact whenever one of them is kept,
else an upper bound); `exact_post_prune_nn_similarity` re-scans the kept web rows with the exact scanner.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from clipsim.prune.stats import canonical_rule, floor32
from clipsim.search import DEFAULT_BLOCK_ROWS
from clipsim.search.exact import default_precision, resolve_device
from clipsim.search.scan import ExactScanner, Group

Progress = Callable[[int, int, str], None]


def post_prune_nn_similarity(ws, test: str, web: str, removed, rule: str | None = None,
                             params: dict | None = None, tests: list[str] | None = None,
                             reference: str | None = None) -> pd.DataFrame:
    """s_web(t) before and after removing web rows, from the stored top-k (no scan).

    s_after is the best stored neighbour of t that is kept (exact). When all k stored neighbours are removed it is
    an upper bound (exact=False): the k-th stored similarity, lowered to the rule's own bound when the rule gives
    one for this test set: floor32(tau) for 'threshold', s_R(t) + delta for 'similarity-gap'
    (s_R(t) itself for delta = 0, where the rule is exact).

    Args:
        ws: the workspace.
        test: test set name.
        web: web train set name (searched against `test`).
        removed: (n_web,) bool mask in web row order, or the clipsim.prune.rules.Pruning that makes it (then only
            the stored neighbours' rows are looked up: no full mask is built).
        rule, params, tests, reference: the rule that made the mask (optional; tightens the bounds). tests: the
            rule's test sets (default: all, so the bound applies); reference: default ws.settings['reference'].

    Returns:
        DataFrame: test_key, s_before, s_after (float32; NaN when every web sample is removed), exact (bool),
        web_id (nearest kept web row, -1 when not known).
    """
    res = ws.search_result(test, web)
    sims, ids = res.arrays()
    valid = ids >= 0
    rows = np.where(valid, ids, 0)
    if isinstance(removed, np.ndarray) or not hasattr(removed, "removed_at"):
        flags = _check_mask(removed, res.config["train_count"], web)[rows]
    else:
        flags = removed.removed_at(rows)
    kept = valid & ~flags
    has = kept.any(axis=1)
    first = np.argmax(kept, axis=1)
    rows = np.arange(len(sims))
    s_after = np.where(has, sims[rows, first], np.float32(np.nan)).astype(np.float32)
    web_id = np.where(has, ids[rows, first], -1)
    full = valid.all(axis=1)  # with fewer than k ids the list holds every web row: none kept is exact
    bound = _rule_bound(ws, test, web, rule, params, tests, reference, len(sims))
    upper = sims[:, -1] if bound is None else np.minimum(sims[:, -1], bound)
    inexact = ~has & full
    s_after[inexact] = upper[inexact]
    return pd.DataFrame({"test_key": ws.keys(test), "s_before": sims[:, 0], "s_after": s_after,
                         "exact": ~inexact, "web_id": web_id})


def exact_post_prune_nn_similarity(ws, test: str, web: str, removed: np.ndarray, precision: str = "auto",
                                   device: str = "auto", block_rows: int = DEFAULT_BLOCK_ROWS,
                                   progress: Progress | None = None) -> pd.DataFrame:
    """The exact s_web(t) after pruning: one streamed pass over the kept web rows (ties -> lower row).

    Returns:
        DataFrame like `post_prune_nn_similarity` with exact all True.
    """
    res = ws.search_result(test, web)
    removed = _check_mask(removed, res.config["train_count"], web)
    sims, ids = exact_kept_nn(ws, web, removed, ws.embeddings(test).all(), precision, device, block_rows, progress)
    return pd.DataFrame({"test_key": ws.keys(test), "s_before": res.arrays()[0][:, 0], "s_after": sims,
                         "exact": np.ones(len(sims), dtype=bool), "web_id": ids})


def exact_kept_nn(ws, web: str, removed: np.ndarray, queries: np.ndarray, precision: str = "auto",
                  device: str = "auto", block_rows: int = DEFAULT_BLOCK_ROWS,
                  progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest kept web row of each query, streaming web blocks and dropping removed rows.

    Args:
        queries: (n_q, d) float16 L2-normalised rows.

    Returns:
        (sims (n_q,) float32, NaN when nothing is kept; ids (n_q,) int64 global web rows, -1 when nothing is kept).
    """
    emb = ws.embeddings(web)
    removed = _check_mask(removed, emb.count, web)
    dev = resolve_device(device)
    scanner = ExactScanner(queries, [Group("q", 0, len(queries))], 1,
                           default_precision(dev) if precision == "auto" else precision, dev, row_stats=False)
    kept_ids = np.flatnonzero(~removed)  # compact id c <-> global row kept_ids[c]; order kept, so ties agree
    compact = 0
    for _, base, block in emb.iter_blocks(block_rows):
        keep = ~removed[base : base + len(block)]
        if keep.any():
            scanner.add_block(block[keep], compact)
            compact += int(keep.sum())
        if progress:
            progress(base + len(block), emb.count, f"exact post-pruning scan of {web}")
    state = scanner.state()
    top_s, top_i = state["top_s"][:, 0], state["top_i"][:, 0]
    found = top_i >= 0
    sims = np.where(found, top_s, np.float32(np.nan)).astype(np.float32)
    return sims, np.where(found, kept_ids[np.where(found, top_i, 0)], -1) if len(kept_ids) else np.full(len(sims), -1)


def _rule_bound(ws, test, web, rule, params, tests, reference, n_test) -> np.ndarray | None:
    """An upper bound on cos(x, t) for every kept x implied by the rule itself, or None."""
    if rule is None or (tests is not None and test not in tests):
        return None
    rule, params = canonical_rule(rule), params or {}
    if rule == "threshold":
        return np.full(n_test, floor32(params["tau"]), dtype=np.float32)
    if rule != "similarity-gap":
        return None
    s_ref = ws.search_result(test, reference or ws.settings.get("reference")).arrays()[0][:, 0].astype(np.float64)
    delta = floor32(params.get("delta", 0.0))  # kept x: float32(c - s_R) <= delta
    if delta == 0:
        return s_ref.astype(np.float32)  # the sign of float32(c - s_R) is exact: c <= s_R
    step = float(np.nextafter(delta, np.float32(np.inf)))  # c - s_R >= step would round to >= step > delta
    return (s_ref + step).astype(np.float32)  # c < s_R + step; rounding to float32 stays >= every such c


def _check_mask(removed: np.ndarray, n: int, web: str) -> np.ndarray:
    removed = np.asarray(removed)
    if removed.shape != (n,) or removed.dtype != bool:
        raise ValueError(f"removed mask has shape {removed.shape} and dtype {removed.dtype}, but web set {web!r} "
                         f"has {n} samples; pass the (n,) bool array a rule_* function returned")
    return removed

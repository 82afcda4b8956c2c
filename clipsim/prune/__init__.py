"""Exact pruning of the web set: per-sample statistics sorted once (`stats`), rules and how one is applied (`rules`),
manifests of kept/removed keys (`manifest`) and post-pruning nearest-neighbour similarity (`post`).

The rules and statistics are re-exported here; manifests and post-pruning similarity load on first use (they
import torch, which pages that only count do not need).
"""
from clipsim.prune.rules import (
    Pruning,
    RuleSpec,
    apply_rule,
    default_name,
    rule_far,
    rule_near,
    rule_random,
    rule_similarity_gap,
    rule_stats,
    rule_threshold,
)
from clipsim.prune.stats import RULES, PruneStats, canonical_rule, floor32, resolve_keep

__all__ = ["RULES", "Manifest", "PruneStats", "Pruning", "RuleSpec", "apply_rule", "canonical_rule", "default_name",
           "exact_post_prune_nn_similarity", "floor32", "list_manifests", "load_manifest", "post_prune_nn_similarity",
           "resolve_keep", "rule_far", "rule_near", "rule_random", "rule_similarity_gap", "rule_stats", "rule_threshold",
           "save_manifest", "save_rule"]

_LAZY = {
    "Manifest": "clipsim.prune.manifest", "save_manifest": "clipsim.prune.manifest", "save_rule": "clipsim.prune.manifest",
    "load_manifest": "clipsim.prune.manifest", "list_manifests": "clipsim.prune.manifest",
    "post_prune_nn_similarity": "clipsim.prune.post", "exact_post_prune_nn_similarity": "clipsim.prune.post",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clipsim.prune' has no attribute {name!r}")

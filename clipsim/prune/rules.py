"""Exact pruning rules over stored per-sample statistics, and how a rule is applied: the one place the Prune page,
`python -m clipsim prune` and the `prune` job share.

All rules are pure functions of the exact float32 statistics that `search` stored per web sample x and test
set T: m_T(x) = max_t cos(x, t) and the similarity-gap margin g_T(x) = max_t float32(cos(x, t) - s_R(t)).
Thresholds are compared with these float32 values as real numbers (strict `>`), so counts, masks and a
brute-force evaluation agree exactly. A `RuleSpec` holds a rule and every parameter the page offers;
`rule_stats` loads what it reads, `apply_rule` gives its recorded parameters and removed mask (a `Pruning`) and
`default_name` its manifest name (`clipsim.prune.manifest.save_rule` saves it).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from functools import cached_property

import numpy as np
import pandas as pd

from clipsim.errors import WorkspaceError
from clipsim.prune.columns import Cut, keep_cut
from clipsim.prune.stats import PruneStats, canonical_rule, floor32, resolve_keep


# ----- rules: boolean `removed` masks (n,) in web row order ---------------------------------------------
def rule_threshold(stats: PruneStats, tau: float, tests: list[str] | str | None = None) -> np.ndarray:
    """Remove x if max over the selected tests of m_T(x) > tau (strict: m == tau is kept).

    Returns:
        removed (n,) bool.
    """
    return stats.select(tests).mask(Cut("m", floor32(tau)))


def rule_similarity_gap(stats: PruneStats, delta: float = 0.0, tests: list[str] | str | None = None) -> np.ndarray:
    """Remove x if some selected test set has g_T(x) > delta, i.e. some t has cos(x, t) > s_R(t) (+ delta).

    With one test set this is the paper's per-benchmark split; with several, their union ("combined").

    Raises:
        WorkspaceError: the statistics were loaded without a reference.
    """
    return stats.select(tests).mask(Cut("g", floor32(delta)))


def rule_near(stats: PruneStats, keep: float, tests: list[str] | str | None = None) -> np.ndarray:
    """Keep the `keep` web samples with the lowest m(x) (max over the selected tests); remove the rest.

    Ties at the cut: order is a stable sort on (m, row), so among equal scores the lower row is kept.
    """
    sel = stats.select(tests)
    return sel.mask(keep_cut(sel.column("m"), "m", resolve_keep(sel.n, keep), lowest=True))


def rule_far(stats: PruneStats, keep: float, tests: list[str] | str | None = None) -> np.ndarray:
    """Keep the `keep` web samples with the highest m(x); remove the rest.

    Ties at the cut: order is a stable sort on (-m, row), so among equal scores the lower row is kept.
    """
    sel = stats.select(tests)
    return sel.mask(keep_cut(sel.column("m"), "m", resolve_keep(sel.n, keep), lowest=False))


def rule_random(n: int, keep: float, seed: int = 0) -> np.ndarray:
    """A seeded uniform random subset of `keep` samples is kept (the control for near/far pruning).

    Returns:
        removed (n,) bool with exactly n - keep True entries; the same (n, keep, seed) gives the same mask.
    """
    count = resolve_keep(n, keep)
    removed = np.ones(n, dtype=bool)
    removed[np.random.default_rng(seed).choice(n, count, replace=False)] = False
    return removed


# ----- applying a rule: the spec, its statistics, parameters, mask and name --------------------------------
OPTIONS = {"threshold": ("tau", "remove_fraction"), "similarity-gap": ("delta", "remove_fraction"),
           "near": ("keep",), "far": ("keep",), "random": ("keep", "like", "seed")}
CUTS = ("tau", "delta", "remove_fraction", "keep", "like", "seed")
SHORT = {"tau": "t", "delta": "d", "remove_fraction": "rf", "keep": "keep", "seed": "s"}  # name parts


@dataclass(frozen=True)
class RuleSpec:
    """A pruning rule with its parameters, as the page, the CLI and a job give it.

    Attributes:
        rule: one of clipsim.prune.RULES ('similarity_gap' is accepted).
        tau, delta: the cut of 'threshold' / 'similarity-gap' (delta defaults to 0.0).
        remove_fraction: instead of tau / delta, the cut removing closest to this share of the web set.
        keep: 'near' / 'far' / 'random': an int count or a float fraction in (0, 1] of web samples kept.
        like: 'random': keep as many samples as this saved manifest keeps (instead of keep).
        seed: 'random': the seed (default 0).
        tests: test sets the rule looks at (None: every registered test set; ignored by 'random').
        web: the web set (None: the workspace's first web set, Workspace.web_set).
        reference: the reference of 'similarity-gap' (None: the workspace's reference).
        base: prune only the samples this saved manifest keeps (e.g. a dedup manifest, as the study did).
    """

    rule: str
    tau: float | None = None
    delta: float | None = None
    remove_fraction: float | None = None
    keep: int | float | None = None
    like: str | None = None
    seed: int | None = None
    tests: tuple[str, ...] | None = None
    web: str | None = None
    reference: str | None = None
    base: str | None = None

    def __post_init__(self) -> None:
        rule = canonical_rule(self.rule)
        object.__setattr__(self, "rule", rule)
        if rule == "similarity-gap" and self.delta is None and self.remove_fraction is None:
            object.__setattr__(self, "delta", 0.0)  # the paper's rule; one spelling, so equal specs compare equal
        if rule == "random" and self.seed is None:
            object.__setattr__(self, "seed", 0)
        if self.tests is not None:
            object.__setattr__(self, "tests", tuple(self.tests) if rule != "random" and self.tests else None)
        wrong = [o for o in CUTS if getattr(self, o) is not None and o not in OPTIONS[rule]]
        if wrong:
            raise ValueError(f"{', '.join(wrong)} does not apply to rule {rule!r}; it takes {', '.join(OPTIONS[rule])}")
        if self.remove_fraction is not None and (self.tau is not None or self.delta is not None):
            raise ValueError(f"rule {rule!r} takes either its cut value or remove_fraction, not both")
        if rule == "threshold" and self.tau is None and self.remove_fraction is None:
            raise ValueError("rule 'threshold' needs tau (CLI --tau) or remove_fraction (--remove-fraction)")
        if self.like is not None and self.keep is not None:
            raise ValueError("rule 'random' takes keep or like (a manifest whose size to copy), not both")
        if rule in ("near", "far", "random") and self.keep is None and self.like is None:
            raise ValueError(f"rule {rule!r} needs keep (CLI --keep N or --keep-fraction F)"
                             + (" or like (--like MANIFEST)" if rule == "random" else ""))

    @classmethod
    def from_params(cls, params: dict) -> RuleSpec:
        """The spec in a job's params (`rule` plus the option keys; other keys such as name are ignored).

        Raises:
            ValueError: no rule, or options that do not fit it.
        """
        if "rule" not in params:
            raise ValueError(f"prune params {sorted(params)} name no rule; add 'rule': one of {', '.join(OPTIONS)}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in known})

    def to_params(self) -> dict:
        """The spec as job params (JSON-able; unset options left out)."""
        out = {k: v for k, v in asdict(self).items() if v is not None}
        if self.tests is not None:
            out["tests"] = list(self.tests)
        return out


@dataclass
class Pruning:
    """A rule applied: the statistics it read (restricted to its test sets), its recorded parameters, and which rows it
    removes, as a Cut on those statistics (random: an explicit mask). The full mask is built on first use, chunk by
    chunk; `removed_at` answers for a few rows without it (what a page needs)."""

    stats: PruneStats
    rule: str
    params: dict
    random_mask: np.ndarray | None = None

    @cached_property
    def cut(self) -> Cut | None:
        """The rule's cut (None for 'random').

        Raises:
            CombinedPending: near/far over several test sets whose combination a page's statistics lack.
        """
        if self.rule == "random":
            return None
        if self.rule in ("threshold", "similarity-gap"):
            return Cut("m", floor32(self.params["tau"])) if self.rule == "threshold" else Cut(
                "g", floor32(self.params["delta"]))
        count = resolve_keep(self.stats.n, self.params["keep"])
        return keep_cut(self.stats.column("m"), "m", count, lowest=self.rule == "near")

    @cached_property
    def removed(self) -> np.ndarray:
        """The removed mask (n,) bool in web row order."""
        return self.random_mask if self.cut is None else self.stats.mask(self.cut)

    def removed_at(self, rows: np.ndarray) -> np.ndarray:
        """Whether each of some web rows (any shape of valid row indices) is removed, without the full mask."""
        if self.cut is None:
            return self.random_mask[rows]
        return self.cut.removed(self.stats.values_at(self.cut.kind, rows), rows)

    def counts(self) -> pd.DataFrame:
        """Removed / kept / share of web per test set and combined (random: combined only); see PruneStats.summary."""
        table = self.stats.summary(self.rule, **{k: v for k, v in self.params.items() if k in ("tau", "delta", "keep")})
        return table[table["test"] == "combined"].reset_index(drop=True) if self.rule == "random" else table


def rule_stats(ws, spec: RuleSpec, tests: list[str] | None = None) -> PruneStats:
    """Load the statistics a rule reads: its test sets against its web set, with margins for 'similarity-gap'.

    Args:
        ws: the workspace.
        spec: the rule.
        tests: load these test sets instead (a superset, e.g. the page's, which apply_rule then narrows).

    Raises:
        WorkspaceError: a missing search or reference (the message names the command to run).
    """
    web = ws.web_set(spec.web)
    reference = spec.reference or ws.reference
    if spec.rule == "similarity-gap" and reference is None:
        raise WorkspaceError(f"rule 'similarity-gap' needs a reference train set, and workspace {ws.root} has none; "
                             f"search with one: `python -m clipsim search --workspace {ws.root} --reference NAME`")
    if tests is None and spec.rule == "random":
        tests = []
    elif tests is None:  # registry order, so 'sketch,val' and 'val,sketch' read (and record) the same statistics
        registered = ws.dataset_names("test")
        given = list(spec.tests or registered)
        tests = [t for t in registered if t in given] + [t for t in given if t not in registered]
    return PruneStats.load(ws, web, tests, reference if spec.rule == "similarity-gap" else None, base=spec.base)


def apply_rule(stats: PruneStats, spec: RuleSpec) -> Pruning:
    """A rule's recorded parameters and removed mask: exactly what a manifest of it stores.

    Args:
        stats: statistics covering the rule's test sets (more are fine: they are narrowed to spec.tests).
        spec: the rule.

    Returns:
        The Pruning: params hold the cut (tau | delta, and remove_fraction when cut by share; keep; seed, like).

    Raises:
        ValueError: an out-of-range parameter. WorkspaceError: test sets not in `stats`, or `like` names no manifest.
    """
    rule = spec.rule
    sel = stats if rule == "random" else stats.select(spec.tests)
    if rule in ("threshold", "similarity-gap"):
        name = "tau" if rule == "threshold" else "delta"
        if spec.remove_fraction is not None:
            find = sel.tau_for_fraction if rule == "threshold" else sel.delta_for_fraction
            params = {name: find(spec.remove_fraction), "remove_fraction": spec.remove_fraction}
        else:
            params = {name: spec.tau if rule == "threshold" else (spec.delta or 0.0)}
            if sel.tests:  # missing margins are refused now, not when the mask is first read
                sel.column("m" if rule == "threshold" else "g", sel.tests[0])
        return Pruning(sel, rule, params)
    keep = spec.keep if spec.like is None else _kept_count(stats, spec.like)
    if rule == "random":
        seed = int(spec.seed or 0)
        params = {"keep": keep, "seed": seed, **({"like": spec.like} if spec.like else {})}
        return Pruning(sel, rule, params, rule_random(sel.n, keep, seed))
    resolve_keep(sel.n, keep)  # an out-of-range keep is refused now, not when the mask is first read
    return Pruning(sel, rule, {"keep": keep})


def _kept_count(stats: PruneStats, like: str) -> int:
    from clipsim.prune.manifest import load_manifest

    if stats.ws is None:
        raise WorkspaceError(f"like={like!r} needs statistics loaded from a workspace (PruneStats.load)")
    return load_manifest(stats.ws, like).kept_count


def default_name(spec: RuleSpec) -> str:
    """The default manifest name of a rule, from its parameters as given: 'similarity-gap_d0', 'threshold_t0.85',
    'threshold_rf0.1', 'near_keep0.5_sketch', 'random_keep0.5_s0', 'random_like-gap_s0', 'similarity-gap_d0_on-dedup'.

    Test sets are named only when the rule looks at a subset (spec.tests); the name fits the manifest name rule.
    """
    given = asdict(spec)
    parts = [spec.rule] + [f"{SHORT[k]}{_fmt(given[k])}" for k in ("tau", "delta", "remove_fraction", "keep")
                           if given[k] is not None]
    if spec.like:
        parts.append(f"like-{spec.like}")
    if spec.rule == "random":
        parts.append(f"s{given['seed']}")
    if spec.tests:
        parts.append("-".join(spec.tests))
    if spec.base:
        parts.append(f"on-{spec.base}")
    return re.sub(r"[^A-Za-z0-9_.-]", "-", "_".join(parts))[:80]


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)

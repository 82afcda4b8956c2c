"""Per-web-sample pruning statistics sorted once (`PruneStats`), and the threshold conventions of every rule.

m_T(x) = max_t cos(x, t) and g_T(x) = max_t float32(cos(x, t) - s_R(t)) come from the stored searches as exact
float32; a threshold v is compared as a real number: `a > v` is evaluated as `a > floor32(v)`.
"""
from __future__ import annotations

import numbers
from functools import cached_property

import numpy as np
import pandas as pd

from clipsim.errors import WorkspaceError

RULES = ("threshold", "similarity-gap", "near", "far", "random")


def canonical_rule(rule: str) -> str:
    """'similarity_gap' -> 'similarity-gap'; raises ValueError naming the known rules."""
    name = str(rule).replace("_", "-").lower()
    if name not in RULES:
        raise ValueError(f"unknown pruning rule {rule!r}; use one of {', '.join(RULES)}")
    return name


def floor32(value: float) -> np.float32:
    """The largest float32 <= value, so that `m > floor32(v)` equals `m > v` (real numbers) for float32 m.

    Raises:
        ValueError: value is NaN or not a number.
    """
    try:
        v = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"threshold {value!r} is not a number; pass e.g. 0.8") from err
    if np.isnan(v):
        raise ValueError("threshold is NaN; pass a number such as 0.8")
    t = np.float32(v)
    if float(t) > v:
        t = np.nextafter(t, np.float32(-np.inf))
    return t


def resolve_keep(n: int, keep: float) -> int:
    """How many samples to keep: an int count in [0, n] or a float fraction in (0, 1] (rounded to nearest).

    Raises:
        ValueError: a count outside [0, n] or a fraction outside (0, 1].
    """
    if isinstance(keep, (bool, np.bool_)):
        raise ValueError(f"keep={keep!r} is a bool; pass a count (int) or a fraction in (0, 1] (float)")  # noqa: TRY004  (callers report ValueError as a usage error)
    if isinstance(keep, numbers.Integral):
        if not 0 <= int(keep) <= n:
            raise ValueError(f"keep={keep} is out of range for {n} web samples; pass a count in [0, {n}]")
        return int(keep)
    if isinstance(keep, numbers.Real):
        if not 0.0 < float(keep) <= 1.0:
            raise ValueError(f"keep fraction {keep!r} is not in (0, 1]; pass e.g. 0.5, or an int count of samples")
        return round(float(keep) * n)
    raise ValueError(f"keep={keep!r} must be an int count or a float fraction in (0, 1]")


class PruneStats:
    """Per-web-sample statistics of one web set against test sets, sorted once for O(log n) counting.

    Attributes:
        web: web (train) set name.
        tests: test set names (their combination is the elementwise max).
        reference: reference train set of the margins, or None.
        has_margins: whether similarity-gap margins were loaded (else count_gap / rule_similarity_gap raise).
        n: web size.
        fingerprints: {test: fingerprint of the search result the statistics came from}.
        web_fingerprint: fingerprint of the web embeddings when loaded (None when built from arrays).
        ws: the workspace the statistics were loaded from (None when built from arrays).
        keys: web keys (n,) in row order, read on first use.
    """

    def __init__(self, web: str, n: int, max_sim: dict[str, np.ndarray], margins: dict[str, np.ndarray] | None,
                 reference: str | None, fingerprints: dict[str, str] | None = None,
                 web_fingerprint: str | None = None, ws=None, keys: np.ndarray | None = None,
                 _sorted: dict[tuple[str, str], np.ndarray] | None = None):
        self.web, self.n, self.reference, self.tests = web, int(n), reference, list(max_sim)
        self.fingerprints, self.web_fingerprint, self.ws = dict(fingerprints or {}), web_fingerprint, ws
        self.has_margins = margins is not None
        self._vals = {("m", t): _check_array(a, n, f"max_sim[{t!r}]") for t, a in max_sim.items()}
        if margins is not None:
            self._vals.update({("g", t): _check_array(margins[t], n, f"margins[{t!r}]") for t in self.tests})
        self._sorted = {k: v for k, v in (_sorted or {}).items() if k in self._vals}
        for key, arr in self._vals.items():
            if key not in self._sorted:
                self._sorted[key] = np.sort(arr)
        for kind in ("m", "g") if margins is not None else ("m",):
            if len(self.tests) == 1:
                self._vals[(kind, None)] = self._vals[(kind, self.tests[0])]
                self._sorted[(kind, None)] = self._sorted[(kind, self.tests[0])]
            elif self.tests:
                self._vals[(kind, None)] = np.maximum.reduce([self._vals[(kind, t)] for t in self.tests])
                self._sorted[(kind, None)] = np.sort(self._vals[(kind, None)])
        if keys is not None:
            self.__dict__["keys"] = np.asarray(keys)
        self.base: dict | None = None  # set by within_base: the base manifest whose kept rows these are
        self.base_rows: np.ndarray | None = None  # those rows of the web set, increasing

    # ----- construction ------------------------------------------------------------------------------
    @classmethod
    def load(cls, ws, web: str, tests: list[str], reference: str | None = None, base: str | None = None) -> PruneStats:
        """Read m_T (and, with a reference, g_T) of every test set from the stored searches against `web`.

        Args:
            ws: the workspace.
            web: web train set name (its searches must be complete).
            tests: test set names; [] loads no statistics (enough for the random rule).
            reference: reference train set whose margins were stored (`search --reference R`), or None.
            base: a manifest of `web` (e.g. a dedup manifest): only the rows it keeps are loaded (see within_base).

        Returns:
            The statistics, sorted (O(n log n) per array; the demo takes milliseconds).

        Raises:
            WorkspaceError: unknown set, missing search or missing reference margins (the message gives the command).
        """
        tests = _as_list(tests)
        emb = ws.embeddings(web)
        max_sim, margins, fps = {}, ({} if reference else None), {}
        for test in tests:
            if ws.dataset(test).role != "test":
                raise WorkspaceError(f"{test!r} is a {ws.dataset(test).role} set; pass test sets "
                                     f"(registered: {', '.join(ws.dataset_names('test'))})")
            res = ws.search_result(test, web)
            fps[test] = res.fingerprint
            max_sim[test] = res.train_stat("max_sim")
            if len(max_sim[test]) != emb.count:
                raise WorkspaceError(
                    f"the search of {test!r} against {web!r} covers {len(max_sim[test])} web rows but {web!r} now has "
                    f"{emb.count}; re-run `python -m clipsim search --workspace {ws.root} --train {web}`")
            if reference:
                margins[test] = _load_margin(ws, res, reference)
        stats = cls(web, emb.count, max_sim, margins, reference, fps, emb.fingerprint(), ws=ws)
        return stats.within_base(base) if base else stats

    @classmethod
    def from_arrays(cls, max_sim: dict[str, np.ndarray], margins: dict[str, np.ndarray] | None = None,
                    web: str = "web", reference: str | None = None, keys: np.ndarray | None = None) -> PruneStats:
        """Statistics from in-memory arrays (benchmarks, tests): {test: (n,) float32} each.

        Raises:
            ValueError: arrays of different lengths, or margins missing for a test set.
        """
        if not max_sim:
            raise ValueError("max_sim is empty; pass {test_name: (n,) float32 array} for at least one test set")
        n = len(next(iter(max_sim.values())))
        if margins is not None and set(margins) != set(max_sim):
            raise ValueError(f"margins cover {sorted(margins)} but max_sim covers {sorted(max_sim)}; pass both per test set")
        return cls(web, n, max_sim, margins, reference, keys=keys)

    def subset(self, tests: list[str] | str) -> PruneStats:
        """The same statistics restricted to some test sets (per-test arrays and sorted copies reused)."""
        tests = self.check_tests(tests)
        margins = {t: self._vals[("g", t)] for t in tests} if self.has_margins else None
        out = PruneStats(self.web, self.n, {t: self._vals[("m", t)] for t in tests}, margins, self.reference,
                         {t: self.fingerprints[t] for t in tests if t in self.fingerprints}, self.web_fingerprint,
                         ws=self.ws, _sorted={k: v for k, v in self._sorted.items() if k[1] in tests})
        if "keys" in self.__dict__:
            out.__dict__["keys"] = self.__dict__["keys"]
        out.base, out.base_rows = self.base, self.base_rows
        return out

    def within_base(self, base: str) -> PruneStats:
        """The statistics of the web rows that manifest `base` keeps (see clipsim.prune.base.restrict_to_base)."""
        from clipsim.prune.base import restrict_to_base

        return restrict_to_base(self, base)

    def full_removed(self, removed: np.ndarray) -> np.ndarray:
        """A removed mask over these rows as a mask over the whole web set (rows outside the base count as removed)."""
        if self.base_rows is None:
            return np.asarray(removed)
        full = np.ones(self.base["web_rows"], dtype=bool)
        full[self.base_rows] = np.asarray(removed)
        return full

    @cached_property
    def keys(self) -> np.ndarray:
        """Web keys (n,) in row order, read on first use."""
        if self.ws is None:
            raise WorkspaceError("these statistics were built from arrays without keys; pass keys= to from_arrays")
        return self.ws.keys(self.web)

    def stale_reasons(self) -> list[str]:
        """Why these statistics no longer match the workspace (web embeddings or a search changed); [] if fresh."""
        if self.ws is None:
            return []
        now = self.ws.embeddings_fingerprint(self.web)
        reasons = [] if now == self.web_fingerprint else [f"web set {self.web!r} embeddings changed"]
        if self.base is not None:
            from clipsim.prune.base import base_changes

            reasons += base_changes(self.ws, self.base)
        for test in self.tests:
            try:
                res = self.ws.search_result(test, self.web)
            except WorkspaceError:
                reasons.append(f"search {test!r} vs {self.web!r} is gone")
                continue
            if res.fingerprint != self.fingerprints.get(test):
                reasons.append(f"search {test!r} vs {self.web!r} changed since the statistics were loaded")
            reasons += [f"search {test!r} vs {self.web!r} is stale: {r}" for r in res.stale_reasons()]
        return reasons

    # ----- arrays ------------------------------------------------------------------------------------
    def max_sim(self, test: str | None = None, sort: bool = False) -> np.ndarray:
        """m_T(x) per web row (n,) float32 (test=None: max over all loaded tests); sort=True: ascending copy."""
        return self.array("m", test, sort)

    def margin(self, test: str | None = None, sort: bool = False) -> np.ndarray:
        """g_T(x) per web row (n,) float32 (test=None: max over loaded tests); sort=True: ascending copy."""
        return self.array("g", test, sort)

    def array(self, kind: str, test: str | None = None, sort: bool = False) -> np.ndarray:
        """The statistic `kind` ("m": max similarity, "g": similarity-gap margin) per web row (n,) float32, for
        one test set or (None) the max over all loaded ones; sort=True: the ascending copy."""
        if kind == "g" and not self.has_margins:
            raise WorkspaceError(
                f"no similarity-gap statistics loaded for {self.web!r}; load with "
                "PruneStats.load(ws, web, tests, reference='<reference set>') (CLI: --reference)")
        if test is None and not self.tests:
            raise ValueError("no test sets loaded; PruneStats.load(ws, web, tests=[...]) with at least one test set")
        if test is not None:
            self.check_tests([test])
        return (self._sorted if sort else self._vals)[(kind, test)]

    def check_tests(self, tests: list[str] | str) -> list[str]:
        """The test names as a list; raises WorkspaceError naming any not loaded."""
        tests = _as_list(tests)
        unknown = [t for t in tests if t not in self.tests]
        if unknown:
            raise WorkspaceError(f"test set(s) {unknown} are not in these statistics (loaded: {self.tests}); "
                                 "load them with PruneStats.load(ws, web, tests=[...])")
        return tests

    @property
    def nbytes(self) -> int:
        """Bytes held by the statistics and their sorted copies (shared arrays counted once)."""
        held = {id(a): a.nbytes for d in (self._vals, self._sorted) for a in d.values()}
        return int(sum(held.values()))

    # ----- counting (O(log n), no rescans) -----------------------------------------------------------
    def count_threshold(self, tau: float, test: str | None = None) -> int:
        """#web samples with m(x) > tau (strict); m of one test set, or the max over all (test=None)."""
        a = self.array("m", test, True)
        return self.n - int(np.searchsorted(a, floor32(tau), side="right"))

    def count_gap(self, delta: float = 0.0, test: str | None = None) -> int:
        """#web samples with g(x) > delta (strict): some t has cos(x, t) > s_R(t) + delta; test=None: union."""
        a = self.array("g", test, True)
        return self.n - int(np.searchsorted(a, floor32(delta), side="right"))

    def tau_for_fraction(self, fraction: float, test: str | None = None) -> float:
        """A threshold whose strict-removal count `count_threshold` is the achievable count closest to fraction * n.

        Ties between two achievable counts equally far from the target go to the smaller count (higher tau).
        The answer is a stored float32 value (or one ulp below the minimum, which removes everything).
        """
        return self._cut_for_fraction("m", fraction, test)

    def delta_for_fraction(self, fraction: float, test: str | None = None) -> float:
        """Like `tau_for_fraction` for the similarity-gap margin: count_gap(delta) closest to fraction * n."""
        return self._cut_for_fraction("g", fraction, test)

    def _cut_for_fraction(self, kind: str, fraction: float, test: str | None) -> float:
        if not 0.0 <= float(fraction) <= 1.0:
            raise ValueError(f"fraction {fraction!r} is not in [0, 1]; pass the share of web samples to remove")
        a = self.array(kind, test, True)
        if self.n == 0:
            return 0.0
        target = round(float(fraction) * self.n)
        if target == 0:
            return float(a[-1])
        v = a[self.n - target]  # the smallest value that `target` removals would take
        j = int(np.searchsorted(a, v, side="left"))  # removing v's whole tie group removes n - j >= target
        above = a[j - 1] if j > 0 else np.nextafter(v, np.float32(-np.inf))  # tau = a[j-1] removes n - j
        fewer = self.n - int(np.searchsorted(a, v, side="right"))  # tau = v removes fewer than target
        return float(v) if target - fewer <= (self.n - j) - target else float(above)

    def summary(self, rule: str, **params) -> pd.DataFrame:
        """Removal counts of a rule per test set and combined, from the sorted arrays (no mask built).

        Args:
            rule: one of RULES; params: tau (threshold), delta (similarity-gap, default 0), keep (near/far/random),
                optional tests (a subset; default all loaded).

        Returns:
            DataFrame with rows per test set and a last row 'combined': test, removed, kept, share_of_web.
        """
        rule = canonical_rule(rule)
        stats = self.subset(params["tests"]) if params.get("tests") is not None else self
        names = list(stats.tests) + (["combined"] if stats.tests or rule in ("near", "far", "random") else [])
        if rule == "threshold":
            removed = [stats.count_threshold(params["tau"], t if t != "combined" else None) for t in names]
        elif rule == "similarity-gap":
            removed = [stats.count_gap(params.get("delta", 0.0), t if t != "combined" else None) for t in names]
        else:
            removed = [stats.n - resolve_keep(stats.n, params["keep"])] * len(names)
        removed = np.asarray(removed, dtype=np.int64)
        share = removed / stats.n if stats.n else np.zeros(len(removed))
        return pd.DataFrame({"test": names, "removed": removed, "kept": stats.n - removed, "share_of_web": share})


def _load_margin(ws, res, reference: str) -> np.ndarray:
    if reference not in res.config.get("references", {}):
        raise WorkspaceError(
            f"the search of {res.test!r} against {res.train!r} stored no similarity-gap margins for reference "
            f"{reference!r}; run `python -m clipsim search --workspace {ws.root} --train {res.train} "
            f"--reference {reference}` (with --force if that search is already complete)")
    return res.train_stat(f"margin/{reference}")


def _check_array(a: np.ndarray, n: int, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.shape != (n,):
        raise ValueError(f"{what} has shape {a.shape} but the web set has {n} samples; pass one value per web row")
    return np.ascontiguousarray(a, dtype=np.float32)


def _as_list(tests) -> list[str]:
    return [tests] if isinstance(tests, str) else list(tests)

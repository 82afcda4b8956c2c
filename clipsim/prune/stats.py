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
from clipsim.prune.columns import Column, Cut, cut_for_fraction, max_column

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


KIND_NAMES = {"m": "max similarity m_T", "g": "similarity-gap margin g_T"}
UNION_ROWS = 500_000  # a combined count not stored yet is made exact from the stored row orders up to this many rows


class CombinedPending(WorkspaceError):
    """The elementwise maximum over these test sets is not stored yet, and these statistics never compute it (a page's:
    combined='stored'); the `sort-stats` job writes it (clipsim.prune.stored.build_sorted_stats)."""

    def __init__(self, web: str, tests: list[str], root) -> None:
        self.web, self.tests = web, list(tests)
        super().__init__(f"the combined statistics of {', '.join(tests)} against {web!r} are not stored yet; run "
                         f"`python -m clipsim sort-stats --workspace {root} --web {web} --tests {','.join(tests)}`")


class PruneStats:
    """Per-web-sample statistics of one web set against test sets, sorted once for O(log n) counting.

    Each statistic is a Column: memory-mapped from the search's stored sorted statistics when they are current
    (clipsim.sorted_stats), else read from the search's shards and sorted in memory. Both give the same bits.

    Attributes:
        web: web (train) set name.
        tests: test set names (their combination is the elementwise max).
        reference: reference train set of the margins, or None.
        has_margins: whether similarity-gap margins were loaded (else count_gap / rule_similarity_gap raise).
        n: web size.
        fingerprints: {test: fingerprint of the search result the statistics came from}.
        web_fingerprint: fingerprint of the web embeddings when loaded (None when built from arrays).
        ws: the workspace the statistics were loaded from (None when built from arrays).
        combined: 'compute' (the max over several test sets is computed in memory when not stored: jobs, CLI) or
            'stored' (read only from disk; else CombinedPending: pages).
        keys: web keys (n,) in row order, read on first use.
    """

    def __init__(self, web: str, n: int, columns: dict[tuple[str, str], Column], tests: list[str],
                 reference: str | None, fingerprints: dict[str, str] | None = None, web_fingerprint: str | None = None,
                 ws=None, keys: np.ndarray | None = None, combined: str = "compute"):
        if combined not in ("compute", "stored"):
            raise ValueError(f"combined={combined!r}; use 'compute' or 'stored'")
        self.web, self.n, self.reference, self.tests, self.combined = web, int(n), reference, list(tests), combined
        self.fingerprints, self.web_fingerprint, self.ws = dict(fingerprints or {}), web_fingerprint, ws
        self._cols = dict(columns)
        self.has_margins = any(k == "g" for k, _ in self._cols) if self.tests else reference is not None
        self._combined: dict[str, Column] = {}
        if keys is not None:
            self.__dict__["keys"] = np.asarray(keys)
        self.base: dict | None = None  # set by within_base: the base manifest whose kept rows these are
        self.base_rows: np.ndarray | None = None  # those rows of the web set, increasing

    # ----- construction ------------------------------------------------------------------------------
    @classmethod
    def load(cls, ws, web: str, tests: list[str], reference: str | None = None, combined: str = "compute",
             base: str | None = None) -> PruneStats:
        """Read m_T (and, with a reference, g_T) of every test set from the stored searches against `web`.

        Args:
            ws: the workspace.
            web: web train set name (its searches must be complete).
            tests: test set names; [] loads no statistics (enough for the random rule).
            reference: reference train set whose margins were stored (`search --reference R`), or None.
            combined: 'compute' or 'stored' (see the class).
            base: a manifest of `web` (e.g. a dedup manifest): only the rows it keeps are loaded (see within_base).

        Returns:
            The statistics: memory-mapped when stored sorted (nothing read), else read and sorted in memory.

        Raises:
            WorkspaceError: unknown set, missing search or missing reference margins (the message gives the command).
        """
        from clipsim.prune.stored import open_search_stats, stat_names

        tests, emb, names = _as_list(tests), ws.embeddings(web), stat_names(reference)
        columns, fps = {}, {}
        for test in tests:
            if ws.dataset(test).role != "test":
                raise WorkspaceError(f"{test!r} is a {ws.dataset(test).role} set; pass test sets "
                                     f"(registered: {', '.join(ws.dataset_names('test'))})")
            res = ws.search_result(test, web)
            fps[test] = res.fingerprint
            if reference:
                _check_margins(ws, res, reference)
            disk = open_search_stats(res, names)
            for kind, name in zip(("m", "g"), names):
                columns[(kind, test)] = col = disk[name] if disk else Column(res.train_stat(name), name)
                if col.n != emb.count:
                    raise WorkspaceError(
                        f"the search of {test!r} against {web!r} covers {col.n} web rows but {web!r} now has "
                        f"{emb.count}; re-run `python -m clipsim search --workspace {ws.root} --train {web}`")
        stats = cls(web, emb.count, columns, tests, reference, fps, emb.fingerprint(), ws=ws, combined=combined)
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
        columns = {("m", t): Column(_check_array(a, n, f"max_sim[{t!r}]"), "max_sim") for t, a in max_sim.items()}
        for t in max_sim if margins is not None else ():
            columns[("g", t)] = Column(_check_array(margins[t], n, f"margins[{t!r}]"), f"margin/{reference}")
        return cls(web, n, columns, list(max_sim), reference, keys=keys)

    def subset(self, tests: list[str] | str) -> PruneStats:
        """The same statistics restricted to some test sets (their columns, and sorted copies, shared)."""
        tests = self.check_tests(tests)
        out = PruneStats(self.web, self.n, {k: c for k, c in self._cols.items() if k[1] in tests}, tests,
                         self.reference, {t: self.fingerprints[t] for t in tests if t in self.fingerprints},
                         self.web_fingerprint, ws=self.ws, combined=self.combined)
        if "keys" in self.__dict__:
            out.__dict__["keys"] = self.__dict__["keys"]
        out.base, out.base_rows = self.base, self.base_rows
        return out

    def select(self, tests: list[str] | str | None) -> PruneStats:
        """self when `tests` is None or every loaded test set (in order), else subset(tests)."""
        return self if tests is None or _as_list(tests) == self.tests else self.subset(tests)

    def prepare(self) -> PruneStats:
        """Sort every column and compute the combinations now (else on first use); returns self."""
        for kind in ("m", "g") if self.has_margins else ("m",):
            for test in [*self.tests, *([None] if self.tests else [])]:
                self.column(kind, test).sorted  # noqa: B018  (a cached property: computed here, once)
        return self

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

    # ----- columns and arrays --------------------------------------------------------------------------
    def column(self, kind: str, test: str | None = None) -> Column:
        """The Column of statistic `kind` ("m" | "g") for one test set, or (None) the max over all loaded ones.

        Raises:
            WorkspaceError: no margins loaded, or a test set not loaded. CombinedPending: combined='stored' and
                the max over several test sets is not stored yet. ValueError: no test sets loaded.
        """
        if kind == "g" and not self.has_margins:
            raise WorkspaceError(
                f"no similarity-gap statistics loaded for {self.web!r}; load with "
                "PruneStats.load(ws, web, tests, reference='<reference set>') (CLI: --reference)")
        if test is not None:
            return self._cols[(kind, self.check_tests([test])[0])]
        if not self.tests:
            raise ValueError("no test sets loaded; PruneStats.load(ws, web, tests=[...]) with at least one test set")
        if len(self.tests) == 1:
            return self._cols[(kind, self.tests[0])]
        if not self.combined_ready(kind):
            raise CombinedPending(self.web, self.tests, self.ws.root if self.ws is not None else "WORKSPACE")
        if kind not in self._combined:
            self._combined[kind] = max_column([self._cols[(kind, t)] for t in self.tests], self._cols[(kind, self.tests[0])].name)
        return self._combined[kind]

    def combined_ready(self, kind: str = "m") -> bool:
        """Whether column(kind) answers for the max over all loaded test sets without raising CombinedPending (it is
        stored, already computed, or these statistics compute it); checks the disk again on every call until then."""
        if len(self.tests) <= 1 or kind in self._combined:
            return True
        cols = [self._cols[(kind, t)] for t in self.tests]
        if self.ws is not None and all(c.on_disk for c in cols):
            from clipsim.prune.stored import open_combined

            stored = open_combined(self.ws, self.web, {t: self.fingerprints[t] for t in sorted(self.tests)}, cols[0].name)
            if stored is not None:
                self._combined[kind] = stored
                return True
            return self.combined == "compute"
        return True

    def array(self, kind: str, test: str | None = None, sort: bool = False) -> np.ndarray:
        """The statistic `kind` ("m": max similarity, "g": similarity-gap margin) per web row (n,) float32, for
        one test set or (None) the max over all loaded ones; sort=True: the ascending copy (memory-mapped when stored)."""
        col = self.column(kind, test)
        return col.sorted if sort else col.values

    def max_sim(self, test: str | None = None, sort: bool = False) -> np.ndarray:
        """m_T(x) per web row (n,) float32 (test=None: max over all loaded tests); sort=True: ascending copy."""
        return self.array("m", test, sort)

    def margin(self, test: str | None = None, sort: bool = False) -> np.ndarray:
        """g_T(x) per web row (n,) float32 (test=None: max over loaded tests); sort=True: ascending copy."""
        return self.array("g", test, sort)

    def values_at(self, kind: str, rows: np.ndarray) -> np.ndarray:
        """The statistic (max over all loaded test sets) at some rows: the combined column's values when it is ready,
        else the max of each test set's values there (the same numbers, no combination needed)."""
        if self.combined_ready(kind):
            return self.column(kind).at(rows)
        return np.maximum.reduce([self._cols[(kind, t)].at(rows) for t in self.tests])

    def mask(self, cut: Cut) -> np.ndarray:
        """The removed mask (n,) bool of a cut on the max over all loaded test sets, built chunk by chunk."""
        col, out = self.column(cut.kind), np.empty(self.n, dtype=bool)
        for lo, chunk in col.chunks():
            rows = np.arange(lo, lo + len(chunk)) if cut.tie_row is not None else None
            out[lo : lo + len(chunk)] = cut.removed(chunk, rows)
        return out

    def removal_curves(self, kind: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{test: (edges, how many values are > each edge)} per loaded test set, and 'combined' when ready: the
        stored cumulative histograms (clipsim.plots.removal_curve draws them)."""
        curves = {t: self.column(kind, t).hist() for t in self.tests}
        if len(self.tests) > 1 and self.combined_ready(kind):
            curves["combined"] = self.column(kind).hist()
        return curves

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
        """Bytes held in memory by the statistics and their sorted copies (memory-mapped ones count 0)."""
        held = {id(c): c.nbytes for c in [*self._cols.values(), *self._combined.values()]}
        return int(sum(held.values()))

    # ----- counting (O(log n), no rescans) -----------------------------------------------------------
    def count_threshold(self, tau: float, test: str | None = None) -> int:
        """#web samples with m(x) > tau (strict); m of one test set, or the max over all (test=None)."""
        return self.column("m", test).count_above(floor32(tau))

    def count_gap(self, delta: float = 0.0, test: str | None = None) -> int:
        """#web samples with g(x) > delta (strict): some t has cos(x, t) > s_R(t) + delta; test=None: union."""
        return self.column("g", test).count_above(floor32(delta))

    def combined_count(self, kind: str, value: float) -> tuple[int, int]:
        """(low, high) bounds on #web samples whose max over all loaded test sets is > value; low == high: exact.

        Exact whenever the combination is ready, or when at most UNION_ROWS rows lie above value in the test sets
        (the union of their stored row orders); otherwise the largest single count and the sum (capped at n).
        """
        v = floor32(value)
        if self.combined_ready(kind):
            count = self.column(kind).count_above(v)
            return count, count
        cols = [self._cols[(kind, t)] for t in self.tests]
        per = [c.count_above(v) for c in cols]
        low, high = max(per), min(self.n, sum(per))
        if low != high and sum(per) <= UNION_ROWS:
            low = high = len(np.unique(np.concatenate([c.rows_above(v) for c in cols])))
        return low, high

    def tau_for_fraction(self, fraction: float, test: str | None = None) -> float:
        """A threshold whose strict-removal count `count_threshold` is the achievable count closest to fraction * n
        (ties to the smaller count; see clipsim.prune.columns.cut_for_fraction)."""
        return cut_for_fraction(self.column("m", test), fraction)

    def delta_for_fraction(self, fraction: float, test: str | None = None) -> float:
        """Like `tau_for_fraction` for the similarity-gap margin: count_gap(delta) closest to fraction * n."""
        return cut_for_fraction(self.column("g", test), fraction)

    def summary(self, rule: str, **params) -> pd.DataFrame:
        """Removal counts of a rule per test set and combined, from the sorted arrays (no mask built).

        Args:
            rule: one of RULES; params: tau (threshold), delta (similarity-gap, default 0), keep (near/far/random),
                optional tests (a subset; default all loaded).

        Returns:
            DataFrame with rows per test set and a last row 'combined': test, removed, kept, share_of_web. While the
            combination is not stored (combined='stored') and its count is not exact, removed and kept are nullable
            (<NA>) on that row and `frame.attrs["bounds"]` holds (low, high).
        """
        rule = canonical_rule(rule)
        stats = self.select(params.get("tests"))
        names = list(stats.tests) + (["combined"] if stats.tests or rule in ("near", "far", "random") else [])
        bounds = None
        if rule in ("threshold", "similarity-gap") and stats.tests:
            kind, value = ("m", params["tau"]) if rule == "threshold" else ("g", params.get("delta", 0.0))
            removed = [stats.column(kind, t).count_above(floor32(value)) for t in stats.tests]
            low, high = stats.combined_count(kind, value)
            removed.append(low if low == high else pd.NA)
            bounds = None if low == high else (low, high)
        else:
            removed = [stats.n - resolve_keep(stats.n, params["keep"])] * len(names) if names else []
        frame = pd.DataFrame({"test": names, "removed": pd.array(removed, dtype="Int64" if bounds else "int64")})
        frame["kept"] = stats.n - frame["removed"]
        frame["share_of_web"] = (frame["removed"] / stats.n).astype(float) if stats.n else 0.0
        if bounds:
            frame.attrs["bounds"] = bounds
        return frame


def _check_margins(ws, res, reference: str) -> None:
    if reference not in res.config.get("references", {}):
        raise WorkspaceError(
            f"the search of {res.test!r} against {res.train!r} stored no similarity-gap margins for reference "
            f"{reference!r}; run `python -m clipsim search --workspace {ws.root} --train {res.train} "
            f"--reference {reference}` (with --force if that search is already complete)")


def _check_array(a: np.ndarray, n: int, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.shape != (n,):
        raise ValueError(f"{what} has shape {a.shape} but the web set has {n} samples; pass one value per web row")
    return np.ascontiguousarray(a, dtype=np.float32)


def _as_list(tests) -> list[str]:
    return [tests] if isinstance(tests, str) else list(tests)

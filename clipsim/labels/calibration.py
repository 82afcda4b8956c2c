"""Calibrate "s_web(t) > tau means (near-)duplicate" from labelled pairs: precision and recall per tau with 95%
intervals that respect the sampling design, the estimated number of true duplicates above tau, and the tau that
reaches a target precision.

Estimators. The labelled pairs are a probability sample of the test set's (image, nearest web neighbour) pairs with
known inclusion probabilities pi_i (clipsim.labels.sampler). Precision at tau is a proportion over the domain
{s_i > tau}, recall one over the domain {pair is a duplicate}. Both use ratio (Hajek) estimators,
sum(y_i / pi_i) / sum(1 / pi_i), consistent under any design and steadier than Horvitz-Thompson when weights vary.
Precision also uses what is known exactly: the number of pairs above tau, N(tau), and the take-all pairs (pi = 1,
all labelled); the drawn pairs stand for the rest of the domain. The estimated number of duplicates above tau is
precision * N(tau).

Intervals: a score-type interval on effective counts, not a bootstrap. The drawn pairs' Hajek proportion p gets the
linearised variance V = sum(w_i^2 (y_i - p)^2) / (sum w_i)^2 (w = 1 / pi, the with-replacement form), the effective
sample size n_eff = p (1 - p) / V, and a Clopper-Pearson interval on (p n_eff, n_eff): the "beta" method of Korn &
Graubard (1998) and R survey's svyciprop. Unlike a bootstrap or a Wald interval, it does not collapse to a point when
every labelled pair above tau is a duplicate (p = 1), which is exactly where users set thresholds; there n_eff falls
back to Kish's (sum w)^2 / sum w^2. Leaving out the finite-population correction is conservative when a large share
of a small test set is labelled; with the correction the interval covered the truth at only ~93% of thresholds in
simulation, because V is noisy in small domains. tests/test_labels.py checks coverage against known ground truth.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

LEVEL = 0.95
CALIBRATION_COLUMNS = ["tau", "precision", "precision_low", "precision_high", "recall", "recall_low", "recall_high",
                       "n_labelled", "n_above", "estimated_duplicates", "meets_target"]


@dataclass(frozen=True)
class Proportion:
    """A design-weighted proportion with its interval and effective sample size."""

    estimate: float
    low: float
    high: float
    n: int  # labelled pairs in the domain
    n_eff: float


def beta_interval(x: float, n: float, level: float = LEVEL) -> tuple[float, float]:
    """Clopper-Pearson interval for x successes in n trials (x, n may be fractional effective counts).

    Returns:
        (low, high) in [0, 1]; (0, 1) when n is 0.
    """
    from scipy.special import betaincinv

    if n <= 0:
        return 0.0, 1.0
    alpha = 1.0 - level
    low = 0.0 if x <= 0 else float(betaincinv(x, n - x + 1, alpha / 2))
    high = 1.0 if x >= n else float(betaincinv(x + 1, n - x, 1 - alpha / 2))
    return low, high


def weighted_proportion(success: np.ndarray, pi: np.ndarray, level: float = LEVEL,
                        domain_size: int | None = None) -> Proportion:
    """The Hajek estimate of a proportion over a domain's sampled units, with its effective-count interval.

    With the domain's size known (pairs above tau are counted exactly), take-all units (pi = 1) are known exactly
    and the drawn ones (pi < 1) stand for the R = size - N other units: p = (T + R p_d) / (N + R), with T successes
    among the N take-all units and p_d the drawn units' Hajek proportion, whose interval maps linearly onto p.
    Without it (recall: the number of duplicates is itself estimated), the Hajek estimate over all sampled units.

    Args:
        success: (m,) bool, the outcome of each sampled unit of the domain.
        pi: (m,) float inclusion probabilities in (0, 1].
        level: interval coverage.
        domain_size: the number of population units in the domain, when known.

    Returns:
        Proportion (NaNs when the domain has no sampled unit; a zero-width interval when it is labelled in full).
    """
    success, pi = np.asarray(success, bool), np.asarray(pi, np.float64)
    if not len(pi):
        return Proportion(float("nan"), float("nan"), float("nan"), 0, 0.0)
    if domain_size is None:
        p, low, high, n_eff = _effective_interval(success, 1.0 / pi, level)
        return Proportion(p, low, high, len(pi), n_eff)
    if len(pi) >= domain_size:  # every unit of the domain was labelled: known exactly, whatever the weights
        p = float(success.mean())
        return Proportion(p, p, p, len(pi), float("inf"))
    certain = pi >= 1.0
    known, n_known = float(success[certain].sum()), float(certain.sum())
    rest = float(domain_size) - n_known
    if certain.all():  # nothing drawn stands for the unlabelled rest: it could be anything
        low, high = known / (n_known + rest), (known + rest) / (n_known + rest)
        return Proportion((known + rest * known / n_known) / (n_known + rest), low, high, len(pi), 0.0)
    p_d, low, high, n_eff = _effective_interval(success[~certain], 1.0 / pi[~certain], level)
    to_p = lambda q: (known + rest * q) / (n_known + rest)
    return Proportion(to_p(p_d), to_p(low), to_p(high), len(pi), n_eff)


def _effective_interval(hit: np.ndarray, w: np.ndarray, level: float) -> tuple[float, float, float, float]:
    """(Hajek p, low, high, n_eff) of weighted 0/1 outcomes: Clopper-Pearson on n_eff = p (1 - p) / V with the
    with-replacement variance V (no finite-population correction: conservative), or Kish's (sum w)^2 / sum w^2
    when every outcome agrees."""
    weight = float(w.sum())
    p = float((w * hit).sum() / weight)
    var = (w**2 * (hit - p) ** 2).sum() / weight**2
    n_eff = p * (1 - p) / var if var > 0 else weight**2 / float((w**2).sum())
    low, high = beta_interval(p * n_eff, n_eff, level)
    return p, min(low, p), max(high, p), float(n_eff)


def tau_grid(s: np.ndarray, steps: int = 41) -> np.ndarray:
    """`steps` thresholds evenly spaced from the lowest to just below the highest similarity, rounded to 1e-4."""
    s = np.asarray(s, np.float64)
    if not len(s):
        return np.zeros(0)
    return np.unique(np.round(np.linspace(s.min(), s.max(), steps + 1)[:-1], 4))


def calibration_table(s: np.ndarray, duplicate: np.ndarray, pi: np.ndarray, taus: np.ndarray,
                      target_precision: float = 0.95, level: float = LEVEL) -> pd.DataFrame:
    """Precision and recall of "s > tau means duplicate" per tau, from a probability sample of the population.

    Args:
        s: (n,) similarity of every pair of the population (every test image with its nearest web neighbour).
        duplicate: (n,) bool label of each pair (only read where pi > 0).
        pi: (n,) inclusion probability; 0 for pairs not in the sample.
        taus: thresholds.
        target_precision: a row meets the target when its precision interval lies at or above it.
        level: interval coverage.

    Returns:
        CALIBRATION_COLUMNS, one row per tau.
    """
    s, pi = np.asarray(s, np.float64), np.asarray(pi, np.float64)
    sampled = pi > 0
    dup = np.asarray(duplicate, bool) & sampled
    rows = []
    for tau in np.asarray(taus, np.float64):
        above = s > tau
        prec = weighted_proportion(dup[above & sampled], pi[above & sampled], level, int(above.sum()))
        rec = weighted_proportion(above[dup], pi[dup], level)
        n_above = int(above.sum())
        rows.append({"tau": float(tau), "precision": prec.estimate, "precision_low": prec.low,
                     "precision_high": prec.high, "recall": rec.estimate, "recall_low": rec.low,
                     "recall_high": rec.high, "n_labelled": prec.n, "n_above": n_above,
                     "estimated_duplicates": prec.estimate * n_above if prec.n else float("nan"),
                     "meets_target": bool(prec.n and prec.low >= target_precision)})
    return pd.DataFrame(rows, columns=CALIBRATION_COLUMNS)


def tau_for_precision(table: pd.DataFrame, target: float, confident: bool = True) -> float | None:
    """The lowest tau from which on every larger tau of the table keeps precision at or above `target`.

    Args:
        table: calibration_table output (sorted by tau).
        target: precision wanted, e.g. 0.95.
        confident: require the interval's lower end (not the estimate) to reach the target.

    Returns:
        That tau, or None when even the highest labelled tau misses it.
    """
    column = "precision_low" if confident else "precision"
    rows = table[table["n_labelled"] > 0].sort_values("tau")
    ok = (rows[column] >= target).to_numpy()
    if not len(ok) or not ok[-1]:
        return None
    first_bad = np.flatnonzero(~ok)
    start = first_bad[-1] + 1 if len(first_bad) else 0
    return float(rows["tau"].iloc[start])

"""Bootstrap intervals for accuracies over test images, and the paired bootstrap comparing two models.

Resampling n test images with replacement and averaging a per-image value v_i is the same in distribution as
drawing how often each *distinct* value occurs from a multinomial over their observed shares; with 0/1 or
seed-averaged correctness there are only a few distinct values, so each bootstrap replicate costs O(distinct)
instead of O(n) and ImageNet's 50,000 images cost nothing. Intervals are percentile intervals; the replicates are
drawn from a seeded generator, so the same inputs give the same bits.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_BOOT = 4000  # replicates: the Monte Carlo error of a 2.5% quantile is then ~0.1 x the interval's half-width
LEVEL = 0.95
SEED = 0


@dataclass(frozen=True)
class Interval:
    """A mean over test images with its bootstrap interval."""

    mean: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class PairedComparison:
    """Mean of a - b over the same test images, its paired bootstrap interval and two-sided p-value."""

    diff: float
    low: float
    high: float
    p_value: float
    n: int


def _values(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(v).all():
        raise ValueError(f"per-image values must be finite; got {int((~np.isfinite(v)).sum())} NaN/inf of {len(v)}")
    return v


def bootstrap_means(values, n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """Means of `n_boot` bootstrap resamples of `values` (resampled with replacement, same size).

    Args:
        values: (n,) per-image values (0/1 correctness, or correctness averaged over seeds).
        n_boot: replicates.
        seed: generator seed.

    Returns:
        (n_boot,) float64 replicate means (empty when values is empty).
    """
    v = _values(values)
    if not len(v):
        return np.zeros(0)
    distinct, counts = np.unique(v, return_counts=True)
    draws = np.random.default_rng(seed).multinomial(len(v), counts / len(v), size=n_boot)
    return draws @ distinct / len(v)


def _percentiles(reps: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(reps, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_interval(values, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = SEED) -> Interval:
    """Mean of per-image values with its percentile bootstrap interval over test images.

    Args:
        values: (n,) per-image values, e.g. 0/1 correctness of one run on one test set.
        level: coverage of the interval.
        n_boot: replicates.
        seed: generator seed (fixed: the same inputs give the same interval).

    Returns:
        Interval(mean, low, high, n); NaNs for an empty input.

    Raises:
        ValueError: a value is NaN or infinite, or level is outside (0, 1).
    """
    if not 0 < level < 1:
        raise ValueError(f"level {level} must be in (0, 1), e.g. 0.95")
    v = _values(values)
    if not len(v):
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    low, high = _percentiles(bootstrap_means(v, n_boot, seed), level)
    return Interval(float(v.mean()), low, high, len(v))


def paired_bootstrap(a, b, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = SEED) -> PairedComparison:
    """Paired bootstrap of mean(a) - mean(b) over the same test images.

    Both models are scored on every resampled image, so what the two share (easy and hard images) cancels. The
    p-value tests "no difference" two-sided with the bootstrap distribution shifted to zero:
    p = (1 + #{|d* - d| >= |d|}) / (n_boot + 1).

    Args:
        a, b: (n,) per-image values of the two models, aligned by image.
        level: coverage of the interval.
        n_boot: replicates.
        seed: generator seed.

    Returns:
        PairedComparison(diff, low, high, p_value, n).

    Raises:
        ValueError: a and b differ in length or hold non-finite values.
    """
    a, b = _values(a), _values(b)
    if a.shape != b.shape:
        raise ValueError(f"paired values must be aligned by test image: {len(a)} vs {len(b)} values")
    if not len(a):
        return PairedComparison(*(float("nan"),) * 4, 0)
    d = a - b
    reps = bootstrap_means(d, n_boot, seed)
    low, high = _percentiles(reps, level)
    diff = float(d.mean())
    extreme = int((np.abs(reps - diff) >= abs(diff) - 1e-12).sum())
    return PairedComparison(diff, low, high, (1 + extreme) / (n_boot + 1), len(d))

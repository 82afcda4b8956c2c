"""Which pair to label next: a probability sample of a test set's (image, nearest web neighbour) pairs, stratified
over similarity and concentrated near the current threshold, with every pair's inclusion probability known.

Design. Each pair i gets a size w_i = (1 + BUMP * exp(-((s_i - tau) / width)^2 / 2)) / N_bin(i): dividing by the
count of its similarity bin gives every bin the same expected share (stratification over similarity, so the rare
high-similarity pairs are labelled too), the bump puts about BUMP + 1 times more labels near tau, where they decide
the cut. Pairs are labelled in increasing order of xi_i = u_i / w_i, where u_i is a permanent uniform random number
of the pair's test key. Stopping after any k labels is then priority sampling (Duffield, Lund & Thorup 2007): with c
the xi of the first unlabelled pair, pair i is in the sample iff u_i < c * w_i, so pi_i = min(1, c * w_i), and
weighting by 1/pi_i is unbiased for any subset sum. Because u_i is permanent, designs at several thresholds combine:
the union of their samples is {i : u_i < max_d c_d w_id}, so pi_i = min(1, max_d c_d w_id) (exact for one design,
the standard approximation for several). A pair labelled outside any design's sampled prefix (picked by hand on the
Neighbours page) is kept but left out of the estimates, and counted.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

BUMP = 4.0  # pairs near tau are 5x as likely as their bin's baseline: most labels land where they move the cut
BINS = 10  # similarity strata (equal width between the lowest and highest s of the test set)
WIDTH_SHARE = 0.05  # the bump's standard deviation as a share of the similarity range


@dataclass(frozen=True)
class Design:
    """One sampling design over a test set's pairs: centred on `tau`, strata between lo and hi."""

    test: str
    train: str
    tau: float
    lo: float
    hi: float
    bump: float = BUMP
    bins: int = BINS
    width: float = 0.0  # 0: WIDTH_SHARE of (hi - lo)

    def weights(self, s: np.ndarray) -> np.ndarray:
        """The design's size measure w_i of each pair: (n,) float64 > 0."""
        s = np.asarray(s, np.float64)
        span = max(self.hi - self.lo, 1e-9)
        width = self.width or WIDTH_SHARE * span
        which = np.clip(((s - self.lo) / span * self.bins).astype(np.int64), 0, self.bins - 1)
        per_bin = np.bincount(which, minlength=self.bins).astype(np.float64)
        return (1.0 + self.bump * np.exp(-0.5 * ((s - self.tau) / width) ** 2)) / per_bin[which]


def make_design(test: str, train: str, tau: float, s: np.ndarray) -> Design:
    """A design centred on `tau` over the similarity range of `s` (tau rounded to 1e-3: nearby thresholds share one)."""
    s = np.asarray(s, np.float64)
    return Design(test, train, round(float(tau), 3), float(s.min()), float(s.max()))


def permanent_random(test: str, keys, salt: str = "clipsim-labels-1") -> np.ndarray:
    """A fixed uniform number in (0, 1) per test key (SHA-256 of salt, test set and key): (n,) float64."""
    out = np.empty(len(keys), np.float64)
    for i, key in enumerate(keys):
        digest = hashlib.sha256(f"{salt}\0{test}\0{key}".encode()).digest()
        out[i] = (int.from_bytes(digest[:7], "big") + 0.5) / 2.0**56
    return out


def priorities(design: Design, s: np.ndarray, u: np.ndarray) -> np.ndarray:
    """xi_i = u_i / w_i: pairs are labelled in increasing order of xi."""
    return np.asarray(u, np.float64) / design.weights(s)


def next_rows(design: Design, s: np.ndarray, u: np.ndarray, labelled: np.ndarray, n: int = 1) -> np.ndarray:
    """The next `n` unlabelled pairs of the design, in labelling order.

    Args:
        design: the design; s: (N,) similarity per pair; u: (N,) permanent random numbers.
        labelled: (N,) bool, pairs already labelled.
        n: how many.

    Returns:
        (<= n,) int64 row indices.
    """
    xi = priorities(design, s, u)
    xi = np.where(labelled, np.inf, xi)
    order = np.argsort(xi, kind="stable")[:n]
    return order[np.isfinite(xi[order])]


def inclusion_probabilities(designs: list[Design], s: np.ndarray, u: np.ndarray, labelled: np.ndarray) -> np.ndarray:
    """Each pair's inclusion probability given what is labelled; 0 for pairs outside every design's sample.

    Args:
        designs: every design used on this test set.
        s, u: (N,) similarity and permanent random numbers of the pairs.
        labelled: (N,) bool.

    Returns:
        (N,) float64 pi in [0, 1]; pi > 0 exactly for labelled pairs inside some design's sampled prefix.
    """
    labelled = np.asarray(labelled, bool)
    pi, inside = np.zeros(len(s), np.float64), np.zeros(len(s), bool)
    for design in designs:
        xi = priorities(design, s, u)
        c = xi[~labelled].min() if (~labelled).any() else np.inf
        inside |= labelled & (xi < c)
        pi = np.maximum(pi, np.minimum(1.0, c * design.weights(s)))
    return np.where(inside, pi, 0.0)


def population_frame(ws, test: str, train: str) -> pd.DataFrame:
    """Every test image of `test` with its nearest `train` neighbour: test_key, similarity, test_row, train_row
    (embedding rows, for thumbnails), u.

    The neighbours' train keys are not read here: at LAION's size that would read every metadata row group of every
    web shard (2.9 s at 100M rows). `train_keys` reads those of the pairs that need them.

    Raises:
        WorkspaceError: no completed search of test against train.
    """
    sims, ids = ws.search_result(test, train).arrays()
    test_rows = np.flatnonzero(ids[:, 0] >= 0) if ids.shape[1] else np.zeros(0, np.int64)
    test_keys = np.asarray(ws.keys(test)).astype(str)
    pairs = pd.DataFrame({"test_key": test_keys[test_rows], "similarity": sims[test_rows, 0],
                          "test_row": test_rows.astype(np.int64), "train_row": ids[test_rows, 0].astype(np.int64)})
    pairs["u"] = permanent_random(test, pairs["test_key"])
    return pairs


def train_keys(ws, train: str, train_rows) -> np.ndarray:
    """The keys (str) of rows `train_rows` of `train`: only the metadata row groups that hold them are read, and a
    process reads each row once while the set is unchanged (`EmbeddingSet.keys_at`)."""
    return ws.embeddings(train).keys_at(np.asarray(train_rows, dtype=np.int64))

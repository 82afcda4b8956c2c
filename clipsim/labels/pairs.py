"""Labelling (test image, nearest web neighbour) pairs in a workspace: the next pair to label, storing a label,
calibrating the threshold from the labels, CSV import/export, and labels simulated from the demo's planted truth.

The pages, the CLI (`label`, `calibrate`) and tests all go through these functions.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from clipsim import fileio
from clipsim.errors import WorkspaceError
from clipsim.labels import sampler, store
from clipsim.labels.calibration import calibration_table, tau_for_precision, tau_grid

SIMULATED = "simulated-from-planted"  # labeller name of labels filled from the demo's ground truth


def model_fingerprint(ws, train: str) -> str:
    """Identity of the similarity model that embedded `train` (its model, config and checkpoint fingerprints;
    the embeddings' own fingerprint for imported embeddings without a config)."""
    from clipsim.search.result import digest

    config = ws.embedding_dir(train) / "config.json"
    if config.exists():
        info = fileio.read_json(config)
        return digest([info.get(k) for k in ("model", "model_config_fingerprint", "checkpoint_fingerprint")])
    return digest(ws.embeddings(train).fingerprint())


@dataclass
class Population:
    """Every test image of `test` with its nearest `train` neighbour, and what is labelled of them.

    Attributes:
        pairs: test_key, similarity (float64), test_row, train_row, u (permanent random number), label (None when
            not labelled for this exact pair), pi (inclusion probability; 0 outside the sample). No train keys: at
            web scale they cost a read of every metadata shard; `keyed_pairs` adds them to the rows that need them.
        model: similarity model fingerprint; designs: the sampling designs used under it.
        other: labels of this test set whose pair is not a current nearest-neighbour pair (another neighbour).
        stale: labels of current pairs sampled under another similarity model (kept, not used).
    """

    test: str
    train: str
    model: str
    pairs: pd.DataFrame
    designs: list[sampler.Design] = field(default_factory=list)
    other: int = 0
    stale: int = 0


def load_population(ws, test: str, train: str) -> Population:
    """The pairs of a test set with their labels and inclusion probabilities.

    Raises:
        WorkspaceError: no completed search of test against train.
    """
    pairs = sampler.population_frame(ws, test, train)
    pairs["similarity"] = pairs["similarity"].astype(np.float64)
    model = model_fingerprint(ws, train)
    labels = store.read_labels(ws, test, train)
    held = pairs[pairs["test_key"].isin(labels["test_key"])]  # only labelled test images need their pair's train key
    held = held[["test_key"]].assign(train_key=sampler.train_keys(ws, train, held["train_row"]))
    current = labels.merge(held, on=["test_key", "train_key"])
    stale = current["model"].notna() & (current["model"] != model)
    fresh = current[~stale]
    pairs = pairs.merge(fresh[["test_key", "label"]], on="test_key", how="left")
    designs = [sampler.Design(test, train, d.tau, d.lo, d.hi, d.bump, int(d.bins), d.width)
               for d in store.read_designs(ws, test, train, model).itertuples()]
    labelled = pairs["label"].notna().to_numpy()
    pairs["pi"] = sampler.inclusion_probabilities(designs, pairs["similarity"].to_numpy(), pairs["u"].to_numpy(),
                                                  labelled)
    return Population(test, train, model, pairs, designs, other=len(labels) - len(current), stale=int(stale.sum()))


def _design(ws, population: Population, tau: float, record: bool = False) -> tuple[sampler.Design, int | None]:
    """The design centred on tau over the population; its id, stored on first use when `record` (else None)."""
    design = sampler.make_design(population.test, population.train, tau, population.pairs["similarity"].to_numpy())
    if not record:
        return design, None
    params = {"tau": design.tau, "lo": design.lo, "hi": design.hi, "bump": design.bump, "bins": design.bins,
              "width": design.width}
    return design, store.design_id(ws, population.test, population.train, population.model, params)


def record_design(ws, population: Population, tau: float) -> int:
    """Store (or find) the design centred on tau over the population; returns its id. ReadOnlyError when read-only."""
    return _design(ws, population, tau, record=True)[1]


def next_pairs(ws, test: str, train: str, tau: float, n: int = 1, population: Population | None = None
               ) -> pd.DataFrame:
    """The next unlabelled pairs to label under the design centred on `tau` (reads only; the design is recorded
    when a label is stored with label_pair(..., tau=tau)). `population`: load_population's answer, when the caller
    holds it for the current labels and search (a page caches it); read afresh when None.

    Returns:
        test_key, train_key, similarity, test_row, train_row (embedding rows), tau (the design's centre), in
        labelling order (empty when every pair is labelled).

    Raises:
        WorkspaceError: no search of test against train.
    """
    population = load_population(ws, test, train) if population is None else population
    design, _ = _design(ws, population, tau)
    pairs = population.pairs
    rows = sampler.next_rows(design, pairs["similarity"].to_numpy(), pairs["u"].to_numpy(),
                             pairs["label"].notna().to_numpy(), n)
    columns = ["test_key", "train_key", "similarity", "test_row", "train_row"]
    return keyed_pairs(ws, population, rows)[columns].assign(tau=design.tau).reset_index(drop=True)


def keyed_pairs(ws, population: Population, rows=None) -> pd.DataFrame:
    """population.pairs, or its rows at positions `rows`, with each pair's train_key. Only the metadata row groups
    holding those rows are read: at web scale, ask for the rows you need."""
    pairs = population.pairs if rows is None else population.pairs.iloc[np.asarray(rows, dtype=np.int64)]
    return pairs.assign(train_key=sampler.train_keys(ws, population.train, pairs["train_row"]))


def label_pair(ws, test: str, train: str, test_key: str, train_key: str, label: str, labeller: str = "user",
               tau: float | None = None) -> dict:
    """Store one pair's label (replacing an earlier one) with its similarity, model and inclusion probability.

    Args:
        ws: the workspace; test, train: the sets; test_key, train_key: the pair.
        label: one of store.LABELS.
        labeller: who labelled it.
        tau: the centre of the sampler design that proposed the pair (next_pairs' `tau`); None for a pair picked by
            hand, which is stored but counts for calibration only if it falls inside a design's sample.

    Returns:
        The stored row (store.LABEL_COLUMNS).

    Raises:
        WorkspaceError: a label outside store.LABELS. ReadOnlyError: served read-only.
    """
    store.check_label(label)
    population = load_population(ws, test, train)
    design = _design(ws, population, tau, record=True)[1] if tau is not None else None
    pairs = population.pairs
    match = pairs[pairs["test_key"] == str(test_key)]
    if len(match) and sampler.train_keys(ws, train, match["train_row"])[0] != str(train_key):
        match = match.iloc[:0]  # another neighbour than the current nearest one
    similarity = float(match["similarity"].iloc[0]) if len(match) else None
    row = {"test": test, "test_key": str(test_key), "train": train, "train_key": str(train_key), "label": label,
           "labeller": labeller, "created": time.time(), "model": population.model, "similarity": similarity,
           "inclusion": None, "design": design, "simulated": int(labeller == SIMULATED)}
    store.upsert_labels(ws, pd.DataFrame([row]))
    if len(match):  # the inclusion probability the designs give it now that it is labelled
        after = load_population(ws, test, train).pairs
        row["inclusion"] = float(after.loc[after["test_key"] == str(test_key), "pi"].iloc[0])
        store.upsert_labels(ws, pd.DataFrame([row]))
    return row


@dataclass
class Calibration:
    """Calibration of one test set's threshold: the table and what went into it."""

    table: pd.DataFrame  # calibration.CALIBRATION_COLUMNS
    tau_target: float | None  # lowest tau whose precision interval stays >= the target from there on
    tau_target_estimate: float | None  # the same on the point estimate
    target_precision: float
    labels: int  # labels of current pairs under the current model
    used: int  # of those, inside the probability sample (pi > 0)
    outside: int  # labelled by hand outside every design's sampled prefix (not used)
    other: int  # labels of pairs that are not nearest-neighbour pairs now
    stale: int  # labels sampled under another similarity model
    simulated: int  # simulated labels among the used ones


def calibrate(ws, test: str, train: str, taus=None, target_precision: float = 0.95,
              population: Population | None = None) -> Calibration:
    """Precision and recall of "s_train(t) > tau means (near-)duplicate" per tau, from the stored labels.

    Args:
        ws: the workspace.
        test, train: the test set and the (web) train set.
        taus: thresholds (default: 41 from the lowest to the highest similarity).
        target_precision: precision the threshold should reach.
        population: load_population's answer, when the caller holds it for the current labels and search (a page
            caches it); read afresh when None.

    Returns:
        Calibration.

    Raises:
        WorkspaceError: no search of test against train, or target_precision outside (0, 1].
    """
    if not 0 < target_precision <= 1:
        raise WorkspaceError(f"target precision {target_precision} must be in (0, 1], e.g. 0.95")
    population = load_population(ws, test, train) if population is None else population
    pairs = population.pairs
    s = pairs["similarity"].to_numpy()
    duplicate = pairs["label"].isin(store.DUPLICATES).to_numpy()
    taus = tau_grid(s) if taus is None else np.asarray(taus, np.float64)
    table = calibration_table(s, duplicate, pairs["pi"].to_numpy(), taus, target_precision)
    labelled = pairs["label"].notna()
    used = pairs["pi"] > 0
    simulated = store.read_labels(ws, test, train).query("simulated")["test_key"]
    return Calibration(table, tau_for_precision(table, target_precision), tau_for_precision(table, target_precision,
                       confident=False), target_precision, int(labelled.sum()), int(used.sum()),
                       int((labelled & ~used).sum()), population.other, population.stale,
                       int(pairs.loc[used, "test_key"].isin(simulated).sum()))


def default_tau(ws, test: str, train: str) -> float:
    """The 90th percentile of s_train(t), rounded to 0.01: where the Similarity page's threshold starts."""
    return round(float(np.percentile(ws.nn_similarity(test, train).to_numpy(np.float64), 90)), 2)

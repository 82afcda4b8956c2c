"""Evidence for thresholds and selections: labelled (test image, nearest web neighbour) pairs in SQLite (`store`),
the sampler that proposes pairs with known inclusion probabilities (`sampler`), calibration of the threshold from
the labels (`calibration`, `pairs`), CSV exchange and simulated labels (`exchange`), and image tags (`tags`).
"""
from clipsim.labels import exchange, sampler, tags
from clipsim.labels.pairs import (
    SIMULATED,
    Calibration,
    Population,
    calibrate,
    default_tau,
    keyed_pairs,
    label_pair,
    load_population,
    model_fingerprint,
    next_pairs,
)
from clipsim.labels.store import DUPLICATES, LABELS, read_labels

__all__ = ["DUPLICATES", "LABELS", "SIMULATED", "Calibration", "Population", "calibrate", "default_tau", "exchange",
           "keyed_pairs", "label_pair", "load_population", "model_fingerprint", "next_pairs", "read_labels", "sampler", "tags"]

"""Plotly figure builders (no Streamlit): similarity and pruning histograms (`explore`), the map (`maps`) and
results (`results`). The explore builders are re-exported here."""
from clipsim.plots.explore import (
                                   BOUND_COLOUR,
                                   DEFAULT_BINS,
                                   PALETTE,
                                   REFERENCE_COLOUR,
                                   THRESHOLD_COLOUR,
                                   post_prune_histogram,
                                   similarity_histogram,
                                   train_colours,
)

__all__ = ["BOUND_COLOUR", "DEFAULT_BINS", "PALETTE", "REFERENCE_COLOUR", "THRESHOLD_COLOUR", "post_prune_histogram",
           "similarity_histogram", "train_colours"]

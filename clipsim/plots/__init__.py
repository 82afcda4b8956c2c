"""Plotly figure builders (no Streamlit): one colour per dataset (`palette`), similarity and pruning histograms
(`explore`), the map (`maps`) and results (`results`). The palette and explore builders are re-exported here."""
from clipsim.plots.explore import (
    BOUND_COLOUR,
    DEFAULT_BINS,
    THRESHOLD_COLOUR,
    post_prune_histogram,
    removal_curve,
    similarity_histogram,
)
from clipsim.plots.palette import REFERENCE_COLOUR, TEST_PALETTE, TRAIN_PALETTE, dataset_colours, workspace_colours

__all__ = ["BOUND_COLOUR", "DEFAULT_BINS", "REFERENCE_COLOUR", "TEST_PALETTE", "THRESHOLD_COLOUR", "TRAIN_PALETTE",
           "dataset_colours", "post_prune_histogram", "removal_curve", "similarity_histogram", "workspace_colours"]

"""One colour per dataset, the same in every plot and badge: histograms, the map, the galleries and the report.

Colours follow the registry, never what a view happens to show: the reference train set is always
REFERENCE_COLOUR, the other train sets take TRAIN_PALETTE and the test sets TEST_PALETTE in registry order.
"""
from __future__ import annotations

REFERENCE_COLOUR = "#4c78a8"  # the curated/ImageNet-like reference: calm blue, as in the paper's figures
TRAIN_PALETTE = ["#e45756", "#f58518", "#54a24b", "#b279a2", "#9d755d", "#72b7b2"]  # web sets, registry order
TEST_PALETTE = ["#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#17becf", "#bcbd22"]


def dataset_colours(trains: list[str], tests: list[str] | tuple = (), reference: str | None = None) -> dict[str, str]:
    """A colour per dataset name.

    Args:
        trains: every train set, in registry order (ws.dataset_names("train")), not only those drawn.
        tests: every test set, in registry order.
        reference: the reference train set.

    Returns:
        {name: '#rrggbb'}.
    """
    others = [n for n in trains if n != reference]
    colours = {n: TRAIN_PALETTE[i % len(TRAIN_PALETTE)] for i, n in enumerate(others)}
    colours.update({n: TEST_PALETTE[i % len(TEST_PALETTE)] for i, n in enumerate(tests)})
    if reference in trains:
        colours[reference] = REFERENCE_COLOUR
    return colours


def workspace_colours(ws) -> dict[str, str]:
    """dataset_colours of every dataset a workspace registers, with its reference."""
    return dataset_colours(ws.dataset_names("train"), ws.dataset_names("test"), ws.reference)

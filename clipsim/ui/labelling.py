"""Labelling widgets of the Similarity and Neighbours pages: the next (test image, nearest neighbour) pair with
keyboard shortcuts 1-4, the precision/recall-vs-tau plot computed from the labels, and label CSV exchange.
"""
from __future__ import annotations

import tempfile
from html import escape
from pathlib import Path

import numpy as np
import streamlit as st

from clipsim import labels
from clipsim.errors import ClipsimError
from clipsim.images import dataset_thumbs
from clipsim.labels import exchange, store
from clipsim.names import read_only
from clipsim.plots.evidence import precision_recall_figure
from clipsim.ui.state import BIND

SHORTCUTS = dict(zip(store.LABELS, "1234"))
ICONS = {"duplicate": ":material/content_copy:", "near-duplicate": ":material/filter_none:",
         "same concept": ":material/category:", "different": ":material/close:"}
PAIR_THUMB = 160  # px: big enough to judge a near-duplicate


def _stamp(ws) -> int:
    path = ws.path(*store.DB)
    return path.stat().st_mtime_ns if path.exists() else 0


def _inputs(ws, test: str, train: str) -> tuple:
    """What the labels of test vs train are read against: (workspace root, labels database mtime, search fingerprint,
    similarity model fingerprint); the caches below hold until one of them changes."""
    return (str(ws.root.resolve()), _stamp(ws), ws.search_result(test, train).fingerprint,
            labels.model_fingerprint(ws, train))


@st.cache_data(show_spinner=False, max_entries=8)
def _population(inputs: tuple, test: str, train: str, _ws) -> labels.Population:
    return labels.load_population(_ws, test, train)


def population(ws, test: str, train: str) -> labels.Population:
    """labels.load_population, cached until a label is stored, the search changes or the train set is re-embedded
    (every rerun read it twice: for the next pair, and for the precision at tau)."""
    return _population(_inputs(ws, test, train), test, train, ws)


@st.cache_data(show_spinner=False, max_entries=32)
def _calibration(inputs: tuple, test: str, train: str, target: float, _ws) -> labels.Calibration:
    return labels.calibrate(_ws, test, train, target_precision=target, population=population(_ws, test, train))


def calibration(ws, test: str, train: str, target: float) -> labels.Calibration:
    """labels.calibrate, cached like `population`."""
    return _calibration(_inputs(ws, test, train), test, train, float(target), ws)


def calibration_plot(ws, test: str, train: str, tau: float, key: str) -> labels.Calibration:
    """Precision and recall against tau from the labels of `test`, the current tau marked, with the numbers that
    matter at tau: labelled pairs, estimated duplicates above tau and the tau that reaches the target precision.

    Returns:
        The calibration shown.
    """
    target = float(st.number_input("Target precision", 0.5, 1.0, 0.95, step=0.01, format="%.2f",
                                   key=f"{key}_target", bind=BIND))
    result = calibration(ws, test, train, target)
    at_tau = labels.calibrate(ws, test, train, [tau], target, population(ws, test, train)).table.iloc[0] \
        if result.used else None
    cols = st.columns(3)
    cols[0].metric("Labelled pairs used", f"{result.used:,}",
                   help=f"{result.simulated} simulated from planted truth; {result.outside} labelled outside the "
                        f"sample, {result.other} not nearest pairs, {result.stale} under another model: not used")
    if at_tau is not None and at_tau["n_labelled"]:
        cols[1].metric("Precision at τ", f"{at_tau['precision']:.1%}",
                       help=f"95% interval {at_tau['precision_low']:.1%} – {at_tau['precision_high']:.1%}; "
                            f"estimated {at_tau['estimated_duplicates']:.0f} true duplicates among "
                            f"{int(at_tau['n_above'])} test images above τ")
    else:
        cols[1].metric("Precision at τ", "–", help="no labelled pair above τ yet")
    cols[2].metric(f"τ for precision ≥ {target:.0%}", "–" if result.tau_target is None else f"{result.tau_target:.3f}",
                   help="lowest τ from which the precision interval stays at or above the target "
                        f"(point estimate: {result.tau_target_estimate})")
    st.plotly_chart(precision_recall_figure(result.table, tau, target), key=f"{key}_pr")
    if result.simulated:
        st.caption(f"{result.simulated} of these labels are SIMULATED from the demo's planted ground truth.")
    return result


def _store_label(ws, test: str, train: str, pair: dict, label: str, key: str) -> None:
    try:
        labels.label_pair(ws, test, train, pair["test_key"], pair["train_key"], label,
                          st.session_state.get(f"{key}_who") or "user", pair["tau"])
    except ClipsimError as err:
        st.session_state[f"{key}_error"] = str(err)


def pair_html(ws, test: str, train: str, pair: dict, size: int = PAIR_THUMB) -> str:
    """The test image beside its neighbour with keys and similarity (HTML with data-testid cs-label-pair)."""
    left = dataset_thumbs(ws, test, np.array([pair["test_row"]]), size)[0]
    right = dataset_thumbs(ws, train, np.array([pair["train_row"]]), size)[0]
    cells = "".join(f'<figure style="margin:0;text-align:center">{thumb.html(size, k)}<figcaption style="font-size:'
                    f'11px;opacity:.75">{escape(name)} · {escape(k)}</figcaption></figure>'
                    for thumb, name, k in ((left, test, pair["test_key"]), (right, train, pair["train_key"])))
    return (f'<div data-testid="cs-label-pair" data-key="{escape(pair["test_key"])}" style="display:flex;gap:14px;'
            f'align-items:center">{cells}<div style="font-size:20px;font-weight:650" data-testid="cs-label-sim">'
            f'{pair["similarity"]:.4f}</div></div>')


def labeller(ws, test: str, train: str, tau: float, key: str) -> None:
    """The next pair to label under the sampler centred on tau, with one button per label (shortcuts 1-4)."""
    if read_only():
        st.caption("Read-only presentation mode: labelling is disabled.")
        return
    if f"{key}_error" in st.session_state:
        st.error(st.session_state.pop(f"{key}_error"))
    try:
        todo = labels.next_pairs(ws, test, train, tau, 1, population(ws, test, train))
    except ClipsimError as err:
        st.error(str(err))
        return
    if todo.empty:
        st.success(f"Every pair of {test} is labelled.")
        return
    pair = todo.iloc[0].to_dict()
    left, right = st.columns([3, 2], vertical_alignment="center")
    left.html(pair_html(ws, test, train, pair))
    with right:
        st.text_input("Labeller", "user", key=f"{key}_who")
        grid = st.columns(2)
        for i, label in enumerate(store.LABELS):
            grid[i % 2].button(f"{label} ({SHORTCUTS[label]})", key=f"{key}_{label}", shortcut=SHORTCUTS[label],
                               icon=ICONS[label], width="stretch", on_click=_store_label,
                               args=(ws, test, train, pair, label, key))
    st.caption("Pairs come in the sampler's order (stratified over similarity, concentrated near τ): label each to "
               "get the next; the keys 1-4 choose a label.")


def label_files(ws, test: str, train: str, key: str) -> None:
    """Download the labels of test vs train as CSV; import a label CSV (neither in read-only presentation mode: the
    labels stay the labellers' until the study shares them; `python -m clipsim label --export` writes them)."""
    if read_only():
        st.caption("Read-only presentation mode: label files are not offered here.")
        return
    frame = exchange.export_frame(ws, test, train)
    st.download_button(f"Labels of {test} (CSV, {len(frame)})", frame.to_csv(index=False),
                       file_name=f"labels-{test}-{train}.csv", mime="text/csv", key=f"{key}_dl",
                       icon=":material/download:", on_click="ignore")
    upload = st.file_uploader("Import labels (CSV)", type=["csv"], key=f"{key}_up")
    if upload is not None and st.button("Import", key=f"{key}_import"):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(upload.name).name
            path.write_bytes(upload.getvalue())
            try:
                st.success(f"Stored {exchange.import_labels_csv(ws, path)} labels from {upload.name}")
            except ClipsimError as err:
                st.error(str(err))

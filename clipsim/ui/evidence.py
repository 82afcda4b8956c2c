"""Results-page sections that separate effects from noise: accuracy per model with intervals and seeds, each pruned
model against its random control (paired bootstrap), accuracy by s_web(t), and the images the full-web model gets
right and a pruned model wrong, beside their nearest web neighbours.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from clipsim import views
from clipsim.errors import ClipsimError
from clipsim.plots.evidence import accuracy_by_similarity_figure, paired_difference_figure
from clipsim.runs import compare
from clipsim.runs.predictions import PREDICTIONS
from clipsim.runs.results import RESULTS_FILE
from clipsim.ui import gallery
from clipsim.ui.state import BIND

THUMB, TEST_THUMB, K, SHOWN = 80, 96, 4, 12  # gallery px, nearest web neighbours shown, images shown


def _stamp(ws) -> tuple:
    """Changes whenever results or predictions are rewritten (atomic renames touch their folders)."""
    paths = [ws.path(*RESULTS_FILE), ws.path(*PREDICTIONS)]
    paths += sorted(ws.path(*PREDICTIONS).glob("*")) if paths[1].is_dir() else []
    return tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in paths)


@st.cache_data(show_spinner="Bootstrapping intervals…", max_entries=8)
def _summary(root: str, stamp: tuple, _ws, _frame: pd.DataFrame) -> pd.DataFrame:
    return compare.arm_intervals(_ws, _frame)


def summary(ws, frame: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per model and test set: mean and sd over seeds with a 95% interval (cached until results change)."""
    return _summary(str(ws.root.resolve()), _stamp(ws), ws, frame)


@st.cache_data(show_spinner="Paired bootstrap…", max_entries=8)
def _comparisons(root: str, stamp: tuple, _ws, _frame: pd.DataFrame) -> pd.DataFrame:
    return compare.compare_pairs(_ws, _frame)


def control_comparisons(ws, frame: pd.DataFrame) -> None:
    """Each pruned model against its random control, per test set: difference, 95% interval, p-value."""
    table = _comparisons(str(ws.root.resolve()), _stamp(ws), ws, frame)
    if table.empty:
        st.caption("No pruned model with a random control of the same size has per-image predictions yet (queue one "
                   "on the Runs page with 'Also a random control'; runs evaluated before predictions were kept need "
                   "evaluating again).")
        return
    st.plotly_chart(paired_difference_figure(table), key="results_paired")
    st.dataframe(table, hide_index=True, width="stretch", key="results_paired_table", column_config={
        **{c: st.column_config.NumberColumn(c, format="percent") for c in ("accuracy_a", "accuracy_b")},
        **{c: st.column_config.NumberColumn(c, format="%+.4f") for c in ("diff", "ci_low", "ci_high")},
        "p_value": st.column_config.NumberColumn("p", format="%.4f")})
    st.caption("Paired bootstrap over test images (each image's correctness averaged over a model's seeds): an "
               "interval that excludes 0 is a difference beyond the noise of which test images were drawn.")


def by_similarity(ws, frame: pd.DataFrame, tests: list[str]) -> None:
    """Accuracy of every model within equal-count bins of s_web(t) on one test set, with the chance level."""
    test = st.selectbox("Test set", tests, key="results_sim_test", bind=BIND)
    try:
        web = ws.web_set()
        bins = compare.accuracy_by_similarity(ws, frame, test, web)
    except ClipsimError as err:
        st.info(str(err), icon=":material/info:")
        return
    if bins.empty:
        st.caption("No per-image predictions stored yet: evaluate the runs again to see this plot.")
        return
    rows = frame[frame["test"] == test]
    chance = 1.0 / rows["classes"].iloc[0] if len(rows) and rows["classes"].iloc[0] > 0 else None
    st.plotly_chart(accuracy_by_similarity_figure(bins, chance, f"Accuracy on {test} against s_{web}(t)"),
                    key="results_by_sim")
    right_wrong_gallery(ws, frame, test, web)


def right_wrong_gallery(ws, frame: pd.DataFrame, test: str, web: str) -> None:
    """Test images one model gets right and another wrong, most similar to the web set first, with neighbours."""
    models = list(compare.model_runs(frame))
    if len(models) < 2:
        return
    full = models.index("full web") if "full web" in models else 0
    left, right = st.columns(2)
    good = left.selectbox("Right by", models, index=full, key="results_good", bind=BIND)
    bad = right.selectbox("Wrong by", models, index=next(i for i, m in enumerate(models) if m != good),
                          key="results_bad", bind=BIND)
    table = compare.right_wrong(ws, frame, good, bad, test, web)
    st.markdown(f"**{len(table)}** {test} images that `{good}` gets right and `{bad}` gets wrong (majority over "
                f"seeds), most similar to {web} first; each beside its nearest {web} images.")
    if table.empty:
        return
    nn = views.load_test_neighbours(ws, test)
    rows = [nn.row_of(k) for k in table["key"].head(SHOWN)]
    page_rows = views.gallery_rows(ws, nn, [r for r in rows if r is not None], K, THUMB, [web], None, TEST_THUMB)
    gallery.show(gallery.gallery_html(page_rows, THUMB, TEST_THUMB))

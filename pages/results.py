"""Results: zero-shot accuracy of every trained model per test set, against the share pruned, and ID vs OOD."""
import streamlit as st

from clipsim.plots import results as plots_results
from clipsim.runs.results import latest_per_run, results_frame
from clipsim.ui import evidence, loaders, share
from clipsim.ui.nav import page_setup
from clipsim.ui.runs import HAS_KALEIDO, PNG_NOTE, figure_downloads
from clipsim.ui.state import BIND

page_setup(__file__)
st.title("Results")
st.caption("Zero-shot top-1 of CLIP models retrained on the full web set, on pruned sets and on random subsets of "
           "the same size. If pruning the images most similar to a benchmark barely lowers its accuracy, train-test "
           "similarity does not explain the model's robustness.")
ws = loaders.workspace()
share.report_button(ws)
frame = results_frame(ws)
if frame.empty:
    st.info("No zero-shot results yet. Queue a prune → train → evaluate run on the Runs page, or from the command "
            "line:", icon=":material/info:")
    st.code(f"python -m clipsim train --workspace {ws.root} --manifest full --wait\n"
            f"python -m clipsim evaluate --workspace {ws.root} --run RUN_ID --wait", language="bash")
    st.stop()

latest = latest_per_run(frame)
tests = list(dict.fromkeys(latest["test"]))
st.subheader("Accuracy per test set")
st.dataframe(plots_results.bars_table(frame), hide_index=True, width="stretch", key="results_table")
summary = evidence.summary(ws, frame)
bars = plots_results.accuracy_bars(frame, summary=summary)
st.plotly_chart(bars, key="results_bars")
st.caption("Bars: mean over training seeds; error bars: 95% bootstrap interval over test images; dots: single seeds; "
           "dashes: chance (1 / classes).")
figure_downloads(bars, summary, "accuracy_per_test_set", "dl_bars")

st.subheader("Pruned against its random control")
evidence.control_comparisons(ws, frame)

st.subheader("Accuracy against the share pruned")
test = st.selectbox("Test set", [None, *tests], format_func=lambda t: "mean over test sets" if t is None else t,
                    key="results_pruned_test", bind=BIND)
pruned = plots_results.accuracy_vs_pruned(frame, test)
st.plotly_chart(pruned, key="results_pruned")
st.caption("Pruned sets (solid) against random subsets of the same size (dashed grey), both starting at the full "
           "web set (blue; the lines start at the mean when it was trained more than once).")
figure_downloads(pruned, plots_results.pruned_table(frame, test), "accuracy_vs_pruned", "dl_pruned")

st.subheader("In- vs out-of-distribution accuracy")
default_id = tests.index("val") if "val" in tests else 0
id_test = st.selectbox("In-distribution test set", tests, index=default_id, key="results_id_test", bind=BIND)
robust = plots_results.effective_robustness(frame, id_test)
st.plotly_chart(robust, key="results_robust")
figure_downloads(robust, plots_results.robustness_table(frame, id_test), "effective_robustness", "dl_robust")
if not HAS_KALEIDO:
    st.caption(PNG_NOTE)

st.subheader("Accuracy against similarity to the web set")
st.caption("Does a test image's closeness to the web set explain whether a model gets it right? Accuracy within "
           "equal-count bins of s_web(t), per model.")
evidence.by_similarity(ws, frame, tests)

with st.expander("All result rows"):
    st.dataframe(frame, hide_index=True, width="stretch", key="results_rows")
    st.download_button("All rows (CSV)", frame.to_csv(index=False), file_name="results.csv", mime="text/csv",
                       key="dl_rows", icon=":material/download:", on_click="ignore")

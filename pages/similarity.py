"""Similarity: per test set, s_D(t) for every train set (the paper's main figure) and a live threshold cut."""
import numpy as np
import streamlit as st

from clipsim import plots, views
from clipsim.search import result as searches
from clipsim.ui import gallery, labelling, loaders, pruning
from clipsim.ui.nav import page_setup
from clipsim.ui.state import BIND

PAIRS, PAIR_THUMB, GRID = 6, 80, 3  # pairs each side of the threshold, their thumbnail px, histograms per row

page_setup(__file__)
st.title("Similarity")
st.caption("s_D(t) = max over x in D of cos(t, x): how close each test image's nearest training image is. "
           "Where the web set is closer than the curated reference, web data may explain benchmark performance.")
ws, tests, ref = loaders.explore_context()
nns = {t: loaders.test_neighbours(ws, t) for t in tests}
webs = loaders.searched_web_sets(ws, tests, ref)
colours = plots.workspace_colours(ws)
if ref is None:
    st.info("No reference train set is set, so web and curated coverage cannot be compared. "
            f"Search with one: `python -m clipsim search --workspace {ws.root} --reference curated`.",
            icon=":material/info:")

summary = loaders.similarity_summary(nns, ref)
share_cols = [c for c in summary.columns if c.startswith("share")]
st.dataframe(summary, hide_index=True, width="stretch", column_config={
    **{c: st.column_config.NumberColumn(c, format="%.3f") for c in summary.columns if c.startswith("median")},
    **{c: st.column_config.ProgressColumn(c, format="percent", min_value=0.0, max_value=1.0) for c in share_cols}})

st.subheader("Threshold")
web = webs[0] if len(webs) == 1 else st.selectbox("Web set", webs, key="web", bind=BIND)
stats = loaders.prune_stats(ws, web, tests, ref if searches.has_margins(ws, web, tests, ref) else None)
sorted_s = {t: loaders.sorted_similarity(nns[t], web)[0] for t in tests}
lo, hi = loaders.sim_bounds(list(nns.values()))
default = round(float(np.percentile(np.concatenate(list(sorted_s.values())), 90)), 2)
tau = pruning.threshold_input(f"Threshold τ on s_{web}(t)", "tau", default, lo, hi,
                              help_text="Test images whose web neighbour is above τ; web samples x with "
                                        "max_t cos(x, t) > τ")
counts = views.threshold_counts(sorted_s, stats, tau)
combined, bounds = counts.iloc[-1], counts.attrs.get("bounds")
m = st.columns(3)
m[0].metric(f"Test images with s_{web}(t) > τ", f"{int(combined['above']):,}",
            help=f"of {int(combined['test_images']):,} test images in {len(tests)} test sets")
m[1].metric("Web samples removed (combined)", pruning.count_text(combined["web_removed"], bounds),
            help="max_t cos(x, t) > τ over all test sets (PruneStats.combined_count)")
m[2].metric("Share of web removed", f"{bounds[0] / stats.n:.2%} – {bounds[1] / stats.n:.2%}" if bounds else
            f"{combined['share_of_web']:.2%}", help=f"of {stats.n:,} {web} samples")
pruning.combined_notice(ws, stats, "m")
st.dataframe(counts, hide_index=True, width="stretch", key="threshold_counts", column_config={
    "test_images": st.column_config.NumberColumn("test images"),
    "above": st.column_config.NumberColumn("test images > τ"),
    "share_above": st.column_config.NumberColumn("share > τ", format="percent"),
    "web_removed": st.column_config.NumberColumn(f"{web} samples removed"),
    "share_of_web": st.column_config.NumberColumn(f"share of {web}", format="percent")})

st.subheader("Nearest-neighbour similarity per test set")
for start in range(0, len(tests), GRID):
    cols = st.columns(GRID)
    for col, test in zip(cols, tests[start : start + GRID]):
        nn = nns[test]
        fig = plots.similarity_histogram({t: nn.nn(t) for t in nn.trains}, ref, title=test, threshold=tau,
                                         colours=colours)
        col.plotly_chart(fig, width="stretch", key=f"hist_{test}")

st.subheader("Is τ right? Label pairs")
st.caption("How many test images above τ have a real (near-)duplicate as their nearest web image? Label the pairs "
           "the sampler proposes; precision and recall per τ, with 95% intervals that respect how pairs were sampled, "
           "update as you go.")
label_test = st.selectbox("Test set to label", tests, key="label_test", bind=BIND)
labelling.calibration_plot(ws, label_test, web, tau, "sim_cal")
labelling.labeller(ws, label_test, web, tau, "sim_lab")
with st.expander("Label files (CSV)"):
    labelling.label_files(ws, label_test, web, "sim_files")

st.subheader("Pairs at the threshold")
pair_test = st.selectbox("Test set", tests, key="pairs", bind=BIND)
s_sorted, order = loaders.sorted_similarity(nns[pair_test], web)
above, below = views.threshold_neighbours(s_sorted, order, tau, PAIRS)
for col, side, rows, text in zip(st.columns(2), ("above", "below"), (above, below),
                                 (f"s_{web}(t) > {tau:.4f}", f"s_{web}(t) ≤ {tau:.4f}")):
    col.markdown(f"**Just {side} τ** · {text} · each pair: the test image, then its nearest {web} image")
    pairs = loaders.nearest_pairs(ws, nns[pair_test], web, rows, PAIR_THUMB)
    with col:
        gallery.show(gallery.pairs_html(pairs, PAIR_THUMB, side, web))

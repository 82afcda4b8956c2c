"""Dedup: SemDeDup on the web set: within-cluster maximum similarity, a live eps cut, the pairs either side of it,
cluster sizes, and saving the cut as a dedup manifest (a job)."""
import streamlit as st

from clipsim.dedup.pipeline import DedupOptions, default_eps
from clipsim.dedup.stats import default_manifest_name
from clipsim.dedup.view import cut_pairs, eps_range
from clipsim.errors import ClipsimError
from clipsim.plots import dedup as dedup_plots
from clipsim.ui import dedup as cached
from clipsim.ui import gallery, loaders, share
from clipsim.ui.common import can_write
from clipsim.ui.jobs import job_monitor, launch_button
from clipsim.ui.nav import page_setup
from clipsim.ui.pruning import threshold_input
from clipsim.ui.state import BIND

PAIRS, PAIR_THUMB = 6, 80  # pairs each side of the cut, their thumbnail px

page_setup(__file__)
st.title("Dedup")
st.caption("SemDeDup, as the study used it before any pruning: spherical k-means (faiss), then inside each cluster a "
           "sample is removed when its cosine similarity to an earlier member (farthest from the centroid first) "
           "exceeds 1 − ε. Every similarity is exact; the counts follow ε live.")
ws = loaders.workspace()
share.report_button(ws)
if not ws.dataset_names("train"):
    st.info("Register a web train set first (or build the demo):", icon=":material/info:")
    st.code(f"python -m clipsim register --workspace {ws.root} --name web --role train --kind wds --source DIR",
            language="bash")
    st.stop()
webs = [n for n in ws.dataset_names("train") if ws.embeddings(n, required=False) is not None]
if not webs:
    st.info("No embedded train set yet. Embed the datasets first:", icon=":material/info:")
    st.code(f"python -m clipsim embed --workspace {ws.root}", language="bash")
    st.stop()
done = cached.computed(ws)
if done.empty:
    st.info("No dedup statistics yet. Compute them (k-means, then exact within-cluster maxima) as a job, or run:",
            icon=":material/info:")
    st.code(f"python -m clipsim dedup --workspace {ws.root} --dataset {webs[0]} --name dedup", language="bash")
    web = st.selectbox("Set to deduplicate", webs, key="web", bind=BIND)
    launch_button(ws, "Compute dedup statistics", "dedup", DedupOptions(web).params(), key="dedup_compute")
    job_monitor(ws, kinds=["dedup", "dedup-array", "dedup-part"], key="dedup_jobs")
    st.stop()

labels = [f"{r.web} · {r.clusters} clusters · keep {r.keep}" for r in done.itertuples()]
pick = st.selectbox("Statistics", range(len(done)), format_func=labels.__getitem__, key="stats", bind=BIND) or 0
row = done.iloc[pick].to_dict()
try:
    stats = cached.dedup_stats(ws, row)
except ClipsimError as err:
    st.error(str(err))
    st.stop()
if stats.stale_reasons():
    st.warning(f"Stale dedup statistics, shown as stored: {'; '.join(stats.stale_reasons())}. Re-run "
               f"`python -m clipsim dedup --workspace {ws.root} --dataset {stats.web} --clusters {stats.clusters} "
               "--name NAME` to recompute them.", icon=":material/warning:")
lo, hi = eps_range(stats)
eps = threshold_input("ε (remove when similarity to an earlier member > 1 − ε)", "eps",
                              min(max(default_eps(ws), lo), hi), lo, hi, step=0.001)
s = stats.summary(eps)
m = st.columns(4)
m[0].metric("Samples removed", f"{s['removed']:,}", help="similarity to an earlier member of the cluster > 1 − ε")
m[1].metric("Samples kept", f"{s['kept']:,}", help=f"of {stats.n:,} {stats.web} samples")
m[2].metric("Share removed", f"{s['share']:.2%}")
m[3].metric("Cut at cosine", f"{1 - eps:.4f}")
hist = stats.histogram
st.plotly_chart(dedup_plots.within_histogram(hist["edges"], hist["earlier"], hist["any"], 1 - eps), width="stretch",
                key="dedup_hist")

st.subheader("Pairs at the cut")
above, below = cut_pairs(ws, stats, eps, PAIRS, PAIR_THUMB)
for col, side, pairs, text in zip(st.columns(2), ("above", "below"), (above, below),
                                  ("removed: the sample beside the earlier member it duplicates",
                                   "kept: the closest earlier member is not close enough")):
    col.markdown(f"**Just {side} the cut** · {text}")
    with col:
        gallery.show(gallery.pairs_html(pairs, PAIR_THUMB, side, train="earlier member", first="sample"))

st.subheader("Cluster sizes")
st.caption(f"{s['clusters']:,} non-empty clusters; largest {s['largest']:,} samples, {s['singletons']:,} singletons. "
           "Within-cluster dedup never compares samples of different clusters.")
st.plotly_chart(dedup_plots.cluster_sizes(stats.sizes), width="stretch", key="dedup_sizes")

st.subheader("Save as a dedup manifest")
if can_write("saving dedup manifests"):
    name = st.text_input("Manifest name", default_manifest_name(eps, stats.clusters, stats.keep))
    overwrite = st.checkbox("Overwrite a manifest of that name", key="dedup_overwrite")
    exact = st.checkbox("Also count the exact global ε-pairs the clustering split (O(n²))", key="dedup_global")
    made = {k: stats.cluster_config[k] for k in ("seed", "niter", "sample") if k in stats.cluster_config}
    opts = DedupOptions(stats.web, stats.clusters, eps, stats.keep, name=name, overwrite=overwrite, exact_global=exact,
                        **made)  # the clustering's own settings: the job reuses it instead of training again
    launch_button(ws, "Save manifest (job)", "dedup", opts.params(), key="dedup_save",
                  help_text="a job reuses the stored statistics and writes W/manifests/NAME")
job_monitor(ws, kinds=["dedup", "dedup-array", "dedup-part"], limit=5, key="dedup_jobs")

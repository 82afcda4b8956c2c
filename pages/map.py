"""Map: a 2-D UMAP of test and train embeddings (a stored job result, never refitted here); select a region to see
its images beside their neighbours."""
import streamlit as st

from clipsim.maps import compute as mapping
from clipsim.ui import loaders, maps, share, tagging
from clipsim.ui.nav import page_setup
from clipsim.ui.state import BIND

COLOUR_LABELS = {"dataset": "Dataset", "class": "Class", "domain": "Domain", "similarity": "Similarity",
                 "manifest": "Manifest"}

page_setup(__file__)
st.title("Map")
st.caption("Test images (◆) and training images (●) embedded in 2-D with UMAP. Clusters where test diamonds sit "
           "inside web points are where the web set covers a benchmark. Drag a box or lasso to see the images.")
ws = loaders.workspace()
share.report_button(ws)
if not mapping.embedded_datasets(ws):
    st.info("No dataset is embedded yet, so there is nothing to map. Embed every dataset:", icon=":material/info:")
    st.code(f"python -m clipsim embed --workspace {ws.root}", language="bash")
    st.stop()
names = mapping.list_maps(ws)
if not names:
    st.info("No map yet. Computing one fits UMAP on a stratified sample of up to "
            f"{mapping.DEFAULT_SAMPLE:,} points and places the rest (a job; minutes on a CPU).", icon=":material/info:")
    maps.compute_controls(ws)
    st.stop()

name = st.selectbox("Map", names, key="map", bind=BIND) if len(names) > 1 else names[0]
info = mapping.load_map(ws, name)
stale = maps.stale_reasons(ws, info)
if stale:
    st.warning(f"This map is stale ({'; '.join(stale)}): it shows the embeddings as they were. Recompute it below.",
               icon=":material/warning:")
points, total = maps.points(ws, info)
manifests = list(loaders.manifests(ws)["name"])

c = st.columns([2.4, 1.1, 2])
colour = c[0].segmented_control("Colour by", list(COLOUR_LABELS), format_func=COLOUR_LABELS.get, default="dataset",
                                required=True, key="colour", bind=BIND) or "dataset"
manifest = None
if colour == "manifest":
    manifest = c[1].selectbox("Manifest", manifests, key="manifest", bind=BIND, index=0 if manifests else None,
                              placeholder="no manifest saved")
datasets = list(dict.fromkeys(points["dataset"]))
shown = c[2].multiselect("Datasets", datasets, default=datasets, key="show", bind=BIND) or datasets
if colour == "manifest" and manifest is None:
    st.caption("No manifest is saved yet: save one on the Prune page to see what it removes.")

shapes = maps.url_shapes()
fig, view, chosen = maps.figure(ws, info, points, colour, shown, manifest, shapes)
st.plotly_chart(fig, key=maps.CHART, on_select=maps.on_select(view), selection_mode=("points", "box", "lasso"),
                config={"displaylogo": False, "scrollZoom": True})
fitted = sum(info.config["sample_sizes"].values())
placed = "the rest placed with its transform" if info.config.get("place", True) else "the fitted sample only"
st.caption(f"Map `{name}`: {info.config['points']:,} points, UMAP fitted on {fitted:,} (stratified by dataset), "
           f"{placed}; computed {info.config['created']}. "
           + (f"Showing a stratified subset of {len(points):,} of {total:,} points." if len(points) < total
              else f"Showing all {total:,} points."))

st.subheader("Selection")
if not shapes:
    st.caption("Drag a box or a lasso on the map (or click a point) to see those images beside their neighbours.")
elif not len(chosen):
    st.caption("No drawn point is inside the selection.")
else:
    counts = view.iloc[chosen]["dataset"].value_counts(sort=False)
    st.markdown(f"**{len(chosen):,}** points selected: " + ", ".join(f"{n} {d}" for d, n in counts.items()))
    maps.selection_gallery(ws, view, chosen)
    tagging.tag_images(ws, view.iloc[chosen][["dataset", "key"]], "map_tags", pick=False)

with st.expander("Compute a new map", expanded=bool(stale)):
    maps.compute_controls(ws)

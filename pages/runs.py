"""Runs: queue prune -> train -> evaluate chains, watch the jobs and the live training loss."""
import streamlit as st

from clipsim import prune
from clipsim.errors import ClipsimError
from clipsim.names import read_only
from clipsim.runs import pipeline
from clipsim.ui import loaders
from clipsim.ui.jobs import job_monitor
from clipsim.ui.runs import preset_form, rule_form, training_progress
from clipsim.ui.state import BIND

st.title("Runs")
st.caption("Retrain CLIP (OpenCLIP's trainer) on pruned web sets and evaluate it zero-shot, as in the paper: "
           "the pruned set, a random subset of the same size as control, and the full web set.")
ws = loaders.workspace()
tests = ws.dataset_names("test")
if not tests or not ws.dataset_names("train"):
    st.info("Register a web train set and test sets first (or build the demo):", icon=":material/info:")
    st.code(f"python -m clipsim demo --workspace {ws.root}", language="bash")
    st.stop()

st.subheader("Queue a run")
if read_only():
    st.info("Read-only presentation mode: launching runs is disabled here. Results of finished runs are on the "
            "Results page.", icon=":material/lock:")
else:
    manifests = prune.list_manifests(ws)
    source = st.segmented_control("Train on", ["rule", "manifest"], default="rule", required=True, key="runs_source",
                                  bind=BIND,
                                  format_func={"rule": "a new pruning rule", "manifest": "an existing manifest"}.get)
    rule, rule_params, chosen, manifest = None, None, None, None
    if source == "manifest" and len(manifests):
        manifest = st.selectbox("Manifest", list(manifests["name"]), key="runs_manifest", bind=BIND)
    elif source == "manifest":
        st.caption("No manifest saved yet: make one on the Prune page or pick a rule.")
    else:
        rule, rule_params, chosen = rule_form(ws, tests)
        manifest = st.text_input("Manifest name", pipeline.manifest_name(rule, rule_params,
                                                                         None if chosen == tests else chosen),
                                 key=f"runs_name_{rule}")
        if manifest in set(manifests["name"]):
            st.caption(f"Manifest `{manifest}` exists and is reused as saved; rename it to prune anew.")
    preset, overrides = preset_form(ws)
    left, right = st.columns(2)
    control = left.checkbox("Also a random control of the same size", value=True, key="runs_control", bind=BIND,
                            disabled=rule == "random")
    full = right.checkbox("Also the full web set", value=True, key="runs_full", bind=BIND)
    if st.button("Queue prune → train → evaluate", type="primary", key="runs_launch",
                 disabled=manifest is None and not full):
        try:
            queued = pipeline.queue_pipeline(ws, manifest=manifest, rule=rule, rule_params=rule_params,
                                             tests=None if chosen == tests else chosen, preset=preset,
                                             overrides=overrides, random_control=control and rule != "random",
                                             include_full=full)
            st.success("Queued " + ", ".join(f"{j.kind} `{j.id}`" for j in queued))
        except (ClipsimError, ValueError) as err:
            st.error(str(err))

st.subheader("Jobs")
job_monitor(ws, kinds=["prune", "train", "evaluate"], key="runs_jobs")
st.subheader("Training")
training_progress(ws)

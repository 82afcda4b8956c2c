"""Runs: queue prune -> train -> evaluate chains, watch the jobs and the live training loss."""
from dataclasses import replace

import streamlit as st

from clipsim.errors import ClipsimError
from clipsim.names import check_name, read_only
from clipsim.prune.rules import default_name
from clipsim.runs import pipeline
from clipsim.ui import loaders, pruning, share
from clipsim.ui.jobs import job_monitor
from clipsim.ui.nav import page_setup
from clipsim.ui.runs import preset_form, training_progress
from clipsim.ui.state import BIND

page_setup(__file__)
st.title("Runs")
st.caption("Retrain CLIP (OpenCLIP's trainer) on pruned web sets and evaluate it zero-shot, as in the paper: "
           "the pruned set, a random subset of the same size as control, and the full web set.")
ws = loaders.workspace()
share.report_button(ws)
tests = ws.dataset_names("test")
if not tests or not ws.web_sets():
    st.info("Register a web train set and test sets first (or build the demo):", icon=":material/info:")
    st.code(f"python -m clipsim demo --workspace {ws.root}", language="bash")
    st.stop()

st.subheader("Queue a run")
if read_only():
    st.info("Read-only presentation mode: launching runs is disabled here. Results of finished runs are on the "
            "Results page.", icon=":material/lock:")
else:
    manifests = loaders.manifests(ws)
    source = st.segmented_control("Train on", ["rule", "manifest"], default="rule", required=True, key="runs_source",
                                  bind=BIND,
                                  format_func={"rule": "a new pruning rule", "manifest": "an existing manifest"}.get)
    web = ws.web_set()
    base = st.selectbox("Start from", [None, *manifests["name"]], key="runs_base", bind=BIND,
                        format_func=lambda b: f"the whole {web} set" if b is None else f"manifest {b}",
                        help="The study pruned and trained on the deduplicated web set: pick the dedup manifest. The "
                             "rule then prunes its kept samples, the control is drawn from them, and the 'full' run "
                             "trains on it.")
    spec, manifest, name_error = None, None, None
    if source == "manifest" and len(manifests):
        manifest = st.selectbox("Manifest", list(manifests["name"]), key="runs_manifest", bind=BIND)
    elif source == "manifest":
        st.caption("No manifest saved yet: make one on the Prune page or pick a rule.")
    else:
        rule = pruning.rule_input(prefix="runs_")
        st.caption(pruning.RULE_HELP[rule] + (f" Reference set: `{ws.reference or 'not set'}`."
                                              if rule == "similarity-gap" else ""))
        spec = replace(pruning.rule_spec_input(rule, loaders.dataset_count(ws, web), tests, list(manifests["name"]),
                                               web, prefix="runs_"), base=base)
        manifest = st.text_input("Manifest name", default_name(spec), key=f"runs_name_{default_name(spec)}")
        try:
            check_name(manifest, "manifest")
        except ClipsimError as err:
            name_error = str(err)
            st.error(name_error, icon=":material/error:")
        if not name_error and manifest in set(manifests["name"]):
            st.caption(f"Manifest `{manifest}` exists and is reused as saved; rename it to prune anew.")
    preset, overrides = preset_form(ws)
    left, right, seeds_col = st.columns([2, 2, 1])
    control = left.checkbox("Also a random control of the same size", value=True, key="runs_control", bind=BIND,
                            disabled=spec is not None and spec.rule == "random")
    full = right.checkbox(f"Also {'the full web set' if base is None else f'all of {base}'}", value=True,
                          key="runs_full", bind=BIND)
    seeds = int(seeds_col.number_input("Seeds", 1, 20, 1, key="runs_seeds", bind=BIND,
                                       help="train each model this many times (seeds preset seed + 0, 1, ...)"))
    if st.button("Queue prune → train → evaluate", type="primary", key="runs_launch",
                 disabled=bool(name_error) or (manifest is None and not full)):
        try:
            queued = pipeline.queue_pipeline(ws, manifest=manifest, spec=spec, preset=preset, overrides=overrides,
                                             random_control=control and (spec is None or spec.rule != "random"),
                                             include_full=full, web=web, base=base, seeds=seeds)
            st.success("Queued " + ", ".join(f"{j.kind} `{j.id}`" for j in queued))
        except (ClipsimError, ValueError) as err:
            st.error(str(err))

st.subheader("Jobs")
job_monitor(ws, kinds=["prune", "train", "evaluate"], key="runs_jobs")
st.subheader("Training")
training_progress(ws)

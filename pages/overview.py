"""Overview: the workspace's datasets and the state of its searches."""
import streamlit as st

from clipsim.data.demo import background as demo_build
from clipsim.names import read_only
from clipsim.status import study_steps
from clipsim.ui import loaders, nav, share
from clipsim.ui.common import open_workspace
from clipsim.ui.nav import page_setup

page_setup(__file__)
st.title("clipsim")
st.write("How close is CLIP's training data to its benchmarks? Exact nearest neighbours between test sets and "
         "train sets, pruning rules, retraining and zero-shot evaluation.")
ws = open_workspace()
share.report_button(ws)
if (ws.root / "demo").is_dir() and not (ws.root / "demo" / "demo.json").exists() and not read_only():
    st.warning("The demo build in this workspace stopped before it finished; it resumes where it stopped.",
               icon=":material/warning:")
    if st.button("Resume the demo build", icon=":material/play_arrow:"):
        demo_build.start(ws.root)
        st.rerun()
status = loaders.status(ws)
st.subheader("Start here")
st.caption("The study in five steps, as in the paper: each page reads what the step before it stored.")
for n, step in enumerate(study_steps(status), 1):
    mark = ":green[:material/check_circle:]" if step["done"] else (
        ":orange[:material/arrow_forward:] **next**" if step["next"] else ":gray[:material/radio_button_unchecked:]")
    row = st.columns([0.35, 4, 2.2], vertical_alignment="center")
    row[0].markdown(f"**{n}**")
    row[1].markdown(f"{mark} {step['step']}" + (f" · {step['count']} so far" if step["done"] else ""))
    with row[2]:
        for title in step["pages"]:
            nav.page_link(title)
    if step["next"] and step["command"]:
        st.code(step["command"], language="bash")
st.subheader("Datasets")
st.dataframe(status["datasets"], hide_index=True, width="stretch")
st.subheader("Study so far")
steps = st.columns(4)
steps[0].metric("Searches", len(status["searches"]), help="test x train pairs with exact neighbours")
steps[1].metric("Pruning manifests", len(status["manifests"]))
steps[2].metric("Evaluated runs", len(status["results"]))
steps[3].metric("Maps", len(status["maps"]))
active = status["jobs"]["active"]
if active:
    st.caption(f"{len(active)} job(s) queued or running: " + ", ".join(f"{j['kind']} ({j['state']})" for j in active)
               + ". Follow them on the Runs page.")
st.subheader("Searches")
if not status["searches"]:
    st.info("No search yet: run `python -m clipsim search` for this workspace.")
    st.stop()
rows = [{"test": s["test"], "train": s["train"], "k": s["k"], "fresh": not s["stale"], "created": s["created"]}
        for s in status["searches"]]
st.dataframe(rows, hide_index=True, width="stretch")
if status["manifests"]:
    st.subheader("Pruning manifests")
    st.dataframe(status["manifests"], hide_index=True, width="stretch")

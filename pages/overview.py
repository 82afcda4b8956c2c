"""Overview: the workspace's datasets and the state of its searches."""
import streamlit as st

from clipsim.ui.common import leave_legacy_pages_mode, open_workspace

leave_legacy_pages_mode()
st.title("clipsim")
st.write("How close is CLIP's training data to its benchmarks? Exact nearest neighbours between test sets and "
         "train sets, pruning rules, retraining and zero-shot evaluation.")
ws = open_workspace()
st.subheader("Datasets")
st.dataframe(ws.datasets(), hide_index=True, width="stretch")
status = ws.status()
st.subheader("Searches")
if not status["searches"]:
    st.info("No search yet: run `python -m clipsim search` for this workspace.")
    st.stop()
rows = [{"test": s["test"], "train": s["train"], "k": s["k"], "fresh": not s["stale"], "created": s["created"]}
        for s in status["searches"]]
st.dataframe(rows, hide_index=True, width="stretch")

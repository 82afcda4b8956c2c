"""clipsim app: page config, shared sidebar and navigation; pages live in pages/, logic in clipsim/."""
import streamlit as st

from clipsim.ui.common import read_only_banner, workspace_root

st.set_page_config(page_title="clipsim", page_icon=":material/compare:", layout="wide")
with st.sidebar:
    st.caption(f"Workspace: `{workspace_root()}`")
    read_only_banner()
nav = st.navigation([st.Page("pages/overview.py", title="Overview", icon=":material/home:", default=True)])
nav.run()

"""clipsim app: page config, shared sidebar and navigation; pages live in pages/, logic in clipsim/."""
import streamlit as st

from clipsim.ui import nav
from clipsim.ui.common import read_only_banner, workspace_root

nav.configure()
with st.sidebar:
    st.caption(f"Workspace: `{workspace_root()}`")
    read_only_banner()
page = st.navigation(nav.pages())
with nav.routed():
    page.run()

"""clipsim app: page config, shared sidebar and navigation; pages live in pages/, logic in clipsim/."""
import streamlit as st

from clipsim.ui import nav
from clipsim.ui.common import page_failed, read_only_banner, workspace_root

nav.configure()
with st.sidebar:
    st.caption(f"Workspace: `{workspace_root()}`")
    read_only_banner()
page = st.navigation(nav.pages())
with nav.routed():
    try:
        page.run()
    except Exception as err:  # noqa: BLE001  (a page's unexpected error: one message, never a raw traceback)
        page_failed(err)

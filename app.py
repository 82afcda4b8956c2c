"""clipsim app: page config, shared sidebar and navigation; pages live in pages/, logic in clipsim/."""
from pathlib import Path

import streamlit as st

from clipsim.ui.common import leave_legacy_pages_mode, page_failed, read_only_banner, workspace_root

# (file, title, icon); pages not written yet are left out of the navigation.
PAGES = [
    ("pages/overview.py", "Overview", ":material/home:"),
    ("pages/neighbours.py", "Neighbours", ":material/photo_library:"),
    ("pages/similarity.py", "Similarity", ":material/bar_chart:"),
    ("pages/dedup.py", "Dedup", ":material/filter_none:"),
    ("pages/prune.py", "Prune", ":material/content_cut:"),
    ("pages/runs.py", "Runs", ":material/play_circle:"),
    ("pages/results.py", "Results", ":material/leaderboard:"),
    ("pages/map.py", "Map", ":material/scatter_plot:"),
]

st.set_page_config(page_title="clipsim", page_icon=":material/compare:", layout="wide")
leave_legacy_pages_mode()
with st.sidebar:
    st.caption(f"Workspace: `{workspace_root()}`")
    read_only_banner()
here = Path(__file__).parent
pages = [st.Page(f, title=t, icon=i, default=n == 0) for n, (f, t, i) in enumerate(PAGES) if (here / f).exists()]
try:
    st.navigation(pages).run()
except Exception as err:  # noqa: BLE001  (a page's unexpected error: one message, never a raw traceback)
    page_failed(err)

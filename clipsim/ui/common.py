"""Workspace access for pages: one cached Workspace per folder, read-only banner, empty states."""
from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from clipsim.errors import ClipsimError
from clipsim.workspace import Workspace, default_root, read_only


def workspace_root() -> Path:
    """The workspace folder this app serves ($CLIPSIM_WORKSPACE or ./workspace)."""
    return Path(os.environ.get("CLIPSIM_WORKSPACE", str(default_root())))


def open_workspace() -> Workspace:
    """The app's workspace; stops the page with instructions when there is none yet."""
    root = workspace_root()
    try:
        return Workspace.open(root)
    except ClipsimError as err:
        st.info(f"{err}")
        st.code(f"python -m clipsim demo --workspace {root}", language="bash")
        st.stop()


def read_only_banner() -> None:
    """Tell collaborators the app is read-only when it is."""
    if read_only():
        st.caption("Read-only presentation mode: launching jobs and saving manifests are disabled.")


def leave_legacy_pages_mode() -> None:
    """Serve every page through app.py's navigation, also for a deep link on a freshly started server.

    Streamlit treats a `pages/` folder beside the main script as its legacy multipage mode until some session
    has run `st.navigation`; a shared link such as `/neighbours?test=sketch` opened first would then run the
    page without app.py (no sidebar, default layout). Switching the flag and rerunning routes it through app.py.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()

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

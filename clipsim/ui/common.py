"""Workspace access for pages: one cached Workspace per folder, presentation (read-only) mode, empty states.

Presentation mode is `CLIPSIM_READ_ONLY=1` in the server's environment, or in `.streamlit/secrets.toml`:

    [clipsim]
    read_only = true

Secrets are only readable inside Streamlit, so `apply_secrets` copies the flag into the environment variable that
`clipsim.workspace.read_only()` (and so every core write) honours; it runs before any page content.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import streamlit as st

from clipsim.data.demo import background as demo_build
from clipsim.errors import ClipsimError
from clipsim.names import read_only
from clipsim.workspace import Workspace, default_root


def workspace_root() -> Path:
    """The workspace folder this app serves ($CLIPSIM_WORKSPACE or ./workspace)."""
    return Path(os.environ.get("CLIPSIM_WORKSPACE", str(default_root())))


def open_workspace() -> Workspace:
    """The app's workspace; stops the page with instructions (and a button that builds the demo) when there is none
    yet, or with the build's progress while the demo is being built."""
    read_only_notice()
    root = workspace_root()
    stop_while_building(root)
    try:
        return Workspace.open(root)
    except ClipsimError as err:
        no_workspace(root, str(err))


def stop_while_building(root: Path) -> None:
    """While the demo is being built into `root`: show its progress and stop the page."""
    if demo_build.running(root):
        _demo_progress(root)
        st.stop()


def no_workspace(root: Path, why: str) -> None:
    """Say there is no workspace at `root` and how to make one (a button builds the demo unless read-only); stops.

    A registry that exists but does not load (malformed, a bad dataset name) is an error to fix, not a missing
    workspace: the page shows the message, which names the file and the fix.
    """
    if (root / "clipsim.json").exists():
        st.error(f"The workspace at `{root}` cannot be opened: {why}", icon=":material/error:")
        st.stop()
    st.info(f"No clipsim workspace at `{root}` ({why}). Build the demo there, or create one and register datasets:",
            icon=":material/info:")
    st.code(f"python -m clipsim demo --workspace {root}\n# or: python -m clipsim init --workspace {root}",
            language="bash")
    if not read_only():
        minutes = "about a minute" if demo_build.size() == "small" else "about 5 minutes on a laptop CPU"
        if st.button("Build the demo here", icon=":material/play_arrow:", type="primary",
                     help=f"runs the demo command in the background ({minutes}); offline, nothing downloaded"):
            demo_build.start(root)
            st.rerun()
        failed = demo_build.failure(root)
        if failed:
            st.error(f"The last demo build stopped with an error (log {demo_build.log_path(root)}):")
            st.code(failed)
    st.stop()


@st.fragment(run_every=3)
def _demo_progress(root: Path) -> None:
    """The demo build's log tail, refreshed; reruns the page when the build ends."""
    if not demo_build.running(root):
        st.rerun(scope="app")
    st.info(f"Building the demo workspace in {root} (the pages open when it is done; closing the browser does not "
            f"stop it). Log: {demo_build.log_path(root)}", icon=":material/hourglass_top:")
    st.code(demo_build.tail(root) or "starting...", language="text")


def apply_secrets() -> None:
    """Turn on read-only mode (CLIPSIM_READ_ONLY=1 for this server process) when the secrets say so."""
    try:
        flag = st.secrets.get("clipsim", {}).get("read_only", False)
    except Exception:  # noqa: BLE001  (no secrets file, or one that does not parse: the environment decides)
        return
    if flag is True or str(flag).strip().lower() in ("1", "true", "yes"):
        os.environ["CLIPSIM_READ_ONLY"] = "1"


def page_failed(err: Exception) -> None:
    """Show an unexpected error of a page as one message (its traceback goes to the server log), never a raw
    traceback or a blank page. app.py calls this around the page it runs.

    Raises:
        Exception: `err` again when Streamlit already showed it (an error inside a fragment).
    """
    from streamlit.errors import FragmentHandledException

    if isinstance(err, FragmentHandledException):
        raise err
    logging.getLogger("clipsim.ui").error("page failed", exc_info=err)
    st.error(f"This page stopped on an unexpected error: {type(err).__name__}: {err}. Nothing was changed by it; "
             "the full traceback is in the log of the server running the app. Please report it.",
             icon=":material/error:")


READ_ONLY_TEXT = ("Read-only presentation mode: launching jobs, saving manifests and computing maps are disabled; "
                  "this app serves one workspace.")


def read_only_banner() -> None:
    """Tell collaborators the app is read-only when it is (the sidebar of app.py)."""
    apply_secrets()
    if read_only():
        st.caption(READ_ONLY_TEXT)


def read_only_notice() -> None:
    """The read-only badge at the top of a page (every page shows it through its workspace loader)."""
    apply_secrets()
    if read_only():
        st.caption(f":orange-badge[:material/lock: Read-only] {READ_ONLY_TEXT}")


def can_write(what: str) -> bool:
    """False (and a notice saying so) when the app is served read-only."""
    if read_only():
        st.info(f"Read-only presentation mode (CLIPSIM_READ_ONLY=1): {what} is disabled here; use the CLI on a "
                "writable copy of the workspace.", icon=":material/lock:")
        return False
    return True

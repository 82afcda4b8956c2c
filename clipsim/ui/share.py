"""Sharing from any page: the study report as a download (built when clicked, also in read-only mode)."""
from __future__ import annotations

import streamlit as st

from clipsim.workspace import Workspace


def report_bytes(root: str) -> bytes:
    """The study report of the workspace at `root` as UTF-8 HTML (no Streamlit call: it runs in the download
    thread)."""
    from clipsim.report import build_report

    return build_report(Workspace.open(root)).encode("utf-8")


def report_button(ws: Workspace, key: str = "report_download") -> None:
    """A sidebar button downloading the self-contained HTML report of the study (generated on click)."""
    root = str(ws.root.resolve())
    with st.sidebar:
        st.download_button("Study report (HTML)", data=lambda: report_bytes(root),
                           file_name=f"clipsim-report-{ws.root.resolve().name}.html", mime="text/html", key=key,
                           on_click="ignore", icon=":material/download:", width="stretch",
                           help="One HTML file that opens offline: datasets, similarity histograms, closest pairs, "
                                "manifests and results. Also `python -m clipsim report --out FILE`.")

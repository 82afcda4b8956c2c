"""The app's pages and routing: app.py runs `st.navigation(pages())` inside `routed()`, and every page starts with
`page_setup(__file__)`, so a page always renders inside app.py's frame (sidebar, layout, local favicon).

Streamlit serves a `pages/` folder beside the main script in its legacy multipage mode until some session has run
`st.navigation` ("as soon as any session executes st.navigation, the app ignores the pages/ directory, across all
sessions": the st.navigation reference). A shared link such as `/neighbours?test=sketch` opened first on a fresh
server is then run without app.py. `page_setup` notices that (the page runs, but not from app.py's navigation) and
uses the public API to end it: it calls `st.navigation` with the app's pages, then `st.rerun()`, which runs app.py
with the same page and query string.
"""
from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parents[2]  # the folder holding app.py and pages/
FAVICON = Path(__file__).with_name("favicon.png")  # served by the app itself: nothing is fetched from the internet
# (file, title, icon); the first is the default page; pages not written yet are left out of the navigation
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
_route = threading.local()  # `active` is True while app.py's navigation runs a page in this script thread
_REROUTED = "clipsim_rerouted"  # session flag: reroute at most once per session (never a rerun loop)


def configure() -> None:
    """The app's page config: title, the local favicon (set before any navigation, whose page icons would otherwise
    become the favicon, fetched from fonts.gstatic.com) and the wide layout."""
    st.set_page_config(page_title="clipsim", page_icon=str(FAVICON), layout="wide")


def pages() -> list:
    """The app's st.Page objects (absolute paths, so they resolve from any main script)."""
    return [st.Page(str(ROOT / f), title=t, icon=i, default=n == 0)
            for n, (f, t, i) in enumerate(PAGES) if (ROOT / f).exists()]


@contextmanager
def routed() -> Iterator[None]:
    """Mark the page run inside this block as routed by app.py (see page_setup)."""
    _route.active = True
    try:
        yield
    finally:
        _route.active = False


def page_setup(page_file: str) -> None:
    """The first call of every page: when Streamlit runs the page in its legacy pages/ mode (a deep link opened
    first on a fresh server), switch the server to app.py's navigation and rerun through app.py.

    A page that is itself the main script (an AppTest of one page, `streamlit run pages/x.py`) runs as it is.

    Args:
        page_file: the page's `__file__`.
    """
    if getattr(_route, "active", False):
        return
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    if main is None or Path(main).resolve() == Path(page_file).resolve() or st.session_state.get(_REROUTED):
        return
    st.session_state[_REROUTED] = True
    configure()
    st.navigation(pages(), position="hidden")  # public API: from now on the server ignores pages/
    st.rerun()


def page_link(title: str) -> None:
    """A link to the app page titled `title` (an st.Page, so it also renders where the navigation is not set up,
    e.g. an AppTest of one page)."""
    found = [(f, t, i) for f, t, i in PAGES if t == title]
    if not found:
        raise ValueError(f"no app page titled {title!r}; pages: {[t for _, t, _ in PAGES]}")
    file, _, icon = found[0]
    st.page_link(st.Page(str(ROOT / file), title=title, icon=icon))

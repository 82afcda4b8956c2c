"""Cached loaders for the pages and their empty states.

`st.cache_resource` holds the Workspace, each test set's neighbour arrays and PruneStats, keyed by the
workspace path and the fingerprints of the searches they read (a re-run search is picked up at once);
`st.cache_data` holds the small derived arrays and tables (gallery order, summaries).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from clipsim import views
from clipsim.errors import ClipsimError
from clipsim.ui.common import no_workspace, read_only_notice, stop_while_building, workspace_root
from clipsim.workspace import REGISTRY, Workspace


@st.cache_resource(show_spinner=False, max_entries=4)
def _workspace(root: str, registry_mtime_ns: int) -> Workspace:
    return Workspace.open(root)


def workspace() -> Workspace:
    """The app's workspace (cached until its registry changes); stops the page with the command to run if absent."""
    read_only_notice()
    root = workspace_root()
    stop_while_building(root)
    try:
        mtime = (root / REGISTRY).stat().st_mtime_ns
        return _workspace(str(root.resolve()), mtime)
    except (OSError, ClipsimError) as err:
        no_workspace(root, f"no {REGISTRY} there" if isinstance(err, OSError) else str(err))


def explore_context() -> tuple[Workspace, list[str], str | None]:
    """What the Explore pages start from: (workspace, searched test sets, reference or None), with the report
    button in the sidebar and a warning for stale searches; stops the page with what to run when there is none."""
    from clipsim.ui import share

    ws = workspace()
    share.report_button(ws)
    tests = searched_tests(ws)
    warn_stale(ws, tests)
    return ws, tests, reference(ws, required=False)


def searched_tests(ws: Workspace) -> list[str]:
    """Test sets with a completed search; stops with the command to run (register, embed or search) if none."""
    tests = ws.dataset_names("test")
    root = ws.root
    if not tests or not ws.dataset_names("train"):
        st.info("Register at least one train and one test set first:", icon=":material/info:")
        st.code(f"python -m clipsim register --workspace {root} --name val --role test --kind folder --source DIR",
                language="bash")
        st.stop()
    if all(ws.embeddings(t, required=False) is None for t in tests):
        st.info("No test set is embedded yet. Embed every dataset:", icon=":material/info:")
        st.code(f"python -m clipsim embed --workspace {root}", language="bash")
        st.stop()
    found = views.searched_tests(ws)
    if not found:
        ref = ws.settings.get("reference")
        st.info("No search yet: run the exact nearest-neighbour search of the test sets against the train sets:",
                icon=":material/info:")
        st.code(f"python -m clipsim search --workspace {root}" + (f" --reference {ref}" if ref else ""),
                language="bash")
        st.stop()
    return found


@st.cache_data(show_spinner=False, max_entries=64)
def _stale(root: str, tests: tuple, stamps: tuple, _ws: Workspace) -> list[str]:
    out = []
    for test in tests:
        for train in views.searched_trains(_ws, test):
            reasons = _ws.search_result(test, train).stale_reasons()
            if reasons:
                out.append(f"{test} vs {train} ({'; '.join(reasons)})")
    return out


def _stamps(ws: Workspace) -> tuple:
    """Modification times of every embedding and search folder: shards and results are written by atomic rename,
    which changes their folder's mtime, so this cheap key changes whenever a fingerprint could."""
    folders = [ws.embedding_dir(n) / sub for n in ws.dataset_names() for sub in ("img_emb", "metadata")]
    folders += sorted(ws.path("search").glob("*/*"))
    return tuple(f.stat().st_mtime_ns if f.exists() else 0 for f in folders)


def warn_stale(ws: Workspace, tests: list[str]) -> None:
    """A warning naming every stale search of these test sets (their inputs changed since) and the command to run."""
    stale = _stale(str(ws.root.resolve()), tuple(tests), _stamps(ws), ws)
    if stale:
        st.warning(f"Stale searches, shown as stored: {', '.join(stale)}. Re-run "
                   f"`python -m clipsim search --workspace {ws.root}` to bring them up to date.",
                   icon=":material/warning:")


def reference(ws: Workspace, required: bool = True) -> str | None:
    """The workspace's reference train set (settings['reference']); stops with the command to set it if required."""
    ref = ws.settings.get("reference")
    if ref in ws.dataset_names("train"):
        return ref
    if required:
        st.info("No reference train set (the ImageNet-like set defining s_ref(t)) is set for this workspace. "
                "Search with one, e.g. the curated set:", icon=":material/info:")
        st.code(f"python -m clipsim search --workspace {ws.root} --reference curated", language="bash")
        st.stop()
    return None


@st.cache_resource(show_spinner="Reading neighbours…", max_entries=32)
def _test_neighbours(root: str, test: str, fingerprints: tuple, _ws: Workspace) -> views.TestNeighbours:
    return views.load_test_neighbours(_ws, test)


def test_neighbours(ws: Workspace, test: str) -> views.TestNeighbours:
    """A test set's stored neighbours in every searched train set (cached by search fingerprints)."""
    fps = tuple(sorted(views.searched_trains(ws, test).items()))
    return _test_neighbours(str(ws.root.resolve()), test, fps, ws)


def _key(nn: views.TestNeighbours) -> tuple:
    return nn.test, tuple(sorted(nn.fingerprints.items()))


@st.cache_data(show_spinner=False, max_entries=256)
def _order(key: tuple, sort_train: str, sort: str, labels: tuple, sim_range: tuple | None, _nn) -> np.ndarray:
    return views.gallery_order(_nn, sort_train, sort, list(labels), sim_range)


def gallery_order(nn: views.TestNeighbours, sort_train: str, sort: str, labels: list[int],
                  sim_range: tuple[float, float] | None) -> np.ndarray:
    """Filtered and sorted test rows (cached: paging never re-sorts)."""
    return _order(_key(nn), sort_train, sort, tuple(labels), sim_range, nn)


@st.cache_resource(show_spinner=False, max_entries=64)
def _sorted(key: tuple, train: str, _nn) -> tuple[np.ndarray, np.ndarray]:
    return views.sorted_similarity(_nn, train)


def sorted_similarity(nn: views.TestNeighbours, train: str) -> tuple[np.ndarray, np.ndarray]:
    """(s_train(t) sorted increasing, rows in that order), computed once per search (see views.sorted_similarity)."""
    return _sorted(_key(nn), train, nn)


@st.cache_data(show_spinner=False, max_entries=8)
def _planted(path: str, mtime_ns: int, _ws: Workspace) -> set:
    return views.planted_pairs(_ws)


def planted(ws: Workspace) -> set:
    """The demo's planted pairs (empty without ground truth)."""
    path = ws.path("demo", "planted.parquet")
    return _planted(str(path), path.stat().st_mtime_ns, ws) if path.exists() else set()


def sim_bounds(nns: list[views.TestNeighbours]) -> tuple[float, float]:
    """Slider bounds covering every s(t): lowest value floored to 0.05, and 1.0."""
    lows = [float(nn.nn(t).min()) for nn in nns for t in nn.trains if len(nn.keys)]
    lo = float(np.floor(min(lows, default=0.0) * 20) / 20)
    return max(-1.0, min(lo, 0.95)), 1.0


@st.cache_data(show_spinner=False, max_entries=32)
def _summary(keys: tuple, reference: str | None, _nns: dict) -> pd.DataFrame:
    return views.similarity_summary(_nns, reference)


def similarity_summary(nns: dict[str, views.TestNeighbours], reference: str | None) -> pd.DataFrame:
    """Per test set medians and shares (cached; see views.similarity_summary)."""
    return _summary(tuple(_key(nn) for nn in nns.values()), reference, nns)


def web_sets(ws: Workspace, tests: list[str], reference: str | None) -> list[str]:
    """Train sets other than the reference that every given test set was searched against (the web sets)."""
    return [t for t in ws.dataset_names("train")
            if t != reference and all(ws.path("search", t, test, "config.json").exists() for test in tests)]


@st.cache_resource(show_spinner="Loading pruning statistics…", max_entries=8)
def _prune_stats(root: str, web: str, tests: tuple, reference: str | None, fingerprints: tuple, _ws: Workspace):
    from clipsim.prune import PruneStats

    return PruneStats.load(_ws, web, list(tests), reference)


def stats_key(ws: Workspace, web: str, tests: list[str], reference: str | None) -> tuple:
    """Identity of PruneStats inputs: workspace, sets, and fingerprints of the web embeddings and every search."""
    fps = [ws.embeddings(web).fingerprint()]
    for test in tests:
        fps.append(ws.search_result(test, web).fingerprint)
        if reference:
            fps.append(ws.search_result(test, reference).fingerprint)
    return str(ws.root.resolve()), web, tuple(tests), reference, tuple(fps)


def prune_stats(ws: Workspace, web: str, tests: list[str], reference: str | None):
    """PruneStats of `web` against `tests` (with similarity-gap margins when `reference` is given), cached by the
    fingerprints of the web embeddings and of every search read; a re-run search or re-embedding reloads them.

    Raises:
        WorkspaceError: a search or the reference margins are missing (the message names the command).
    """
    return _prune_stats(*stats_key(ws, web, tests, reference), ws)


@st.cache_resource(show_spinner=False, max_entries=8)
def _rule(key: tuple, tests: tuple, rule: str, options: tuple, _stats):
    from clipsim.prune import apply as pruning

    sel = _stats if list(tests) == _stats.tests else _stats.subset(list(tests))
    params, removed = pruning.rule_params(sel, rule, **dict(options))
    return sel, params, removed


def apply_rule(ws: Workspace, stats, tests: list[str], rule: str, **options):
    """(stats restricted to `tests`, params, removed mask) of a rule (cached per parameters; see pruning.rule_params).

    Raises:
        ValueError: a missing or out-of-range parameter.
    """
    key = stats_key(ws, stats.web, stats.tests, stats.reference)
    return _rule(key, tuple(tests), rule, tuple(sorted(options.items())), stats)


@st.cache_data(show_spinner=False, max_entries=32)
def _post_prune(key: tuple, tests: tuple, rule: str, params: tuple, test: str, _ws, _sel, _removed) -> pd.DataFrame:
    from clipsim.prune import apply as pruning

    return pruning.post_prune(_ws, _sel, test, rule, dict(params), _removed)


def post_prune(ws: Workspace, stats, sel, test: str, rule: str, params: dict, removed: np.ndarray) -> pd.DataFrame:
    """s_web(t) before/after pruning for one test set (cached per rule and parameters)."""
    key = stats_key(ws, stats.web, stats.tests, stats.reference)
    return _post_prune(key, tuple(sel.tests), rule, tuple(sorted(params.items())), test, ws, sel, removed)


def has_margins(ws: Workspace, web: str, tests: list[str], reference: str | None) -> bool:
    """True when every search of `tests` against `web` stored similarity-gap margins for `reference`."""
    if not reference:
        return False
    return all(reference in ws.search_result(t, web).config.get("references", {}) for t in tests)

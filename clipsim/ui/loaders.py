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
from clipsim.search import result as searches
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
    return ws, tests, ws.reference


def searched_web_sets(ws: Workspace, tests: list[str], ref: str | None) -> list[str]:
    """Web (non-reference) train sets searched against every test set; stops the page with the command to run when
    there is none (the Similarity and Prune pages)."""
    webs = searches.searched_web_sets(ws, tests)
    if not webs:
        st.info("No web (non-reference) train set is searched against every test set yet. Search it:",
                icon=":material/info:")
        st.code(f"python -m clipsim search --workspace {ws.root} --train WEB" + (f" --reference {ref}" if ref else ""),
                language="bash")
        st.stop()
    return webs


def searched_tests(ws: Workspace) -> list[str]:
    """Test sets with a completed search; stops with the command to run (register, embed or search) if none."""
    found = searches.searched_tests(ws)  # one stat per search folder: the usual answer, checked first
    if found:
        return found
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
    ref = ws.settings.get("reference")
    st.info("No search yet: run the exact nearest-neighbour search of the test sets against the train sets:",
            icon=":material/info:")
    st.code(f"python -m clipsim search --workspace {root}" + (f" --reference {ref}" if ref else ""), language="bash")
    st.stop()


@st.cache_data(show_spinner=False, max_entries=64)
def _stale(root: str, tests: tuple, stamps: tuple, _ws: Workspace) -> list[str]:
    out = []
    for test in tests:
        for train in searches.completed_searches(_ws, test):
            reasons = _ws.search_result(test, train).stale_reasons()
            if reasons:
                out.append(f"{test} vs {train} ({'; '.join(reasons)})")
    return out


def embedding_stamps(ws: Workspace) -> tuple:
    """embeddings_stamp of every dataset: changes when any dataset's shards change."""
    return tuple(embeddings_stamp(ws, n) for n in ws.dataset_names())


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
    """The workspace's reference train set (ws.reference); stops with the command to set it if required."""
    ref = ws.reference
    if ref is not None:
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
    fps = tuple(searches.completed_searches(ws, test).items())
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


@st.cache_resource(show_spinner=False, max_entries=64)
def _rows(key: tuple, rows: tuple, k: int, size: int, trains: tuple, test_size: int | None, planted_stamp: tuple,
          _ws: Workspace, _nn, _planted: set) -> list[views.GalleryRow]:
    return views.gallery_rows(_ws, _nn, np.asarray(rows, dtype=np.int64), k, size, list(trains), _planted, test_size)


def gallery_rows(ws: Workspace, nn: views.TestNeighbours, rows: np.ndarray, k: int, size: int, trains: list[str],
                 test_size: int | None = None) -> list[views.GalleryRow]:
    """views.gallery_rows with the demo's planted pairs flagged, cached per page of rows (reopening or re-sorting
    back to a page costs nothing)."""
    path = ws.path("demo", "planted.parquet")
    return _rows(_key(nn), tuple(int(r) for r in rows), k, size, tuple(trains), test_size, file_stamp(path), ws, nn,
                 planted(ws))


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


@st.cache_resource(show_spinner="Loading pruning statistics…", max_entries=8)
def _prune_stats(root: str, web: str, tests: tuple, reference: str | None, fingerprints: tuple, base: str | None,
                 _ws: Workspace):
    from clipsim.prune import PruneStats

    return PruneStats.load(_ws, web, list(tests), reference, combined="stored", base=base)


def file_stamp(path) -> tuple:
    """(inode, mtime, size) of a file or folder, () when missing: every atomic rewrite (a rename) changes it."""
    try:
        st_ = path.stat()
    except FileNotFoundError:
        return ()
    return st_.st_ino, st_.st_mtime_ns, st_.st_size


def embeddings_stamp(ws: Workspace, name: str) -> tuple:
    """A cheap identity of a dataset's embeddings: the stamps of its img_emb/ and metadata/ folders, which change
    whenever a shard is added, removed or rewritten (shards are written by atomic rename), and of summary.json,
    whose writing commits the set (until then it reads as not embedded)."""
    root = ws.embedding_dir(name)
    return file_stamp(root / "img_emb"), file_stamp(root / "metadata"), file_stamp(root / "summary.json")


def stats_key(ws: Workspace, web: str, tests: list[str], reference: str | None, base: str | None = None) -> tuple:
    """Identity of PruneStats inputs: workspace, sets, the web embeddings' stamp and the fingerprint of every search
    read (from each search's config.json, parsed once per write): a handful of `stat` calls; and the base manifest
    (its name and the stamps of its kept keys and summary) when the statistics are restricted to one."""
    from clipsim.sorted_stats import SORTED

    fps = [embeddings_stamp(ws, web)]
    for test in tests:
        done = searches.completed_searches(ws, test)
        sorted_stamp = file_stamp(ws.path("search", web, test, SORTED, "config.json"))  # written later for old searches
        fps.append((done.get(web), done.get(reference) if reference else None, sorted_stamp))
    if base:
        fps.append(tuple(file_stamp(ws.path("manifests", base, f)) for f in ("kept.parquet", "summary.json")))
    return str(ws.root.resolve()), web, tuple(tests), reference, tuple(fps), base


def prune_stats(ws: Workspace, web: str, tests: list[str], reference: str | None):
    """PruneStats of `web` against `tests` (with similarity-gap margins when `reference` is given), cached by the
    fingerprints of the web embeddings and of every search read; a re-run search or re-embedding reloads them.
    Stored sorted statistics are memory-mapped, never loaded; a combination of test sets not stored yet is never
    computed here (combined='stored': see clipsim.ui.pruning.combined_notice).

    Raises:
        WorkspaceError: a search or the reference margins are missing (the message names the command).
    """
    return keyed_prune_stats(ws, web, tests, reference)[0]


def keyed_prune_stats(ws: Workspace, web: str, tests: list[str], reference: str | None,
                      base: str | None = None) -> tuple:
    """(prune_stats(...), its stats_key): the key, computed once per script run, keys what is derived from them;
    with `base`, only the rows that manifest keeps (PruneStats.load(..., base=base))."""
    key = stats_key(ws, web, tests, reference, base)
    return _prune_stats(*key, ws), key


@st.cache_resource(show_spinner=False, max_entries=64)
def _pairs(key: tuple, train: str, rows: tuple, size: int, _ws: Workspace, _nn) -> list:
    return views.nearest_pairs(_ws, _nn, train, np.asarray(rows, dtype=np.int64), size)


def nearest_pairs(ws: Workspace, nn: views.TestNeighbours, train: str, rows: np.ndarray, size: int) -> list:
    """(test tile, nearest `train` tile) for some test rows (cached: a threshold moved back and forth is free)."""
    return _pairs(_key(nn), train, tuple(int(r) for r in rows), size, ws, nn)


@st.cache_data(show_spinner=False, max_entries=32)
def _count(root: str, name: str, stamp: tuple, _ws: Workspace) -> int:
    emb = _ws.embeddings(name, required=False)
    return emb.count if emb is not None else 0


def dataset_count(ws: Workspace, name: str) -> int:
    """Embedded rows of a dataset (0 before embedding), cached until its shards change."""
    return _count(str(ws.root.resolve()), name, embeddings_stamp(ws, name), ws)


@st.cache_data(show_spinner=False, max_entries=16)
def _manifests(root: str, stamps: tuple, _ws: Workspace) -> pd.DataFrame:
    from clipsim.prune.manifest import list_manifests

    return list_manifests(_ws)


def manifests(ws: Workspace) -> pd.DataFrame:
    """Saved manifests with their freshness (clipsim.prune.list_manifests), cached until a manifest, an embedding
    or a search folder changes."""
    root = ws.path("manifests")
    summaries = tuple(file_stamp(p / "summary.json") for p in sorted(root.iterdir())) if root.is_dir() else ()
    return _manifests(str(ws.root.resolve()), (file_stamp(root), summaries, _stamps(ws)), ws)


@st.cache_data(show_spinner=False, max_entries=8, ttl=600)
def _status(root: str, stamps: tuple, _ws: Workspace) -> dict:
    from clipsim.status import workspace_status

    return workspace_status(_ws)


def status(ws: Workspace) -> dict:
    """clipsim.status.workspace_status, cached until an embedding, search, manifest, map, result or job record
    changes (a few `stat` calls instead of opening every shard)."""
    from clipsim.jobs import change_stamp

    manifests, maps = ws.path("manifests"), ws.path("maps")
    stamps = (_stamps(ws), file_stamp(ws.path(REGISTRY)), change_stamp(ws), file_stamp(ws.path("results")),
              file_stamp(ws.path("results", "results.parquet")), file_stamp(manifests), file_stamp(maps),
              tuple(file_stamp(p / "summary.json") for p in sorted(manifests.iterdir())) if manifests.is_dir() else (),
              tuple(file_stamp(p / "config.json") for p in sorted(maps.iterdir())) if maps.is_dir() else ())
    return _status(str(ws.root.resolve()), stamps, ws)

"""Cached loaders of the Dedup page and of text search on the Neighbours page.

`cache_resource` holds DedupStats with their sorted arrays built once (keyed by the within-cluster result's
fingerprint, so a recomputed dedup is picked up at once) and the text encoder (keyed by the model files);
`cache_data` holds text-search results per query.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from clipsim import fileio
from clipsim.dedup.view import list_dedups


@st.cache_resource(show_spinner="Loading dedup statistics…", max_entries=4)
def _stats(root: str, web: str, clusters: int, keep: str, seed, fingerprint: str, _ws):
    from clipsim.dedup.stats import DedupStats

    stats = DedupStats.load(_ws, web, clusters, keep, seed)
    _ = stats.sorted_earlier, stats.histogram, stats.clusters_summary  # once here: an eps change is a binary search
    return stats


def dedup_stats(ws, row: dict):
    """DedupStats of one row of `computed(ws)` (cached until that result is recomputed)."""
    config = fileio.read_json(Path(row["folder"]) / "config.json")
    seed = row["seed"] if pd.notna(row["seed"]) else None
    return _stats(str(ws.root.resolve()), row["web"], int(row["clusters"]), row["keep"], seed, config["fingerprint"], ws)


@st.cache_data(show_spinner=False, ttl=5, max_entries=8)
def _computed(root: str, _ws) -> pd.DataFrame:
    return list_dedups(_ws)


def computed(ws) -> pd.DataFrame:
    """Committed dedup statistics of the workspace (re-listed every few seconds; see clipsim.dedup.view.list_dedups)."""
    return _computed(str(ws.root.resolve()), ws)


@st.cache_resource(show_spinner="Loading the text model…", max_entries=2)
def _encoder(root: str, dataset: str, model: str, _ws):
    from clipsim.search.text import load_text_encoder

    return load_text_encoder(_ws, dataset)


def text_encoder(ws, dataset: str):
    """The similarity model's text tower for `dataset` (cached per model files).

    Raises:
        ModelError: no model is known or it cannot be loaded offline.
    """
    from clipsim.search.text import query_model

    model, pretrained = query_model(ws, dataset)
    files = [p for p in (model, pretrained) if p and ws.resolve(p).exists()]
    return _encoder(str(ws.root.resolve()), dataset, f"{model}|{pretrained}|{fileio.file_fingerprint(files)}", ws)


@st.cache_data(show_spinner="Searching…", max_entries=32)
def _text(root: str, dataset: str, query: str, k: int, fingerprint: str, _ws, _encoder) -> pd.DataFrame:
    from clipsim.search.text import text_search

    return text_search(_ws, dataset, query, k=k, encoder=_encoder)


def text_results(ws, dataset: str, query: str, k: int) -> pd.DataFrame:
    """Exact top-k of `dataset` for a prompt (cached per query and embeddings; see clipsim.search.text.text_search).

    Raises:
        ClipsimError: an empty query, or a text model that did not embed the set.
    """
    encoder = text_encoder(ws, dataset)
    return _text(str(ws.root.resolve()), dataset, query, int(k), ws.embeddings(dataset).fingerprint(), ws, encoder)

"""Tagging widgets: tag images picked in a gallery or selected on the map, filter a gallery by tag, and export a
tag's images as CSV/parquet or as a manifest that removes the tagged web samples.
"""
from __future__ import annotations

import io

import pandas as pd
import streamlit as st

from clipsim.errors import ClipsimError
from clipsim.labels import tags
from clipsim.names import read_only
from clipsim.ui.state import BIND


def _tag_name(ws, key: str) -> str | None:
    known = tags.tag_names(ws)
    return st.selectbox("Tag", known, index=None, key=f"{key}_tag", accept_new_options=True,
                        placeholder="new or existing tag…")


def _add(ws, frame: pd.DataFrame, tag: str | None, key: str) -> None:
    try:
        for dataset, group in frame.groupby("dataset", sort=False):
            tags.add_tags(ws, str(dataset), group["key"].astype(str), tag or "")
        st.session_state[f"{key}_done"] = f"Tagged {len(frame)} image(s) `{tag}`"
    except ClipsimError as err:
        st.session_state[f"{key}_done"] = f"error: {err}"


def tag_images(ws, frame: pd.DataFrame, key: str, pick: bool = True) -> None:
    """Tag images: `frame` holds the candidates (columns dataset, key); with `pick`, the user picks some of them.

    Args:
        ws: the workspace.
        frame: dataset, key of the images shown (a gallery page, or the map's selection).
        key: widget key prefix.
        pick: offer a multiselect of the keys (gallery); else tag every image of `frame` (map selection).
    """
    if read_only() or frame.empty:
        return
    message = st.session_state.pop(f"{key}_done", None)
    if message:
        (st.error if message.startswith("error") else st.success)(message)
    cols = st.columns([3, 2, 1], vertical_alignment="bottom") if pick else st.columns([2, 1], vertical_alignment="bottom")
    chosen = frame
    if pick:
        picked = cols[0].multiselect("Select images to tag", list(frame["key"]), key=f"{key}_pick",
                                     placeholder="pick images shown here…")
        chosen = frame[frame["key"].isin(picked)]
    with cols[-2]:
        tag = _tag_name(ws, key)
    cols[-1].button(f"Tag {len(chosen)}", key=f"{key}_add", disabled=chosen.empty or not tag, on_click=_add,
                    args=(ws, chosen, tag, key), icon=":material/sell:")


def tag_filter(ws, key: str) -> set[str] | None:
    """A tag to filter by (None: no filter); returns the tagged keys of every dataset."""
    known = tags.tag_names(ws)
    if not known:
        return None
    tag = st.selectbox("Only images tagged", [None, *known], key=key, bind=BIND,
                       format_func=lambda t: "— any —" if t is None else t)
    return None if tag is None else set(tags.read_tags(ws, tag)["key"])


def tag_exports(ws, web: str, key: str) -> None:
    """Download a tag's images (CSV, parquet) or save them as a manifest removing the tagged web samples."""
    known = tags.tag_names(ws)
    if read_only():  # presentation mode offers the study report only
        return
    if not known:
        st.caption("No tag yet: pick images in the gallery (or select them on the map) and tag them.")
        return
    tag = st.selectbox("Tag to export", known, key=f"{key}_which")
    frame = tags.read_tags(ws, tag)
    st.caption(", ".join(f"{n} {d}" for d, n in frame["dataset"].value_counts().items()))
    row = st.container(horizontal=True)
    row.download_button("CSV", frame.to_csv(index=False), file_name=f"tag-{tag}.csv", mime="text/csv",
                        key=f"{key}_csv", icon=":material/download:", on_click="ignore")
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    row.download_button("Parquet", buffer.getvalue(), file_name=f"tag-{tag}.parquet", key=f"{key}_pq",
                        icon=":material/download:", on_click="ignore")
    if not read_only() and row.button(f"Save manifest removing tagged {web} samples", key=f"{key}_manifest",
                                      icon=":material/content_cut:"):
        try:
            manifest = tags.tag_manifest(ws, tag, web, overwrite=True)
            st.success(f"Manifest `{manifest.name}` removes {manifest.removed_count:,} {web} samples; train on it "
                       "from the Runs page.")
        except ClipsimError as err:
            st.error(str(err))

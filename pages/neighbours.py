"""Neighbours: browse a test set beside its top-k neighbours in every train set, sorted and filtered by s(t)."""
import math

import pandas as pd
import streamlit as st

from clipsim import plots, views
from clipsim.errors import ClipsimError
from clipsim.labels import default_tau
from clipsim.labels.tags import keep_tagged
from clipsim.search import result as searches
from clipsim.ui import dedup as dedup_ui
from clipsim.ui import gallery, labelling, loaders, state, tagging
from clipsim.ui.nav import page_setup
from clipsim.ui.state import BIND

THUMB, TEST_THUMB, DETAIL_THUMB, DETAIL_TEST = 96, 112, 128, 224  # px; demo images are 64 px, real ones larger
ORDER_LABELS = {"nearest": "Most similar", "least": "Least similar", "dataset": "Dataset order"}
PAGE_SIZES = [12, 24, 48, 96]


def _open_picked() -> None:
    state.set_url_param("image", st.session_state.get("open_pick"))
    st.session_state["open_pick"] = None


page_setup(__file__)
st.title("Neighbours")
st.caption("Every test image beside its nearest training images. Sort by nearest-neighbour similarity s(t) to "
           "find near-duplicates (most similar first) or what the training data does not cover (least first).")
ws, tests, ref = loaders.explore_context()
colours = plots.workspace_colours(ws)
to_first_page = state.reset("page")

c = st.columns([1, 1, 1.6, 1])
test = c[0].selectbox("Test set", tests, key="test", bind=BIND, on_change=state.reset("page", "cls"))
nn = loaders.test_neighbours(ws, test)
others = [t for t in nn.trains if t != ref]
sort_train = c[1].selectbox("Sort by s(t) in", nn.trains, index=nn.trains.index((others or nn.trains)[0]),
                            key="by", bind=BIND, on_change=to_first_page)
sort = c[2].segmented_control("Order", list(ORDER_LABELS), format_func=ORDER_LABELS.get, default="nearest",
                              required=True, key="sort", bind=BIND, on_change=to_first_page) or "nearest"
k_max = min(nn.sims[t].shape[1] for t in nn.trains)
k = c[3].slider("Neighbours per train set", 1, k_max, min(5, k_max), key="k", bind=BIND)

c = st.columns([1.6, 1.6, 0.8])
names = nn.classes or []
picked = c[0].multiselect("Classes", names, key="cls", bind=BIND, on_change=to_first_page, placeholder="All classes")
lo, hi = loaders.sim_bounds([nn])
state.follow("sim", (test, sort_train), (lo, hi))  # a range of one set's s(t) means nothing for another set
sim_range = c[1].slider(f"s_{sort_train}(t) range", lo, hi, (lo, hi), step=0.01, key="sim", bind=BIND,
                        on_change=to_first_page)
page_size = c[2].selectbox("Per page", PAGE_SIZES, index=1, key="n", bind=BIND, on_change=to_first_page)

order = loaders.gallery_order(nn, sort_train, sort, [names.index(p) for p in picked],
                              None if tuple(sim_range) == (lo, hi) else tuple(sim_range))
tagged = tagging.tag_filter(ws, "tagged")
if tagged is not None:
    order = keep_tagged(nn.keys, order, tagged)
text_slot, top, detail_slot, grid_slot, bottom = (st.container() for _ in range(5))
with bottom:
    page = st.pagination(max(1, math.ceil(len(order) / page_size)), key="page", bind=BIND)
rows = order[(page - 1) * page_size : page * page_size]
first = (page - 1) * page_size + 1 if len(rows) else 0
keys = [str(key) for key in nn.keys[rows]]

with top:
    info, pick = st.columns([3, 1.2], vertical_alignment="bottom")
    info.markdown(f"**{first}–{first + len(rows) - 1 if len(rows) else 0}** of **{len(order)}** test images"
                  + (f" (filtered from {len(nn.keys)})" if len(order) != len(nn.keys) else "")
                  + f" · page {page} · sorted by s_{sort_train}(t)")
    pick.selectbox("Open an image", keys, index=None, key="open_pick", placeholder="Open an image…",
                   on_change=_open_picked, label_visibility="collapsed")

image = state.url_param("image", str, None, allowed=lambda key: nn.row_of(key) is not None)
shown = [sort_train] + [t for t in nn.trains if t != sort_train]  # the sorting set first
if image is not None:
    with detail_slot.container(border=True):
        head, close = st.columns([6, 1], vertical_alignment="center")
        head.subheader(f"{test} · {image}")
        close.button("Close", icon=":material/close:", on_click=state.set_url_param, args=("image", None))
        row = loaders.gallery_rows(ws, nn, [nn.row_of(image)], k_max, DETAIL_THUMB, shown, DETAIL_TEST)[0]
        gallery.show(gallery.detail_html(row, DETAIL_THUMB, DETAIL_TEST, ref, colours))

with text_slot, st.expander("Search by text", expanded=bool(st.query_params.get("q")), icon=":material/search:"):
    t = st.columns([3, 1, 1], vertical_alignment="bottom")
    query = t[0].text_input("Text prompt", key="q", bind=BIND, placeholder="a sketch of a star")
    embedded = [n for n in ws.dataset_names() if loaders.dataset_count(ws, n)]
    text_set = t[1].selectbox("In", embedded, index=embedded.index(sort_train) if sort_train in embedded else 0,
                              key="q_in", bind=BIND)
    text_k = t[2].number_input("Results", 1, 200, 24, key="q_k", bind=BIND)
    if query and query.strip():
        try:
            hits = dedup_ui.text_results(ws, text_set, query, int(text_k))
            st.caption(f"Exact top {len(hits)} of `{text_set}` for “{query}” (the similarity model's text tower)")
            tiles = views.row_tiles(ws, text_set, hits["row"].to_numpy(), THUMB, hits["similarity"].to_numpy())
            gallery.show(gallery.hits_html(tiles, THUMB))
        except ClipsimError as err:
            st.error(str(err))

with grid_slot:
    page_rows = loaders.gallery_rows(ws, nn, rows, k, THUMB, shown, TEST_THUMB)
    gallery.show(gallery.gallery_html(page_rows, THUMB, TEST_THUMB, ref,
                                      links={key: state.href(image=key) for key in keys}, colours=colours))

webs = searches.searched_web_sets(ws, [test])
with st.expander("Tag images"):
    tagging.tag_images(ws, pd.DataFrame({"dataset": test, "key": keys}), "nb_tags")
    if webs:
        tagging.tag_exports(ws, webs[0], "nb_export")
if webs:
    with st.expander(f"Label pairs: {test} image and its nearest {webs[0]} image"):
        tau = float(st.session_state.get("tau") or default_tau(ws, test, webs[0]))
        labelling.labeller(ws, test, webs[0], tau, "nb_lab")

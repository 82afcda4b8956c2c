"""Neighbours: browse a test set beside its top-k neighbours in every train set, sorted and filtered by s(t)."""
import math

import streamlit as st

from clipsim import views
from clipsim.ui import gallery, loaders, state
from clipsim.ui.common import leave_legacy_pages_mode
from clipsim.ui.state import BIND

THUMB, TEST_THUMB, DETAIL_THUMB, DETAIL_TEST = 96, 112, 128, 224  # px; demo images are 64 px, real ones larger
ORDER_LABELS = {"nearest": "Most similar", "least": "Least similar", "dataset": "Dataset order"}
PAGE_SIZES = [12, 24, 48, 96]


def _open_picked() -> None:
    state.set_url_param("image", st.session_state.get("open_pick"))
    st.session_state["open_pick"] = None


leave_legacy_pages_mode()
st.title("Neighbours")
st.caption("Every test image beside its nearest training images. Sort by nearest-neighbour similarity s(t) to "
           "find near-duplicates (most similar first) or what the training data does not cover (least first).")
ws, tests, ref = loaders.explore_context()
to_first_page = state.reset("page")

c = st.columns([1, 1, 1.6, 1])
test = c[0].selectbox("Test set", tests, key="test", bind=BIND, on_change=state.reset("page", "sim", "cls"))
nn = loaders.test_neighbours(ws, test)
others = [t for t in nn.trains if t != ref]
sort_train = c[1].selectbox("Sort by s(t) in", nn.trains, index=nn.trains.index((others or nn.trains)[0]),
                            key="by", bind=BIND, on_change=state.reset("page", "sim"))
sort = c[2].segmented_control("Order", list(ORDER_LABELS), format_func=ORDER_LABELS.get, default="nearest",
                              required=True, key="sort", bind=BIND, on_change=to_first_page) or "nearest"
k_max = min(nn.sims[t].shape[1] for t in nn.trains)
k = c[3].slider("Neighbours per train set", 1, k_max, min(5, k_max), key="k", bind=BIND)

c = st.columns([1.6, 1.6, 0.8])
names = nn.classes or []
picked = c[0].multiselect("Classes", names, key="cls", bind=BIND, on_change=to_first_page, placeholder="All classes")
lo, hi = loaders.sim_bounds([nn])
sim_range = c[1].slider(f"s_{sort_train}(t) range", lo, hi, (lo, hi), step=0.01, key="sim", bind=BIND,
                        on_change=to_first_page)
page_size = c[2].selectbox("Per page", PAGE_SIZES, index=1, key="n", bind=BIND, on_change=to_first_page)

order = loaders.gallery_order(nn, sort_train, sort, [names.index(p) for p in picked],
                              None if tuple(sim_range) == (lo, hi) else tuple(sim_range))
top, detail_slot, grid_slot, bottom = st.container(), st.container(), st.container(), st.container()
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
        row = views.gallery_rows(ws, nn, [nn.row_of(image)], k_max, DETAIL_THUMB, shown, loaders.planted(ws),
                                 DETAIL_TEST)[0]
        gallery.show(gallery.detail_html(row, DETAIL_THUMB, DETAIL_TEST, ref))

with grid_slot:
    page_rows = views.gallery_rows(ws, nn, rows, k, THUMB, shown, loaders.planted(ws), TEST_THUMB)
    gallery.show(gallery.gallery_html(page_rows, THUMB, TEST_THUMB, ref,
                                      links={key: state.href(image=key) for key in keys}))

"""HTML galleries of base64 thumbnails: test images beside their neighbours, a detail view, threshold pairs.

Builders return HTML strings (testable without a browser); `show` renders one with `st.html`. Elements carry
stable `data-testid` attributes (cs-gallery, cs-row, cs-thumb, cs-sim, cs-detail, cs-pairs) for browser tests.
"""
from __future__ import annotations

from html import escape

import streamlit as st

from clipsim.plots.palette import dataset_colours
from clipsim.views import GalleryRow, Tile

CAPTION_CHARS = 28  # one line under a 96 px thumbnail; the full text is in the title (hover) and the detail view
SIM_FORMAT = "{:.4f}"  # as many decimals as τ and δ, so "just above" never reads the same as "just below"

CSS = """
<style>
.cs-gallery{display:flex;flex-direction:column;gap:10px;font-family:inherit}
.cs-row{display:flex;gap:18px;align-items:flex-start;padding:10px 12px;border:1px solid rgba(128,128,128,.22);
  border-radius:10px;background:rgba(128,128,128,.04)}
.cs-query{flex:0 0 auto;display:flex;flex-direction:column;align-items:center;gap:3px;text-align:center}
.cs-query a{text-decoration:none;color:inherit}
.cs-sets{display:flex;flex-wrap:wrap;gap:10px 22px;flex:1 1 auto}
.cs-set{display:flex;flex-direction:column;gap:4px}
.cs-set-name{font-size:12px;font-weight:600;letter-spacing:.02em;display:flex;gap:8px;align-items:center}
.cs-dot{width:9px;height:9px;border-radius:50%;display:inline-block}
.cs-strip{display:flex;flex-wrap:wrap;gap:6px}
.cs-tile{position:relative;margin:0;display:flex;flex-direction:column;align-items:center}
.cs-thumb{object-fit:contain;border-radius:6px;background:#e8e9ec;border:1px solid rgba(128,128,128,.25);
  image-rendering:auto;display:block}
.cs-tile figcaption,.cs-query .cs-text{font-size:11px;line-height:1.25;max-width:100%;overflow:hidden;
  white-space:nowrap;text-overflow:ellipsis;opacity:.85}
.cs-sim{font-size:12px;font-weight:650;font-variant-numeric:tabular-nums;margin-top:2px}
.cs-key{font-size:11px;font-family:ui-monospace,monospace;opacity:.7;max-width:100%;overflow:hidden;
  text-overflow:ellipsis;white-space:nowrap}
.cs-badge{position:absolute;top:4px;left:4px;background:#d62728;color:#fff;font-size:9px;font-weight:700;
  padding:1px 5px;border-radius:8px;letter-spacing:.03em}
.cs-open{font-size:11px;opacity:.75}
.cs-role{font-size:10px;font-weight:700;letter-spacing:.06em;text-transform:uppercase;opacity:.6}
.cs-full figcaption,.cs-full .cs-key,.cs-full .cs-text{white-space:normal;overflow:visible;text-overflow:clip;overflow-wrap:anywhere}
.cs-full .cs-tile{width:auto!important;max-width:260px}
.cs-empty{font-size:12px;opacity:.6;padding:8px}
.cs-pairs{display:flex;flex-wrap:wrap;gap:12px}
.cs-pair{display:flex;flex-direction:column;align-items:center;gap:3px;padding:6px 8px;border-radius:8px;
  border:1px solid rgba(128,128,128,.25)}
.cs-pair-imgs{display:flex;gap:4px}
.cs-pair-imgs figure{margin:0;display:flex;flex-direction:column;align-items:center;gap:1px}
.cs-above{border-color:#e45756;background:rgba(228,87,86,.06)}
.cs-below{border-color:#4c78a8;background:rgba(76,120,168,.06)}
</style>
"""


def _sim_colour(sim: float) -> str:
    """Darker red the closer to a duplicate (>= 0.95), neutral below 0.5."""
    if sim >= 0.95:
        return "#c62828"
    if sim >= 0.85:
        return "#e65100"
    return "inherit"


def _img(tile: Tile, size: int) -> str:
    alt = f"{tile.key}" + (f" ({tile.thumb.missing})" if tile.thumb.missing else "")
    return tile.thumb.html(size, alt, "cs-thumb", "cs-thumb")


def tile_html(tile: Tile, size: int, chars: int | None = CAPTION_CHARS) -> str:
    """One neighbour: thumbnail, similarity, caption/label (truncated to `chars`, None: in full with the key below;
    the full text and key are always in the title, on hover)."""
    title = escape(f"{tile.text}\n{tile.key}" if tile.text else tile.key)
    short = tile.text if chars is None or len(tile.text) <= chars else tile.text[: chars - 1] + "…"
    sim = "" if tile.similarity is None else (
        f'<div class="cs-sim" data-testid="cs-sim" style="color:{_sim_colour(tile.similarity)}">'
        f"{SIM_FORMAT.format(tile.similarity)}</div>")
    badge = '<span class="cs-badge" data-testid="cs-planted" title="planted near-duplicate">planted</span>' \
        if tile.planted else ""
    key = f'<div class="cs-key">{escape(tile.key)}</div>' if chars is None else ""
    return (f'<figure class="cs-tile" title="{title}" style="width:{size + 2}px">{_img(tile, size)}{badge}{sim}'
            f'<figcaption>{escape(short) or "&nbsp;"}</figcaption>{key}</figure>')


def _set_html(name: str, tiles: list[Tile], size: int, colour: str, reference: str | None, role: str = "train",
              chars: int | None = CAPTION_CHARS) -> str:
    best = f"s = {SIM_FORMAT.format(tiles[0].similarity)}" if tiles else "no neighbours"
    ref = " (reference)" if name == reference else ""
    strip = "".join(tile_html(t, size, chars) for t in tiles) or '<div class="cs-empty">none</div>'
    return (f'<div class="cs-set" data-testid="cs-set" data-train="{escape(name)}"><div class="cs-set-name">'
            f'<span class="cs-dot" style="background:{colour}"></span><span class="cs-role">{role}</span>'
            f'{escape(name)}{ref}<span style="font-weight:400;opacity:.7">{best}</span></div>'
            f'<div class="cs-strip">{strip}</div></div>')


def _query_html(tile: Tile, size: int, label: str, href: str | None = None, full: bool = False) -> str:
    img = _img(tile, size)
    img = f'<a href="{escape(href)}" target="_self" title="open {escape(tile.key)}">{img}</a>' if href else img
    wrap = " cs-full" if full else ""
    return (f'<div class="cs-query{wrap}" style="width:{size + 8}px"><div class="cs-role">{escape(label)}</div>{img}'
            f'<div class="cs-key" title="{escape(tile.key)}">{escape(tile.key)}</div>'
            f'<div class="cs-text">{escape(tile.text)}</div></div>')


def gallery_html(rows: list[GalleryRow], size: int, test_size: int, reference: str | None = None,
                 links: dict[str, str] | None = None, colours: dict[str, str] | None = None,
                 roles: tuple[str, str] = ("test", "train")) -> str:
    """A gallery: one row per query image (thumbnail, key, class) beside its neighbours in each set.

    Args:
        rows: the page's rows (see views.gallery_rows).
        size: neighbour thumbnail size in pixels.
        test_size: query thumbnail size in pixels.
        reference: the reference train set (labelled).
        links: {query key: href} opening the detail view of that image.
        colours: {set: colour} (palette.workspace_colours, the same as the plots); default from the sets shown.
        roles: what the query image is and what its neighbours are: ('test', 'train'), or ('train', 'test') for a
            train image beside its nearest test images.

    Returns:
        HTML (with its CSS).
    """
    if not rows:
        return CSS + '<div class="cs-gallery" data-testid="cs-gallery"><div class="cs-empty">No test image matches ' \
                     "the filters.</div></div>"
    sets = list(rows[0].neighbours)
    colours = colours or dataset_colours(sets, (), reference)
    parts = []
    for grow in rows:
        query = _query_html(grow.test, test_size, f"{roles[0]} image", (links or {}).get(grow.test.key))
        blocks = "".join(_set_html(t, grow.neighbours[t], size, colours.get(t, "#999"), reference, roles[1])
                         for t in sets)
        parts.append(f'<div class="cs-row" data-testid="cs-row" data-key="{escape(grow.test.key)}">{query}'
                     f'<div class="cs-sets">{blocks}</div></div>')
    return CSS + f'<div class="cs-gallery" data-testid="cs-gallery">{"".join(parts)}</div>'


def detail_html(grow: GalleryRow, size: int, test_size: int, reference: str | None = None,
                colours: dict[str, str] | None = None) -> str:
    """The detail view of one test image: large image, its key and class, and its neighbours in each train set
    with their captions and keys in full."""
    colours = colours or dataset_colours(list(grow.neighbours), (), reference)
    sets = "".join(_set_html(t, tiles, size, colours.get(t, "#999"), reference, "train", chars=None)
                   for t, tiles in grow.neighbours.items())
    return (CSS + f'<div class="cs-row cs-full" data-testid="cs-detail" data-key="{escape(grow.test.key)}">'
            f'{_query_html(grow.test, test_size, "test image", full=True)}'
            f'<div class="cs-sets" style="flex-direction:column">{sets}</div></div>')


def pairs_html(pairs: list[tuple[Tile, Tile]], size: int, side: str, train: str = "train", first: str = "test") -> str:
    """An image (of role `first`, e.g. 'test') beside its nearest `train` neighbour, each labelled, with the
    similarity; side 'above' or 'below' a threshold."""
    if not pairs:
        return f'<div class="cs-empty" data-testid="cs-pairs-{side}">no {escape(first)} image {side} the threshold</div>'
    items = "".join(
        f'<div class="cs-pair cs-{side}" title="{escape(first)} {escape(t.key)} ↔ {escape(train)} {escape(n.key)}\n'
        f'{escape(n.text)}"><div class="cs-pair-imgs">'
        f'<figure>{_img(t, size)}<span class="cs-role">{escape(first)}</span></figure>'
        f'<figure>{_img(n, size)}<span class="cs-role">{escape(train)}</span></figure></div>'
        f'<div class="cs-sim" data-testid="cs-sim">{SIM_FORMAT.format(n.similarity)}</div></div>'
        for t, n in pairs)
    return CSS + f'<div class="cs-pairs" data-testid="cs-pairs-{side}">{items}</div>'


def hits_html(tiles: list[Tile], size: int, testid: str = "cs-text-hits") -> str:
    """A wrapped strip of tiles (text-search hits, best first) with their similarities and captions."""
    if not tiles:
        return f'<div class="cs-empty" data-testid="{testid}">no result</div>'
    return CSS + f'<div class="cs-strip" data-testid="{testid}">{"".join(tile_html(t, size) for t in tiles)}</div>'


def show(html: str) -> None:
    """Render gallery HTML in the page."""
    st.html(html)
